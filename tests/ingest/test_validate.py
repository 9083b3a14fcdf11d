"""Validation of decoded frames: unit conversion, registration, limits, times, and flattening."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pytest

import provenance_store as store
from ingest import (
    DEAD_LETTER_CODES,
    IngestSettings,
    KnownChannel,
    RejectedMessage,
    TelemetryFrameV1,
    ValidatedFrame,
    build_frame,
    check_key,
    decode_frame,
    validate_frame,
)
from twin import STANDARD_CHANNELS_BY_NAME, QuantityKind, Subsystem

T0_NS = 1_795_435_200_000_000_000  # 2026-11-23T12:00:00Z
NOW_NS = T0_NS + 3600 * 1_000_000_000
OLDEST_NS = 631_152_000 * 1_000_000_000  # 1990-01-01T00:00:00Z
S = 1_000_000_000


def col(
    channel: str,
    unit: str,
    values: list[float | None],
    quantity: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"channel": channel, "unit": unit, "values": values, **extra}
    if quantity is not None:
        out.setdefault("subsystem", channel.split(".")[0])
        out["quantity"] = quantity
    return out


def frame(columns: list[dict[str, Any]], times_ns: list[int] | None = None) -> TelemetryFrameV1:
    n = len(columns[0]["values"])
    times = times_ns if times_ns is not None else [T0_NS + k * 10_000_000 for k in range(n)]
    doc = {
        "schema": "beamtwin.telemetry.v1",
        "instrument_id": "nion-ustem-01",
        "publisher_id": "test",
        "frame_seq": 3,
        "sent_at": "2026-11-23T12:00:00Z",
        "times_ns": times,
        "seqs": [500 + k for k in range(len(times))],
        "columns": columns,
    }
    return decode_frame(orjson.dumps(doc), max_bytes=1 << 30)


def validate(
    f: TelemetryFrameV1,
    known: Mapping[str, KnownChannel] | None = None,
    *,
    auto_register: bool = True,
    **kw: Any,
) -> ValidatedFrame:
    args: dict[str, Any] = {
        "known_channels": known or {},
        "auto_register": auto_register,
        "now_ns": NOW_NS,
        "max_future_ns": 300 * S,
        "oldest_ns": OLDEST_NS,
        "max_samples": 200_000,
    }
    args.update(kw)
    return validate_frame(f, **args)


def rejection(f: TelemetryFrameV1, *args: Any, **kw: Any) -> RejectedMessage:
    with pytest.raises(RejectedMessage) as caught:
        validate(f, *args, **kw)
    return caught.value


HT = KnownChannel(1, QuantityKind.VOLTAGE, Subsystem.GUN, 1e3, 1.5e6)


# ---------------------------------------------------------------------------- happy path
def test_units_are_converted_nulls_dropped_and_seqs_kept() -> None:
    f = frame(
        [
            col("gun.high_tension", "kV", [200.0, 200.001, None], "voltage"),
            col("holder.temperature", "degC", [25.0, None, -196.15], "temperature"),
            col("vacuum.column_pressure", "Torr", [7.5e-8, 7.5e-8, 7.5e-8], "pressure"),
            col("stage.x", "nm", [None, None, 12.5], "length"),
            col("stage.alpha", "mrad", [10.0, -10.0, 0.0], "angle"),
        ]
    )
    vf = validate(f)
    assert vf.instrument_id == "nion-ustem-01" and vf.frame_seq == 3
    assert vf.channel_names == (
        "gun.high_tension",
        "holder.temperature",
        "vacuum.column_pressure",
        "stage.x",
        "stage.alpha",
    )
    assert vf.n_samples == 15 - 4
    assert vf.channel_index.dtype == np.int32
    assert vf.source_time_us.dtype == np.int64 and vf.seq.dtype == np.int64
    assert vf.value.dtype == np.float64

    def samples(name: str) -> list[tuple[int, float, int]]:
        i = vf.channel_names.index(name)
        m = vf.channel_index == i
        return list(
            zip(
                vf.source_time_us[m].tolist(), vf.value[m].tolist(), vf.seq[m].tolist(), strict=True
            )
        )

    us0 = T0_NS // 1000
    ht = samples("gun.high_tension")
    assert [(t, s) for t, _, s in ht] == [(us0, 500), (us0 + 10_000, 501)]
    assert [v for _, v, _ in ht] == pytest.approx([200_000.0, 200_001.0])  # kV -> V
    temps = samples("holder.temperature")
    assert [v for _, v, _ in temps] == pytest.approx([298.15, 77.0])  # degC -> K
    assert [s for _, _, s in temps] == [500, 502]
    assert [v for _, v, _ in samples("vacuum.column_pressure")] == pytest.approx(
        [7.5e-8 * 101325 / 760] * 3
    )  # Torr -> Pa
    assert samples("stage.x") == [(us0 + 20_000, pytest.approx(12.5e-9), 502)]  # nm -> m
    assert [v for _, v, _ in samples("stage.alpha")] == pytest.approx([0.01, -0.01, 0.0])
    assert vf.first_time_ns == T0_NS and vf.last_time_ns == T0_NS + 20_000_000


def test_new_channels_are_declared_with_standard_limits() -> None:
    vf = validate(
        frame(
            [
                col("gun.high_tension", "kV", [200.0], "voltage"),
                col("detector.aux_07", "counts", [3.0], "dimensionless", calibration_id="c1"),
            ]
        )
    )
    decl = {d.name: d for d in vf.declarations}
    ht = decl["gun.high_tension"]
    assert (ht.subsystem, ht.quantity, ht.canonical_unit, ht.source_unit) == (
        "gun",
        "voltage",
        "V",
        "kV",
    )
    spec = STANDARD_CHANNELS_BY_NAME["gun.high_tension"]
    assert (ht.lower, ht.upper) == (spec.lower, spec.upper)
    aux = decl["detector.aux_07"]
    assert (aux.lower, aux.upper, aux.canonical_unit, aux.calibration) == (None, None, "1", "c1")


def test_registered_channels_need_no_subsystem_or_quantity() -> None:
    vf = validate(
        frame([col("gun.high_tension", "kV", [200.0, 201.0])]),
        {"gun.high_tension": HT},
        known_source_units={"gun.high_tension": "kV"},
        auto_register=False,
    )
    assert vf.declarations == ()
    assert vf.value.tolist() == pytest.approx([200e3, 201e3])


def test_a_new_source_unit_declares_a_new_channel_version() -> None:
    vf = validate(
        frame([col("gun.high_tension", "V", [200_000.0])]),
        {"gun.high_tension": HT},
        known_source_units={"gun.high_tension": "kV"},
    )
    (decl,) = vf.declarations
    assert decl.name == "gun.high_tension" and decl.source_unit == "V"
    assert (decl.quantity, decl.lower, decl.upper) == ("voltage", HT.lower, HT.upper)


def test_a_new_calibration_declares_a_new_channel_version() -> None:
    f = frame([col("gun.high_tension", "kV", [200.0], calibration_id="ht-2026-11")])
    known = {"gun.high_tension": HT}
    units = {"gun.high_tension": "kV"}
    same = validate(
        f,
        known,
        known_source_units=units,
        known_calibrations={"gun.high_tension": "ht-2026-11"},
    )
    assert same.declarations == ()
    changed = validate(
        f,
        known,
        known_source_units=units,
        known_calibrations={"gun.high_tension": "ht-2026-01"},
    )
    assert [d.calibration for d in changed.declarations] == ["ht-2026-11"]


def test_a_large_frame_is_flattened_in_column_order() -> None:
    n_channels, n_ticks = 50, 1000
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n_channels, n_ticks))
    values[rng.random(values.shape) < 0.1] = np.nan
    times = T0_NS + np.arange(n_ticks, dtype=np.int64) * 1_000_000
    message = build_frame(
        instrument_id="nion-ustem-01",
        publisher_id="p",
        frame_seq=0,
        times_ns=times,
        seqs=np.arange(n_ticks, dtype=np.int64),
        columns=[(f"detector.aux_{c:02d}", "%", values[c]) for c in range(n_channels)],
    )
    f = decode_frame(message, max_bytes=1 << 30)
    known = {
        f"detector.aux_{c:02d}": KnownChannel(c, QuantityKind.DIMENSIONLESS, Subsystem.DETECTOR)
        for c in range(n_channels)
    }
    vf = validate(f, known, auto_register=False)
    present = ~np.isnan(values)
    assert vf.n_samples == int(present.sum())
    np.testing.assert_allclose(vf.value, values[present] / 100.0)  # % -> 1
    rows, ticks = np.nonzero(present)
    np.testing.assert_array_equal(vf.channel_index, rows)
    np.testing.assert_array_equal(vf.source_time_us, times[ticks] // 1000)
    np.testing.assert_array_equal(vf.seq, ticks)


# ---------------------------------------------------------------------------- rejections
def test_too_many_samples() -> None:
    f = frame([col("stage.x", "nm", [1.0] * 10, "length"), col("stage.y", "nm", [1.0] * 10)])
    error = rejection(f, max_samples=19)
    assert error.code == "too_large"
    assert "10 ticks x 2 channels = 20 samples" in error.reason and "19" in error.reason


def test_unknown_channel_without_auto_registration() -> None:
    error = rejection(frame([col("stage.x", "nm", [1.0], "length")]), auto_register=False)
    assert error.code == "unknown_channel"
    assert "stage.x" in error.reason and "nion-ustem-01" in error.reason


def test_new_channel_without_quantity_is_a_schema_error() -> None:
    error = rejection(frame([col("stage.x", "nm", [1.0], subsystem="stage")]))
    assert error.code == "schema"
    assert "columns[0]" in error.reason and "quantity" in error.reason
    assert "subsystem and" not in error.reason  # only what is missing


def test_subsystem_must_be_the_channel_prefix() -> None:
    f = frame([col("stage.x", "nm", [1.0], subsystem="holder", quantity="length")])
    error = rejection(f)
    assert error.code == "schema"
    assert "columns[0].subsystem" in error.reason and "'stage'" in error.reason


def test_quantity_must_match_the_registered_channel() -> None:
    f = frame([col("gun.high_tension", "A", [1.0], "current")])
    error = rejection(f, {"gun.high_tension": HT})
    assert error.code == "quantity_mismatch"
    assert "registered as voltage" in error.reason and "current" in error.reason


def test_quantity_must_match_a_standard_channel() -> None:
    error = rejection(frame([col("stage.alpha", "mm", [1.0], "length")]))
    assert error.code == "quantity_mismatch"
    assert "standard angle channel" in error.reason


def test_unit_mismatch() -> None:
    error = rejection(frame([col("gun.high_tension", "A", [1.0])]), {"gun.high_tension": HT})
    assert error.code == "unit_mismatch"
    assert "gun.high_tension" in error.reason and "'A'" in error.reason
    assert "convertible to V" in error.reason


def test_unknown_unit() -> None:
    error = rejection(frame([col("gun.high_tension", "kilofrobs", [200.0], "voltage")]))
    assert error.code == "unknown_unit"
    assert "kilofrobs" in error.reason and "gun.high_tension" in error.reason


def test_out_of_limits_suggests_a_unit_mix_up() -> None:
    f = frame([col("gun.high_tension", "V", [200.0, 200.1])])  # kV sent as V
    error = rejection(f, {"gun.high_tension": HT})
    assert error.code == "out_of_limits"
    reason = error.reason
    assert "channel gun.high_tension" in reason
    assert "200 V" in reason and "[1000, 1.5e+06] V" in reason
    assert "2 of 2 readings" in reason
    assert "looks like a unit mix-up (kV sent as V?)" in reason


def test_out_of_limits_values_a_thousand_times_too_large() -> None:
    f = frame([col("stage.x", "um", [1500.0], "length")])  # nm sent as um: 1.5 mm, fits
    assert validate(f).n_samples == 1
    f = frame([col("stage.x", "um", [2500.0], "length")])  # 2.5 mm: outside +-2 mm
    error = rejection(f)
    assert error.code == "out_of_limits"
    assert "looks like a unit mix-up (nm sent as um?)" in error.reason


def test_out_of_limits_of_an_offset_unit_suggests_a_factor() -> None:
    f = frame([col("holder.temperature", "degC", [0.025], "temperature")])
    assert validate(f).n_samples == 1
    f = frame([col("detector.temperature", "K", [0.3], "temperature")])  # limits 150..350 K
    error = rejection(f)
    assert error.code == "out_of_limits"
    assert "looks like a unit mix-up (kK sent as K?)" in error.reason


def test_out_of_limits_without_a_plausible_factor() -> None:
    f = frame([col("gun.high_tension", "kV", [200.0, 1e9, 200.0], "voltage")])
    error = rejection(f)
    assert error.code == "out_of_limits"
    assert "values[1]" in error.reason and "times_ns[1]" in error.reason
    assert "1 of 3 readings" in error.reason
    assert "mix-up" not in error.reason


def test_registered_limits_override_standard_ones() -> None:
    narrow = KnownChannel(9, QuantityKind.VOLTAGE, Subsystem.GUN, 199e3, 201e3)
    f = frame([col("gun.high_tension", "kV", [202.0])])
    error = rejection(f, {"gun.high_tension": narrow})
    assert error.code == "out_of_limits" and "[199000, 201000] V" in error.reason


def test_conversion_overflow_is_non_finite() -> None:
    error = rejection(frame([col("detector.aux_x", "kHz", [1e306], "frequency")]))
    assert error.code == "non_finite"
    assert "columns[0].values[0]" in error.reason and "Hz" in error.reason


def test_future_time_says_by_how_much() -> None:
    f = frame([col("stage.x", "nm", [1.0, 2.0], "length")], [T0_NS, NOW_NS + 2 * 3600 * S])
    error = rejection(f)
    assert error.code == "future_time"
    assert "times_ns[1]" in error.reason and "2.0 h ahead" in error.reason
    assert "5.0 min" in error.reason  # the limit
    f = frame([col("stage.x", "nm", [1.0], "length")], [NOW_NS + 299 * S])
    assert validate(f).n_samples == 1


def test_past_time_suggests_the_time_unit() -> None:
    f = frame([col("stage.x", "nm", [1.0, 1.0], "length")], [T0_NS, T0_NS // 1000])
    error = rejection(f)
    assert error.code == "past_time"
    assert "times_ns[1]" in error.reason and "1990-01-01" in error.reason
    assert "looks like a time in µs" in error.reason
    old = frame([col("stage.x", "nm", [1.0], "length")], [OLDEST_NS + 1000])  # 1990 is fine
    assert validate(old).source_time_us.tolist() == [OLDEST_NS // 1000 + 1]


def test_length_mismatch_of_a_frame_built_without_validation() -> None:
    good = frame([col("stage.x", "nm", [1.0, 2.0], "length")])
    bad = TelemetryFrameV1.model_construct(**{**dict(good), "seqs": [1]})
    error = rejection(bad)
    assert error.code == "length_mismatch"


def test_duplicate_channels_of_a_frame_built_without_validation() -> None:
    good = frame([col("stage.x", "nm", [1.0], "length")])
    bad = TelemetryFrameV1.model_construct(**{**dict(good), "columns": good.columns * 2})
    error = rejection(bad)
    assert error.code == "schema" and "stage.x" in error.reason


# ---------------------------------------------------------------------------- value range
@pytest.mark.parametrize(
    ("unit", "value"), [("%", 1e308), ("1", -1e101), ("1", 1.5e100), ("%", 1.0000001e102)]
)
def test_values_beyond_what_the_store_holds_are_refused(unit: str, value: float) -> None:
    # A channel without limits of its own: the store's range is the limit (1e308 stored
    # would overflow the rollups' sums of squares and break every bucketed query).
    gain = {"detector.gain": KnownChannel(4, QuantityKind.DIMENSIONLESS, Subsystem.DETECTOR)}
    error = rejection(frame([col("detector.gain", unit, [1.0, value, None])]), gain)
    assert error.code == "out_of_limits"
    assert "columns[0].values[1]" in error.reason and "detector.gain" in error.reason
    assert f"{store.MAX_SAMPLE_MAGNITUDE:g}" in error.reason


def test_values_up_to_what_the_store_holds_are_accepted() -> None:
    gain = {"detector.gain": KnownChannel(4, QuantityKind.DIMENSIONLESS, Subsystem.DETECTOR)}
    limit = store.MAX_SAMPLE_MAGNITUDE
    validated = validate(frame([col("detector.gain", "1", [limit, -limit, 1e-300, 0.0])]), gain)
    assert validated.value.tolist() == [limit, -limit, 1e-300, 0.0]


# ---------------------------------------------------------------------------- key
def test_a_frame_keyed_by_its_instrument_passes() -> None:
    f = frame([col("stage.x", "nm", [1.0], "length")])
    check_key(f, b"nion-ustem-01")
    check_key(f, "nion-ustem-01")


@pytest.mark.parametrize(
    ("key", "says"),
    [(None, "no key"), (b"other-stem", "'other-stem'"), (b"", "''"),
     (b"nion-ustem-01 ", "'nion-ustem-01 '"), (b"\xff\xfe", "not UTF-8")],
)  # fmt: skip
def test_a_frame_keyed_otherwise_or_not_at_all_is_refused(key: bytes | None, says: str) -> None:
    f = frame([col("stage.x", "nm", [1.0], "length")])
    with pytest.raises(RejectedMessage) as caught:
        check_key(f, key)
    assert caught.value.code == "key_mismatch"
    assert says in caught.value.reason and "nion-ustem-01" in caught.value.reason
    assert "key_mismatch" in DEAD_LETTER_CODES


# ---------------------------------------------------------------------------- channel count
def _known(n: int) -> dict[str, KnownChannel]:
    return {
        f"detector.aux_{i}": KnownChannel(i, QuantityKind.DIMENSIONLESS, Subsystem.DETECTOR)
        for i in range(n)
    }


def _new_columns(names: list[str]) -> list[dict[str, Any]]:
    return [col(name, "1", [1.0], "dimensionless") for name in names]


def test_the_default_channel_cap_is_the_settings_default() -> None:
    assert IngestSettings().ingest_max_channels_per_instrument == 1000


def test_a_frame_of_thousands_of_new_channels_is_refused() -> None:
    f = frame(_new_columns([f"detector.c{i}" for i in range(5000)]))
    error = rejection(f)
    assert error.code == "too_many_channels"
    assert "5000 channels" in error.reason and "limit of 1000" in error.reason


def test_new_channels_up_to_the_cap_are_accepted_beyond_it_refused() -> None:
    known = _known(8)
    assert len(validate(frame(_new_columns(["stage.a", "stage.b"])), known, max_channels=10)
               .declarations) == 2  # fmt: skip
    error = rejection(
        frame(_new_columns(["stage.a", "stage.b", "stage.c"])), known, max_channels=10
    )
    assert error.code == "too_many_channels" and "11 channels" in error.reason


def test_channels_declared_by_earlier_frames_count_toward_the_cap() -> None:
    known = _known(8)
    f = frame(_new_columns(["stage.a"]))
    assert validate(f, known, max_channels=10, pending_channels={"stage.z"}).n_samples == 1
    error = rejection(f, known, max_channels=10, pending_channels={"stage.y", "stage.z"})
    assert error.code == "too_many_channels"


def test_an_instrument_over_the_cap_still_sends_its_channels() -> None:
    known = _known(12)
    f = frame([col("detector.aux_3", "1", [2.0])])
    assert validate(f, known, max_channels=10).n_samples == 1
