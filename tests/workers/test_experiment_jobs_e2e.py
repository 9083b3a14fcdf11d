"""The experiment worker as separate processes: ``kill -9`` mid-job and a restart leave one
result; two workers never run the same job; an external ``dask scheduler`` with two
``dask worker`` processes gives the same arrays as the LocalCluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import zarr

import provenance_store as store
from simulations import resolve_state, run_experiment
from tests.workers._experiment_support import (
    hrtem_spec,
    job,
    results,
    slow_spec,
    submit,
    wait_until,
)
from workers import ExperimentSettings, ExperimentWorker

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def drain(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        while (left := store.claim_job(conn=conn, worker="drain", lease_seconds=60)) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="drain", error="drained")


def environment(artifacts: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BEAMTWIN_ARTIFACT_ROOT": str(artifacts),
        "BEAMTWIN_EXPERIMENT_LEASE_S": "3",
        "BEAMTWIN_EXPERIMENT_HEARTBEAT_S": "0.3",
        **extra,
    }


class Processes:
    """Child processes that are always stopped (and reaped) at the end of a test."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture()
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


def worker_command(database_url: str) -> list[str]:
    return [sys.executable, "-m", "beamtwin_cli", "experiments", "--database-url", database_url]


def test_kill_9_mid_job_and_a_restart_leave_exactly_one_result(
    engine: sa.Engine, database_url: str, processes: Processes, tmp_path: Path
) -> None:
    drain(engine)
    submitted = submit(engine, slow_spec())
    env = environment(tmp_path / "artifacts")
    first = processes.start(worker_command(database_url), env)

    def running_with_progress() -> bool:
        record = job(engine, submitted.id)
        return record.status == "running" and record.progress > 0.05

    wait_until(running_with_progress, timeout=120, what="the first worker's progress")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert job(engine, submitted.id).status == "running"  # until its lease expires

    processes.start(worker_command(database_url), env)
    wait_until(lambda: job(engine, submitted.id).finished, timeout=180, what="the takeover")
    done = job(engine, submitted.id)
    assert done.status == "succeeded" and done.attempts == 2
    names = [r.name for r in results(engine, submitted.id)]
    assert sorted(names) == ["haadf", "haadf_dose0", "result.nxs"]
    with engine.begin() as conn:
        completions = [
            e
            for e in store.all_audit_entries(conn=conn)
            if e.subject == f"job:{submitted.id}" and e.action == "job.complete"
        ]
    assert len(completions) == 1
    attempts = sorted(p.name for p in (tmp_path / "artifacts" / "jobs" / submitted.id).iterdir())
    assert attempts == ["attempt-2"]  # the killed attempt's partial files are gone


def test_two_workers_never_run_the_same_job(
    engine: sa.Engine, database_url: str, processes: Processes, tmp_path: Path
) -> None:
    drain(engine)
    jobs = [submit(engine, hrtem_spec()) for _ in range(6)]
    env = environment(tmp_path / "artifacts")
    for _ in range(2):
        processes.start(worker_command(database_url), env)
    wait_until(lambda: all(job(engine, j.id).finished for j in jobs), timeout=240, what="six jobs")
    with engine.begin() as conn:
        entries = store.all_audit_entries(conn=conn)
    workers = set()
    for submitted in jobs:
        done = job(engine, submitted.id)
        assert done.status == "succeeded" and done.attempts == 1, done
        completions = [
            e for e in entries if e.subject == f"job:{submitted.id}" and e.action == "job.complete"
        ]
        assert len(completions) == 1
        workers.add(completions[0].actor)
    assert all(w.startswith("experiments-") for w in workers)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_external_dask_cluster_gives_the_same_arrays(
    engine: sa.Engine, processes: Processes, tmp_path: Path
) -> None:
    drain(engine)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = environment(tmp_path / "artifacts")
    processes.start(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"],
        env,
    )  # fmt: skip
    for _ in range(2):
        processes.start(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
             "--host", "127.0.0.1"],
            env,
        )  # fmt: skip
    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"),
        dask_scheduler=address,
        experiment_heartbeat_s=0.1,
        experiment_max_concurrent=2,
    )
    worker = ExperimentWorker(settings, engine=engine, name="external")
    try:
        wait_until(
            lambda: len(worker.client.scheduler_info()["workers"]) == 2,
            timeout=60,
            what="two dask workers",
        )
        specs = [hrtem_spec(), hrtem_spec()]
        jobs = [submit(engine, spec) for spec in specs]
        worker.run_until_idle(timeout=180)
    finally:
        worker.close()
    for spec, submitted in zip(specs, jobs, strict=True):
        assert job(engine, submitted.id).status == "succeeded"
        stored = {r.name: r for r in results(engine, submitted.id)}
        local = run_experiment(spec, resolve_state(spec, None)).arrays
        for name, array in local.items():
            remote = zarr.open_array(stored[name].uri, mode="r")[...]
            if "_dose" in name:
                # Counts drawn with the same seed from means equal to ~1e-15: the same draws,
                # bar a count whose mean sits on a knife's edge.
                assert np.mean(remote == array) > 0.999, name
            else:
                # FFTs on other processes (another thread count) round differently: ~1e-15.
                np.testing.assert_allclose(remote, array, rtol=1e-12, atol=1e-14, err_msg=name)
