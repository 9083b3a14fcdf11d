"""``beamtwin db`` (schema migrations) and ``beamtwin instruments`` (the instrument registry)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from beamtwin_cli._common import (
    CommandError,
    add_database_url,
    create_database,
    database_exists,
    database_url,
    engine,
    ingest_settings,
    safe,
)

if TYPE_CHECKING:
    from beamtwin_cli._common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    db = sub.add_parser("db", help="database schema management")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser(
        "upgrade",
        help="apply migrations up to the newest revision",
        description=(
            "Apply the migrations up to the newest revision. The database must exist; with "
            "--create a missing one is created first (the server must accept CREATE DATABASE "
            "from the URL's user)."
        ),
    )
    add_database_url(up)
    up.add_argument(
        "--create", action="store_true", help="create the database first when it does not exist"
    )
    up.set_defaults(func=db_upgrade)
    chk = db_sub.add_parser("check", help="exit 1 unless the schema is at the newest revision")
    add_database_url(chk)
    chk.set_defaults(func=db_check)

    inst = sub.add_parser("instruments", help="register and list instruments")
    inst_sub = inst.add_subparsers(dest="inst_command", required=True, metavar="ACTION")
    reg = inst_sub.add_parser("register", help="register (or update) an instrument")
    reg.add_argument("instrument_id", help="persistent id, e.g. nion-ustem-01")
    reg.add_argument("--vendor", default=None)
    reg.add_argument("--model", default=None)
    reg.add_argument("--serial-number", default=None)
    reg.add_argument("--control-software-version", default=None)
    reg.set_defaults(func=instruments_register)
    inst_sub.add_parser("list", help="list registered instruments").set_defaults(
        func=instruments_list
    )


# ---------------------------------------------------------------------- db
def db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    import provenance_store as store

    url = database_url(args, ingest_settings())
    if database_exists(url) is False:
        name = make_url(url).database
        if not args.create:
            raise CommandError(
                f"database {name!r} does not exist on {safe(url)}: `beamtwin db upgrade "
                f"--create` creates it and applies the migrations (or create it yourself, "
                f"e.g. `createdb {name}`, and run `beamtwin db upgrade` again)"
            )
        create_database(url)
        print(f"created database {name!r}")
    store.upgrade_schema(url)
    eng = engine(url)
    print(f"database {safe(url)} is at revision {store.current_revision(eng)}")
    eng.dispose()
    return 0


def db_check(args: argparse.Namespace) -> int:
    import provenance_store as store

    url = database_url(args, ingest_settings())
    eng = store.create_store_engine(url)
    try:
        store.check_schema(eng)
    except store.SchemaOutdatedError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        eng.dispose()
    print(f"database {safe(url)} is at the newest revision ({store.head_revision()})")
    return 0


# ---------------------------------------------------------------------- instruments
def instruments_register(args: argparse.Namespace) -> int:
    import provenance_store as store

    eng = engine(database_url(args, ingest_settings()))
    with eng.begin() as conn:
        rec = store.register_instrument(
            conn=conn,
            instrument=store.InstrumentIn(
                id=args.instrument_id,
                vendor=args.vendor,
                model=args.model,
                serial_number=args.serial_number,
                control_software_version=args.control_software_version,
            ),
        )
    eng.dispose()
    print(f"registered {rec.id}")
    return 0


def instruments_list(args: argparse.Namespace) -> int:
    import provenance_store as store

    eng = engine(database_url(args, ingest_settings()))
    with eng.connect() as conn:
        for rec in store.list_instruments(conn=conn):
            print(
                f"{rec.id}\t{rec.vendor or '-'}\t{rec.model or '-'}\t"
                f"{rec.serial_number or '-'}\t{rec.control_software_version or '-'}"
            )
    eng.dispose()
    return 0
