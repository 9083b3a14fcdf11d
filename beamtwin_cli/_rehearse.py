"""``beamtwin rehearse SPEC [--wait]``: queue a rehearsal of an autonomous deep-kernel
active-learning run on a virtual scene (docs/rehearsal.md) and, with ``--wait``, follow it and
print each strategy's summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from beamtwin_cli._common import CommandError, actor, add_database_url, database_url, engine
from beamtwin_cli._experiments import describe_job, experiment_settings, wait_for

if TYPE_CHECKING:
    from beamtwin_cli._common import Subparsers
    from simulations import RehearsalSpecV1


def add_parsers(sub: Subparsers) -> None:
    rehearse = sub.add_parser(
        "rehearse",
        help="rehearse an autonomous deep-kernel active-learning run on a virtual scene",
        description=(
            "Queue a rehearsal (beamtwin.rehearsal.v1 spec, YAML or JSON); the experiment "
            "worker (`beamtwin experiments`) runs it. See docs/rehearsal.md."
        ),
    )
    rehearse.add_argument("spec", type=Path, help="the rehearsal spec file")
    rehearse.add_argument("--wait", action="store_true", help="follow it until it ends")
    rehearse.add_argument("--force", action="store_true", help="run again even if done before")
    add_database_url(rehearse)
    rehearse.set_defaults(func=rehearse_command)


def read_rehearsal_spec(path: Path) -> RehearsalSpecV1:
    """The spec in a YAML or JSON file, validated (a bad one: exit 2 with pydantic's reasons)."""
    import pydantic

    from simulations import RehearsalSpecV1

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
        return RehearsalSpecV1.model_validate(document)
    except (ValueError, pydantic.ValidationError) as exc:
        if isinstance(exc, pydantic.ValidationError):
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
            )
        else:
            reasons = str(exc)
        raise CommandError(f"invalid rehearsal spec {path}: {reasons}") from None


def rehearse_command(args: argparse.Namespace) -> int:
    import provenance_store as store
    from workers import RehearsalStateMissing, submit_rehearsal

    spec = read_rehearsal_spec(args.spec)
    settings = experiment_settings()
    eng = engine(database_url(args, settings))
    try:
        with eng.begin() as conn:
            try:
                job, created = submit_rehearsal(
                    conn=conn, spec=spec, owner=actor(), force=args.force
                )
            except RehearsalStateMissing as exc:
                raise CommandError(str(exc)) from exc
        print(("submitted " if created else "already asked: ") + describe_job(job))
        if not args.wait:
            return 0
        job = wait_for(eng, job.id)
        print(describe_job(job))
        if job.status != "succeeded":
            return 1
        with eng.begin() as conn:
            results = store.job_results(conn=conn, job_id=job.id)
        print(f"results: {', '.join(r.name for r in results)}")
        print(f"report: GET /api/v1/rehearsals/{job.id}/report")
        return 0
    finally:
        eng.dispose()
