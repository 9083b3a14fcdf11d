"""Snapshots against a real PostgreSQL: telemetry of a virtual microscope with a known true state
(and a refocus halfway) is stored, then acquisitions with deliberately wrong metadata are
verified against it; and events of real vendor files, for an instrument without telemetry,
must never be found in agreement."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
import simulations
import twin
from ingest import STATE_FIELDS, AcquisitionEventV1, build_acquisition_event
from tests.ingest._support import T0_NS
from workers._snapshots import ComputedSnapshot, compute_snapshot

RATE_HZ = 10.0
DURATION_S = 240.0
REFOCUS_AT_S = 120.0
REFOCUS_BY = 1000.0  # [Å] = 100 nm, a deliberate focus change
T0 = datetime.fromtimestamp(T0_NS / 1e9, tz=UTC)
CALIBRATION = twin.Calibration()
#: The acquisition: 20 s, well after the refocus.
ACQ_START = T0 + timedelta(seconds=170)
ACQ_END = T0 + timedelta(seconds=190)
NOW = T0 + timedelta(seconds=DURATION_S + 10)
#: The twin quantity / channel behind each field, and its scale to the field's SI unit.
TRUTH_OF: dict[str, tuple[str, str, float]] = {
    "high_tension": ("quantity", "energy", 1.0),
    "beam_energy": ("quantity", "energy", 1.0),
    "defocus": ("quantity", "defocus", 1e-10),
    "spherical_aberration": ("quantity", "C30", 1e-10),
    "convergence_semiangle": ("quantity", "convergence_semiangle", 1e-3),
    "probe_current": ("quantity", "probe_current", 1.0),
    "camera_length": ("quantity", "camera_length", 1.0),
    "pixel_size": ("quantity", "pixel_size", 1.0),
    "dwell_time": ("quantity", "dwell_time", 1.0),
    "stage_x": ("quantity", "stage_x", 1.0),
    "stage_y": ("quantity", "stage_y", 1.0),
    "stage_z": ("quantity", "stage_z", 1.0),
    "holder_temperature": ("quantity", "holder_temperature", 1.0),
    "emission_current": ("channel", "gun.emission_current", 1.0),
    "extraction_voltage": ("channel", "gun.extraction_voltage", 1.0),
    "stage_alpha": ("channel", "stage.alpha", 1.0),
    "stage_beta": ("channel", "stage.beta", 1.0),
}


@dataclass(frozen=True)
class Scope:
    instrument_id: str
    block: simulations.TelemetryBlock
    truth: twin.StateEstimate
    times: np.ndarray  # [datetime64 not needed: seconds since T0]

    def true_mean(self, field: str, start_s: float, end_s: float) -> float:
        """The true value of a field averaged over ``[start_s, end_s]`` after T0 [SI]."""
        kind, name, scale = TRUTH_OF[field]
        inside = (self.times >= start_s) & (self.times <= end_s)
        series = self.truth.values[name] if kind == "quantity" else self.block.truth(name)
        return float(np.mean(np.asarray(series)[inside])) * scale


def _store_telemetry(
    engine: sa.Engine,
    block: simulations.TelemetryBlock,
    prefix: str,
    ticks: slice = slice(None),
) -> str:
    """A fresh instrument with the block's channels, the calibration the microscope was built
    with, and the block's samples of ``ticks``."""
    instrument_id = f"{prefix}-{secrets.token_hex(4)}"
    declarations = [
        store.ChannelDeclaration(
            name=spec.name,
            subsystem=str(spec.subsystem),
            quantity=str(spec.quantity),
            canonical_unit=spec.canonical_unit,
            source_unit=unit,
        )
        for spec, unit in zip(block.channels, block.units, strict=True)
    ]
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))
        store.ensure_channels(
            conn=conn, instrument_id=instrument_id, declarations=declarations, valid_from=T0
        )
        store.store_calibration(
            conn=conn,
            instrument_id=instrument_id,
            version=CALIBRATION.version,
            valid_from=T0 - timedelta(days=1),
            body=CALIBRATION.to_dict(),
        )
    _insert(engine, instrument_id, block, ticks)
    return instrument_id


