"""Snapshot verdicts on analytic telemetry: every verdict, the tolerance formula term by term,
the unit-error note, determinism and non-finite input."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

import twin
from twin import ChannelSeries, QuantitySeries, SnapshotConfig, build_snapshot, unit_error_note

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
END = START + timedelta(seconds=20)
US = 1_000_000
START_US = (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
END_US = START_US + 20 * US


def field(value: Any, unit: str | None, quality: str = "ok", note: str | None = None) -> dict:
    return {
        "value": value,
        "unit": unit,
        "source": "Test.key",
        "source_value": value,
        "source_unit": unit,
        "quality": quality,
        "note": note,
    }


def event(state: Mapping[str, dict], start: Any = START, end: Any = END) -> dict[str, Any]:
    return {
        "dataset_id": "ds-" + "0" * 32,
        "instrument_id": "scope-1",
        "start_time": start,
        "end_time": end,
        "state": dict(state),
    }


def series(
    values: Any, *, t0_s: float = -20.0, dt_s: float = 0.1, unit: str = "V"
) -> ChannelSeries:
    """Samples every ``dt_s`` from ``START + t0_s``."""
    v = np.asarray(values, dtype=float)
    t = START_US + np.round((t0_s + dt_s * np.arange(len(v))) * US).astype(np.int64)
    return ChannelSeries(unit=unit, time_us=t, value=v)


def constant(value: float, *, t0_s: float = -20.0, t1_s: float = 20.0, unit: str = "V") -> Any:
    n = round((t1_s - t0_s) / 0.1) + 1
    return series(np.full(n, value), t0_s=t0_s, unit=unit)


def snap(
    state: Mapping[str, dict],
    channels: Mapping[str, ChannelSeries] | None = None,
    quantities: Mapping[str, QuantitySeries] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    ev = kw.pop("ev", None) or event(state)
    return build_snapshot(
        event=ev,
        channels=channels or {},
        state=quantities or {},
        twin_version="beamtwin-twin/1",
        calibration_version="test/1",
        telemetry_complete=True,
        watermark=END,
        **kw,
    )


HT = {"gun.high_tension": constant(200_000.0)}


# ---------------------------------------------------------------------- consistent, tolerance
def test_a_constant_high_tension_within_the_relative_tolerance_is_consistent() -> None:
    body = snap({"high_tension": field(200_150.0, "V")}, HT)
    f = body["fields"]["high_tension"]
    # max(10 V floor, 1e-3 x 200 kV, 3 x sqrt(0² + 1²)) = 200 V; no noise, no range.
    assert f["tolerance"] == 200.0
    assert f["residual"] == 150.0 and f["expected"] == 200_000.0
    assert f["verdict"] == "consistent" and f["channel"] == "gun.high_tension"
    assert f["unit"] == "V" and f["quality"] == "ok" and f["source"] == "Test.key"


@pytest.mark.parametrize(
    ("reported", "verdict"), [(200_199.0, "consistent"), (200_201.0, "disagrees")]
)
def test_the_tolerance_is_a_sharp_edge(reported: float, verdict: str) -> None:
    f = snap({"high_tension": field(reported, "V")}, HT)["fields"]["high_tension"]
    assert f["verdict"] == verdict
    if verdict == "disagrees":
        assert f["note"] is None  # 1.001 is no unit ratio


def test_the_tolerance_widens_by_the_range_the_window_covered() -> None:
    # A ramp of 1 V per sample (10 V/s) from 199 900 V to 200 100 V over the 20 s window.
    ramp = series(199_900.0 + np.arange(201), t0_s=0.0)
    body = snap({"high_tension": field(200_299.0, "V")}, {"gun.high_tension": ramp})
    f = body["fields"]["high_tension"]
    assert f["expected"] == 200_000.0
    assert f["tolerance"] == pytest.approx(200.0 + 100.0)  # base + half range; noise 0
    assert f["verdict"] == "consistent"
    ch = body["channels"]["gun.high_tension"]
    assert ch["n"] == 201 and ch["min"] == 199_900.0 and ch["max"] == 200_100.0
    assert ch["drift_rate"] == pytest.approx(10.0)
    assert ch["std"] == pytest.approx(float(np.std(np.arange(201), ddof=1)))
    f2 = snap({"high_tension": field(200_301.0, "V")}, {"gun.high_tension": ramp})
    assert f2["fields"]["high_tension"]["verdict"] == "disagrees"


def test_noise_enters_the_tolerance_through_k_sigma() -> None:
    # White noise of 100 V on an otherwise constant 1000 V extraction voltage (floor 5 V,
    # relative 5 V): the noise term 3 x 100 V dominates; the window range adds to it.
    rng = np.random.default_rng(0)
    values = 1000.0 + rng.normal(0.0, 100.0, 401)
    body = snap(
        {"extraction_voltage": field(1000.0, "V")},
        {"gun.extraction_voltage": series(values)},
        config=SnapshotConfig(context_s=20.0),
    )
    f = body["fields"]["extraction_voltage"]
    inside = values[200:]
    half_range = max(inside.max() - inside.mean(), inside.mean() - inside.min())
    base = f["tolerance"] - half_range
    assert base == pytest.approx(3 * 100.0, rel=0.15)


def test_a_rounded_value_gets_its_rounding_from_the_note() -> None:
    stage = {"stage.x": constant(1.47e-7, unit="m")}
    off = 1.47e-7 + 5.03e-8  # 0.3 nm beyond the 50 nm floor, within half of 1 nm rounding
    ok = snap({"stage_x": field(off, "m")}, stage)["fields"]["stage_x"]
    assert ok["verdict"] == "disagrees" and ok["tolerance"] == pytest.approx(5e-8)
    rounded = field(off, "m", "rounded", "TIA writes numbers with 3 decimals (1 nm)")
    f = snap({"stage_x": rounded}, stage)["fields"]["stage_x"]
    assert f["verdict"] == "consistent"
    assert f["tolerance"] == pytest.approx(5e-8 + 0.5e-9)


def test_rounding_from_the_decimals_of_the_source_value() -> None:
    entry = field(1.47e-7 + 5.3e-8, "m", "rounded", "rounded by the vendor")
    entry["source_value"] = "0.2"  # one decimal in µm: 0.1 µm step
    entry["source_unit"] = "um"
    f = snap({"stage_x": entry}, {"stage.x": constant(1.47e-7, unit="m")})["fields"]["stage_x"]
    assert f["tolerance"] == pytest.approx(5e-8 + 0.05e-6)
    assert f["verdict"] == "consistent"


def test_twin_quantities_are_converted_to_si() -> None:
    # defocus 1000 Å = 100 nm, convergence 25 mrad = 0.025 rad
    t = START_US + np.arange(-200, 201, dtype=np.int64) * US // 10
    quantities = {
        "defocus": QuantitySeries("Å", t, np.full(len(t), 1000.0)),
        "convergence_semiangle": QuantitySeries("mrad", t, np.full(len(t), 25.0)),
    }
    body = snap(
        {
            "defocus": field(1.0e-7, "m"),
            "convergence_semiangle": field(0.025, "rad"),
        },
        quantities=quantities,
    )
    assert body["state"]["defocus"]["unit"] == "m"
    assert body["state"]["defocus"]["mean"] == pytest.approx(1e-7)
    assert body["state"]["convergence_semiangle"] == {
        "unit": "rad",
        "n": 201,
        "mean": 0.025,
        "min": 0.025,
        "max": 0.025,
        "std": 0.0,
        "drift_rate": 0.0,
        "as_of_time": None,
    }
    for name in ("defocus", "convergence_semiangle"):
        f = body["fields"][name]
        assert f["verdict"] == "consistent" and f["quantity"] == name


# ---------------------------------------------------------------------- other verdicts
def test_disagreement_by_a_power_of_ten_names_the_unit_error() -> None:
    stage = {"stage.x": constant(12.3e-6, unit="m")}
    f = snap({"stage_x": field(12.3, "m")}, stage)["fields"]["stage_x"]
    assert f["verdict"] == "disagrees"
    assert f["note"].startswith("likely unit error (x1e6)")


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (1e6, "likely unit error (x1e6)"),
        (1e-3, "likely unit error (x1e-3)"),
        (1e10 * 1.01, "likely unit error (x1e10)"),
        (180 / math.pi, "degrees read as radians"),
        (-1.0, "likely sign convention error (x-1)"),
        (1.005, None),
        (2.5, None),
        (1.2e3, None),
        (-1e3, None),
    ],
)
def test_unit_error_note(ratio: float, expected: str | None) -> None:
    note = unit_error_note(ratio * 0.37, 0.37)
    if expected is None:
        assert note is None
    else:
        assert note is not None and expected in note
    assert unit_error_note(1.0, 0.0) is None and unit_error_note(0.0, 1.0) is None


def test_a_value_from_before_a_change_is_stale_with_the_time_it_matches() -> None:
    # Stage x at 10 µm until 30 s before the start, then 20 µm.
    values = np.where(np.arange(601) < 300, 10e-6, 20e-6)
    history = series(values, t0_s=-60.0, unit="m")
    matched_us = int(history.time_us[299])
    body = snap({"stage_x": field(10e-6, "m")}, {"stage.x": history})
    f = body["fields"]["stage_x"]
    assert f["verdict"] == "stale"
    assert f["matched_time"] == "2026-03-01T11:59:29.900000Z" == _iso(matched_us)
    assert f["expected"] == 20e-6 and "30.1 s before" in f["note"]
    # The same when the history is handed apart from a window that starts at the context.
    short = {"stage.x": series(values[500:], t0_s=-10.0, unit="m")}
    apart = snap({"stage_x": field(10e-6, "m")}, short, history_channels={"stage.x": history})
    assert apart["fields"]["stage_x"] == f
    # Without the history (or beyond the lookback) it only disagrees.
    alone = snap({"stage_x": field(10e-6, "m")}, short)
    assert alone["fields"]["stage_x"]["verdict"] == "disagrees"
    beyond = snap(
        {"stage_x": field(10e-6, "m")}, {"stage.x": history}, config=SnapshotConfig(lookback_s=20)
    )
    assert beyond["fields"]["stage_x"]["verdict"] == "disagrees"


def _iso(us: int) -> str:
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize("quality", ["placeholder", "disconnected_default"])
def test_placeholders_are_never_compared(quality: str) -> None:
    probe = {"gun.emission_current": constant(1.5e-5, unit="A")}
    # Even a placeholder that happens to equal the telemetry is not agreement.
    for value in (0.0, 1.5e-5):
        f = snap({"emission_current": field(value, "A", quality, "vendor zero")}, probe)
        g = f["fields"]["emission_current"]
        assert g["verdict"] == "placeholder" and g["tolerance"] is None
        assert g["expected"] == 1.5e-5 and "not compared" in g["note"]
    no_telemetry = snap({"magnification": field(1000.0, "1", quality, "disconnected")})
    assert no_telemetry["fields"]["magnification"]["verdict"] == "placeholder"


def test_fields_the_file_lacks_are_missing_where_the_twin_knows_them() -> None:
    body = snap({}, {**HT, "stage.x": constant(1e-6, unit="m")})
    assert body["fields"]["high_tension"]["verdict"] == "missing"
    assert body["fields"]["beam_energy"]["verdict"] == "missing"
    assert body["fields"]["stage_x"]["verdict"] == "missing"
    assert body["fields"]["stage_x"]["expected"] == 1e-6
    assert "defocus" not in body["fields"]  # no telemetry: the twin does not know it either
    assert snap({})["fields"] == {}


def test_unverifiable_fields_say_why() -> None:
    body = snap(
        {
            "magnification": field(1e6, "1"),
            "detector": field("HAADF", None),
            "defocus": field(1e-7, "m"),
            "emission_current": field(1e-5, "A"),
        },
        HT,
    )
    fields = body["fields"]
    assert {f["verdict"] for f in fields.values() if f["reported"] is not None} == {"unverifiable"}
    assert "no twin counterpart" in fields["magnification"]["note"]
    assert "text field" in fields["detector"]["note"] and fields["detector"]["reported"] == "HAADF"
    assert "objective.lens_current" in fields["defocus"]["note"]
    assert fields["emission_current"]["note"] == (
        "no telemetry of gun.emission_current at or before the acquisition"
    )


def test_a_channel_silent_beyond_the_staleness_limit_is_unverifiable() -> None:
    old = {"gun.high_tension": constant(200_000.0, t0_s=-200.0, t1_s=-100.0)}
    body = snap({"high_tension": field(200_000.0, "V")}, old)
    f = body["fields"]["high_tension"]
    assert f["verdict"] == "unverifiable"
    assert f["note"] == (
        "telemetry of gun.high_tension silent for 100.0 s before the acquisition "
        "(staleness limit 60 s)"
    )
    ch = body["channels"]["gun.high_tension"]
    assert ch["n"] == 0 and ch["last_sample_age_s"] == 100.0
    assert ch["gaps"] == [["2026-03-01T12:00:00Z", "2026-03-01T12:00:20Z"]]
    # Within the limit, the as-of value stands in for the window.
    recent = {"gun.high_tension": constant(200_000.0, t0_s=-60.0, t1_s=-30.0)}
    g = snap({"high_tension": field(200_000.0, "V")}, recent)
    assert g["fields"]["high_tension"]["verdict"] == "consistent"
    assert g["channels"]["gun.high_tension"]["as_of_time"] == "2026-03-01T11:59:30Z"
    assert g["channels"]["gun.high_tension"]["mean"] == 200_000.0


def test_gaps_inside_the_window_are_listed() -> None:
    values = np.full(401, 200_000.0)
    ht = series(values, t0_s=-20.0)
    keep = ~((ht.time_us > START_US + 5 * US) & (ht.time_us < START_US + 10 * US))
    holed = ChannelSeries("V", ht.time_us[keep], ht.value[keep])
    ch = snap({}, {"gun.high_tension": holed})["channels"]["gun.high_tension"]
    assert ch["gaps"] == [["2026-03-01T12:00:05Z", "2026-03-01T12:00:10Z"]]
    assert ch["last_sample_age_s"] == 0.0


def test_an_instantaneous_acquisition_reads_the_state_as_of_its_start() -> None:
    at = START + timedelta(seconds=0.05)
    body = snap(
        {"high_tension": field(200_000.0, "V")},
        HT,
        ev=event({"high_tension": field(200_000.0, "V")}, at, at),
    )
    ch = body["channels"]["gun.high_tension"]
    assert ch["n"] == 0 and ch["as_of_time"] == "2026-03-01T12:00:00Z"
    assert ch["last_sample_age_s"] == pytest.approx(0.05) and ch["gaps"] == []
    assert body["fields"]["high_tension"]["verdict"] == "consistent"
    assert body["window"] == {
        "start": "2026-03-01T12:00:00.050000Z",
        "end": "2026-03-01T12:00:00.050000Z",
    }


# ---------------------------------------------------------------------- body, determinism
def test_the_body_has_the_documented_keys() -> None:
    flags = [
        {
            "kind": "step",
            "quantity": "defocus",
            "channel": None,
            "time": START,
            "severity": "warning",
        },
        {
            "kind": "dropout",
            "quantity": None,
            "channel": "stage.x",
            "time": "2026-03-01T11:59:59Z",
            "severity": "info",
        },
    ]
    body = snap({"high_tension": field(200_000.0, "V")}, HT, flags=flags)
    assert set(body) == {
        "schema", "dataset_id", "instrument_id", "window", "twin_version", "calibration_version",
        "telemetry", "parameters", "state", "channels", "fields", "flags", "images",
    }  # fmt: skip
    assert body["schema"] == twin.SNAPSHOT_SCHEMA == "beamtwin.snapshot.v1"
    assert body["telemetry"] == {"complete": True, "watermark": "2026-03-01T12:00:20Z"}
    assert [f["kind"] for f in body["flags"]] == ["dropout", "step"]  # by time
    assert body["flags"][1]["time"] == "2026-03-01T12:00:00Z"
    assert set(body["fields"]["high_tension"]) == {
        "verdict", "reported", "expected", "unit", "tolerance", "residual", "quality", "source",
        "quantity", "channel", "matched_time", "note",
    }  # fmt: skip
    assert set(body["channels"]["gun.high_tension"]) == {
        "unit", "n", "mean", "min", "max", "std", "drift_rate", "as_of_time",
        "last_sample_age_s", "gaps",
    }  # fmt: skip
    assert body["fields"]["high_tension"]["verdict"] in twin.VERDICTS


def test_equal_inputs_give_equal_bodies_in_any_order() -> None:
    rng = np.random.default_rng(1)
    channels = {
        "gun.high_tension": series(200_000.0 + rng.normal(0, 0.3, 401)),
        "stage.x": series(1e-6 + rng.normal(0, 1e-10, 401), unit="m"),
        "gun.emission_current": series(1.5e-5 + rng.normal(0, 1e-8, 401), unit="A"),
    }
    state = {"stage_x": field(1.0e-6, "m"), "high_tension": field(2e5, "V")}
    one = snap(state, channels)
    two = snap(dict(reversed(state.items())), dict(reversed(channels.items())))
    assert one == two
    assert json.dumps(one, sort_keys=True, allow_nan=False) == json.dumps(two, sort_keys=True)


def test_reported_values_are_verbatim_and_computed_ones_rounded() -> None:
    reported = -3.023169920525763e-08  # 16 significant digits, as a Velox file has it
    t = START_US + np.arange(-200, 201, dtype=np.int64) * US // 10
    defocus = {"defocus": QuantitySeries("Å", t, np.full(len(t), -0.30231699205257631))}
    f = snap({"defocus": field(reported, "m")}, quantities=defocus)["fields"]["defocus"]
    assert f["reported"] == reported
    assert f["expected"] == -3.02316992053e-11  # 12 significant digits
    assert f["verdict"] == "disagrees" and f["note"] == (
        "likely unit error (x1e3): the reported value is 1e3 times the telemetry's; "
        "multiply it by 1e-3 to correct"
    )


def test_non_finite_input_never_reaches_the_body() -> None:
    values = np.full(401, 200_000.0)
    values[::7] = np.nan
    values[3] = np.inf
    body = snap(
        {"high_tension": field(200_000.0, "V"), "beam_energy": field(float("nan"), "eV")},
        {
            "gun.high_tension": series(values),
            "stage.x": series(np.full(401, np.nan), unit="m"),
        },
        quantities={
            "defocus": QuantitySeries("Å", HT["gun.high_tension"].time_us, np.full(401, np.inf))
        },
    )
    json.dumps(body, allow_nan=False)  # raises on NaN / inf
    assert body["fields"]["high_tension"]["verdict"] == "consistent"
    assert body["fields"]["beam_energy"]["verdict"] == "unverifiable"
    assert body["fields"]["beam_energy"]["note"] == "the reported value is not a finite number"
    assert body["channels"]["gun.high_tension"]["n"] == 201 - np.count_nonzero(
        ~np.isfinite(values[200:])
    )
    assert "stage.x" not in body["channels"] and "defocus" not in body["state"]


def test_bad_times_are_refused() -> None:
    with pytest.raises(ValueError, match="ends before"):
        snap({}, ev=event({}, END, START))
    with pytest.raises(ValueError, match="naive"):
        snap({}, ev=event({}, datetime(2026, 3, 1), datetime(2026, 3, 1)))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SnapshotConfig(lookback_s=-1.0)
    with pytest.raises(ValueError):
        SnapshotConfig(k=math.nan)


# ---------------------------------------------------------------------- helpers
def test_snapshot_channels_reads_the_inputs_of_derived_quantities_only_when_needed() -> None:
    assert twin.snapshot_channels(["emission_current"]) == ("gun.emission_current",)
    assert twin.snapshot_channels(["magnification"]) == ()
    assert set(twin.snapshot_channels(["defocus"])) == set(twin.INPUT_CHANNELS)
    assert set(twin.snapshot_channels()) == set(twin.INPUT_CHANNELS) | {
        "gun.extraction_voltage", "stage.alpha", "stage.beta", "holder.gas_pressure",
    }  # fmt: skip
    assert twin.snapshot_channels(["holder_pressure"]) == ("holder.gas_pressure",)


def test_align_channels_holds_each_channel_at_its_last_sample() -> None:
    a = ChannelSeries("V", np.array([0, 10, 20], np.int64), np.array([1.0, 2.0, 3.0]))
    b = ChannelSeries("A", np.array([5, 15], np.int64), np.array([10.0, 20.0]))
    aligned = twin.align_channels({"a": a, "b": b}, ["a", "b"])
    assert aligned is not None
    grid, values = aligned
    assert grid.tolist() == [5, 10, 15, 20]
    assert values["a"].tolist() == [1.0, 2.0, 2.0, 3.0]
    assert values["b"].tolist() == [10.0, 10.0, 20.0, 20.0]
    assert twin.align_channels({"a": a}, ["a", "b"]) is None


def test_field_map_units_match_the_acquisition_fields() -> None:
    from ingest import STATE_FIELDS  # the test may cross packages; twin may not

    for name, source in twin.FIELD_SOURCES.items():
        assert STATE_FIELDS[name][0] == source.unit, name
        assert name in twin.FIELD_TOLERANCES, name
        if source.quantity is not None:
            twin_unit = twin.quantity(source.quantity).unit
            assert {"Å": 1e-10, "mrad": 1e-3}.get(twin_unit, 1.0) == source.quantity_scale
    assert not set(twin.FIELD_SOURCES) & set(twin.UNVERIFIABLE_FIELDS)
    assert set(twin.FIELD_SOURCES) | set(twin.UNVERIFIABLE_FIELDS) == set(STATE_FIELDS)
