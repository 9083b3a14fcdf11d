"""Chaos of the ingest, as figures: ``beamtwin ingest`` worker processes in one group under a
paced publisher while workers are killed, stopped, restarted and added and their database
connections cut at random (the driver is ``tests/ingest/_chaos.py``, the same as the slow
test's). Prints samples published / stored / duplicated, the worker deaths survived, the
longest time without progress and whether the group still works afterwards.

Run from the repository root: ``python bench/chaos.py [--quick] [--seconds S] [--seed N]``. It
uses ``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one,
and its own tansu broker; it creates and drops a throwaway database.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from beamtwin_cli.embedded import start_broker, throwaway_database  # noqa: E402
from provenance_store import upgrade_schema  # noqa: E402
from tests.ingest._chaos import run_chaos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s of chaos instead of 60 s")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logs", type=Path, default=None, help="keep the workers' logs here")
    args = parser.parse_args()
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    broker = start_broker()
    try:
        with throwaway_database("beamtwin_chaos") as url:
            upgrade_schema(url)
            report = run_chaos(
                url,
                broker.bootstrap,
                names=lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}",
                duration_s=seconds,
                seed=args.seed,
                log_dir=args.logs,
            )
    finally:
        broker.stop()
    print(f"# {seconds:g} s of chaos, seed {args.seed}: {' '.join(report.actions)}")
    for line in report.lines():
        print(line)


if __name__ == "__main__":
    main()
