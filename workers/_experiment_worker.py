"""The experiment worker (``beamtwin experiments``): claims queued jobs from the store, runs them
on dask.distributed and stores their results.

It runs every kind of job in the registry :data:`workers.JOB_KINDS` (virtual experiments and the
Bayesian and rehearsal jobs registered beside them; ``kinds`` narrows it). A
:class:`ExperimentWorker` keeps up to ``experiment_max_concurrent`` jobs in flight, each a dask
task (the kind's task, e.g. :func:`workers.execute_experiment`). Every
``experiment_heartbeat_s`` it reads each task's progress, renews the job's lease with it
(``heartbeat_job``) and learns whether the job was cancelled; a cancelled task is told to stop
and the job ends as cancelled. A finished task's arrays are written under the artifact root and
the job completed with their hashes in one transaction; a worker that lost its lease (it stalled
and another took the job over) writes nothing and removes its attempt's artifacts. The cluster
is a ``LocalCluster`` unless ``BEAMTWIN_DASK_SCHEDULER`` names one (``tcp://host:8786``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from workers._artifacts import attempt_url, remove_attempts, write_result
from workers._errors import JobsStillRunning, UnknownJobKind
from workers._job_kinds import JOB_KINDS, job_payload
from workers._settings import ExperimentSettings

__all__ = ["ExperimentStats", "ExperimentWorker", "connect_cluster"]

log = logging.getLogger(__name__)


def connect_cluster(settings: ExperimentSettings) -> tuple[Any, Any]:
    """A dask.distributed client and the LocalCluster it owns (``None`` for an existing
    cluster given by ``dask_scheduler``)."""
    from distributed import Client, LocalCluster

    if settings.dask_scheduler:
        return Client(settings.dask_scheduler, timeout=30), None
    extra: dict[str, Any] = {}
    if settings.dask_processes:
        # The tasks' module is imported when a worker starts (over a second with abTEM and
        # the store), not by its first job.
        extra["preload"] = ["workers"]
        # Each worker process computes one task at a time with ``experiment_threads``
        # threads: its BLAS, OpenMP and numba pools get as many, not one per core each
        # (workers x cores threads on the machine's cores).
        threads = str(settings.experiment_threads)
        extra["env"] = {
            name: threads
            for name in (
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS",
            )
        }
    cluster = LocalCluster(
        n_workers=settings.dask_workers,
        threads_per_worker=1,
        processes=settings.dask_processes,
        dashboard_address=":0",  # no dashboard on a fixed port (it may be taken)
        **extra,
    )
    return Client(cluster), cluster


@dataclass
class ExperimentStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    running: dict[str, float] = field(default_factory=dict)


@dataclass
class _InFlight:
    job: store.JobRecord
    future: Any
    channel: str
    url: str
    progress: float = 0.0
    stage: str = "queued on the cluster"
    cancelling: bool = False


class ExperimentWorker:
    """Runs experiment jobs from the store on a dask.distributed cluster.

    ``client`` is a ``distributed.Client`` (the worker makes one from ``settings`` when
    ``None``, and closes what it made)."""

    def __init__(
        self,
        settings: ExperimentSettings,
        *,
        engine: sa.Engine,
        client: Any = None,
        name: str | None = None,
        stats: ExperimentStats | None = None,
        kinds: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.name = name or f"experiments-{socket.gethostname()}-{os.getpid()}"
        self.stats = stats or ExperimentStats()
        self._client = client
        self._cluster: Any = None
        self._own_client = client is None
        self._in_flight: dict[str, _InFlight] = {}
        self._stop = threading.Event()
        unknown = sorted(set(kinds or ()) - set(JOB_KINDS))
        if unknown:
            raise UnknownJobKind(f"no task for job kinds {unknown}; known: {sorted(JOB_KINDS)}")
        self.kinds = sorted(kinds or JOB_KINDS)

    # ------------------------------------------------------------------ life cycle
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client, self._cluster = connect_cluster(self.settings)
        return self._client

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        self._client = self._cluster = None

    def stop(self) -> None:
        self._stop.set()

    def run(self, stop: threading.Event | None = None, duration: float | None = None) -> None:
        """Claim and run jobs until ``stop`` is set (or ``duration`` [s] passed); jobs still
        in flight then are left to their leases (another worker takes them over)."""
        stop = stop or self._stop
        end = None if duration is None else time.monotonic() + duration
        try:
            while not stop.is_set() and not self._stop.is_set():
                if end is not None and time.monotonic() > end:
                    break
                self.step()
                self._wait(self.settings.experiment_heartbeat_s, stop)
        finally:
            for flight in list(self._in_flight.values()):
                flight.future.cancel()
            self.close()

    def run_until_idle(self, timeout: float = 120.0) -> None:
        """Run until no job is claimable and none is in flight (tests, ``beamtwin demo``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.step()
            # a step that finished the last job in flight claims nothing after it: idle only
            # when the next step finds nothing to claim either
            if not self._in_flight:
                self.step()
                if not self._in_flight:
                    return
            self._wait(min(self.settings.experiment_heartbeat_s, max(0.0, end - time.monotonic())))
        raise JobsStillRunning(f"jobs still running after {timeout} s")

    def _wait(self, timeout: float, stop: threading.Event | None = None) -> None:
        """Wait until a task in flight ends (it is then finished at once, not a heartbeat
        later) or ``timeout`` [s] passed; with none in flight, until ``stop`` is set or
        ``timeout`` passed."""
        if not self._in_flight:
            (stop or self._stop).wait(timeout)
            return
        from distributed import wait

        futures = [flight.future for flight in self._in_flight.values()]
        if any(future.done() for future in futures):
            return
        # A task cancelled meanwhile ends the wait too (CancelledError).
        with contextlib.suppress(TimeoutError, CancelledError):
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")

    def step(self) -> None:
        """One round: claim while there is room, then look after every job in flight."""
        while len(self._in_flight) < self.settings.experiment_max_concurrent:
            if not self._claim_one():
                break
        for flight in list(self._in_flight.values()):
            self._look_after(flight)

    # ------------------------------------------------------------------ claiming
    def _claim_one(self) -> bool:
        with self.engine.begin() as conn:
            job = store.claim_job(
                conn=conn,
                worker=self.name,
                lease_seconds=self.settings.experiment_lease_s,
                kinds=self.kinds,
            )
        if job is None:
            return False
        self.stats.claimed += 1
        root = self.settings.artifact_root
        url = attempt_url(root, job.id, job.attempts)
        remove_attempts(root, job.id)  # a dead worker's partial artifacts
        channel = f"beamtwin-{job.id}-{job.attempts}"
        from distributed import Variable

        Variable(f"{channel}-cancel", client=self.client).set(False)
        # Set before the task runs, so that reading it never waits (nor times out).
        Variable(f"{channel}-progress", client=self.client).set([0.0, "queued on the cluster"])
        future = self.client.submit(
            JOB_KINDS[job.kind].task,
            job_payload(job),
            channel,
            self.settings.experiment_threads,
            key=channel,
            pure=False,
        )
        self._in_flight[job.id] = _InFlight(job, future, channel, url)
        log.info("running job %s (attempt %d)", job.id, job.attempts)
        return True

    # ------------------------------------------------------------------ looking after
    def _read_progress(self, flight: _InFlight) -> None:
        from distributed import Variable

        try:
            value = Variable(f"{flight.channel}-progress", client=self.client).get(timeout=0.05)
        except TimeoutError:
            return
        flight.progress, flight.stage = float(value[0]), str(value[1])

    def _look_after(self, flight: _InFlight) -> None:
        job_id = flight.job.id
        if flight.future.done():
            self._finish(flight)
            return
        self._read_progress(flight)
        self.stats.running[job_id] = flight.progress
        try:
            with self.engine.begin() as conn:
                record = store.heartbeat_job(
                    conn=conn,
                    job_id=job_id,
                    worker=self.name,
                    lease_seconds=self.settings.experiment_lease_s,
                    progress=min(flight.progress, 0.99),
                    stage=flight.stage,
                )
        except store.LeaseLost:
            self._abandon(flight, "lease lost")
            return
        if record.cancel_requested and not flight.cancelling:
            from distributed import Variable

            flight.cancelling = True
            Variable(f"{flight.channel}-cancel", client=self.client).set(True)
            flight.future.cancel()

    def _forget(self, flight: _InFlight) -> None:
        from distributed import Variable

        self._in_flight.pop(flight.job.id, None)
        self.stats.running.pop(flight.job.id, None)
        for suffix in ("progress", "cancel"):
            try:
                Variable(f"{flight.channel}-{suffix}", client=self.client).delete()
            except Exception:  # the scheduler may be gone at shutdown
                log.debug("could not delete %s-%s", flight.channel, suffix)

    def _abandon(self, flight: _InFlight, why: str) -> None:
        log.warning("job %s: %s; its artifacts are removed", flight.job.id, why)
        flight.future.cancel()
        _remove_own(flight)  # the job's new holder writes its own attempt
        self.stats.lost += 1
        self._forget(flight)

    def _finish(self, flight: _InFlight) -> None:
        job_id = flight.job.id
        root = self.settings.artifact_root
        try:
            if flight.cancelling or flight.future.cancelled():
                with self.engine.begin() as conn:
                    store.finish_cancelled(conn=conn, job_id=job_id, worker=self.name)
                remove_attempts(root, job_id)
                self.stats.cancelled += 1
                return
            error = flight.future.exception()
            if error is not None:
                with self.engine.begin() as conn:
                    store.fail_job(
                        conn=conn,
                        job_id=job_id,
                        worker=self.name,
                        error=f"{type(error).__name__}: {error}",
                    )
                remove_attempts(root, job_id)
                self.stats.failed += 1
                return
            result = flight.future.result()
            rows, parameters = write_result(flight.url, result)
            with self.engine.begin() as conn:
                store.complete_job(
                    conn=conn,
                    job_id=job_id,
                    worker=self.name,
                    results=rows,
                    versions={**flight.job.versions, **parameters.get("versions", {})},
                    specimen_sha256=parameters.get("structure_sha256"),
                )
                on_complete = JOB_KINDS[flight.job.kind].on_complete
                if on_complete is not None:
                    on_complete(conn, flight.job, result)
            remove_attempts(root, job_id, keep=flight.url)
            self.stats.succeeded += 1
        except store.LeaseLost:
            _remove_own(flight)
            self.stats.lost += 1
        finally:
            self._forget(flight)


def _remove_own(flight: _InFlight) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(flight.url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
