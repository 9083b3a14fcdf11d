"""``beamtwin calibrate``, ``beamtwin forecast`` and ``beamtwin design``: the Bayesian
experiments of :mod:`simulations` (docs/bayesian.md), run here and now on files or on the
virtual microscope, or, with ``--instrument``, submitted as jobs on a stored instrument's
data (its datasets' image measurements and telemetry; a telemetry window), run by the
experiment worker (``beamtwin experiments``; ``--here`` runs them in this process) and
followed with ``--wait``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beamtwin_cli._common import CommandError, actor, add_database_url, aware, database_url, engine

if TYPE_CHECKING:
    import sqlalchemy as sa

    import provenance_store as store
    from beamtwin_cli._common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    _add_calibrate(sub)
    _add_forecast(sub)
    _add_design(sub)


def _calibration(path: str | None) -> Any:
    from twin import Calibration

    if path is None:
        return Calibration()
    try:
        return Calibration.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: not a calibration ({exc})") from None


def _write(payload: Any, output: str) -> None:
    text = json.dumps(payload, indent=2, allow_nan=False, default=float)
    if output == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(output).write_text(text + "\n")


def _add_calibrate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "calibrate",
        help="infer the instrument model's constants from reference measurements (NUTS)",
        description="Posterior of the calibration constants given reference measurements "
        "(a JSON list of {quantity, value, sd, telemetry, telemetry_sd, dataset_id}) or "
        "--virtual N measurements on the virtual microscope. Exit 1 when a diagnostic failed.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--measurements", metavar="FILE", help="reference measurements (JSON)")
    src.add_argument("--virtual", type=int, metavar="N", help="N virtual measurements")
    src.add_argument(
        "--instrument",
        metavar="ID",
        help="submit a calibration job from the instrument's stored reference measurements",
    )
    p.add_argument("--calibration", metavar="FILE", help="calibration in force (JSON)")
    p.add_argument("--method", choices=["auto", "nuts", "svi"], default="auto")
    p.add_argument("--samples", type=int, default=500, help="draws per chain")
    p.add_argument("--warmup", type=int, default=400, help="warm-up steps per chain (jobs)")
    p.add_argument("--chains", type=int, default=2, help="chains (jobs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--step-size",
        type=_step_size,
        default=None,
        metavar="X",
        help="a fixed NUTS leapfrog step size, > 0 (default: adapted during warm-up)",
    )
    p.add_argument("--version", default=None, help="version of the proposed calibration")
    p.add_argument("--output", default="-", metavar="FILE", help="where to write ('-': stdout)")
    job = p.add_argument_group("jobs (--instrument)")
    job.add_argument("--datasets", nargs="+", metavar="ID", help="these datasets only")
    job.add_argument("--start", help="datasets acquired from (ISO 8601; default: 30 days ago)")
    job.add_argument("--end", help="datasets acquired until (ISO 8601; default: now)")
    job.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="leave out measurements without telemetry at their time (else refused)",
    )
    _add_job_options(job)
    p.set_defaults(func=calibrate)


def _step_size(text: str) -> float:
    """``--step-size``: a finite number > 0 (else argparse's usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}")
    return value


def _add_job_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--wait", action="store_true", help="follow the job until it ends")
    group.add_argument(
        "--here", action="store_true", help="run the queued jobs in this process and wait"
    )
    group.add_argument("--force", action="store_true", help="run again even if done before")
    add_database_url(group)  # type: ignore[arg-type]


def calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    import simulations
    from workers import clean_json

    if args.instrument is not None:
        return _calibration_job(args)
    prior = _calibration(args.calibration)
    if args.virtual is not None:
        rng = np.random.default_rng(args.seed)
        truth = simulations.draw_true_calibration(prior, rng)
        measurements = simulations.virtual_reference_set(truth, args.virtual, rng)
    else:
        try:
            rows = json.loads(Path(args.measurements).read_text())
            measurements = [simulations.ReferenceMeasurement(**row) for row in rows]
        except (OSError, ValueError, TypeError) as exc:
            raise CommandError(f"{args.measurements}: not reference measurements ({exc})") from None
    post = simulations.calibrate(
        measurements, prior, method=args.method, samples=args.samples, seed=args.seed,
        step_size=args.step_size,
    )  # fmt: skip
    # a diverging sampler (a fixed step size far too large) leaves R-hat infinite: null in JSON
    payload = clean_json(post.to_dict())
    if post.converged and args.version:
        payload["proposed"] = post.proposed_calibration(args.version).to_dict()
    _write(payload, args.output)
    return 0 if post.converged else 1


def _add_forecast(sub: Subparsers) -> None:
    p = sub.add_parser(
        "forecast",
        help="forecast a drifting quantity and the chance it stays within a tolerance",
        description="Fit the Bayesian structural time-series model (level, damped drift, "
        "cycle; docs/bayesian.md) to a series (a Protochips holder log's channel, or a virtual "
        "microscope channel) and print predictive quantiles.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--holder-log", metavar="CSV", help="a Protochips holder log")
    src.add_argument("--virtual", metavar="HOURS", type=float, help="hours of virtual telemetry")
    src.add_argument(
        "--instrument", metavar="ID", help="submit a forecast job on the instrument's stored data"
    )
    p.add_argument(
        "--channel",
        "--quantity",
        dest="channel",
        default="holder.temperature",
        help="channel to forecast (with --instrument: a channel or a twin quantity, e.g. defocus)",
    )
    p.add_argument("--horizon", type=float, nargs="+", default=[1, 5, 20, 60], help="[min]")
    p.add_argument("--tolerance", type=float, default=None, help="[channel unit]")
    p.add_argument("--duration", type=float, default=20.0, help="interval [min]")
    p.add_argument("--output", default="-", metavar="FILE")
    job = p.add_argument_group("jobs (--instrument)")
    job.add_argument(
        "--window", type=float, default=120.0, help="data window before the last point [min]"
    )
    _add_job_options(job)
    p.set_defaults(func=forecast)


def forecast(args: argparse.Namespace) -> int:
    import simulations

    if args.instrument is not None:
        return _forecast_job(args)
    if args.holder_log:
        log = simulations.read_holder_log(Path(args.holder_log))
        row, unit = log.index(args.channel), None
        times, values = log.offsets_ns / 1e9, log.values[row]
        unit = log.units[row]
    else:
        vm = simulations.VirtualMicroscope(rate_hz=0.5, seed=0, start_ns=0)
        block = vm.generate(int(args.virtual * 3600 * 0.5))
        names = [c.name for c in block.channels]
        if args.channel not in names:
            raise CommandError(f"the virtual microscope has no channel {args.channel!r}")
        times = (block.times_ns - block.times_ns[0]) / 1e9
        values, unit = (
            block.values[names.index(args.channel)],
            block.units[names.index(args.channel)],
        )
    model = simulations.fit_forecast(times, values, quantity=args.channel, unit=unit)
    result = model.predict([h * 60 for h in args.horizon])
    payload: dict[str, Any] = {
        "quantity": args.channel,
        "unit": unit,
        "horizons_min": list(args.horizon),
        "quantiles": {str(q): v.tolist() for q, v in result.quantiles.items()},
    }
    if args.tolerance is not None:
        payload["tolerance"] = args.tolerance
        payload["duration_min"] = args.duration
        payload["probability_within"] = model.probability_within(args.tolerance, args.duration * 60)
        payload["stable_after_s"] = model.stable_after(args.tolerance, args.duration * 60)
    _write(payload, args.output)
    return 0


def _add_design(sub: Subparsers) -> None:
    p = sub.add_parser(
        "design",
        help="rank the reference measurements that pin down the calibration fastest (EIG)",
        description="Greedy expected-information-gain plan of reference measurements until "
        "every constant's posterior sd reaches a fraction of its prior sd.",
    )
    p.add_argument("--calibration", metavar="FILE", help="calibration in force (JSON)")
    p.add_argument("--target-fraction", type=float, default=0.05, help="target sd / prior sd")
    p.add_argument("--max", type=int, default=200, help="longest plan")
    p.add_argument("--output", default="-", metavar="FILE")
    p.set_defaults(func=design)


def design(args: argparse.Namespace) -> int:
    import dataclasses

    import simulations

    prior = _calibration(args.calibration)
    target = {c: s * args.target_fraction for c, s in simulations.default_prior_sd(prior).items()}
    plan = simulations.design_calibration(prior, target_sd=target, max_measurements=args.max)
    _write(dataclasses.asdict(plan), args.output)
    return 0 if plan.reached_target else 1


# ---------------------------------------------------------------------------- jobs
def _follow(args: argparse.Namespace, eng: sa.Engine, job: store.JobRecord, created: bool) -> Any:
    """Report the submission; with ``--here`` run the queued jobs, with ``--wait`` follow the
    job (a progress bar on standard error); the finished job and its result document."""
    import provenance_store as store
    from api import job_document
    from beamtwin_cli._experiments import describe_job, experiment_settings, run_here, wait_for

    print(("submitted " if created else "already asked: ") + describe_job(job), file=sys.stderr)
    if args.here and not job.finished:
        run_here(experiment_settings(), eng)
    if not (args.wait or args.here):
        return job, None
    job = wait_for(eng, job.id)
    print(describe_job(job), file=sys.stderr)
    with eng.begin() as conn:
        results = store.job_results(conn=conn, job_id=job.id)
    return job, job_document(results) if job.status == "succeeded" else None


def _calibration_job(args: argparse.Namespace) -> int:
    import pydantic

    from api import CalibrationJobRequest, submit_calibration

    fields: dict[str, Any] = {
        "method": args.method, "samples": args.samples, "warmup": args.warmup,
        "chains": args.chains, "seed": args.seed, "version": args.version,
        "datasets": args.datasets, "start": aware("start", args.start),
        "end": aware("end", args.end), "skip_incomplete": args.skip_incomplete,
        "force": args.force,
    }  # fmt: skip
    try:
        request = CalibrationJobRequest.model_validate(fields)
    except pydantic.ValidationError as exc:
        raise CommandError(f"invalid calibration request: {exc}") from None
    eng = engine(database_url(args, _settings()))
    try:
        with eng.begin() as conn:
            job, created = submit_calibration(
                conn=conn, instrument_id=args.instrument, owner=actor(), request=request,
                step_size=args.step_size,
            )  # fmt: skip
        job, document = _follow(args, eng, job, created)
    finally:
        eng.dispose()
    if document is None:
        _write({"job_id": job.id, "status": job.status, "error": job.error}, args.output)
        return 1 if job.status in ("failed", "cancelled") else 0
    _write({"job_id": job.id, **document}, args.output)
    for problem in document.get("problems") or []:
        print(f"diagnostic failed: {problem}", file=sys.stderr)
    return 0 if document.get("converged") else 1


def _forecast_job(args: argparse.Namespace) -> int:
    from api import ForecastQuery, forecast_answer, forecast_job

    if not 10 <= args.window <= 1440:
        raise CommandError("--window must be 10 to 1440 minutes")
    query = ForecastQuery(
        quantity=args.channel,
        window_s=args.window * 60,
        horizons_s=tuple(h * 60 for h in args.horizon),
        tolerance=args.tolerance,
        duration_s=args.duration * 60,
    )
    eng = engine(database_url(args, _settings()))
    try:
        with eng.begin() as conn:
            found = forecast_job(
                conn=conn, instrument_id=args.instrument, owner=actor(), query=query, submit=True
            )
        assert found.job is not None
        job, _ = _follow(args, eng, found.job, found.created)
        document = None
        if job.status == "succeeded":  # any question of data fitted before: answered at once
            with eng.begin() as conn:
                document = forecast_answer(
                    conn=conn, job=job, horizons_s=query.horizons_s, tolerance=query.tolerance,
                    duration_s=query.duration_s,
                )  # fmt: skip
    finally:
        eng.dispose()
    if document is None:
        _write({"job_id": job.id, "status": job.status, "error": job.error}, args.output)
        return 1 if job.status in ("failed", "cancelled") else 0
    _write({"job_id": job.id, **document}, args.output)
    return 0


def _settings() -> Any:
    from beamtwin_cli._experiments import experiment_settings

    return experiment_settings()