def _insert(
    engine: sa.Engine, instrument_id: str, block: simulations.TelemetryBlock, ticks: slice
) -> None:
    with engine.begin() as conn:
        records = store.get_channels(conn=conn, instrument_id=instrument_id)
        ids = np.array([records[name].id for name in block.channel_names], dtype=np.int32)
        times = block.times_ns[ticks] // 1000
        values = block.values[:, ticks].reshape(-1)
        finite = np.isfinite(values)
        times_us = np.tile(times, block.n_channels)
        store.insert_samples(
            conn=conn,
            batch=store.SampleBatch(
                channel_id=np.repeat(ids, len(times))[finite],
                source_time_us=times_us[finite],
                ingest_time_us=times_us[finite] + 2_000,
                value=values[finite],
                seq=np.tile(block.seqs[ticks], block.n_channels)[finite],
            ),
        )


@pytest.fixture(scope="module")
def scope(engine: sa.Engine) -> Scope:
    refocus = simulations.state_step(CALIBRATION, "defocus", at_s=REFOCUS_AT_S, delta=REFOCUS_BY)
    microscope = simulations.VirtualMicroscope(
        instrument_id="virtual-stem-snapshots",
        rate_hz=RATE_HZ,
        seed=11,
        start_ns=T0_NS,
        faults=[refocus],
    )
    block = microscope.generate(round(DURATION_S * RATE_HZ))
    instrument_id = _store_telemetry(engine, block, "snap")
    times = (block.times_ns - T0_NS) / 1e9
    return Scope(instrument_id, block, simulations.true_state(CALIBRATION, block), times)


def _event(
    instrument_id: str,
    state: Mapping[str, tuple[float | str, str]],
    *,
    start: datetime = ACQ_START,
    end: datetime = ACQ_END,
) -> AcquisitionEventV1:
    """A valid acquisition event with these state fields: name -> (value, quality)."""
    sha = secrets.token_hex(32)
    fields = {}
    for name, (value, quality) in state.items():
        unit = STATE_FIELDS[name][0]
        fields[name] = {
            "value": value,
            "unit": unit,
            "source": f"Test.{name}",
            "source_value": value,
            "source_unit": unit,
            "quality": quality,
            "note": None if quality == "ok" else f"{quality} in this test",
        }
    return AcquisitionEventV1.model_validate(
        {
            "schema": "beamtwin.acquisitions.v1",
            "dataset_id": "ds-" + sha[:32],
            "instrument_id": instrument_id,
            "start_time": start,
            "end_time": end,
            "time_source": "file_metadata",
            "registered_at": NOW,
            "file": {
                "uri": "file:///data/test.emd",
                "name": "test.emd",
                "sha256": sha,
                "size_bytes": 1,
                "format": "velox_emd",
                "mtime": end,
            },
            "reader": {"name": "test", "version": "0", "mapping_version": "1.0.0"},
            "instrument": {},
            "state": fields,
            "original_metadata": {},
        }
    )


def _truthful(scope: Scope, start_s: float = 170.0, end_s: float = 190.0) -> dict[str, Any]:
    return {name: (scope.true_mean(name, start_s, end_s), "ok") for name in TRUTH_OF}


def _compute(engine: sa.Engine, event: AcquisitionEventV1, **kw: Any) -> ComputedSnapshot:
    with engine.connect() as conn:
        return compute_snapshot(conn=conn, event=event, now=NOW, **kw)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verdicts(snap: ComputedSnapshot) -> dict[str, str]:
    return {name: f["verdict"] for name, f in snap.body["fields"].items()}


