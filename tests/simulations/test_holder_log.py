"""The Protochips holder-log reader, on the real gas-cell log and on broken variants of it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pint
import pytest

from simulations import HolderLog, HolderLogError, SimulationError, TelemetryBlock, read_holder_log
from twin import Calibration, QuantityKind, Subsystem, Tracker, default_tracker_config

START = dt.datetime(2014, 12, 15, 19, 7, 4, 165000, tzinfo=dt.UTC)
START_NS = 1_418_670_424_165_000_000
CHANNELS = (
    "holder.temperature",
    "holder.gas_pressure",
    "holder.tank1_pressure",
    "holder.tank2_pressure",
    "holder.vacuum_tank_pressure",
)


@pytest.fixture(scope="module")
def log_path(realdata: Path) -> Path:
    path = realdata / "protochips_gas_cell.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def log(log_path: Path) -> HolderLog:
    return read_holder_log(log_path)


def test_start_is_the_logged_local_time_taken_as_utc_by_default(log: HolderLog) -> None:
    assert log.start == START
    assert log.start.utcoffset() == dt.timedelta(0)
    assert log.start_ns == START_NS
    assert int(log.times_ns[0]) == START_NS


def test_utc_offset_or_timezone_places_the_local_clock(log_path: Path) -> None:
    eastern = read_holder_log(log_path, utc_offset_hours=-5)
    assert eastern.start == dt.datetime(2014, 12, 16, 0, 7, 4, 165000, tzinfo=dt.UTC)
    assert int(eastern.times_ns[0]) == START_NS + 5 * 3600 * 10**9
    zoned = read_holder_log(log_path, timezone=ZoneInfo("America/New_York"))  # EST in December
    np.testing.assert_array_equal(zoned.times_ns, eastern.times_ns)
    with pytest.raises(ValueError, match="not both"):
        read_holder_log(log_path, utc_offset_hours=1, timezone=dt.UTC)


def test_channels_and_units_are_the_files_own(log: HolderLog) -> None:
    assert log.columns == (
        "Holder Temperature",
        "Holder Pressure",
        "Tank1 Pressure",
        "Tank2 Pressure",
        "Vacuum Tank Pressure",
    )
    assert tuple(c.name for c in log.channels) == CHANNELS
    assert all(c.subsystem is Subsystem.HOLDER for c in log.channels)
    assert log.channels[0].quantity is QuantityKind.TEMPERATURE
    assert all(c.quantity is QuantityKind.PRESSURE for c in log.channels[1:])
    assert log.units == ("degC", "torr", "torr", "torr", "torr")
    assert log.units_as_written == ("Degrees C", "Torr", "Torr", "Torr", "Torr")
    assert log.skipped_columns == ()


def test_units_convert_to_the_canonical_unit_of_each_channel(log: HolderLog) -> None:
    ureg = pint.UnitRegistry()
    for spec, unit in zip(log.channels, log.units, strict=True):
        ureg.Quantity(1.0, unit).to(spec.canonical_unit)  # raises if not convertible
    assert ureg.Quantity(25.0, log.units[0]).to("K").magnitude == pytest.approx(298.15)
    assert ureg.Quantity(760.0, log.units[1]).to("Pa").magnitude == pytest.approx(101325.0)


def test_one_sample_per_time_with_the_header_rows_merged(log: HolderLog) -> None:
    # 3302 data lines; the 8 lines at time 0 (start date, time, units...) are one sample.
    assert log.n_samples == 3295
    assert log.duplicate_rows == 7
    assert np.all(np.diff(log.offsets_ns) > 0)
    assert log.values.shape == (5, 3295)
    assert log.values.dtype == np.float64
    assert int(log.lines[0]) == 2 and int(log.lines[1]) == 10


def test_first_and_last_samples_are_as_written(log: HolderLog) -> None:
    np.testing.assert_array_equal(
        log.values[:, 0], [25.0, 733.154293872, 732.421872, 732.910153248, 727.783200144]
    )
    assert int(log.offsets_ns[1]) == 47_000_000  # the 'User agreeing to terms' row
    np.testing.assert_array_equal(
        log.values[:, 1], [25.0, 734.374996992, 732.177731376, 733.154293872, 728.027340768]
    )
    assert int(log.offsets_ns[-1]) == 856_052_000_000
    assert int(log.times_ns[-1]) == START_NS + 856_052_000_000
    np.testing.assert_array_equal(
        log.values[:, -1], [25.0, 0.0, 732.421872, 732.910153248, 0.17333984304]
    )
    np.testing.assert_array_equal(log.times_ns, START_NS + log.offsets_ns)


def test_the_gas_cell_is_pumped_and_heated_during_the_log(log: HolderLog) -> None:
    temperature = log.values[log.index("holder.temperature")]
    assert set(np.unique(np.round(temperature))) == {25.0, 35.0}
    cell = log.values[log.index("holder.gas_pressure")]
    assert cell[0] > 700 and cell[-1] == 0.0  # from about an atmosphere to vacuum [Torr]
    assert np.all(np.isfinite(log.values))


def test_notes_and_metadata_are_kept(log: HolderLog) -> None:
    assert log.metadata["Date (yyyy.mm.dd)"] == "2014.12.15"
    assert log.metadata["Time (hh:mm:ss.ms)"] == "19:07:04.165"
    assert log.metadata["Pressure units"] == "Torr"
    assert log.metadata["User agreeing to terms"] == "eric"
    assert log.metadata["Chip type"] == "E-GAS-RTD"
    assert log.metadata["Calibration file"].endswith("GC21105_AD4.csv")
    assert len(log.notes) == 12
    experiment = next(n for n in log.notes if n.key == "Experiment type")
    assert (experiment.value, experiment.line, experiment.offset_ns) == (
        "Vacuum",
        2392,
        619_236_000_000,
    )
    # A note on a later row does not make that row any less of a sample.
    assert 619_236_000_000 in log.offsets_ns


def test_blocks_cover_the_log_in_order(log: HolderLog) -> None:
    blocks = list(log.blocks(500, instrument_id="titan-01"))
    assert [b.n_ticks for b in blocks] == [500] * 6 + [295]
    assert all(b.instrument_id == "titan-01" and b.true_values is None for b in blocks)
    assert all(b.units == ("degC", "torr", "torr", "torr", "torr") for b in blocks)
    joined = TelemetryBlock.concatenate(blocks)
    np.testing.assert_array_equal(joined.times_ns, log.times_ns)
    np.testing.assert_array_equal(joined.values, log.values)
    np.testing.assert_array_equal(joined.seqs, np.arange(3295))
    with pytest.raises(ValueError, match=r"truth|recording"):
        blocks[0].truth("holder.temperature")
    with pytest.raises(ValueError):
        next(log.blocks(0))


# ------------------------------------------------------------------ robustness
HEADER = "Time, Notes,Holder Temperature,Holder Pressure\n"
NOTES = (
    "0,Date (yyyy.mm.dd) = 2021.03.04,30,1.5\n"
    "0,Time (hh:mm:ss.ms) = 08:00:00.250,30,1.5\n"
    "0,Time units = Milliseconds,30,1.5\n"
    "0,Temperature units = Degrees C,30,1.5\n"
    "0,Pressure units = Torr,30,1.5\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "log.csv"
    path.write_text(text)
    return path


def test_a_small_well_formed_log(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + NOTES + "250,,31,1.4\n500,,,1.3\n\n")
    log = read_holder_log(path)
    assert log.start == dt.datetime(2021, 3, 4, 8, 0, 0, 250000, tzinfo=dt.UTC)
    assert log.n_samples == 3
    assert log.duplicate_rows == 4
    np.testing.assert_array_equal(log.values[1], [1.5, 1.4, 1.3])
    assert np.isnan(log.values[0, 2])  # an empty cell is a lost reading, not a zero


def test_columns_of_other_holders_are_mapped_or_skipped(tmp_path: Path) -> None:
    text = (
        "Time,Notes,Holder Temperature,Heater Current,Holder Voltage,Holder Resistance\n"
        "0,Date (yyyy.mm.dd) = 2021.03.04,30,0.01,1.0,100\n"
        "0,Time (hh:mm:ss.ms) = 08:00:00.000,30,0.01,1.0,100\n"
        "0,Time units = Seconds,30,0.01,1.0,100\n"
        "0,Temperature units = Degrees C,30,0.01,1.0,100\n"
        "0,Current units = Amps,30,0.01,1.0,100\n"
        "0,Voltage units = Volts,30,0.01,1.0,100\n"
        "0,Resistance units = Ohms,30,0.01,1.0,100\n"
        "1.5,,31,0.02,1.1,101\n"
    )
    log = read_holder_log(write(tmp_path, text))
    assert [c.name for c in log.channels] == [
        "holder.temperature",
        "holder.heater_current",
        "holder.voltage",
    ]
    assert log.units == ("degC", "A", "V")
    assert log.skipped_columns == ("Holder Resistance",)
    assert log.offsets_ns.tolist() == [0, 1_500_000_000]


def line_of(error: pytest.ExceptionInfo[HolderLogError]) -> int | None:
    return error.value.line


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "empty"),
        ("Time,Holder Temperature\n0,25\n", 1, "missing header"),
        (HEADER + NOTES.replace("Torr", "Furlongs"), 6, "unknown unit 'Furlongs'"),
        (HEADER + NOTES + "250,,31,1.4\nabc,,31,1.4\n", 8, "time 'abc'"),
        (HEADER + NOTES + "250,,31,1.4\n300,,31,lots\n", 8, "'lots' is not a number"),
        (HEADER + NOTES + "250,,31,1.4\n200,,31,1.4\n", 8, "goes back"),
        (HEADER + NOTES + "250,,31,1.4\n250,,32,1.4\n", 8, "different values"),
        (HEADER + NOTES + "250,,31\n", 7, "3 cells"),
        (
            HEADER + NOTES.replace("Time units = Milliseconds", "Time units = Fortnights"),
            4,
            "Fortnights",
        ),
        (HEADER + NOTES.replace("2021.03.04", "04/03/2021"), 2, "yyyy.mm.dd"),
        (HEADER + NOTES + "250,Pressure units = mbar,31,1.4\n", 7, "mid-log"),
        (HEADER + NOTES + "-5,,31,1.4\n", 7, "negative"),
    ],
)
def test_malformed_logs_raise_with_the_line_number(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(HolderLogError, match=message) as info:
        read_holder_log(path)
    assert line_of(info) == line
    assert f"{path}:{line}:" in str(info.value)
    assert isinstance(info.value, SimulationError) and isinstance(info.value, ValueError)


def test_a_log_without_a_start_time_is_refused(tmp_path: Path) -> None:
    text = HEADER + NOTES.replace("0,Time (hh:mm:ss.ms) = 08:00:00.250,30,1.5\n", "")
    with pytest.raises(HolderLogError, match=r"Time \(hh:mm:ss.ms\)"):
        read_holder_log(write(tmp_path, text))


# ------------------------------------------------------------ the log replayed through the twin
#: What the log shows being done (from its values and notes): the heater set to 35 °C for
#: 2.6 s and back; gas let into the cell, purged and pumped out ('Experiment type = Vacuum'
#: at 619 s), the vacuum tank pumped with it. Flags are true detections there and only there.
OPERATOR_ACTIONS = (
    ("holder.temperature", 13.0, 17.0),
    ("holder.gas_pressure", 200.0, 600.0),
    ("holder.vacuum_tank_pressure", 400.0, 600.0),
)


def _replay(log: HolderLog, limits: dict[str, tuple[float | None, float | None]]) -> list:
    """The log through a twin tracker, as the twin worker runs it: canonical units, a first
    window of 60 s, then 10 s windows, the budget of 1 false alarm a day."""
    ureg = pint.UnitRegistry()
    names = [c.name for c in log.channels]
    times, values = [], []
    for block in log.blocks(500):  # as `beamtwin replay-holder-log` publishes it
        times.append(block.times_ns / 1e9)
        values.append(
            [
                ureg.Quantity(block.values[i], block.units[i]).to(spec.canonical_unit).magnitude
                for i, spec in enumerate(block.channels)
            ]
        )
    t = np.concatenate(times)
    v = np.concatenate([np.array(x) for x in values], axis=1)
    rate_hz = 1.0 / float(np.median(np.diff(t)))
    config = default_tracker_config(Calibration(), channels=names, rate_hz=rate_hz, limits=limits)
    tracker = Tracker(config)
    start = log.start_ns / 1e9
    state = tracker.initial_state(start_s=start)
    flags = []
    ends = [start + 60.0 + 10.0 * k for k in range(int((t[-1] - start - 60.0) / 10.0) + 2)]
    for end in ends:
        update = tracker.update(state, {n: (t, v[i]) for i, n in enumerate(names)}, until_s=end)
        state, flags = update.state, flags + update.flags
    return [(f.kind, f.channel, f.time_s - start) for f in flags]


def test_the_log_replayed_through_the_twin_raises_flags_only_where_something_was_done(
    log: HolderLog,
) -> None:
    """At 1 false alarm per day, the quiet stretches (about 7 minutes of 5 channels) expect
    0.005: none. The supply tanks were not touched: no flag. The cell, pumped out, reads
    exactly 0 torr (the limit of its gauge) on and off for 3 minutes: a clipped reading, not
    a stuck sensor."""
    limits = {c.name: (c.lower, c.upper) for c in log.channels}
    flags = _replay(log, limits)
    gas = log.values[log.index("holder.gas_pressure")]
    assert np.count_nonzero(gas == 0.0) > 100
    unexplained = [
        f
        for f in flags
        if not any(f[1] == ch and lo <= f[2] <= hi for ch, lo, hi in OPERATOR_ACTIONS)
    ]
    assert unexplained == []
    assert {f[1] for f in flags} == {ch for ch, _, _ in OPERATOR_ACTIONS}  # each was seen
    # Without the gauge's limit, the readings resting at 0 torr are taken for a stuck sensor.
    unlimited = _replay(log, {**limits, "holder.gas_pressure": (None, None)})
    assert any(
        kind == "stuck" and channel == "holder.gas_pressure" for kind, channel, _ in unlimited
    )
