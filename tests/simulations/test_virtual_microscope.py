"""The virtual microscope: reproducible, continuous, realistic telemetry with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulations import (
    FLASH_INTERVAL_S,
    STANDARD_CHANNEL_MODELS,
    ChannelModel,
    Dropout,
    Excursion,
    Fault,
    FaultError,
    FaultTarget,
    MicroscopeConfigError,
    NoiseBurst,
    Ramp,
    SimulationError,
    Spike,
    Step,
    Stuck,
    TelemetryBlock,
    VirtualMicroscope,
    iter_blocks,
    lens_temperature_rise,
)
from twin import (
    STANDARD_STEM_CHANNELS,
    ChannelSpec,
    QuantityKind,
    Subsystem,
    is_valid_channel_name,
)

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
RATE_HZ = 10.0


def microscope(**kwargs: object) -> VirtualMicroscope:
    params: dict[str, object] = {"seed": 7, "start_ns": START_NS, "rate_hz": RATE_HZ}
    params.update(kwargs)
    return VirtualMicroscope(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def hour() -> TelemetryBlock:
    """One hour of the standard channels at 10 Hz, no faults."""
    return microscope().generate(36_000)


def assert_blocks_equal(a: TelemetryBlock, b: TelemetryBlock) -> None:
    assert a.channels == b.channels
    assert a.units == b.units
    np.testing.assert_array_equal(a.seqs, b.seqs)
    np.testing.assert_array_equal(a.times_ns, b.times_ns)
    np.testing.assert_array_equal(a.values, b.values)  # NaN == NaN here
    np.testing.assert_array_equal(a.true_values, b.true_values)


# ------------------------------------------------------------------ reproducibility
def test_same_seed_and_parameters_give_identical_arrays() -> None:
    assert_blocks_equal(microscope().generate(500), microscope().generate(500))


def test_another_seed_gives_other_readings_and_truth() -> None:
    a, b = microscope(seed=1).generate(200), microscope(seed=2).generate(200)
    hv = a.index("gun.high_tension")
    assert not np.array_equal(a.values[hv], b.values[hv])
    assert not np.array_equal(a.true_values, b.true_values)
    assert not np.array_equal(a.times_ns, b.times_ns)  # the clock jitter differs too


ALL_FAULTS: tuple[Fault, ...] = (
    Step("objective.lens_current", at_s=3.05, delta=2e-4),
    Step("holder.temperature", at_s=10.0, delta=150.0, settling_time_s=4.0),
    Ramp("stage.x", start_s=2.0, rate_per_s=5e-9, end_s=30.0),
    Excursion("detector.temperature", start_s=5.0, duration_s=20.0, amplitude=1.5),
    Stuck("gun.high_tension", start_s=4.0, end_s=27.3),
    Stuck("stage.y", start_s=0.0, end_s=12.0),
    Dropout("vacuum.column_pressure", start_s=6.0, end_s=19.0),
    Spike("condenser.c2_current", at_s=8.87, amplitude=0.01),
    NoiseBurst("holder.bias_voltage", start_s=9.0, end_s=21.0, sigma=0.05),
)


@pytest.mark.parametrize("sizes", [[400], [1, 7, 0, 33, 100, 259], [139, 139, 122]])
def test_blocks_in_pieces_equal_one_big_block(sizes: list[int]) -> None:
    whole = microscope(faults=ALL_FAULTS, extra_channels=12, dropout_probability=0.01).generate(400)
    pieced = microscope(faults=ALL_FAULTS, extra_channels=12, dropout_probability=0.01)
    joined = TelemetryBlock.concatenate([pieced.generate(n) for n in sizes])
    assert pieced.next_seq == 400
    assert_blocks_equal(whole, joined)


def test_iter_blocks_continues_the_stream() -> None:
    blocks = list(iter_blocks(microscope(), ticks_per_block=50, n_blocks=4))
    assert [b.n_ticks for b in blocks] == [50, 50, 50, 50]
    assert [int(b.seqs[0]) for b in blocks] == [0, 50, 100, 150]
    assert_blocks_equal(TelemetryBlock.concatenate(blocks), microscope().generate(200))
    endless = iter_blocks(microscope(), ticks_per_block=3)
    assert [int(next(endless).seqs[0]) for _ in range(5)] == [0, 3, 6, 9, 12]


# ------------------------------------------------------------------ shapes, units, clock
def test_block_shapes_dtypes_and_canonical_units() -> None:
    vm = microscope()
    block = vm.generate(123)
    n_channels = len(STANDARD_STEM_CHANNELS)
    assert block.instrument_id == "virtual-stem-01"
    assert block.channels == STANDARD_STEM_CHANNELS
    assert block.values.shape == block.true_values.shape == (n_channels, 123)
    assert block.values.dtype == block.true_values.dtype == np.float64
    assert block.times_ns.dtype == block.seqs.dtype == np.int64
    assert block.units == tuple(c.quantity.canonical_unit for c in STANDARD_STEM_CHANNELS)
    assert block.units[block.index("gun.high_tension")] == "V"
    assert block.units[block.index("vacuum.gun_pressure")] == "Pa"
    assert block.units[block.index("stage.alpha")] == "rad"
    np.testing.assert_array_equal(block.seqs, np.arange(123))
    assert vm.generate(5).seqs.tolist() == [123, 124, 125, 126, 127]
    assert vm.generate(0).values.shape == (n_channels, 0)


def test_block_arrays_are_read_only() -> None:
    block = microscope().generate(10)
    with pytest.raises(ValueError, match="read-only"):
        block.values[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        block.times_ns[0] = 0


def test_source_clock_ticks_at_the_rate_with_small_jitter() -> None:
    block = microscope(rate_hz=50.0, clock_jitter_s=1e-4).generate(5000)
    nominal = START_NS + block.seqs * 20_000_000
    jitter = block.times_ns - nominal
    assert np.all(np.diff(block.times_ns) > 0)
    assert 0 < np.std(jitter) < 2e5  # ~0.1 ms
    assert np.max(np.abs(jitter)) <= 0.4 * 20_000_000
    assert abs(np.mean(np.diff(block.times_ns)) - 20_000_000) < 1_000
    exact = microscope(clock_jitter_s=0.0).generate(10)
    np.testing.assert_array_equal(exact.times_ns, START_NS + np.arange(10) * 100_000_000)


def test_extra_channels_make_100_plausible_channels() -> None:
    vm = microscope(extra_channels=100 - len(STANDARD_STEM_CHANNELS))
    names = [c.name for c in vm.channels]
    assert len(names) == len(set(names)) == 100
    assert all(is_valid_channel_name(n) for n in names)
    assert {"vacuum.ion_pump_1", "detector.aux_01", "vacuum.ion_pump_2"} <= set(names)
    block = vm.generate(600)
    assert block.values.shape == (100, 600)
    for i, spec in enumerate(block.channels):
        assert spec.lower is not None and spec.upper is not None
        assert np.all((block.values[i] >= spec.lower) & (block.values[i] <= spec.upper)), spec


# ------------------------------------------------------------------ realism of truth and readings
def test_readings_lie_within_channel_limits_and_near_the_truth(hour: TelemetryBlock) -> None:
    vm = microscope()
    for i, spec in enumerate(hour.channels):
        model = vm.models[spec.name]
        reading, truth = hour.values[i], hour.true_values[i]
        assert np.all(np.isfinite(reading)), spec.name
        assert spec.lower is not None and spec.upper is not None
        assert np.all((reading >= spec.lower) & (reading <= spec.upper)), spec.name
        assert np.all((truth >= spec.lower) & (truth <= spec.upper)), spec.name
        if model.log_normal:
            # Two significant digits: a reading is within half a step, <= 5 %, of its value.
            error = np.abs(np.log(reading / truth))
            assert np.max(error) < 6 * model.noise + 0.06, spec.name
            # Rounding to two digits adds up to 5 % (uniform) on top of the log-normal noise.
            spread = np.std(np.log(reading / truth))
            assert 0.9 * model.noise < spread < math.hypot(model.noise, 0.05 / math.sqrt(3))
        else:
            error = np.abs(reading - truth)
            assert np.max(error) <= 6 * model.noise + model.resolution / 2 + 1e-12 * abs(
                model.nominal
            ), spec.name
            if model.noise > 2 * model.resolution:
                # The read-out noise is what the model says (quantization adds q²/12).
                expected = math.sqrt(model.noise**2 + model.resolution**2 / 12)
                assert np.std(reading - truth) == pytest.approx(expected, rel=0.05), spec.name


def test_readings_are_quantized_to_the_adc_step(hour: TelemetryBlock) -> None:
    hv = hour.reading("gun.high_tension")
    steps = hv / 0.01
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    gauge = hour.reading("vacuum.column_pressure")
    mantissa = gauge / 10.0 ** np.floor(np.log10(gauge))
    np.testing.assert_allclose(mantissa * 10, np.round(mantissa * 10), atol=1e-6)


def test_true_state_drifts_as_an_instrument_does(hour: TelemetryBlock) -> None:
    ht = hour.truth("gun.high_tension")
    assert np.all(np.abs(ht / 200e3 - 1) < 20e-6)  # within 20 ppm of 200 kV for an hour
    assert 0.1e-6 < abs(ht[-600:].mean() - ht[:600].mean()) / 200e3 < 10e-6  # a few ppm/h
    emission = hour.truth("gun.emission_current")
    assert emission[-600:].mean() < 0.8 * emission[:600].mean()  # cold FEG decays
    for axis in ("stage.x", "stage.y"):
        position = hour.truth(axis)
        speed = abs(position[-1] - position[0]) / 3600.0
        assert 0.01e-9 < speed < 1e-9, axis  # sub-nm/s drift
    holder = hour.truth("holder.temperature")
    assert np.all(np.abs(holder - 293.15) < 0.5)
    assert np.std(holder) > 0.005  # it does fluctuate
    column, gun = hour.truth("vacuum.column_pressure"), hour.truth("vacuum.gun_pressure")
    assert 3e-6 < np.median(column) < 5e-5
    assert 3e-8 < np.median(gun) < 5e-7
    setting = hour.reading("detector.exposure_time")
    assert np.all(setting == setting[0])


def test_lens_currents_follow_the_lens_warm_up(hour: TelemetryBlock) -> None:
    model = STANDARD_CHANNEL_MODELS["objective.lens_current"]
    truth = hour.truth("objective.lens_current")
    t_s = hour.seqs / RATE_HZ
    rise = lens_temperature_rise(t_s)
    assert rise[-1] > 0.5  # the lens has warmed by most of a kelvin in an hour
    expected_change = model.thermal_coefficient * (rise[-600:].mean() - rise[:600].mean())
    change = truth[-600:].mean() - truth[:600].mean()
    assert expected_change > 10 * model.noise
    assert change == pytest.approx(expected_change, rel=0.3)


def test_hv_ripple_is_present_and_aliased() -> None:
    block = microscope(rate_hz=10.0).generate(6000)
    ht = block.truth("gun.high_tension") - 200e3
    spectrum = np.abs(np.fft.rfft(ht - np.polyval(np.polyfit(block.seqs, ht, 2), block.seqs)))
    freqs = np.fft.rfftfreq(len(ht), d=0.1)
    # 50.03 Hz sampled at 10 Hz appears at 0.03 Hz.
    assert freqs[np.argmax(spectrum[5:]) + 5] == pytest.approx(0.03, abs=0.002)


def test_dropout_probability_loses_that_share_of_readings() -> None:
    block = microscope(dropout_probability=0.02).generate(5000)
    lost = np.isnan(block.values)
    assert lost.mean() == pytest.approx(0.02, rel=0.1)
    assert not np.isnan(block.true_values).any()


def test_a_channel_without_a_model_gets_a_plausible_default() -> None:
    spec = ChannelSpec("gun.anode_voltage", Subsystem.GUN, QuantityKind.VOLTAGE, 0.0, 5e3)
    vm = microscope(channels=(*STANDARD_STEM_CHANNELS, spec))
    assert vm.models["gun.anode_voltage"].nominal == 2.5e3
    reading = vm.generate(100).reading("gun.anode_voltage")
    assert np.all((reading > 0) & (reading < 5e3))


def test_models_can_be_overridden() -> None:
    vm = microscope(models={"gun.high_tension": ChannelModel(nominal=300e3, resolution=1.0)})
    reading = vm.generate(20).reading("gun.high_tension")
    np.testing.assert_array_equal(reading, np.full(20, 300e3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_hz": 0.0},
        {"rate_hz": math.nan},
        {"extra_channels": -1},
        {"dropout_probability": 1.5},
        {"channels": (*STANDARD_STEM_CHANNELS, STANDARD_STEM_CHANNELS[0])},
        {"channels": ()},
        {"models": {"gun.no_such_sensor": ChannelModel(nominal=1.0)}},
    ],
)
def test_impossible_configurations_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(MicroscopeConfigError):
        microscope(**kwargs)


def test_model_parameters_are_checked() -> None:
    with pytest.raises(MicroscopeConfigError, match="noise"):
        ChannelModel(nominal=1.0, noise=-1.0)
    with pytest.raises(MicroscopeConfigError, match="positive nominal"):
        ChannelModel(nominal=0.0, log_normal=True)
    with pytest.raises(MicroscopeConfigError, match="flash_interval_s"):
        ChannelModel(nominal=1.0, decay_time_s=10.0, flash_interval_s=0.0)


def test_the_cold_feg_is_flashed_and_no_channel_leaves_its_range_in_three_days() -> None:
    """Three days at 1 Hz: the emission is restored at every tip flash (it would otherwise
    fall below its read-out noise within a day and rest at 0 A), and no channel's truth or
    reading reaches the limits of its range."""
    vm = microscope(rate_hz=1.0)
    day_s = 86_400
    row = [c.name for c in vm.channels].index("gun.emission_current")
    nominal = STANDARD_CHANNEL_MODELS["gun.emission_current"].nominal
    lower = np.array([-math.inf if c.lower is None else c.lower for c in vm.channels])
    upper = np.array([math.inf if c.upper is None else c.upper for c in vm.channels])
    emission = []
    for _ in range(3 * 24):
        block = vm.generate(3600)
        assert block.true_values is not None
        truth, readings = block.true_values, block.values
        assert np.all((truth > lower[:, None]) & (truth < upper[:, None]))
        assert np.all((readings > lower[:, None]) & (readings < upper[:, None]))
        emission.append(truth[row])
    e = np.concatenate(emission)
    flashes = vm.tip_flashes(0.0, 3 * day_s)
    assert [t for _, t in flashes] == [FLASH_INTERVAL_S * k for k in range(1, 36)]
    assert {channel for channel, _ in flashes} == {"gun.emission_current"}
    for _, t in flashes:
        k = int(t)  # tick k is at k seconds
        assert e[k - 1] < 0.6 * nominal  # about half gone after 2 h (3 h decay time)
        assert e[k] > 0.98 * nominal  # restored
    assert 0.45 * nominal < e.min() and e.max() < 1.02 * nominal
    # A microscope that never flashes decays towards 0 A.
    models = {"gun.emission_current": STANDARD_CHANNEL_MODELS["gun.emission_current"]}
    unflashed = {
        name: ChannelModel(
            nominal=m.nominal, decay_time_s=m.decay_time_s, wander=m.wander, noise=m.noise,
            resolution=m.resolution,
        )
        for name, m in models.items()
    }  # fmt: skip
    late = microscope(rate_hz=1.0, models=unflashed)
    late.generate(20 * 3600)
    assert late.tip_flashes(0.0, 3 * day_s) == []
    assert np.mean(late.generate(3600).values[row] == 0.0) > 0.1  # clipped at its limit


# ------------------------------------------------------------------ faults
def baseline_and_faulty(fault: Fault, n: int = 400) -> tuple[TelemetryBlock, TelemetryBlock]:
    """The same microscope without and with one fault; faults draw no shared random numbers."""
    return microscope().generate(n), microscope(faults=[fault]).generate(n)


def test_fault_targets_are_documented_per_kind() -> None:
    assert Step.target is Ramp.target is Excursion.target is FaultTarget.TRUTH
    assert Stuck.target is Dropout.target is Spike.target is NoiseBurst.target
    assert Stuck.target is FaultTarget.SENSOR


def test_step_changes_the_truth_by_delta_at_its_time() -> None:
    fault = Step("objective.lens_current", at_s=10.0, delta=2e-4)
    base, faulty = baseline_and_faulty(fault)
    row = base.index(fault.channel)
    t_s = base.seqs / RATE_HZ
    np.testing.assert_allclose(
        faulty.true_values[row] - base.true_values[row],
        np.where(t_s >= 10.0, 2e-4, 0.0),
        atol=1e-12,
    )
    jump = np.diff(faulty.values[row])[99]  # from tick 99 (9.9 s) to tick 100 (10.0 s)
    assert jump == pytest.approx(2e-4, abs=6 * 3e-6 + 1e-6)
    others = np.arange(base.n_channels) != row
    np.testing.assert_array_equal(faulty.values[others], base.values[others])


def test_step_with_settling_time_approaches_delta_exponentially() -> None:
    fault = Step("holder.temperature", at_s=10.0, delta=400.0, settling_time_s=5.0)
    base, faulty = baseline_and_faulty(fault)
    change = faulty.truth(fault.channel) - base.truth(fault.channel)
    assert change[99] == 0.0
    assert change[150] == pytest.approx(400.0 * (1 - math.exp(-1)), rel=1e-9)
    assert change[399] == pytest.approx(400.0 * (1 - math.exp(-29.9 / 5.0)), rel=1e-9)
    assert 398.9 < change[399] < 400.0


def test_ramp_changes_the_truth_linearly_then_holds() -> None:
    fault = Ramp("stage.x", start_s=5.0, rate_per_s=2e-9, end_s=25.0)
    base, faulty = baseline_and_faulty(fault)
    change = faulty.truth("stage.x") - base.truth("stage.x")
    assert change[50] == 0.0
    assert change[150] == pytest.approx(2e-8, rel=1e-6)
    assert change[250] == change[399] == pytest.approx(4e-8, rel=1e-6)
    reading_change = faulty.reading("stage.x")[300:].mean() - base.reading("stage.x")[300:].mean()
    assert reading_change == pytest.approx(4e-8, abs=0.2e-9)


def test_excursion_is_a_temporary_pulse_of_the_truth() -> None:
    fault = Excursion("holder.temperature", start_s=10.0, duration_s=20.0, amplitude=3.0)
    base, faulty = baseline_and_faulty(fault)
    change = faulty.truth(fault.channel) - base.truth(fault.channel)
    assert change[200] == pytest.approx(3.0)  # the middle, 20 s
    assert np.all(change[:100] == 0) and np.all(change[301:] == 0)
    assert np.all(change[101:300] > 0)


def test_stuck_sensor_repeats_its_last_reading_while_the_truth_moves_on() -> None:
    fault = Stuck("stage.x", start_s=10.0, end_s=30.0)
    base = microscope().generate(400)
    vm = microscope(faults=[fault])
    faulty = TelemetryBlock.concatenate([vm.generate(150), vm.generate(250)])  # across blocks
    reading, truth = faulty.reading("stage.x"), faulty.truth("stage.x")
    np.testing.assert_array_equal(faulty.true_values, base.true_values)  # sensor fault only
    np.testing.assert_array_equal(reading[100:300], np.full(200, base.reading("stage.x")[99]))
    assert np.ptp(truth[100:300]) > 10 * 0.3e-9  # the true position moved meanwhile
    np.testing.assert_array_equal(reading[300:], base.reading("stage.x")[300:])
    np.testing.assert_array_equal(reading[:100], base.reading("stage.x")[:100])


def test_sensor_stuck_from_the_start_repeats_its_first_reading() -> None:
    vm = microscope(faults=[Stuck("holder.temperature", start_s=0.0)])
    block = TelemetryBlock.concatenate([vm.generate(1), vm.generate(99)])
    reading = block.reading("holder.temperature")
    assert np.all(reading == reading[0])
    assert np.ptp(block.truth("holder.temperature")) > 0


def test_dropout_loses_readings_but_not_the_truth() -> None:
    fault = Dropout("vacuum.column_pressure", start_s=12.0, end_s=20.5)
    base, faulty = baseline_and_faulty(fault)
    reading = faulty.reading(fault.channel)
    lost = np.isnan(reading)
    np.testing.assert_array_equal(np.flatnonzero(lost), np.arange(120, 205))
    np.testing.assert_array_equal(reading[~lost], base.reading(fault.channel)[~lost])
    np.testing.assert_array_equal(faulty.true_values, base.true_values)


def test_spike_offsets_exactly_one_reading() -> None:
    fault = Spike("condenser.c2_current", at_s=8.85, amplitude=0.01)
    base, faulty = baseline_and_faulty(fault)
    difference = faulty.reading(fault.channel) - base.reading(fault.channel)
    assert np.flatnonzero(difference).tolist() == [89]  # the first tick at or after 8.85 s
    assert difference[89] == pytest.approx(0.01, abs=1e-6)
    np.testing.assert_array_equal(faulty.true_values, base.true_values)


def test_noise_burst_adds_noise_only_inside_its_window() -> None:
    fault = NoiseBurst("holder.bias_voltage", start_s=10.0, end_s=30.0, sigma=0.05)
    base, faulty = baseline_and_faulty(fault, n=600)
    reading = faulty.reading(fault.channel)
    truth = faulty.truth(fault.channel)
    assert np.std(reading[100:300] - truth[100:300]) == pytest.approx(0.05, rel=0.2)
    np.testing.assert_array_equal(reading[:100], base.reading(fault.channel)[:100])
    np.testing.assert_array_equal(reading[300:], base.reading(fault.channel)[300:])
    np.testing.assert_array_equal(faulty.true_values, base.true_values)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Step("gun.high_tension", at_s=-1.0, delta=1.0),
        lambda: Ramp("stage.x", start_s=10.0, rate_per_s=1e-9, end_s=5.0),
        lambda: Dropout("stage.x", start_s=3.0, end_s=3.0),
        lambda: Excursion("holder.temperature", start_s=0.0, duration_s=0.0, amplitude=1.0),
        lambda: NoiseBurst("stage.x", start_s=0.0, end_s=1.0, sigma=-1.0),
        lambda: Spike("stage.x", at_s=math.inf, amplitude=1.0),
    ],
)
def test_inconsistent_faults_are_refused(make: object) -> None:
    with pytest.raises(FaultError):
        make()  # type: ignore[operator]


def test_a_fault_on_an_unknown_channel_is_refused() -> None:
    with pytest.raises(FaultError, match=r"gun\.no_such_sensor") as info:
        microscope(faults=[Step("gun.no_such_sensor", at_s=1.0, delta=1.0)])
    assert isinstance(info.value, SimulationError) and isinstance(info.value, ValueError)