# ---------------------------------------------------------------------- the true state
def test_correct_metadata_is_consistent_in_every_compared_field(
    engine: sa.Engine, scope: Scope
) -> None:
    event = _event(scope.instrument_id, {**_truthful(scope), "magnification": (1e6, "ok")})
    snap = _compute(engine, event)
    verdicts = _verdicts(snap)
    assert {verdicts[name] for name in TRUTH_OF} == {"consistent"}, {
        n: snap.body["fields"][n] for n in TRUTH_OF if verdicts[n] != "consistent"
    }
    assert verdicts["magnification"] == "unverifiable"
    assert "no twin counterpart" in snap.body["fields"]["magnification"]["note"]
    assert snap.telemetry_complete is True
    assert snap.calibration_version == CALIBRATION.version
    assert snap.twin_version == twin.TWIN_VERSION
    body = snap.body
    assert body["schema"] == "beamtwin.snapshot.v1"
    assert body["telemetry"] == {"complete": True, "watermark": _iso(ACQ_END)}
    assert body["window"] == {"start": _iso(ACQ_START), "end": _iso(ACQ_END)}
    # The body is in the event's SI units: defocus [m], not the twin's Å.
    defocus = body["state"]["defocus"]
    assert defocus["unit"] == "m" and 199 <= defocus["n"] <= 201  # 20 s at 10 Hz, jitter
    assert defocus["mean"] == pytest.approx(scope.true_mean("defocus", 170, 190), abs=2e-9)
    assert body["state"]["convergence_semiangle"]["unit"] == "rad"
    assert body["state"]["convergence_semiangle"]["mean"] == pytest.approx(0.025, rel=1e-3)
    ht = body["channels"]["gun.high_tension"]
    assert ht["unit"] == "V" and ht["n"] == defocus["n"] and ht["gaps"] == []
    assert ht["last_sample_age_s"] == pytest.approx(0.0, abs=0.1)
    # The HT drifts by 1.5e-4 V/s (plus a random walk): the slope is of that order.
    assert abs(ht["drift_rate"]) < 0.05
    assert snap.body["fields"]["defocus"]["quantity"] == "defocus"
    assert snap.body["fields"]["emission_current"]["channel"] == "gun.emission_current"


def test_a_field_the_file_lacks_is_missing(engine: sa.Engine, scope: Scope) -> None:
    truthful = _truthful(scope)
    del truthful["defocus"], truthful["probe_current"]
    verdicts = _verdicts(_compute(engine, _event(scope.instrument_id, truthful)))
    assert verdicts["defocus"] == "missing" and verdicts["probe_current"] == "missing"
    assert verdicts["high_tension"] == "consistent"


# ---------------------------------------------------------------------- wrong metadata
def test_defocus_written_before_a_refocus_is_stale(engine: sa.Engine, scope: Scope) -> None:
    state = _truthful(scope)
    state["defocus"] = (scope.true_mean("defocus", 90, 110), "ok")  # the focus before
    snap = _compute(engine, _event(scope.instrument_id, state))
    f = snap.body["fields"]["defocus"]
    assert f["verdict"] == "stale", f
    matched = datetime.fromisoformat(f["matched_time"].replace("Z", "+00:00"))
    assert T0 + timedelta(seconds=60) < matched <= T0 + timedelta(seconds=REFOCUS_AT_S + 1)
    assert "before its start" in f["note"]
    assert abs(f["residual"]) == pytest.approx(REFOCUS_BY * 1e-10, rel=0.1)
    # The same value with no history to look back on only disagrees.
    short = _compute(engine, _event(scope.instrument_id, state), lookback_s=30.0)
    assert short.body["fields"]["defocus"]["verdict"] == "disagrees"


def test_high_tension_off_by_one_kilovolt_disagrees(engine: sa.Engine, scope: Scope) -> None:
    state = _truthful(scope)
    state["high_tension"] = (scope.true_mean("high_tension", 170, 190) + 1000.0, "ok")
    f = _compute(engine, _event(scope.instrument_id, state)).body["fields"]["high_tension"]
    assert f["verdict"] == "disagrees"
    assert f["residual"] == pytest.approx(1000.0, abs=5.0)
    assert f["tolerance"] < 1000.0 and f["note"] is None


