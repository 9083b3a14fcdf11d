"""Virtual experiments: what an ensemble costs, how fast and how close the preview is, what
the job service adds to abTEM, and what a second dask worker gives.

Times of in-process work (ensembles, preview) are this process' CPU time: the machines these
run on are shared, and other load moves wall times by tens of percent.

* ``ensemble16_cost_ratio_stem`` / ``_hrtem``: CPU time of an ensemble of 16 states over the
  defocus uncertainty against one run of the same spec (STEM: one PRISM S-matrix, every
  member from its Gram matrices, against one ``Probe.scan``; HRTEM: one exit wave imaged with
  16 CTFs). Target <= 2.
* ``preview_speedup`` / ``preview_correlation``: the twin's incoherent STEM preview of a thin
  SrTiO3 (one unit cell, 3.9 Å) against the multislice HAADF of the same spec: the time of
  the multislice over the preview's (the projected potential made once, as for what-ifs; the
  time with it is ``preview_speedup_with_potential``), and Pearson's r. Targets >= 100, >= 0.9.
* ``service_vs_plain_abtem``: probe positions per second of a STEM job through the whole
  service (store, experiment worker, LocalCluster, zarr) over those of a plain abTEM script of
  the same simulation (``Probe.scan`` in float64, dask's threaded scheduler with as many
  threads as the job): medians of interleaved repeats (``_best``: the best of each;
  ``_cpu``: CPU times, the service's including its in-process cluster). Target >= 0.95.
* ``dask_2workers_speedup``: a batch of 4 STEM jobs on a LocalCluster of 2 process workers
  against 1 (medians of interleaved repeats; ``dask_*_cpu_per_job_s``: the worker
  processes' CPU time per job).
* ``loadavg_start`` / ``loadavg_end``: the machine's 1-minute load average.

Run from the repository root: ``python bench/experiments.py [--quick] [--only PART]``. It uses
``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one; it
creates and drops a throwaway database. Ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simulations  # noqa: E402
from simulations import ExperimentSpecV1  # noqa: E402

STATE = {"energy": 200e3, "convergence_semiangle": 20.0, "aberrations": {"C10": -20.0}}


def stem_spec(
    scan_step: float, *, layers: int = 2, repeats: int = 1, **extra: Any
) -> ExperimentSpecV1:
    return ExperimentSpecV1.model_validate(
        {
            "state": STATE,
            "specimen": {
                "name": "srtio3-001",
                "parameters": {"repeats": repeats, "layers": layers},
            },
            "mode": {
                "mode": "stem",
                "detectors": [{"name": "haadf", "inner": 60.0, "outer": 150.0}],
                "scan": {"sampling": scan_step},
            },
            "sampling": 0.05,
            "seed": secrets.randbelow(2**40),
            **extra,
        }
    )


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Wall time [s] of a call, and its value."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def cpu_timed(function: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """CPU time [s] of this process during a call (single-threaded work: robust to other
    load on the machine, which changes wall times by tens of percent here)."""
    start = time.process_time()
    value = function(*args, **kwargs)
    return time.process_time() - start, value


def run(spec: ExperimentSpecV1) -> simulations.ExperimentResult:
    return simulations.run_experiment(spec, simulations.resolve_state(spec, None))


def ensemble_ratios(quick: bool) -> dict[str, float]:
    step = 0.3 if quick else 0.15
    uncertainty = {"uncertainty": {"std": {"defocus": 20.0}}}
    run(stem_spec(1.0))  # imports, first FFT plans
    figures = {}
    # 6.2 nm of SrTiO3 (31 slices), and a thin 0.8 nm (4 slices): each member's reduction
    # costs about one FFT per probe position, a single run 2 per slice.
    for label, layers in (("", 16), ("_thin", 2)):
        one, _ = cpu_timed(run, stem_spec(step, layers=layers))
        sixteen, _ = cpu_timed(run, stem_spec(step, layers=layers, ensemble_size=16, **uncertainty))
        figures[f"ensemble1_stem{label}_s"] = one
        figures[f"ensemble16_stem{label}_s"] = sixteen
        figures[f"ensemble16_cost_ratio_stem{label}"] = sixteen / one
    # A 3 nm amorphous carbon film (15 slices), and a thin 1 nm one (5 slices).
    for label, thickness in (("", 30.0), ("_thin", 10.0)):
        hrtem = {
            "state": {**STATE, "aberrations": {"C10": -300.0, "C30": 1.2e7}},
            "specimen": {
                "name": "amorphous-carbon",
                "parameters": {"extent": 60.0 if quick else 120.0, "thickness": thickness},
            },
            "mode": {"mode": "hrtem"},
            "sampling": 0.1,
            "slice_thickness": 2.0,
        }
        run(ExperimentSpecV1.model_validate({**hrtem, "seed": 1}))  # the grid's FFT plans
        one, _ = cpu_timed(run, ExperimentSpecV1.model_validate(hrtem))
        sixteen, _ = cpu_timed(
            run, ExperimentSpecV1.model_validate({**hrtem, "ensemble_size": 16, **uncertainty})
        )
        figures[f"ensemble1_hrtem{label}_s"] = one
        figures[f"ensemble16_hrtem{label}_s"] = sixteen
        figures[f"ensemble16_cost_ratio_hrtem{label}"] = sixteen / one
    return figures


def preview_figures(quick: bool) -> dict[str, float]:
    # One unit cell thick, 2x2 cells; probe every 8th potential pixel (0.39 Å).
    pixel = 2 * 3.905 / 160
    spec = stem_spec(8 * pixel, layers=1, repeats=2)
    state = simulations.resolve_state(spec, None)
    multislice_s, result = cpu_timed(simulations.run_experiment, spec, state)
    haadf = result.arrays["haadf"]
    with_potential_s, _ = cpu_timed(simulations.preview_experiment, spec, state)
    potential = simulations.projected_potential(simulations.prepare_experiment(spec, state), 2.0)
    simulations.preview_experiment(spec, state, potential=potential)  # compiles
    repeats = 20
    start = time.process_time()
    for _ in range(repeats):
        made = simulations.preview_experiment(spec, state, potential=potential)
    preview_s = (time.process_time() - start) / repeats
    sampled = made.image[::8, ::8][: haadf.shape[0], : haadf.shape[1]]
    r = float(np.corrcoef(sampled.ravel(), haadf.ravel())[0, 1])
    return {
        "preview_s": preview_s,
        "preview_multislice_s": multislice_s,
        "preview_speedup": multislice_s / preview_s,
        "preview_speedup_with_potential": multislice_s / with_potential_s,
        "preview_correlation": r,
    }


def _warm_up() -> None:
    run(stem_spec(1.0, layers=1))


class _Service:
    """The service on a cluster of ``settings``: a store engine, a dask client (its workers
    warmed up: abTEM imported, numba kernels compiled; a worker's first seconds are not a
    job's cost) and an experiment worker."""

    def __init__(self, url: str, settings: Any) -> None:
        import provenance_store as store
        from workers import ExperimentWorker, connect_cluster

        self.client, self.cluster = connect_cluster(settings)
        self.engine = store.create_store_engine(url)
        self.client.run(_warm_up)
        self.worker = ExperimentWorker(settings, engine=self.engine, client=self.client)

    def run(self, specs: list[ExperimentSpecV1]) -> float:
        """Wall time from the first submission to the last job's end (:attr:`cpu_s`: this
        process' CPU time meanwhile, which is all of it with a cluster of threads)."""
        import provenance_store as store
        from workers import submit_experiment

        start, cpu = time.perf_counter(), time.process_time()
        with self.engine.begin() as conn:
            ids = [submit_experiment(conn=conn, spec=s, owner="bench").job.id for s in specs]
        self.worker.run_until_idle(timeout=600)
        elapsed = time.perf_counter() - start
        self.cpu_s = time.process_time() - cpu
        with self.engine.begin() as conn:
            statuses = {store.get_job(conn=conn, job_id=i).status for i in ids}  # type: ignore[union-attr]
        assert statuses == {"succeeded"}, statuses
        return elapsed

    def close(self) -> None:
        self.engine.dispose()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def service_figures(url: str, quick: bool, artifacts: str) -> dict[str, float]:
    import abtem
    import dask

    from workers import ExperimentSettings

    step = 0.15 if quick else 0.1
    rounds = 5 if quick else 9
    threads = os.cpu_count() or 1
    spec = stem_spec(step)
    prepared = simulations.prepare_experiment(spec, simulations.resolve_state(spec, None))
    positions = prepared.estimate.positions

    def plain() -> tuple[float, float]:
        # The same simulation as a plain script: the potential, probe, scan and detector,
        # in float64 as the service computes, with dask's threaded scheduler on as many
        # threads as the service's job uses.
        config = {"diagnostics.progress_bar": False, "precision": "float64"}
        with abtem.config.set(config), dask.config.set(scheduler="threads", num_workers=threads):
            potential = abtem.Potential(prepared.atoms, gpts=prepared.gpts, slice_thickness=2.0)
            probe = abtem.Probe(energy=200e3, semiangle_cutoff=20.0, aberrations={"C10": -20.0})
            scan = abtem.GridScan(start=(0, 0), end=tuple(prepared.atoms.cell.lengths()[:2]),
                                  sampling=step)  # fmt: skip
            detector = abtem.AnnularDetector(inner=60.0, outer=150.0)
            cpu = time.process_time()
            seconds, _ = timed(
                lambda: probe.scan(potential, scan=scan, detectors=detector).compute()
            )
        return seconds, time.process_time() - cpu

    # One job at a time on a thread worker, computing with ``threads`` threads; the default
    # heartbeat (a job's end is noticed at once, not a heartbeat later).
    settings = ExperimentSettings(artifact_root=artifacts, experiment_threads=threads)
    service = _Service(url, settings)
    plain_s: list[tuple[float, float]] = []
    service_s: list[tuple[float, float]] = []
    try:
        plain()  # FFT plans of these shapes
        service.run([stem_spec(step)])
        for _ in range(rounds):  # interleaved, so that load changes hit both alike
            plain_s.append(plain())
            service_s.append((service.run([stem_spec(step)]), service.cpu_s))  # a new job
    finally:
        service.close()
    (plain_wall, plain_cpu), (service_wall, service_cpu) = (
        np.median(np.array(times), axis=0) for times in (plain_s, service_s)
    )
    return {
        "plain_abtem_positions_per_s": positions / plain_wall,
        "service_positions_per_s": positions / service_wall,
        "service_vs_plain_abtem": plain_wall / service_wall,
        "service_vs_plain_abtem_best": min(w for w, _ in plain_s) / min(w for w, _ in service_s),
        "service_vs_plain_abtem_cpu": plain_cpu / service_cpu,
    }


def dask_figures(url: str, quick: bool, artifacts: str) -> dict[str, float]:
    from workers import ExperimentSettings

    step = 0.2 if quick else 0.1
    rounds = 2 if quick else 3
    services = {}
    try:
        for n in (1, 2):
            settings = ExperimentSettings(
                artifact_root=artifacts,
                dask_workers=n,
                dask_processes=True,
                experiment_max_concurrent=4,
            )
            services[n] = _Service(url, settings)
        times: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(rounds):  # interleaved
            for n, service in services.items():
                before = service.client.run(time.process_time)
                times[n].append(service.run([stem_spec(step, layers=4) for _ in range(4)]))
                after = service.client.run(time.process_time)
                cpu[n].append(sum(after[w] - before[w] for w in after) / 4)
    finally:
        for service in services.values():
            service.close()
    one, two = float(np.median(times[1])), float(np.median(times[2]))
    return {
        "dask_1worker_batch4_s": one,
        "dask_2workers_batch4_s": two,
        "dask_2workers_speedup": one / two,
        # CPU time of the dask worker processes per job: the same on 1 and 2 workers when
        # the workers do not compete for threads (oversubscription would raise it).
        "dask_1worker_cpu_per_job_s": float(np.median(cpu[1])),
        "dask_2workers_cpu_per_job_s": float(np.median(cpu[2])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument(
        "--only",
        choices=["ensembles", "preview", "service", "dask"],
        action="append",
        help="run only these parts (repeatable; default: all)",
    )
    args = parser.parse_args()
    parts = set(args.only or ["ensembles", "preview", "service", "dask"])
    from beamtwin_cli.embedded import throwaway_database
    from provenance_store import upgrade_schema

    figures: dict[str, float] = {"loadavg_start": os.getloadavg()[0]}
    if "ensembles" in parts:
        figures.update(ensemble_ratios(args.quick))
    if "preview" in parts:
        figures.update(preview_figures(args.quick))
    with (
        throwaway_database("beamtwin_bench_experiments") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        upgrade_schema(url)
        if "service" in parts:
            figures.update(service_figures(url, args.quick, tmp))
        if "dask" in parts:
            figures.update(dask_figures(url, args.quick, tmp))
    figures["loadavg_end"] = os.getloadavg()[0]
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
