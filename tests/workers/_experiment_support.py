"""Specs, jobs and waiting helpers of the experiment-worker tests."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

import provenance_store as store
from simulations import ExperimentSpecV1
from workers import submit_experiment

STATE = {"energy": 200e3, "convergence_semiangle": 20.0, "aberrations": {"C10": -30.0}}


def hrtem_spec(seed: int | None = None, **fields: Any) -> ExperimentSpecV1:
    """A tiny HRTEM ensemble (a fraction of a second); a fresh seed makes it a new one."""
    return ExperimentSpecV1.model_validate(
        {
            "state": STATE,
            "specimen": {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 2}},
            "mode": {"mode": "hrtem"},
            "sampling": 0.05,
            "ensemble_size": 3,
            "uncertainty": {"std": {"defocus": 20.0}},
            "doses": [500.0],
            "seed": secrets.randbelow(2**40) if seed is None else seed,
            **fields,
        }
    )


def slow_spec(seed: int | None = None) -> ExperimentSpecV1:
    """A STEM scan of a few seconds (400 probe positions, two phonon configurations)."""
    return ExperimentSpecV1.model_validate(
        {
            "state": STATE,
            "specimen": {"name": "srtio3-001", "parameters": {"repeats": 2, "layers": 4}},
            "mode": {
                "mode": "stem",
                "detectors": [{"name": "haadf", "inner": 60.0, "outer": 150.0}],
                "scan": {"sampling": 0.4},
            },
            "sampling": 0.05,
            "frozen_phonons": {"configurations": 2},
            "seed": secrets.randbelow(2**40) if seed is None else seed,
        }
    )


def submit(engine: sa.Engine, spec: ExperimentSpecV1, **kwargs: Any) -> store.JobRecord:
    with engine.begin() as conn:
        return submit_experiment(conn=conn, spec=spec, owner="tester", **kwargs).job


def job(engine: sa.Engine, job_id: str) -> store.JobRecord:
    with engine.begin() as conn:
        record = store.get_job(conn=conn, job_id=job_id)
    assert record is not None
    return record


def results(engine: sa.Engine, job_id: str) -> list[store.JobResultRecord]:
    with engine.begin() as conn:
        return store.job_results(conn=conn, job_id=job_id)


def wait_until(
    condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