def test_camera_length_of_another_mode_disagrees(engine: sa.Engine, scope: Scope) -> None:
    state = _truthful(scope)
    state["camera_length"] = (0.25, "ok")  # the true camera length is 0.1 m
    f = _compute(engine, _event(scope.instrument_id, state)).body["fields"]["camera_length"]
    assert f["verdict"] == "disagrees"
    assert f["expected"] == pytest.approx(0.1, rel=1e-3)
    assert f["note"] is None  # 2.5x is no unit ratio


def test_placeholder_probe_current_is_never_agreement(engine: sa.Engine, scope: Scope) -> None:
    state = _truthful(scope)
    state["probe_current"] = (0.0, "placeholder")
    f = _compute(engine, _event(scope.instrument_id, state)).body["fields"]["probe_current"]
    assert f["verdict"] == "placeholder"
    assert f["reported"] == 0.0 and f["expected"] > 0
    assert "placeholder" in f["note"]


def test_stage_position_in_the_wrong_unit_names_the_unit_error(
    engine: sa.Engine, scope: Scope
) -> None:
    state = _truthful(scope)
    state["stage_x"] = (scope.true_mean("stage_x", 170, 190) * 1e6, "ok")  # µm read as m
    f = _compute(engine, _event(scope.instrument_id, state)).body["fields"]["stage_x"]
    assert f["verdict"] == "disagrees"
    assert "likely unit error (x1e6)" in f["note"]


def test_every_wrong_field_at_once(engine: sa.Engine, scope: Scope) -> None:
    state = _truthful(scope)
    state["defocus"] = (scope.true_mean("defocus", 90, 110), "ok")
    state["high_tension"] = (state["high_tension"][0] + 1000.0, "ok")
    state["camera_length"] = (0.25, "ok")
    state["probe_current"] = (0.0, "placeholder")
    state["stage_x"] = (state["stage_x"][0] * 1e6, "ok")
    verdicts = _verdicts(_compute(engine, _event(scope.instrument_id, state)))
    assert verdicts["defocus"] == "stale"
    assert verdicts["high_tension"] == verdicts["camera_length"] == "disagrees"
    assert verdicts["stage_x"] == "disagrees" and verdicts["probe_current"] == "placeholder"
    rest = set(TRUTH_OF) - {"defocus", "high_tension", "camera_length", "probe_current", "stage_x"}
    assert {verdicts[name] for name in rest} == {"consistent"}


# ---------------------------------------------------------------------- time and telemetry
def test_an_instantaneous_acquisition_uses_the_state_as_of_its_time(
    engine: sa.Engine, scope: Scope
) -> None:
    at = T0 + timedelta(seconds=200.03)  # between two ticks
    state = _truthful(scope, 199.0, 201.0)
    snap = _compute(engine, _event(scope.instrument_id, state, start=at, end=at))
    assert {snap.body["fields"][n]["verdict"] for n in TRUTH_OF} == {"consistent"}
    ht = snap.body["channels"]["gun.high_tension"]
    assert ht["n"] == 0 and ht["as_of_time"] is not None
    assert 0 < ht["last_sample_age_s"] <= 0.1


