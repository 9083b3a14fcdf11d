"""Acquisition events of the virtual microscope, for ``beamtwin demo``.

A real microscope writes a data file whose metadata states the optical state it believes it
was in; here the "file" is a window of the virtual microscope's telemetry and its metadata
is the microscope's true state over that window, so the twin's snapshot should agree with
it. Every ``wrong_every``-th acquisition carries a wrong defocus (off by 100 nm), as a
vendor file with a stale value would, so the demo also shows a disagreement.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ingest import (
    ACQUISITION_SCHEMA_ID,
    MAPPING_VERSION,
    AcquisitionEventV1,
    dataset_id_for,
)
from provenance_store import canonical_json

#: Twin state quantity -> (event state field, factor from the twin's unit to the field's).
_FIELDS: dict[str, tuple[str, float]] = {
    "energy": ("beam_energy", 1.0),
    "defocus": ("defocus", 1e-10),  # Å -> m
    "C30": ("spherical_aberration", 1e-10),  # Å -> m
    "convergence_semiangle": ("convergence_semiangle", 1e-3),  # mrad -> rad
    "probe_current": ("probe_current", 1.0),
    "camera_length": ("camera_length", 1.0),
    "pixel_size": ("pixel_size", 1.0),
    "dwell_time": ("dwell_time", 1.0),
    "stage_x": ("stage_x", 1.0),
    "stage_y": ("stage_y", 1.0),
    "stage_z": ("stage_z", 1.0),
    "holder_temperature": ("holder_temperature", 1.0),
}
#: Event state field -> the channel that reads it directly (already in the field's unit).
_CHANNEL_FIELDS: dict[str, str] = {
    "emission_current": "gun.emission_current",
    "extraction_voltage": "gun.extraction_voltage",
    "stage_alpha": "stage.alpha",
    "stage_beta": "stage.beta",
}
#: The defocus error of a deliberately wrong acquisition [m].
WRONG_DEFOCUS_M = 100e-9


def virtual_acquisition_event(
    block: Any,
    calibration: Any,
    *,
    number: int,
    wrong: bool = False,
    operator: str = "demo",
    proposal: str = "DEMO-0001",
) -> AcquisitionEventV1:
    """The acquisition event of a virtual dataset recorded during ``block`` (a
    :class:`simulations.TelemetryBlock` with true values)."""
    start = datetime.fromtimestamp(int(block.times_ns[0]) / 1e9, UTC)
    end = datetime.fromtimestamp(int(block.times_ns[-1]) / 1e9, UTC)
    state, metadata = _state(block, calibration, wrong=wrong)
    content = canonical_json(
        {"instrument_id": block.instrument_id, "number": number, "start": start.isoformat()}
    )
    sha256 = hashlib.sha256(content).hexdigest()
    name = f"virtual-{number:05d}.emd"
    return AcquisitionEventV1.model_validate(
        {
            "schema": ACQUISITION_SCHEMA_ID,
            "dataset_id": dataset_id_for(sha256),
            "instrument_id": block.instrument_id,
            "start_time": start,
            "end_time": end,
            "time_source": "file_metadata",
            "registered_at": datetime.now(UTC),
            "file": {
                "uri": f"virtual://{block.instrument_id}/{name}",
                "name": name,
                "sha256": sha256,
                "size_bytes": len(content),
                "format": "virtual",
                "mtime": end,
            },
            "operator": operator,
            "proposal": proposal,
            "reader": {
                "name": "beamtwin.virtual_microscope",
                "version": "demo",
                "mapping_version": MAPPING_VERSION,
            },
            "instrument": {},
            "state": state,
            "original_metadata": {"VirtualMicroscope": metadata},
        }
    )


def _state(
    block: Any, calibration: Any, *, wrong: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The event's state fields and the "file's" metadata: the true state at the start of
    ``block``, with the defocus off by :data:`WRONG_DEFOCUS_M` when ``wrong``."""
    from simulations import true_state

    truth = true_state(calibration, block)
    state: dict[str, dict[str, Any]] = {}
    metadata: dict[str, Any] = {}
    for quantity, (name, factor) in _FIELDS.items():
        values = np.asarray(truth.values.get(quantity, []), dtype=float)
        if values.size == 0 or not np.all(np.isfinite(values)):
            continue
        value = float(values[0]) * factor  # as a file states it: the value at the start
        if name == "defocus" and wrong:
            value += WRONG_DEFOCUS_M
        metadata[name] = value
        state[name] = {
            "value": value,
            "unit": _unit(name),
            "source": f"VirtualMicroscope.{name}",
            "source_value": value,
            "source_unit": _unit(name),
            "quality": "ok",
            "note": "deliberately wrong by 100 nm" if name == "defocus" and wrong else None,
        }
    for name, channel in _CHANNEL_FIELDS.items():
        if channel not in block.channel_names:
            continue
        value = float(block.truth(channel)[0])
        metadata[name] = value
        state[name] = {
            "value": value,
            "unit": _unit(name),
            "source": f"VirtualMicroscope.{name}",
            "source_value": value,
            "source_unit": block.units[block.index(channel)],
            "quality": "ok",
            "note": None,
        }
    if "beam_energy" in state:
        # For electrons, e x U: the high tension in V is the kinetic energy in eV.
        ht = dict(state["beam_energy"], unit="V", source="VirtualMicroscope.high_tension")
        ht["source_unit"] = "V"
        state["high_tension"] = ht
        metadata["high_tension"] = ht["value"]
    return state, metadata


def _unit(field: str) -> str:
    from ingest import STATE_FIELDS

    unit = STATE_FIELDS[field][0]
    assert unit is not None
    return unit
