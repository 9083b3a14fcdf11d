"""A stored instrument for the Bayesian job tests: a twin calibration in force, registered
datasets whose acquisition events carry image measurements made on the virtual microscope with
known true constants (Thon-ring defocus; CBED convergence semiangles; a standard's
camera-length scale against the file's own camera length), the telemetry at each acquisition,
and a drifting ``stage.x`` channel to forecast."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
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
    "condenser.c3_current": ("condenser", "current", "A"),
    "condenser.aperture_diameter": ("condenser", "length", "m"),
    "projector.p1_current": ("projector", "current", "A"),
    "projector.p2_current": ("projector", "current", "A"),
    "projector.p3_current": ("projector", "current", "A"),
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


def _event(
    ident: str, start: datetime, quantity: str, value: float, sd: float, unit: str
) -> dict[str, Any]:
    event = make_event(ident, start=start, seconds=1.0)
    event["image_measurements"] = {
        "version": "1.0.0",
        "measurements": [
            {
                "quantity": quantity, "value": value, "unit": unit, "sd": sd,
                "quality": 0.9, "method": _METHODS[quantity], "note": None,
            }
        ],
    }  # fmt: skip
    return event


_METHODS = {
    "defocus": "twin.fit_thon_rings",
    "convergence_semiangle": "twin.measure_disk_radius",
    "camera_length_scale": "twin.measure_ring_radii",
}


def file_camera_length(calibration: twin.Calibration, telemetry: dict[str, float]) -> float:
    """The camera length a file states [m]: the one the microscope's calibration (the one in
    force) gives at the projector currents of the acquisition."""
    length = calibration.camera_length_ref
    names = simulations.MEASURED_QUANTITIES["camera_length"][1]
    for name, ref, g in zip(
        names, calibration.projector_ref, calibration.projector_exponents, strict=True
    ):
        length *= (telemetry[name] / ref) ** g
    return length


def _image_event(
    ident: str, start: datetime, m: simulations.ReferenceMeasurement, cal: twin.Calibration
) -> dict[str, Any]:
    """The acquisition event of one reference measurement, in the units the image
    measurements are recorded in (docs/bayesian.md §1)."""
    if m.quantity == "defocus":  # [Å] -> [m]
        return _event(ident, start, "defocus", m.value * 1e-10, m.sd * 1e-10, "m")
    if m.quantity == "convergence_semiangle":  # [mrad] -> [rad]
        return _event(ident, start, m.quantity, m.value * 1e-3, m.sd * 1e-3, "rad")
    stated = file_camera_length(cal, dict(m.telemetry))
    event = _event(
        ident, start, "camera_length_scale", m.value / stated, m.sd / stated, "1"
    )  # the standard's rings against the file's camera length
    state = dict(event["state"])
    state["camera_length"] = {
        "value": stated, "unit": "m", "source": "Optics.CameraLength",
        "source_value": repr(stated), "source_unit": "m", "quality": "ok", "note": None,
    }  # fmt: skip
    event["state"] = state
    return event


def bayes_instrument(
    engine: sa.Engine,
    *,
    measurements: int = 12,
    quantities: Sequence[str] = ("defocus",),
    orphan: bool = False,
    forecast: bool = True,
    seed: int = 7,
) -> BayesInstrument:
    """Register the instrument and its data (see the module docstring): ``measurements``
    reference datasets of each of ``quantities`` (keys of ``simulations.MEASURED_QUANTITIES``)
    at settings spread over their ranges, one a minute."""
    ident = f"bayes-{secrets.token_hex(4)}"
    rng = np.random.default_rng(seed)
    calibration = twin.Calibration(instrument_id=ident, version=f"{ident}/1")
    truth = simulations.draw_true_calibration(calibration, rng)
    measured = [
        m
        for quantity in quantities
        for m in simulations.measure_virtually(
            truth, quantity, simulations.candidate_settings(quantity, measurements, None), rng
        )
    ]
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
            event = _image_event(ident, start, m, calibration)
            record, _ = store.register_dataset(conn=conn, event=event, source="register",
                                               actor="tests")  # fmt: skip
        datasets.append(record.id)
    orphan_id = None
    if orphan:  # an hour after the last telemetry: nothing within any sensible age
        with engine.begin() as conn:
            event = _event(ident, REFERENCE_T0 + timedelta(hours=2), "defocus", 1e-7, 5e-10, "m")
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
