"""A virtual STEM that streams realistic sensor telemetry, with a known true state.

Every channel has a :class:`ChannelModel` (a row of a table, :data:`STANDARD_CHANNEL_MODELS`):
how its true value evolves (nominal value, linear drift, random walk, slow bounded wander, mains
ripple, exponential decay, coupling to the warm-up of the lenses) and how its sensor reads it
(Gaussian or log-normal noise, ADC resolution or significant digits, saturation at full scale).
The microscope evaluates the whole table at once on ``(n_channels, n_ticks)`` arrays, so a block
of 100 channels x 10,000 ticks takes tens of milliseconds.

Determinism: every random draw comes from one of a few generators seeded from ``seed`` and is
drawn tick-major, and every deterministic term is a function of the tick number alone. A
microscope therefore produces bit-identical arrays for the same parameters, however its ticks
are split into blocks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from simulations._block import BoolArray, Float64Array, Int64Array, TelemetryBlock
from simulations._errors import FaultError, MicroscopeConfigError
from simulations._faults import (
    Dropout,
    Excursion,
    Fault,
    NoiseBurst,
    Ramp,
    Spike,
    Step,
    Stuck,
)
from twin import STANDARD_STEM_CHANNELS, ChannelSpec, QuantityKind, Subsystem

__all__ = [
    "FLASH_INTERVAL_S",
    "LENS_THERMAL_TIME_S",
    "LENS_WARMUP_K",
    "STANDARD_CHANNEL_MODELS",
    "ChannelModel",
    "VirtualMicroscope",
    "default_channel_model",
    "extra_channel_models",
    "iter_blocks",
    "lens_temperature_rise",
]


@dataclass(frozen=True, slots=True)
class ChannelModel:
    """How the true value of one channel evolves and how its sensor reads it.

    All amounts are in the canonical unit of the channel's quantity (V, A, m, rad, K, Pa, s, 1),
    except for ``log_normal`` channels (vacuum gauges), whose ``drift_per_s``, ``random_walk``,
    ``wander`` and ``noise`` act on the natural logarithm of the value (relative amounts).

    The true value at ``t`` seconds after the start is::

        linear:     nominal * exp(-s / decay_time_s) + X(t)
        log_normal: nominal * exp(-s / decay_time_s) * exp(X(t))
        s = t mod flash_interval_s   (the time since the last restoration; t without one)
        X(t) = drift_per_s * t + random walk + wander(t) + ripple(t)
               + thermal_coefficient * lens_temperature_rise(t)

    and the reading is the true value plus Gaussian noise ``noise`` (times ``exp(noise * N(0,1))``
    for ``log_normal``), rounded to ``resolution`` (or to ``significant_digits``), clipped to
    ``full_scale`` (the ADC range; the channel's plausibility limits when ``None``).

    Attributes:
        nominal: the true value at start [unit].
        drift_per_s: linear drift of the truth [unit/s].
        random_walk: diffusion of a random walk of the truth [unit/√s].
        wander: rms of a slow bounded fluctuation, a sum of four sinusoids with random periods
            between 20 s and 1 h (cooling water, room temperature) [unit].
        ripple: amplitude of mains ripple on the truth [unit], sampled (and so aliased) at the
            tick rate.
        ripple_hz: frequency of that ripple [Hz].
        decay_time_s: time constant of an exponential decay of the nominal value [s] (the
            emission of a cold field-emission gun); ``inf`` for none.
        flash_interval_s: every this many seconds the decay restarts from ``nominal`` (a cold
            FEG's tip flash: a brief heating of the tip that desorbs the gas that lowered its
            emission) [s]; ``inf`` for never. Flashes are at whole multiples from tick 0.
        thermal_coefficient: change of the truth per kelvin of lens warm-up [unit/K].
        noise: standard deviation of the read-out noise [unit].
        log_normal: fluctuations and read-out noise are multiplicative.
        resolution: ADC step [unit]; 0 for none.
        significant_digits: the sensor reports this many significant digits (gauges); 0 for
            none.
        full_scale: ``(lowest, highest)`` reading the ADC can report [unit].
    """

    nominal: float
    drift_per_s: float = 0.0
    random_walk: float = 0.0
    wander: float = 0.0
    ripple: float = 0.0
    ripple_hz: float = 50.0
    decay_time_s: float = math.inf
    flash_interval_s: float = math.inf
    thermal_coefficient: float = 0.0
    noise: float = 0.0
    log_normal: bool = False
    resolution: float = 0.0
    significant_digits: int = 0
    full_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        finite = {
            "nominal": self.nominal,
            "drift_per_s": self.drift_per_s,
            "ripple_hz": self.ripple_hz,
            "thermal_coefficient": self.thermal_coefficient,
        }
        for name, value in finite.items():
            if not math.isfinite(value):
                raise MicroscopeConfigError(f"{name} must be finite, not {value!r}")
        for name, value in {
            "random_walk": self.random_walk,
            "wander": self.wander,
            "ripple": self.ripple,
            "noise": self.noise,
            "resolution": self.resolution,
        }.items():
            if not (math.isfinite(value) and value >= 0):
                raise MicroscopeConfigError(f"{name} must be finite and >= 0, not {value!r}")
        if not self.decay_time_s > 0:
            raise MicroscopeConfigError(f"decay_time_s must be > 0, not {self.decay_time_s!r}")
        if not self.flash_interval_s > 0:
            raise MicroscopeConfigError(
                f"flash_interval_s must be > 0, not {self.flash_interval_s!r}"
            )
        if self.significant_digits < 0:
            raise MicroscopeConfigError("significant_digits must be >= 0")
        if self.log_normal and self.nominal <= 0:
            raise MicroscopeConfigError("a log-normal channel needs a positive nominal value")


#: How often the virtual microscope's cold field-emission tip is flashed [s].
FLASH_INTERVAL_S = 2 * 3600.0

#: Temperature rise of the lens coils after switch-on [K], and its time constant [s].
LENS_WARMUP_K = 0.8
LENS_THERMAL_TIME_S = 1200.0
_CHILLER_CYCLE_K = 0.05
_CHILLER_PERIOD_S = 600.0


def lens_temperature_rise(t_s: Float64Array) -> Float64Array:
    """Hidden lens temperature above its value at start [K], at ``t_s`` [s since start].

    A first-order warm-up by :data:`LENS_WARMUP_K` with time constant
    :data:`LENS_THERMAL_TIME_S`, plus the 10-minute cycle of the cooling-water chiller.
    """
    warmup = -LENS_WARMUP_K * np.expm1(-t_s / LENS_THERMAL_TIME_S)
    chiller = _CHILLER_CYCLE_K * np.sin(2 * np.pi * t_s / _CHILLER_PERIOD_S)
    result: Float64Array = warmup + chiller
    return result


def _lens(nominal: float, *, tempco_per_k: float, noise: float = 3e-6) -> ChannelModel:
    """A magnetic lens current [A] regulated to ~1 ppm, drifting with the lens temperature."""
    return ChannelModel(
        nominal=nominal,
        wander=1e-6,
        random_walk=2e-8,
        thermal_coefficient=nominal * tempco_per_k,
        noise=noise,
        resolution=1e-6,
    )


def _multipole(nominal: float) -> ChannelModel:
    """A corrector or stigmator coil current [A]."""
    return ChannelModel(
        nominal=nominal,
        wander=4e-7,
        random_walk=1e-8,
        thermal_coefficient=nominal * 2e-6,
        noise=8e-7,
        resolution=1e-7,
    )


def _stage_position(nominal: float, drift_per_s: float) -> ChannelModel:
    """A stage encoder position [m]: sub-nm/s thermal drift and creep, 0.1 nm read-out."""
    return ChannelModel(
        nominal=nominal,
        drift_per_s=drift_per_s,
        random_walk=0.1e-9,
        noise=0.3e-9,
        resolution=0.1e-9,
    )


def _stage_tilt(nominal: float) -> ChannelModel:
    """A goniometer tilt [rad] read out to 0.001°."""
    return ChannelModel(
        nominal=nominal,
        drift_per_s=2e-9,
        random_walk=2e-8,
        noise=5e-6,
        resolution=math.radians(0.001),
    )


def _gauge(nominal: float, *, noise: float) -> ChannelModel:
    """An ion/cold-cathode gauge [Pa]: log-normal fluctuations, two significant digits."""
    return ChannelModel(
        nominal=nominal,
        log_normal=True,
        drift_per_s=-1e-6,
        random_walk=1e-3,
        wander=0.05,
        noise=noise,
        significant_digits=2,
    )


def _setting(nominal: float, resolution: float) -> ChannelModel:
    """A set value read back (exposure, dwell time, aperture): constant, quantized."""
    return ChannelModel(nominal=nominal, resolution=resolution)


#: The model of every channel of :data:`twin.STANDARD_STEM_CHANNELS` (a 200 kV
#: aberration-corrected STEM with a cold field-emission gun), in canonical units.
STANDARD_CHANNEL_MODELS: Mapping[str, ChannelModel] = MappingProxyType(
    {
        # ~3 ppm/h drift, 1.5 ppm mains ripple, 0.25 ppm read-out noise, 10 mV ADC step.
        "gun.high_tension": ChannelModel(
            nominal=200e3,
            drift_per_s=1.5e-4,
            random_walk=2e-3,
            ripple=0.3,
            ripple_hz=50.03,
            noise=0.05,
            resolution=0.01,
        ),
        # A cold FEG tip loses emission over hours (gas adsorbs on it); it is flashed every
        # 2 h, when its emission has fallen to about half, which restores it. Without the
        # flash the emission would fall below the read-out noise within a day.
        "gun.emission_current": ChannelModel(
            nominal=15e-6,
            decay_time_s=3 * 3600.0,
            flash_interval_s=FLASH_INTERVAL_S,
            wander=5e-8,
            noise=3e-8,
            resolution=1e-9,
        ),
        "gun.extraction_voltage": ChannelModel(
            nominal=3850.0, wander=5e-3, noise=0.02, resolution=0.01
        ),
        "condenser.c1_current": _lens(2.134, tempco_per_k=4e-6),
        "condenser.c2_current": _lens(1.368, tempco_per_k=4e-6),
        "condenser.c3_current": _lens(0.872, tempco_per_k=4e-6),
        "condenser.aperture_diameter": _setting(40e-6, 1e-7),
        "objective.lens_current": _lens(5.612, tempco_per_k=8e-6),
        "objective.stigmator_x": _multipole(0.0123),
        "objective.stigmator_y": _multipole(-0.0071),
        "corrector.quadrupole_x": _multipole(0.352),
        "corrector.quadrupole_y": _multipole(-0.218),
        "corrector.hexapole_1": _multipole(1.204),
        "corrector.hexapole_2": _multipole(1.187),
        "corrector.octupole_x": _multipole(0.421),
        "corrector.octupole_y": _multipole(-0.386),
        "projector.p1_current": _lens(3.215, tempco_per_k=3e-6),
        "projector.p2_current": _lens(1.742, tempco_per_k=3e-6),
        "projector.p3_current": _lens(0.905, tempco_per_k=3e-6),
        "stage.x": _stage_position(12.3e-6, 0.25e-9),
        "stage.y": _stage_position(-4.56e-6, -0.15e-9),
        "stage.z": _stage_position(1.2e-6, 0.02e-9),
        "stage.alpha": _stage_tilt(math.radians(0.3)),
        "stage.beta": _stage_tilt(math.radians(-0.1)),
        "holder.temperature": ChannelModel(
            nominal=293.15, wander=0.03, random_walk=1e-4, noise=0.02, resolution=0.01
        ),
        "holder.bias_voltage": ChannelModel(nominal=0.0, noise=2e-4, resolution=1e-4),
        "detector.exposure_time": _setting(0.01, 1e-6),
        "detector.gain": _setting(64.0, 0.01),
        "detector.temperature": ChannelModel(
            nominal=253.15, wander=0.02, noise=0.01, resolution=0.01
        ),
        "scan.dwell_time": _setting(2e-6, 1e-9),
        "scan.field_of_view": _setting(20e-9, 1e-12),
        "scan.pixels": _setting(1024.0, 1.0),
        "vacuum.column_pressure": _gauge(1.2e-5, noise=0.03),
        "vacuum.gun_pressure": _gauge(1.0e-7, noise=0.05),
    }
)


def _extra_ion_pump(k: int) -> tuple[ChannelSpec, ChannelModel]:
    spec = ChannelSpec(
        f"vacuum.ion_pump_{k}", Subsystem.VACUUM, QuantityKind.PRESSURE, 0.0, 1.2e5,
        f"ion getter pump {k} pressure [Pa]",
    )  # fmt: skip
    return spec, _gauge(2e-7 * (1 + 0.25 * (k % 4)), noise=0.05)


def _extra_aux(k: int) -> tuple[ChannelSpec, ChannelModel]:
    spec = ChannelSpec(
        f"detector.aux_{k:02d}", Subsystem.DETECTOR, QuantityKind.VOLTAGE, -10.0, 10.0,
        f"detector auxiliary analogue input {k} [V]",
    )  # fmt: skip
    model = ChannelModel(
        nominal=1.0 + 0.1 * (k % 7),
        wander=1e-3,
        noise=2e-4,
        resolution=20.0 / 2**16,
        full_scale=(-10.0, 10.0),
    )
    return spec, model


def _extra_coil_temperature(k: int) -> tuple[ChannelSpec, ChannelModel]:
    spec = ChannelSpec(
        f"projector.coil_temperature_{k}", Subsystem.PROJECTOR, QuantityKind.TEMPERATURE,
        250.0, 400.0, f"projector coil {k} temperature [K]",
    )  # fmt: skip
    model = ChannelModel(
        nominal=301.0 + 0.5 * (k % 5),
        wander=0.05,
        thermal_coefficient=1.0,
        noise=0.02,
        resolution=0.01,
    )
    return spec, model


def _extra_dipole(k: int) -> tuple[ChannelSpec, ChannelModel]:
    spec = ChannelSpec(
        f"corrector.dipole_{k}", Subsystem.CORRECTOR, QuantityKind.CURRENT, -5.0, 5.0,
        f"corrector alignment dipole {k} current [A]",
    )  # fmt: skip
    return spec, _multipole(0.01 * ((k % 9) - 4))


def _extra_scan_coil(k: int) -> tuple[ChannelSpec, ChannelModel]:
    spec = ChannelSpec(
        f"scan.coil_current_{k}", Subsystem.SCAN, QuantityKind.CURRENT, -1.0, 1.0,
        f"scan coil {k} mean current [A]",
    )  # fmt: skip
    return spec, ChannelModel(nominal=0.0, wander=1e-6, noise=2e-6, resolution=1e-7)


def _extra_thermocouple(k: int) -> tuple[ChannelSpec, ChannelModel]:
    spec = ChannelSpec(
        f"holder.thermocouple_{k}", Subsystem.HOLDER, QuantityKind.TEMPERATURE, 1.0, 1800.0,
        f"holder thermocouple {k} [K]",
    )  # fmt: skip
    return spec, ChannelModel(nominal=293.4, wander=0.05, noise=0.05, resolution=0.01)


_EXTRA_TEMPLATES = (
    _extra_ion_pump,
    _extra_aux,
    _extra_coil_temperature,
    _extra_dipole,
    _extra_scan_coil,
    _extra_thermocouple,
)


def extra_channel_models(
    n: int, *, taken: Sequence[str] = ()
) -> tuple[tuple[ChannelSpec, ChannelModel], ...]:
    """``n`` further plausible sensor channels with their models.

    Cycles through ion pumps (``vacuum.ion_pump_1``, ...), detector auxiliary inputs
    (``detector.aux_01``, ...), projector coil temperatures, corrector dipoles, scan coil
    currents and holder thermocouples, skipping names in ``taken``.
    """
    if n < 0:
        raise MicroscopeConfigError(f"extra_channels must be >= 0, not {n}")
    seen = set(taken)
    result: list[tuple[ChannelSpec, ChannelModel]] = []
    counters = [0] * len(_EXTRA_TEMPLATES)
    i = 0
    while len(result) < n:
        which = i % len(_EXTRA_TEMPLATES)
        counters[which] += 1
        spec, model = _EXTRA_TEMPLATES[which](counters[which])
        i += 1
        if spec.name in seen:
            continue
        seen.add(spec.name)
        result.append((spec, model))
    return tuple(result)


def default_channel_model(spec: ChannelSpec) -> ChannelModel:
    """A generic, plausible model for a channel that has none in the table.

    Pressures behave like gauges at 1e-5 Pa; temperatures sit at 293.15 K; other channels sit in
    the middle of their plausibility limits (0 without limits) with read-out noise of 1e-6 of
    the limits' span.
    """
    if spec.quantity is QuantityKind.PRESSURE:
        return _gauge(1e-5, noise=0.03)
    lower = -math.inf if spec.lower is None else spec.lower
    upper = math.inf if spec.upper is None else spec.upper
    if spec.quantity is QuantityKind.TEMPERATURE and lower <= 293.15 <= upper:
        return ChannelModel(nominal=293.15, wander=0.05, noise=0.02, resolution=0.01)
    if math.isfinite(lower) and math.isfinite(upper):
        nominal, span = (lower + upper) / 2, upper - lower
    else:
        nominal = 0.0 if lower <= 0 <= upper else (lower if math.isfinite(lower) else upper)
        span = max(abs(nominal), 1.0)
    return ChannelModel(nominal=nominal, wander=1e-6 * span, noise=1e-6 * span)


_N_WANDER_COMPONENTS = 4
_WANDER_PERIODS_S = (20.0, 3600.0)


class VirtualMicroscope:
    """A simulated STEM producing telemetry blocks with their hidden true values.

    Args:
        instrument_id: the persistent id the telemetry is published under.
        rate_hz: tick rate [Hz]; the tick period is rounded to whole nanoseconds.
        seed: seed of every random draw; equal seeds and parameters give equal arrays.
        channels: the channels to simulate (default: :data:`twin.STANDARD_STEM_CHANNELS`).
        faults: faults to inject (see :mod:`simulations._faults`), times in seconds from
            tick 0.
        start_ns: source-clock time of tick 0 [ns since the Unix epoch, UTC]; default: now.
        extra_channels: append this many further plausible channels
            (:func:`extra_channel_models`), e.g. to reach 100 channels.
        models: models overriding :data:`STANDARD_CHANNEL_MODELS` by channel name; channels
            with no model anywhere get :func:`default_channel_model`.
        clock_jitter_s: standard deviation of the source clock's jitter around the nominal tick
            times [s]; clipped to 0.4 of the period so that times always increase.
        dropout_probability: chance that any one reading is lost (NaN), independent of faults.

    ``generate(n)`` continues the stream where the previous call stopped: tick counter, clock,
    random walks, random generators and stuck sensors all carry over.
    """

    def __init__(
        self,
        *,
        instrument_id: str = "virtual-stem-01",
        rate_hz: float = 10.0,
        seed: int = 0,
        channels: Sequence[ChannelSpec] = STANDARD_STEM_CHANNELS,
        faults: Sequence[Fault] = (),
        start_ns: int | None = None,
        extra_channels: int = 0,
        models: Mapping[str, ChannelModel] | None = None,
        clock_jitter_s: float = 2e-4,
        dropout_probability: float = 0.0,
    ) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise MicroscopeConfigError(f"rate_hz must be > 0, not {rate_hz!r}")
        period_ns = round(1e9 / rate_hz)
        if period_ns < 1:
            raise MicroscopeConfigError(f"rate_hz {rate_hz} is above 1 GHz")
        if not (math.isfinite(clock_jitter_s) and clock_jitter_s >= 0):
            raise MicroscopeConfigError(f"clock_jitter_s must be >= 0, not {clock_jitter_s!r}")
        if not 0 <= dropout_probability <= 1:
            raise MicroscopeConfigError("dropout_probability must be within [0, 1]")
        overrides = dict(models or {})
        specs = list(channels)
        extras = extra_channel_models(extra_channels, taken=[s.name for s in specs])
        specs += [spec for spec, _ in extras]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise MicroscopeConfigError(f"duplicate channels: {duplicates}")
        if not specs:
            raise MicroscopeConfigError("a microscope needs at least one channel")
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise MicroscopeConfigError(f"models given for channels it does not have: {unknown}")
        extra_models = {spec.name: model for spec, model in extras}
        chosen: dict[str, ChannelModel] = {}
        for spec in specs:
            chosen[spec.name] = (
                overrides.get(spec.name)
                or STANDARD_CHANNEL_MODELS.get(spec.name)
                or extra_models.get(spec.name)
                or default_channel_model(spec)
            )
        index = {name: i for i, name in enumerate(names)}
        for fault in faults:
            if fault.channel not in index:
                raise FaultError(f"{type(fault).__name__} names unknown channel {fault.channel!r}")

        self.instrument_id = instrument_id
        self.rate_hz = rate_hz
        self.seed = seed
        self.period_ns = period_ns
        self.start_ns = time.time_ns() if start_ns is None else int(start_ns)
        self.clock_jitter_s = clock_jitter_s
        self.dropout_probability = dropout_probability
        self._channels = tuple(specs)
        self._units = tuple(s.canonical_unit for s in specs)
        self._models: Mapping[str, ChannelModel] = MappingProxyType(chosen)
        self._faults: tuple[Fault, ...] = tuple(faults)
        self._fault_rows = tuple(index[f.channel] for f in self._faults)
        self._build_tables([chosen[n] for n in names], specs)

        streams = np.random.SeedSequence(seed).spawn(6)
        setup, walk, sensor, clock, burst, dropout = (np.random.default_rng(s) for s in streams)
        self._rng_walk, self._rng_sensor, self._rng_clock = walk, sensor, clock
        self._rng_burst, self._rng_dropout = burst, dropout
        self._draw_wander_and_ripple_phases(setup)

        self._next_seq = 0
        self._walk_state = np.zeros(len(self._walk_rows))
        self._last_reading = np.full(len(specs), np.nan)

    # ------------------------------------------------------------------ public state
    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    @property
    def units(self) -> tuple[str, ...]:
        """Unit of each channel's values: its canonical unit."""
        return self._units

    @property
    def models(self) -> Mapping[str, ChannelModel]:
        """The model of each channel, by name (read-only)."""
        return self._models

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._faults

    def tip_flashes(self, start_s: float, end_s: float) -> list[tuple[str, float]]:
        """The restorations of decaying channels (tip flashes of a cold FEG) within
        ``[start_s, end_s)`` [s since tick 0], as ``(channel, time [s since tick 0])`` sorted by
        time: true changes of the instrument, not faults."""
        found: list[tuple[str, float]] = []
        for row, interval in zip(self._decay_rows, self._flash_interval_s, strict=True):
            if not math.isfinite(interval):
                continue
            first = max(1, math.ceil(start_s / interval))
            k = first
            while k * interval < end_s:
                found.append((self._channels[row].name, k * float(interval)))
                k += 1
        return sorted(found, key=lambda item: (item[1], item[0]))

    @property
    def next_seq(self) -> int:
        """Tick counter of the next tick ``generate`` will produce."""
        return self._next_seq

    @property
    def period_s(self) -> float:
        """Nominal tick period [s]."""
        return self.period_ns / 1e9

    # ------------------------------------------------------------------ generation
    def generate(self, n_ticks: int) -> TelemetryBlock:
        """The next ``n_ticks`` ticks of telemetry (readings and true values)."""
        if n_ticks < 0:
            raise MicroscopeConfigError(f"n_ticks must be >= 0, not {n_ticks}")
        seqs = np.arange(self._next_seq, self._next_seq + n_ticks, dtype=np.int64)
        t_s: Float64Array = seqs * np.float64(self.period_s)
        times_ns = self._clock(seqs)
        truth = self._true_values(t_s)
        readings = self._read(truth, t_s, seqs)
        self._next_seq += n_ticks
        return TelemetryBlock(
            instrument_id=self.instrument_id,
            channels=self._channels,
            units=self._units,
            times_ns=times_ns,
            seqs=seqs,
            values=readings,
            true_values=truth,
        )

    def _build_tables(self, models: list[ChannelModel], specs: list[ChannelSpec]) -> None:
        """Turn the per-channel models into per-parameter arrays over channels."""

        def column(attr: str) -> Float64Array:
            return np.array([float(getattr(m, attr)) for m in models])

        def rows(mask: Sequence[bool] | np.ndarray) -> Int64Array:
            return np.flatnonzero(np.asarray(mask, dtype=bool)).astype(np.int64)

        self._nominal = column("nominal")
        self._drift = column("drift_per_s")
        self._noise = column("noise")
        self._log_normal = np.array([m.log_normal for m in models], dtype=bool)
        self._log_rows = rows(self._log_normal)
        self._linear_rows = rows(~self._log_normal)
        self._walk_rows = rows([m.random_walk > 0 for m in models])
        self._walk_step = column("random_walk")[self._walk_rows] * math.sqrt(self.period_s)
        self._wander_rows = rows([m.wander > 0 for m in models])
        self._wander_rms = column("wander")[self._wander_rows]
        self._ripple_rows = rows([m.ripple > 0 for m in models])
        self._ripple_amplitude = column("ripple")[self._ripple_rows]
        self._ripple_hz = column("ripple_hz")[self._ripple_rows]
        self._decay_rows = rows([math.isfinite(m.decay_time_s) for m in models])
        self._decay_time_s = column("decay_time_s")[self._decay_rows]
        self._flash_interval_s = column("flash_interval_s")[self._decay_rows]
        self._thermal_rows = rows([m.thermal_coefficient != 0 for m in models])
        self._thermal_coefficient = column("thermal_coefficient")[self._thermal_rows]
        self._resolution_rows = rows([m.resolution > 0 for m in models])
        self._resolution = column("resolution")[self._resolution_rows]
        self._digits_rows = rows([m.significant_digits > 0 for m in models])
        self._digits = column("significant_digits")[self._digits_rows]
        lower, upper = [], []
        for m, spec in zip(models, specs, strict=True):
            lo, hi = m.full_scale or (spec.lower, spec.upper)
            lower.append(-math.inf if lo is None else lo)
            upper.append(math.inf if hi is None else hi)
        self._full_scale_lower = np.array(lower)
        self._full_scale_upper = np.array(upper)

    def _draw_wander_and_ripple_phases(self, rng: np.random.Generator) -> None:
        n_wander = len(self._wander_rows)
        lo, hi = (math.log(p) for p in _WANDER_PERIODS_S)
        periods = np.exp(rng.uniform(lo, hi, size=(n_wander, _N_WANDER_COMPONENTS)))
        self._wander_angular = 2 * np.pi / periods
        self._wander_phase = rng.uniform(0, 2 * np.pi, size=(n_wander, _N_WANDER_COMPONENTS))
        # Each of the components carries an equal share of the rms.
        self._wander_amplitude = self._wander_rms * math.sqrt(2 / _N_WANDER_COMPONENTS)
        self._ripple_phase = rng.uniform(0, 2 * np.pi, size=len(self._ripple_rows))

    def _clock(self, seqs: Int64Array) -> Int64Array:
        jitter = self._rng_clock.standard_normal(len(seqs)) * (self.clock_jitter_s * 1e9)
        bound = 0.4 * self.period_ns
        jitter_ns = np.rint(np.clip(jitter, -bound, bound)).astype(np.int64)
        times: Int64Array = self.start_ns + seqs * self.period_ns + jitter_ns
        return times

    def _true_values(self, t_s: Float64Array) -> Float64Array:
        n = len(t_s)
        # X(t) of the ChannelModel docstring, then the nominal value applied per row kind.
        excursion = np.multiply.outer(self._drift, t_s)
        if len(self._walk_rows):
            steps = self._rng_walk.standard_normal((n, len(self._walk_rows))).T
            steps = steps * self._walk_step[:, None]
            # Prepending the carried state keeps the cumulative sum strictly sequential, so the
            # walk is bit-identical however the ticks are split into blocks.
            walk = np.cumsum(np.concatenate([self._walk_state[:, None], steps], axis=1), axis=1)
            excursion[self._walk_rows] += walk[:, 1:]
            if n:
                self._walk_state = walk[:, -1].copy()
        if len(self._wander_rows):
            wander = np.zeros((len(self._wander_rows), n))
            for k in range(_N_WANDER_COMPONENTS):
                angle = np.multiply.outer(self._wander_angular[:, k], t_s)
                angle += self._wander_phase[:, k, None]
                wander += np.sin(angle, out=angle)
            excursion[self._wander_rows] += self._wander_amplitude[:, None] * wander
        if len(self._ripple_rows):
            angle = np.multiply.outer(2 * np.pi * self._ripple_hz, t_s)
            ripple = np.sin(angle + self._ripple_phase[:, None])
            excursion[self._ripple_rows] += self._ripple_amplitude[:, None] * ripple
        if len(self._thermal_rows):
            rise = lens_temperature_rise(t_s)
            excursion[self._thermal_rows] += np.multiply.outer(self._thermal_coefficient, rise)

        base = np.repeat(self._nominal[:, None], n, axis=1)
        if len(self._decay_rows):
            # Time since the last flash (np.fmod by inf leaves t as it is).
            since = np.fmod(t_s[None, :], self._flash_interval_s[:, None])
            base[self._decay_rows] *= np.exp(-since / self._decay_time_s[:, None])
        truth = base + excursion
        if len(self._log_rows):
            truth[self._log_rows] = base[self._log_rows] * np.exp(excursion[self._log_rows])

        for fault, row in zip(self._faults, self._fault_rows, strict=True):
            if isinstance(fault, Step | Ramp | Excursion):
                truth[row] += fault.offset(t_s)
        return truth

    def _read(self, truth: Float64Array, t_s: Float64Array, seqs: Int64Array) -> Float64Array:
        n = len(t_s)
        normal = self._rng_sensor.standard_normal((n, len(self._channels))).T
        readings = truth + self._noise[:, None] * normal
        if len(self._log_rows):
            log_rows = self._log_rows
            noise = self._noise[log_rows, None] * normal[log_rows]
            readings[log_rows] = truth[log_rows] * np.exp(noise)

        faults = list(zip(self._faults, self._fault_rows, strict=True))
        bursts = [(f, row) for f, row in faults if isinstance(f, NoiseBurst)]
        if bursts:
            extra = self._rng_burst.standard_normal((n, len(bursts))).T
            for j, (burst, row) in enumerate(bursts):
                readings[row] += np.where(burst.active(t_s), burst.sigma * extra[j], 0.0)
        for fault, row in faults:
            if isinstance(fault, Spike):
                readings[row] += np.where(fault.active(t_s, self.period_s), fault.amplitude, 0.0)

        self._quantize(readings)
        np.clip(
            readings, self._full_scale_lower[:, None], self._full_scale_upper[:, None], out=readings
        )
        includes_tick_0 = n > 0 and int(seqs[0]) == 0
        for fault, row in faults:
            if isinstance(fault, Stuck):
                self._hold(readings[row], fault.active(t_s), row, includes_tick_0=includes_tick_0)
        if n:
            self._last_reading = readings[:, -1].copy()

        if self.dropout_probability > 0:
            draws = self._rng_dropout.random((n, len(self._channels))).T
            lost = draws < self.dropout_probability
            readings[lost] = np.nan
        for fault, row in faults:
            if isinstance(fault, Dropout):
                readings[row, fault.active(t_s)] = np.nan
        return readings

    def _quantize(self, readings: Float64Array) -> None:
        if len(self._resolution_rows):
            rows, step = self._resolution_rows, self._resolution[:, None]
            readings[rows] = np.round(readings[rows] / step) * step
        if len(self._digits_rows):
            rows = self._digits_rows
            values = readings[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                exponent = np.floor(np.log10(np.abs(values)))
                step = 10.0 ** (exponent - (self._digits[:, None] - 1))
                rounded = np.round(values / step) * step
            readings[rows] = np.where(np.isfinite(rounded), rounded, values)

    def _hold(
        self, reading: Float64Array, stuck: BoolArray, row: int, *, includes_tick_0: bool
    ) -> None:
        """Replace the stuck part of one channel's readings by the last reading before it."""
        if not stuck.any():
            return
        ticks = np.arange(len(reading))
        last_good = np.maximum.accumulate(np.where(stuck, -1, ticks))
        # Stuck from tick 0: there is no earlier reading, so the first one repeats.
        carried = reading[0] if includes_tick_0 else self._last_reading[row]
        held = np.where(last_good >= 0, reading[np.maximum(last_good, 0)], carried)
        reading[stuck] = held[stuck]


def iter_blocks(
    microscope: VirtualMicroscope, *, ticks_per_block: int, n_blocks: int | None = None
) -> Iterator[TelemetryBlock]:
    """Successive blocks of ``ticks_per_block`` ticks; endless when ``n_blocks`` is ``None``.

    No pacing: blocks come as fast as they are generated (a publisher paces them).
    """
    if ticks_per_block < 1:
        raise MicroscopeConfigError(f"ticks_per_block must be >= 1, not {ticks_per_block}")
    produced = 0
    while n_blocks is None or produced < n_blocks:
        yield microscope.generate(ticks_per_block)
        produced += 1
