"""``beamtwin serve``: the REST API under uvicorn."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from beamtwin_cli._common import api_settings, database_url, engine

if TYPE_CHECKING:
    from beamtwin_cli._common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    srv = sub.add_parser(
        "serve",
        help="serve the REST API and the dashboard (BEAMTWIN_DATABASE_URL required)",
        description=(
            "Serve the REST API under /api/v1 and the web dashboard under /ui/ (docs/dashboard.md) "
            "with uvicorn. Refuses a database whose schema is "
            "not current. Settings: BEAMTWIN_DATABASE_URL, BEAMTWIN_API_HOST, BEAMTWIN_API_PORT, "
            "BEAMTWIN_API_MAX_POINTS, ... (see docs/api.md)."
        ),
    )
    srv.add_argument("--host", default=None, help="default: BEAMTWIN_API_HOST or 127.0.0.1")
    srv.add_argument("--port", type=int, default=None, help="default: BEAMTWIN_API_PORT or 8000")
    srv.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from api import api_server, create_app

    settings = api_settings()
    engine(database_url(args, settings)).dispose()  # refuses an old schema
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    print(f"serving the REST API on http://{host}:{port}/api/v1 (docs: /docs); Ctrl-C to stop")
    print(
        f"dashboard: http://{host}:{port}/ui/ (sign in with an API token: "
        "`beamtwin tokens create NAME`)"
    )
    api_server(create_app(settings), host=host, port=port).run()
    return 0