def test_acquisition_past_the_telemetry_is_incomplete_then_silent(
    engine: sa.Engine, scope: Scope
) -> None:
    last = T0 + timedelta(seconds=DURATION_S - 0.1)
    # Ends 5 s after the last sample: incomplete (telemetry may still arrive late).
    running = _event(
        scope.instrument_id,
        _truthful(scope, 225, 240),
        start=T0 + timedelta(seconds=225),
        end=T0 + timedelta(seconds=DURATION_S + 5),
    )
    snap = _compute(engine, running)
    assert snap.telemetry_complete is False and snap.body["telemetry"]["complete"] is False
    watermark = datetime.fromisoformat(snap.body["telemetry"]["watermark"].replace("Z", "+00:00"))
    assert last - timedelta(seconds=0.2) <= watermark <= last + timedelta(seconds=0.2)
    gaps = snap.body["channels"]["gun.high_tension"]["gaps"]
    assert len(gaps) == 1 and gaps[0][1] == snap.body["window"]["end"]
    # Ten minutes after the telemetry stopped: nothing can be verified.
    later = T0 + timedelta(seconds=DURATION_S + 600)
    silent = _compute(
        engine,
        _event(scope.instrument_id, _truthful(scope, 225, 240), start=later, end=later),
    )
    for name in TRUTH_OF:
        f = silent.body["fields"][name]
        assert f["verdict"] == "unverifiable", (name, f)
        assert "silent for" in f["note"]


def test_telemetry_is_waited_for_only_so_long_after_the_end(
    engine: sa.Engine, scope: Scope
) -> None:
    """A channel that never catches up does not keep a dataset pending for ever: after
    ``complete_after_s`` (counted from the end, or from a later registration) what is missing
    is a gap of the window, no longer late telemetry."""
    end = T0 + timedelta(seconds=DURATION_S + 5)
    event = _event(
        scope.instrument_id, _truthful(scope, 225, 240), start=T0 + timedelta(seconds=225), end=end
    )
    registered = event.registered_at
    with engine.connect() as conn:
        soon = compute_snapshot(conn=conn, event=event, now=end + timedelta(seconds=10))
        at_end_plus = compute_snapshot(
            conn=conn, event=event, now=end + timedelta(seconds=301), complete_after_s=300
        )
        after_registration = compute_snapshot(
            conn=conn,
            event=event,
            now=max(end, registered) + timedelta(seconds=301),
            complete_after_s=300,
        )
    assert soon.telemetry_complete is False
    # Registered after the end: waited for from the registration, not from the end.
    assert at_end_plus.telemetry_complete is (registered <= end)
    assert after_registration.telemetry_complete is True
    assert after_registration.body["telemetry"]["complete"] is True
    assert after_registration.body["channels"]["gun.high_tension"]["gaps"], "the gap is shown"


def test_the_same_inputs_give_the_same_body(engine: sa.Engine, scope: Scope) -> None:
    event = _event(scope.instrument_id, _truthful(scope))
    first, second = _compute(engine, event), _compute(engine, event)
    assert first.body == second.body
    assert store.canonical_json(first.body) == store.canonical_json(second.body)
    # The event read back from its stored JSON (as the re-verification sweep does) gives the
    # same body as the model it was built from.
    stored = AcquisitionEventV1.model_validate(event.model_dump(mode="json", by_alias=True))
    with engine.connect() as conn:
        again = compute_snapshot(conn=conn, event=stored, now=NOW)
    assert again.body == first.body


def test_late_telemetry_gives_a_new_version_and_a_repeat_none(
    engine: sa.Engine, scope: Scope
) -> None:
    """Verified while the telemetry of the window is still on its way, then again once it is
    in: the second snapshot is a new version; verifying once more adds nothing."""
    instrument_id = _store_telemetry(engine, scope.block, "late", slice(0, 1800))  # to 180 s
    event = _event(instrument_id, _truthful(scope))  # 170 .. 190 s
    versions = []
    for step in ("early", "complete", "again"):
        if step == "complete":
            _insert(engine, instrument_id, scope.block, slice(1800, None))
        with engine.begin() as conn:
            if step == "early":
                store.register_dataset(
                    conn=conn, event=event.model_dump(mode="json"), source="register", actor="test"
                )
            computed = compute_snapshot(conn=conn, event=event, now=NOW)
            record, created = store.store_snapshot(
                conn=conn,
                dataset_id=event.dataset_id,
                body=computed.body,
                twin_version=computed.twin_version,
                calibration_version=computed.calibration_version,
                telemetry_complete=computed.telemetry_complete,
                actor="test",
                reason=f"verification ({step})",
            )
        versions.append((record.version, created, computed.telemetry_complete, record.overall))
    assert versions == [
        (1, True, False, "consistent"),
        (2, True, True, "consistent"),
        (2, False, True, "consistent"),
    ]


