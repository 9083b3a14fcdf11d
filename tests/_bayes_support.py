"""A stored instrument for the Bayesian job tests: a twin calibration in force, registered
datasets whose acquisition events carry Thon-ring defocus measurements (made on the virtual
microscope with known true constants), the telemetry at each acquisition, and a drifting
``stage.x`` channel to forecast."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from tests._datasets import make_event
from tests.provenance_store._support import insert, make_batch

#: The reference acquisitions start here, one a minute.
REFERENCE_T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
#: The forecast channel's hour of telemetry ends here (1 Hz).
FORECAST_END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
_UNITS = {
    "gun.high_tension": ("gun", "voltage", "V"),
    "objective.lens_current": ("objective", "current", "A"),
    "holder.temperature": ("holder", "temperature", "K"),
    "stage.z": ("stage", "length", "m"),
    "stage.x": ("stage", "length", "m"),
}


@dataclass(frozen=True)
class BayesInstrument:
    instrument_id: str
    calibration: twin.Calibration
    truth: twin.Calibration
    datasets: list[str]
    #: a dataset with a defocus measurement but no telemetry near its time
    orphan: str | None


def _us(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _event(ident: str, start: datetime, value_m: float, sd_m: float) -> dict[str, object]:
    event = make_event(ident, start=start, seconds=1.0)
    event["image_measurements"] = {
        "version": "1.0.0",
        "measurements": [
            {
                "quantity": "defocus", "value": value_m, "unit": "m", "sd": sd_m,
                "quality": 0.9, "method": "twin.fit_thon_rings", "note": None,
            }
        ],
    }  # fmt: skip
    return event


def bayes_instrument(
    engine: sa.Engine,
    *,
    measurements: int = 12,
    orphan: bool = False,
    forecast: bool = True,
    seed: int = 7,
) -> BayesInstrument:
    """Register the instrument and its data (see the module docstring)."""
    ident = f"bayes-{secrets.token_hex(4)}"
    rng = np.random.default_rng(seed)
    calibration = twin.Calibration(instrument_id=ident, version=f"{ident}/1")
    truth = simulations.draw_true_calibration(calibration, rng)
    settings = simulations.candidate_settings("defocus", measurements, None)
    measured = simulations.measure_virtually(truth, "defocus", settings, rng)
    declarations = [
        store.ChannelDeclaration(name=n, subsystem=s, quantity=q, canonical_unit=u, source_unit=u)
        for n, (s, q, u) in _UNITS.items()
    ]
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=ident))
        store.ensure_channels(
            conn=conn, instrument_id=ident, declarations=declarations,
            valid_from=REFERENCE_T0 - timedelta(days=1),
        )  # fmt: skip
        store.store_calibration(
            conn=conn, instrument_id=ident, version=calibration.version,
            valid_from=REFERENCE_T0 - timedelta(days=1), body=calibration.to_dict(),
        )  # fmt: skip
        chans = store.get_channels(conn=conn, instrument_id=ident)
    datasets = []
    for i, m in enumerate(measured):
        start = REFERENCE_T0 + timedelta(minutes=i)
        # ten samples within the 1-s exposure, centred on the telemetry the measurement saw
        times = _us(start) + np.arange(10, dtype=np.int64) * 100_000
        for name, value in m.telemetry.items():
            spread = (m.telemetry_sd.get(name, 0.0) or 0.0) * np.sqrt(10)
            noise = rng.normal(size=10) * spread
            insert(engine, make_batch(chans[name].id, times, value + noise - noise.mean()))
        with engine.begin() as conn:
            event = _event(ident, start, m.value * 1e-10, m.sd * 1e-10)
            record, _ = store.register_dataset(conn=conn, event=event, source="register",
                                               actor="tests")  # fmt: skip
        datasets.append(record.id)
    orphan_id = None
    if orphan:  # an hour after the last telemetry: nothing within any sensible age
        with engine.begin() as conn:
            event = _event(ident, REFERENCE_T0 + timedelta(hours=2), 1e-7, 5e-10)
            record, _ = store.register_dataset(conn=conn, event=event, source="register",
                                               actor="tests")  # fmt: skip
        orphan_id = record.id
    if forecast:  # an hour of stage.x at 1 Hz: a slow drift and sensor noise [m]
        seconds = np.arange(3600, dtype=np.int64)
        times = _us(FORECAST_END) - (3600 - seconds) * 1_000_000
        drift = 1e-6 + 2e-12 * seconds + 2e-10 * rng.normal(size=3600).cumsum() / 30
        values = drift + 5e-11 * rng.normal(size=3600)
        insert(engine, make_batch(chans["stage.x"].id, times, values))
    return BayesInstrument(ident, calibration, truth, datasets, orphan_id)


@contextmanager
def local_client() -> Iterator[Any]:
    """A dask.distributed client on a LocalCluster of one thread worker, its dashboard on a
    free port (other clusters may hold the default one)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