def test_an_unknown_instrument_is_refused(engine: sa.Engine, scope: Scope) -> None:
    event = _event("no-such-scope", _truthful(scope))
    with pytest.raises(store.InstrumentNotFound):
        _compute(engine, event)


# ---------------------------------------------------------------------- real vendor files
REAL_FILES = [
    "test_STEM_image.dm3",
    "fei_example_tem_stack.emd",
    "128x128-TEM_search.emi",
    "JEOL-SightX-TEM-mag-dummy.tif.gz",
    "20241021_00405_info.txt",
    "protochips_gas_cell.csv",
]


@pytest.fixture(scope="module")
def bare_instrument(engine: sa.Engine) -> str:
    """An instrument that has no telemetry at all (only the default calibration)."""
    instrument_id = f"bare-{secrets.token_hex(4)}"
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=instrument_id))
    return instrument_id


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_without_telemetry_never_agree(
    engine: sa.Engine, realdata: Path, bare_instrument: str, name: str
) -> None:
    event = build_acquisition_event(realdata / name, instrument_id=bare_instrument)
    snap = _compute(engine, event)
    fields = snap.body["fields"]
    assert set(fields) == set(event.state), "no field is made up (no `missing` without a twin)"
    for field_name, f in fields.items():
        quality = event.state[field_name].quality  # type: ignore[index]
        if quality in ("placeholder", "disconnected_default"):
            assert f["verdict"] == "placeholder", (field_name, f)
        else:
            assert f["verdict"] == "unverifiable", (field_name, f)
            assert f["note"], field_name
    assert snap.telemetry_complete is False
    assert snap.body["telemetry"] == {"complete": False, "watermark": None}
    assert snap.body["channels"] == {} and snap.body["state"] == {}


def test_known_placeholders_of_real_files(
    engine: sa.Engine, realdata: Path, bare_instrument: str
) -> None:
    expected = {
        "test_STEM_image.dm3": {"probe_current", "emission_current", "spherical_aberration"},
        "fei_example_tem_stack.emd": {"screen_current"},
        "20241021_00405_info.txt": {"high_tension", "camera_length", "pixel_size"},
    }
    for name, placeholders in expected.items():
        event = build_acquisition_event(realdata / name, instrument_id=bare_instrument)
        verdicts = _verdicts(_compute(engine, event))
        assert {n for n, v in verdicts.items() if v == "placeholder"} >= placeholders, name
        assert "consistent" not in verdicts.values()


def test_long_windows_are_derived_in_chunks_equal_to_one_call() -> None:
    """Windows longer than the largest compiled shape are derived chunk by chunk; the result
    is the same as one call on the whole (unpadded) input."""
    from workers._snapshots import _derive

    rng = np.random.default_rng(3)
    n = 2 * twin.MAX_PADDED + 123
    time_us = np.arange(n, dtype=np.int64) * 10_000
    nominal = simulations.nominal_channels()
    channels = {
        name: twin.ChannelSeries(
            unit="1", time_us=time_us, value=value * (1 + 1e-4 * rng.standard_normal(n))
        )
        for name, value in nominal.items()
    }
    chunked = _derive(CALIBRATION, channels)
    whole = twin.derive_state(CALIBRATION, {k: v.value for k, v in channels.items()})
    assert set(chunked) and all(len(q.value) == n for q in chunked.values())
    for name, series in chunked.items():
        np.testing.assert_allclose(series.value, np.asarray(whole.values[name]), rtol=1e-12)
