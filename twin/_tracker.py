"""Online tracking of an instrument: windows of telemetry in, state estimates and flags out.

A :class:`Tracker` follows the channels of one instrument window by window. Each channel has a
local-linear-trend Kalman filter (:class:`twin.LocalLinearTrend`: a level and a drift rate);
its normalized innovations feed the detectors of :mod:`twin._detect`. The tracker's whole
memory between windows is a :class:`TrackerState` (filter checkpoints, CUSUM statistics,
run-lengths of repeated readings, learned noise), which serializes to JSON: a worker stores it
with the window's results in one transaction and resumes from it after a restart, and replaying
a window from the same state gives the same results.

Per window, for each report instant (a grid of ``report_interval_s``), the filtered channel
levels and their variances go through the instrument model (:func:`twin.derive_state`) to the
physical state with first-order uncertainties (:class:`Estimate`). Flags (:class:`Flag`):

* ``disagreement``: a reading the model cannot explain, ``|z| > c`` with ``c`` from the chosen
  false-alarm rate (:func:`twin.innovation_threshold`);
* ``drift``: a persistent shift, a two-sided CUSUM on ``z`` with its decision interval from the
  same rate (:func:`twin.cusum_threshold`); and, on channels with a ramp of interest
  (:data:`DEFAULT_RAMPS`), a change of drift rate: a second CUSUM whose reference is matched to
  the mean innovations that ramp leaves in the channel's own filter
  (:func:`twin.matched_cusum`); after a drift alarm the channel's level (and rate) uncertainty
  is re-opened so the filter follows the new level;
* ``stuck``: a run of bit-identical readings longer than a live sensor produces at the
  false-alarm rate, given the channel's read-out step and its measured repeat probability
  (:func:`twin.stuck_run_threshold`);
* ``dropout``: no reading for longer than ``max_gap_s``;
* ``setting_change`` (info): a channel that reads a constant set value (dwell time, aperture)
  changed it.

Noise parameters are learned from the first window of each channel (robust statistics of the
first differences), unless the config gives them; a channel whose first window is constant is a
*setting* and is only watched for changes.

A reading at (or beyond) the end of a channel's range (``TrackerConfig.channel_limits``: an
emission current or a pressure of exactly 0, an ADC at full scale) is *clipped*: it says only
that the value is at or beyond the limit. When the filter's prediction puts the limit within the
disagreement threshold (the noise model explains the clipping), the reading is *censored*: the
filter still follows it, but no test counts it (it breaks runs of identical readings, so a
quantity resting at its limit is not a stuck sensor) and no flag is raised for it. A reading that
jumps to a limit the prediction is far from is an ordinary reading, which the disagreement and
drift tests flag (a sensor failing to its rail).

Times are float seconds since the Unix epoch at the API; inside, relative to the state's
``origin_s`` so float64 keeps sub-microsecond resolution.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from twin._derive import derive_state_series, padded_length
from twin._detect import (
    CusumDesign,
    continuation_probability,
    cusum_jit,
    cusum_threshold,
    innovation_signature,
    innovation_threshold,
    matched_cusum,
    merge_alarms,
    steady_state_filter,
    step_to_noise_from_continuation,
    step_to_noise_from_repeats,
    stuck_run_threshold,
)
from twin._drift_models import LocalLinearTrend
from twin._errors import TwinError
from twin._instrument import (
    INPUT_CHANNELS,
    REPORTED_CHANNELS,
    STATE_QUANTITIES,
    Calibration,
    StateEstimate,
    fuse_reported,
)
from twin._kalman import FilterState, estimate_at, kalman_filter
from twin._vocabulary import STANDARD_CHANNELS_BY_NAME

__all__ = [
    "CHANNEL_QUANTITY",
    "DEFAULT_RAMPS",
    "TWIN_VERSION",
    "ChannelNoise",
    "Estimate",
    "Flag",
    "Tracker",
    "TrackerConfig",
    "TrackerError",
    "TrackerState",
    "TrackerUpdate",
    "default_tracker_config",
]

#: Version of the twin's estimation and detection code, recorded with every estimate and flag.
TWIN_VERSION = "beamtwin-twin/1"

#: The state quantity a channel chiefly drives (named in its flags); others name the channel.
CHANNEL_QUANTITY: Mapping[str, str] = {
    "gun.high_tension": "energy",
    "objective.lens_current": "defocus",
    "objective.stigmator_x": "C12",
    "objective.stigmator_y": "C12",
    "condenser.c1_current": "probe_current",
    "gun.emission_current": "probe_current",
    "condenser.c3_current": "convergence_semiangle",
    "condenser.aperture_diameter": "convergence_semiangle",
    "projector.p1_current": "camera_length",
    "projector.p2_current": "camera_length",
    "projector.p3_current": "camera_length",
    "stage.x": "stage_x",
    "stage.y": "stage_y",
    "stage.z": "stage_z",
    "holder.temperature": "holder_temperature",
    "scan.field_of_view": "field_of_view",
    "scan.dwell_time": "dwell_time",
}
_DRIFT_QUANTITIES = {"stage.x": "stage_drift_x", "stage.y": "stage_drift_y"}
_UNITS = {q.name: q.unit for q in STATE_QUANTITIES} | {
    "stage_drift_x": "m/s",
    "stage_drift_y": "m/s",
}
#: Ramps of interest [U/s] of the drift-rate test, per channel: the change of drift rate its
#: CUSUM is matched to (it detects any larger change sooner, a smaller one later). A channel
#: with a ramp of interest is modelled with a drift rate that is constant between changes
#: (no rate diffusion); a drift-rate alarm re-opens the rate.
DEFAULT_RAMPS: Mapping[str, float] = {
    "stage.x": 0.1e-9,  # [m/s]
    "stage.y": 0.1e-9,
    "stage.z": 0.1e-9,
}
_DRIFT_HOLDOFF_S = 30.0
#: Longest fault signature the matched designs look at [s].
_SIGNATURE_S = 600.0
#: Tests per channel that share the false-alarm budget (disagreement, step CUSUM, drift-rate
#: CUSUM, stuck).
_TESTS = 4
#: Memory of the innovation-scale estimate [samples]: a model that underestimates a channel's
#: noise gives innovations wider than N(0, 1); the detectors divide them by their running rms.
_SCALE_MEMORY = 6000  # drift alarms closer than this to the previous one extend it
#: Memory [samples] of the long-run variance of the innovations (window sums, at least
#: ``_MIN_BLOCK`` readings each), which scales the drift-rate CUSUM: an hour at 10 Hz, so that
#: a ramp being detected barely moves it.
_BLOCK_MEMORY = 36_000
_MIN_BLOCK = 20
#: Memory [samples] of the misfit statistic, and the long-run variance of the innovations
#: (times the model's) above which a channel's diffusions are re-learned: the mean of ~10
#: windows' chi-square(1) sums exceeds 6 about once in 10^8 windows when the model is right.
_MISFIT_MEMORY = 1_000
_MISFIT_TRIGGER = 6.0


class TrackerError(TwinError, ValueError):
    """Bad input for the tracker (unknown channels, unsorted or non-finite times...)."""


@dataclass(frozen=True, slots=True)
class ChannelNoise:
    """Noise of one channel in its canonical unit ``U``.

    Attributes:
        measurement_variance: read-out noise variance ``R`` [U²].
        level_diffusion: random-walk diffusion of the level ``q_l`` [U²/s].
        rate_diffusion: diffusion of the drift rate ``q_r`` [U²/s³].
        quantum: the read-out step [U] (0 when unknown or unquantized).
        significant_digits: the read-out keeps this many significant digits (gauges), so its
            step is proportional to the value; 0 for a fixed step.
        read_out_sigma: on a significant-digit read-out, the read-out noise sigma [tracked
            unit: log units on log channels] implied by the repeats while it was learned (one
            step size then), from which the stuck test takes the step-to-noise ratio at any
            value; NaN otherwise.
        repeat_probability: how often two successive readings were identical while the channel
            was learned (NaN: unknown); the tracker keeps counting repeats afterwards.
    """

    measurement_variance: float
    level_diffusion: float
    rate_diffusion: float
    quantum: float = 0.0
    repeat_probability: float = math.nan
    significant_digits: float = 0.0
    read_out_sigma: float = math.nan


@dataclass(frozen=True)
class TrackerConfig:
    """What a tracker tracks and how sensitive it is.

    Attributes:
        calibration: the instrument's calibration in force.
        channels: the channels to track (each gets its own filter and detectors).
        false_alarms_per_day: the false-alarm rate of the whole instrument [1/day], shared
            equally among every test (disagreement, step CUSUM, drift-rate CUSUM, stuck) of
            every channel.
        rate_hz: the nominal sampling rate [Hz], for the per-sample false-alarm probability.
        report_interval_s: spacing of the reported state estimates [s].
        max_gap_s: a longer silence of a channel is a dropout [s].
        cusum_k: CUSUM reference value [sigma] (half the smallest shift to detect fast).
        noise: known noise per channel; channels not in it learn theirs from their first window.
        log_scale: channels to track in log space (default: ``vacuum.*``, the gauges).
        ramps: channel -> ramp of interest [U/s] of the drift-rate test; default
            :data:`DEFAULT_RAMPS`.
        limits: channel -> ``(lowest, highest)`` reading of its range [U] (``None``: no limit);
            a reading at or beyond either is clipped (see :attr:`channel_limits`). Channels of
            the standard vocabulary default to their plausibility limits.
        twin_version: recorded with every estimate and flag.
    """

    calibration: Calibration
    channels: tuple[str, ...]
    false_alarms_per_day: float = 1.0
    rate_hz: float = 10.0
    report_interval_s: float = 1.0
    max_gap_s: float = 2.0
    cusum_k: float = 1.0
    noise: Mapping[str, ChannelNoise] = field(default_factory=dict)
    twin_version: str = TWIN_VERSION
    log_scale: tuple[str, ...] | None = None
    ramps: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RAMPS))
    limits: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def channel_limits(self) -> dict[str, tuple[float, float]]:
        """Range of each channel's readings [U], ``-inf``/``inf`` where unlimited: ``limits``,
        else the plausibility limits of the standard vocabulary
        (:data:`twin.STANDARD_CHANNELS_BY_NAME`: a current or a pressure reads no less than 0)."""
        out: dict[str, tuple[float, float]] = {}
        for name in self.channels:
            spec = STANDARD_CHANNELS_BY_NAME.get(name)
            standard = (None, None) if spec is None else (spec.lower, spec.upper)
            lo, hi = self.limits.get(name, standard)
            out[name] = (
                -math.inf if lo is None else float(lo),
                math.inf if hi is None else float(hi),
            )
        return out

    @property
    def log_channels(self) -> frozenset[str]:
        """Channels tracked in the logarithm of their value (multiplicative noise): the
        ``log_scale`` ones, by default the vacuum gauges."""
        if self.log_scale is not None:
            return frozenset(self.log_scale)
        return frozenset(name for name in self.channels if name.startswith("vacuum."))

    def __post_init__(self) -> None:
        if not self.channels:
            raise TrackerError("a tracker needs at least one channel")
        if len(set(self.channels)) != len(self.channels):
            raise TrackerError("channels must be distinct")
        for name, value in (
            ("false_alarms_per_day", self.false_alarms_per_day),
            ("rate_hz", self.rate_hz),
            ("report_interval_s", self.report_interval_s),
            ("max_gap_s", self.max_gap_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise TrackerError(f"{name} must be > 0, not {value!r}")

    @property
    def derives_state(self) -> bool:
        """Whether every channel of the instrument model is tracked (else only pass-through
        quantities, such as stage drift, are estimated)."""
        return set(INPUT_CHANNELS) <= set(self.channels)


def default_tracker_config(
    calibration: Calibration,
    *,
    channels: Sequence[str],
    false_alarms_per_day: float = 1.0,
    rate_hz: float = 10.0,
    report_interval_s: float = 1.0,
    twin_version: str = TWIN_VERSION,
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> TrackerConfig:
    """A config tracking ``channels`` with noise learned from the data (``limits``: the
    ranges of channels outside the standard vocabulary, see :class:`TrackerConfig`)."""
    return TrackerConfig(
        calibration=calibration,
        channels=tuple(channels),
        false_alarms_per_day=false_alarms_per_day,
        rate_hz=rate_hz,
        report_interval_s=report_interval_s,
        max_gap_s=max(2.0, 20.0 / rate_hz) if rate_hz > 0 else 2.0,
        twin_version=twin_version,
        limits=dict(limits or {}),
    )


@dataclass(frozen=True)
class Estimate:
    """One state quantity at one time, with its standard deviation (NaN: unknown)."""

    time_s: float
    quantity: str
    value: float
    std: float
    unit: str


@dataclass(frozen=True)
class Flag:
    """Evidence that a sensor disagrees with the model, or that the state drifted.

    ``expected`` / ``observed`` / ``residual`` / ``tolerance`` are in the channel's canonical
    unit; ``detail`` holds the normalized statistic and, where the instrument model gives it,
    the residual in the unit of ``quantity``.
    """

    kind: str
    quantity: str
    channel: str
    time_s: float
    end_s: float | None
    expected: float
    observed: float
    residual: float
    tolerance: float
    severity: str
    twin_version: str
    calibration_version: str
    detail: Mapping[str, Any]


@dataclass
class TrackerState:
    """Everything a tracker remembers between windows (JSON-serializable, see :meth:`to_json`).

    Arrays are per channel, in the config's channel order; ``mean``/``cov`` are the filter
    checkpoints, NaN before a channel's first reading.
    """

    origin_s: float
    until_s: float
    channels: tuple[str, ...]
    mean: np.ndarray  # (C, 2)
    cov: np.ndarray  # (C, 2, 2)
    time: np.ndarray  # (C,) relative to origin_s
    cusum_upper: np.ndarray  # (C,)
    cusum_lower: np.ndarray  # (C,)
    last_value: np.ndarray  # (C,)
    run_length: np.ndarray  # (C,) int
    run_log_p: np.ndarray  # (C,) log-probability of the current run of identical readings
    last_seen: np.ndarray  # (C,) relative to origin_s; NaN before the first reading
    in_dropout: np.ndarray  # (C,) bool
    last_drift_s: np.ndarray  # (C,) relative; -inf when none
    noise: dict[str, ChannelNoise]
    setting: np.ndarray  # (C,) bool: a constant set value
    flagged_stuck: np.ndarray  # (C,) bool: the current stuck run is already flagged
    ramp_upper: np.ndarray  # (C,) drift-rate CUSUM statistics
    ramp_lower: np.ndarray  # (C,)
    repeat_pairs: np.ndarray  # (C,) successive readings compared (outside flagged runs)
    repeat_count: np.ndarray  # (C,) of which identical
    run_trials: np.ndarray  # (C,) readings that followed two identical ones (outside flagged runs)
    run_continued: np.ndarray  # (C,) of which identical to them too
    z_scale: np.ndarray  # (C,) running mean of the squared normalized innovations
    z_corr: np.ndarray  # (C,) running lag-1 autocorrelation of the normalized innovations
    z_block: np.ndarray  # (C,) running mean of (sum of a window's innovations)² / its length
    z_misfit: np.ndarray  # (C,) the same over a short memory, windows without flags only

    def to_json(self) -> dict[str, Any]:
        def arr(a: np.ndarray) -> list[Any]:
            return [None if isinstance(v, float) and not math.isfinite(v) else v for v in _flat(a)]

        return {
            "version": 3,
            "origin_s": self.origin_s,
            "until_s": self.until_s,
            "channels": list(self.channels),
            "mean": arr(self.mean),
            "cov": arr(self.cov),
            "time": arr(self.time),
            "cusum_upper": arr(self.cusum_upper),
            "cusum_lower": arr(self.cusum_lower),
            "last_value": arr(self.last_value),
            "run_length": [int(v) for v in self.run_length],
            "run_log_p": arr(self.run_log_p),
            "last_seen": arr(self.last_seen),
            "in_dropout": [bool(v) for v in self.in_dropout],
            "last_drift_s": [
                None if not math.isfinite(float(v)) else float(v) for v in self.last_drift_s
            ],
            "noise": {
                name: [
                    n.measurement_variance,
                    n.level_diffusion,
                    n.rate_diffusion,
                    n.quantum,
                    None if math.isnan(n.repeat_probability) else n.repeat_probability,
                    n.significant_digits,
                    None if math.isnan(n.read_out_sigma) else n.read_out_sigma,
                ]
                for name, n in self.noise.items()
            },
            "setting": [bool(v) for v in self.setting],
            "flagged_stuck": [bool(v) for v in self.flagged_stuck],
            "ramp_upper": arr(self.ramp_upper),
            "ramp_lower": arr(self.ramp_lower),
            "repeat_pairs": arr(self.repeat_pairs),
            "repeat_count": arr(self.repeat_count),
            "run_trials": arr(self.run_trials),
            "run_continued": arr(self.run_continued),
            "z_scale": arr(self.z_scale),
            "z_corr": arr(self.z_corr),
            "z_block": arr(self.z_block),
            "z_misfit": arr(self.z_misfit),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrackerState:
        # Version 1 (with the tolerance test's references) resumes with fresh drift-rate
        # statistics and repeat counts.
        if data.get("version") not in (1, 2, 3):
            raise TrackerError(f"unknown tracker state version {data.get('version')!r}")
        channels = tuple(data["channels"])
        c = len(channels)

        def arr(key: str, shape: tuple[int, ...], fill: float = math.nan) -> np.ndarray:
            values = [fill if v is None else v for v in data.get(key, [fill] * math.prod(shape))]
            return np.asarray(values, dtype=np.float64).reshape(shape)

        return cls(
            origin_s=float(data["origin_s"]),
            until_s=float(data["until_s"]),
            channels=channels,
            mean=arr("mean", (c, 2)),
            cov=arr("cov", (c, 2, 2)),
            time=arr("time", (c,)),
            cusum_upper=arr("cusum_upper", (c,)),
            cusum_lower=arr("cusum_lower", (c,)),
            last_value=arr("last_value", (c,)),
            run_length=np.asarray(data["run_length"], dtype=np.int64),
            run_log_p=arr("run_log_p", (c,), 0.0),
            last_seen=arr("last_seen", (c,)),
            in_dropout=np.asarray(data["in_dropout"], dtype=bool),
            last_drift_s=arr("last_drift_s", (c,), -math.inf),
            noise={
                k: ChannelNoise(*(math.nan if x is None else float(x) for x in v))
                for k, v in data["noise"].items()
            },
            setting=np.asarray(data["setting"], dtype=bool),
            flagged_stuck=np.asarray(data["flagged_stuck"], dtype=bool),
            ramp_upper=arr("ramp_upper", (c,), 0.0),
            ramp_lower=arr("ramp_lower", (c,), 0.0),
            repeat_pairs=arr("repeat_pairs", (c,), 0.0),
            repeat_count=arr("repeat_count", (c,), 0.0),
            run_trials=arr("run_trials", (c,), 0.0),
            run_continued=arr("run_continued", (c,), 0.0),
            z_scale=arr("z_scale", (c,), 1.0),
            z_corr=arr("z_corr", (c,), 0.0),
            z_block=arr("z_block", (c,), 1.0),
            z_misfit=arr("z_misfit", (c,), 1.0),
        )


def _flat(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


@dataclass(frozen=True)
class TrackerUpdate:
    """The result of one window: the new checkpoint, the estimates and the flags."""

    state: TrackerState
    estimates: list[Estimate]
    flags: list[Flag]


def _robust_noise(y: np.ndarray) -> tuple[float, float, float] | None:
    """Read-out variance and quantization step of a stretch of finite readings, from robust
    statistics of their first differences; ``(0, 0)`` for a constant; None when too short."""
    if y.size < _MIN_LEARN_SAMPLES:
        return None
    d = np.diff(y)
    scale = float(np.max(np.abs(y))) or 1.0
    nonzero = np.abs(d[np.abs(d) > 1e-9 * scale])  # ignore float noise of decimal values
    if nonzero.size == 0:
        return 0.0, 0.0, 1.0
    quantum = float(nonzero.min())
    # The typical step (not the smallest: a significant-digit read-out near a decade has a
    # ten times finer step just below it).
    step = float(np.median(nonzero))
    # A trimmed variance (a MAD alone is biased on coarsely quantized readings).
    mad = 1.4826 * float(np.median(np.abs(d - np.median(d))))
    inliers = d[np.abs(d - np.median(d)) <= 6.0 * max(mad, step)]
    # The measured repeat probability (the stuck test keeps counting after learning).
    p = float(np.mean(d == 0))
    # A read-out that mostly repeats (step above the noise) toggles between steps: its
    # read-out error is up to half a step, not the uniform q²/12 of a fine quantizer.
    floor = step**2 / 4.0 if mad == 0 else quantum**2 / 12.0
    return max(float(np.var(inliers)) / 2.0, floor), quantum, p


def _significant_digits(values: np.ndarray) -> float:
    """How many significant digits a read-out keeps (1..4), 0 if it is not such a read-out."""
    v = values[np.isfinite(values) & (values != 0)]
    if v.size < _MIN_LEARN_SAMPLES:
        return 0.0
    exponent = np.floor(np.log10(np.abs(v)))
    for digits in range(1, 5):
        step = 10.0 ** (exponent - (digits - 1))
        if np.all(np.abs(np.round(v / step) * step - v) <= 1e-9 * np.abs(v)):
            return float(digits)
    return 0.0


def _read_out_step(value: float, noise: ChannelNoise) -> float:
    """The read-out step at ``value`` [U]."""
    if noise.significant_digits > 0 and value != 0:
        return float(10.0 ** (math.floor(math.log10(abs(value))) - (noise.significant_digits - 1)))
    return noise.quantum


def _tracked_step(tracked: float, noise: ChannelNoise, in_log: bool) -> float:
    """The read-out step at a tracked value (the logarithm of the reading on log channels), in
    the tracked unit."""
    value = math.exp(tracked) if in_log else tracked
    step = _read_out_step(value, noise)
    return math.log1p(step / abs(value)) if in_log and value != 0 else step


#: Grid of the maximum-likelihood noise fit, as multiples of the read-out variance R:
#: level diffusion q_l = R x 10^a [1/s], rate diffusion q_r = R x 10^b [1/s³].
_LEVEL_GRID = 10.0 ** np.arange(-6.0, 1.0)
_RATE_GRID = 10.0 ** np.arange(-9.0, 0.0)
#: The grid of channels whose drift rate is constant between changes (no rate diffusion): a
#: quarter decade, since their drift-rate test leans on the level diffusion.
_FINE_LEVEL_GRID = 10.0 ** np.arange(-6.0, 1.01, 0.25)
_MIN_LEARN_SAMPLES = 30
#: Identical readings that make a first window a setting even when they are fewer than
#: _MIN_LEARN_SAMPLES: an adapter publishes a steady control only with its heartbeat (1 Hz),
#: so a window holds few of its readings, and no later window more.
_MIN_SETTING_SAMPLES = 10


def _read_back(y: np.ndarray) -> bool:
    """Whether readings too few to learn noise from are a set value read back (identical)."""
    return bool(y.size >= _MIN_SETTING_SAMPLES and np.all(y == y[0]))


#: Weight of the white-noise continuation probability (in readings that followed a repeat)
#: against the measured one, in the stuck test's step-to-noise ratio.
_RUN_PRIOR = 20.0


def _fit_noise(
    series: list[tuple[np.ndarray, np.ndarray]],
    robust: list[tuple[float, float, float]],
    *,
    constant_rate: bool = False,
) -> list[ChannelNoise]:
    """Maximum-likelihood level and rate diffusions of a local linear trend, per channel, on a
    grid (every candidate filtered at once); the read-out variance from :func:`_robust_noise`.
    With ``constant_rate`` the rate diffusion is 0 and only the level diffusion is fitted."""
    if constant_rate:
        grid = [(ql, 0.0) for ql in _FINE_LEVEL_GRID]
    else:
        grid = [(ql, qr) for ql in _LEVEL_GRID for qr in _RATE_GRID]
    g = len(grid)
    width = _bucket(max(t.size for t, _ in series))
    c = len(series)
    times = np.empty((c, width))
    values = np.full((c, width), math.nan)
    for k, (t, y) in enumerate(series):
        times[k, : t.size], times[k, t.size :] = t, t[-1]
        values[k, : y.size] = y
    r = np.array([rv for rv, _, _ in robust])
    ql = np.concatenate([r * q for q, _ in grid])
    qr = np.concatenate([r * q for _, q in grid])
    model = LocalLinearTrend(
        level_diffusion=ql, rate_diffusion=qr, measurement_variance=np.tile(r, g)
    )
    first = np.array([y[0] for _, y in series])
    mean = np.stack([first, np.zeros(c)], axis=-1)
    cov = np.zeros((c, 2, 2))
    cov[:, 0, 0] = r
    cov[:, 1, 1] = r  # [U²/s²]: a drift of ~ one noise sigma per second, a priori
    with jax.enable_x64(True):
        initial = FilterState(
            jnp.asarray(np.tile(mean, (g, 1))),
            jnp.asarray(np.tile(cov, (g, 1, 1))),
            jnp.asarray(np.tile(times[:, 0], g)),
        )
        result = kalman_filter(model, np.tile(times, (g, 1)), np.tile(values, (g, 1)), initial)
        loglik = np.asarray(result.log_likelihood).reshape(g, c)
    best = np.argmax(np.where(np.isfinite(loglik), loglik, -np.inf), axis=0)
    # Diffusions too slow to show within the learning span cannot be told from zero there; a
    # level that may wander by one noise sigma per span (and a rate likewise) is the floor, so
    # a channel that was quiet while learned is not declared frozen for ever.
    span = np.array([max(float(t[-1] - t[0]), 1.0) for t, _ in series])
    return [
        ChannelNoise(
            float(r[k]),
            max(float(ql[best[k] * c + k]), float(r[k] / span[k])),
            0.0 if constant_rate else max(float(qr[best[k] * c + k]), float(r[k] / span[k] ** 3)),
            q,
            p,
        )
        for k, (_, q, p) in enumerate(robust)
    ]


class Tracker:
    """Follows one instrument's channels, window by window (see the module docstring)."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self._index = {name: i for i, name in enumerate(config.channels)}
        self._log_channels = config.log_channels
        limits = config.channel_limits
        self._limits = [limits[name] for name in config.channels]
        rate = config.rate_hz
        #: False alarms per day allowed to one test of one channel.
        self.per_test_rate = config.false_alarms_per_day / (len(config.channels) * _TESTS)
        self._c = innovation_threshold(self.per_test_rate, rate)
        self._h = cusum_threshold(self.per_test_rate, rate, config.cusum_k)
        self._ratio_cache: dict[float, float] = {}
        self._continuation_cache: dict[float, float] = {}
        self._run_cache: dict[float, int] = {}
        self._design_cache: dict[tuple[float, ...], CusumDesign] = {}

    def initial_state(self, *, start_s: float) -> TrackerState:
        """The state before any reading, at ``start_s`` [s since the epoch]."""
        c = len(self.config.channels)
        nan = np.full(c, math.nan)
        return TrackerState(
            origin_s=float(start_s),
            until_s=float(start_s),
            channels=self.config.channels,
            mean=np.full((c, 2), math.nan),
            cov=np.full((c, 2, 2), math.nan),
            time=np.zeros(c),
            cusum_upper=np.zeros(c),
            cusum_lower=np.zeros(c),
            last_value=nan.copy(),
            run_length=np.zeros(c, dtype=np.int64),
            run_log_p=np.zeros(c),
            last_seen=nan.copy(),
            in_dropout=np.zeros(c, dtype=bool),
            last_drift_s=np.full(c, -math.inf),
            noise=dict(self.config.noise),
            setting=np.zeros(c, dtype=bool),
            flagged_stuck=np.zeros(c, dtype=bool),
            ramp_upper=np.zeros(c),
            ramp_lower=np.zeros(c),
            repeat_pairs=np.zeros(c),
            repeat_count=np.zeros(c),
            run_trials=np.zeros(c),
            run_continued=np.zeros(c),
            z_scale=np.ones(c),
            z_corr=np.zeros(c),
            z_block=np.ones(c),
            z_misfit=np.ones(c),
        )

    # ------------------------------------------------------------------------------ update
    def update(
        self,
        state: TrackerState,
        samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
        *,
        until_s: float,
    ) -> TrackerUpdate:
        """Process the readings with times in ``[state.until_s, until_s)``.

        Args:
            state: the checkpoint after the previous window (or :meth:`initial_state`).
            samples: channel name -> ``(times [s since the epoch], values [canonical unit])``,
                sorted by time; channels not tracked are ignored, missing ones had no reading.
            until_s: the end of the window [s since the epoch]; the next window starts there.
        """
        cfg = self.config
        if state.channels != cfg.channels:
            raise TrackerError("the state was made for other channels")
        if not until_s >= state.until_s:
            raise TrackerError(f"window end {until_s} is before the state's {state.until_s}")
        state = _copy_state(state)
        origin = state.origin_s
        start_rel, end_rel = state.until_s - origin, until_s - origin
        per_channel: list[tuple[np.ndarray, np.ndarray]] = []
        clipped: list[np.ndarray] = []  # -1: at or below the lower limit, +1: the upper, 0
        for name, (lo, hi) in zip(cfg.channels, self._limits, strict=True):
            t, y = samples.get(name, (np.zeros(0), np.zeros(0)))
            t = np.asarray(t, dtype=np.float64) - origin
            y = np.asarray(y, dtype=np.float64)
            if t.shape != y.shape or t.ndim != 1:
                raise TrackerError(f"{name}: times and values must be 1-D of one length")
            if t.size and (np.any(np.diff(t) < 0) or not np.all(np.isfinite(t))):
                raise TrackerError(f"{name}: times must be finite and sorted")
            if t.size and (t[0] < start_rel or t[-1] >= end_rel):
                keep = (t >= start_rel) & (t < end_rel)
                t, y = t[keep], y[keep]
            side = np.zeros(y.size, dtype=np.int8)
            side[y <= lo] = -1
            side[y >= hi] = 1
            clipped.append(side)
            if name in self._log_channels:
                with np.errstate(divide="ignore", invalid="ignore"):
                    y = np.log(np.where(y > 0, y, np.nan))
            per_channel.append((t, y))

        flags: list[Flag] = []
        self._learn(state, per_channel, clipped)
        censored = [self._censored(state, i, clipped[i]) for i in range(len(cfg.channels))]
        grid = _report_grid(start_rel, end_rel, cfg.report_interval_s, origin)
        levels, variances, rates, rate_vars = self._filter_and_detect(
            state, per_channel, censored, grid, end_rel, flags
        )
        self._dropouts(state, per_channel, end_rel, flags)
        state.until_s = float(until_s)
        estimates = self._estimates(grid, origin, levels, variances, rates, rate_vars)
        flags.sort(key=lambda f: (f.time_s, f.channel, f.kind))
        return TrackerUpdate(state=state, estimates=estimates, flags=flags)

    def _censored(self, state: TrackerState, i: int, side: np.ndarray) -> np.ndarray:
        """Which clipped readings of a tracked channel the noise model explains: those at a
        limit that the prediction at the window's start puts within the disagreement threshold
        (c sigmas of the level's and the read-out's uncertainty, scaled as the innovations)."""
        none = np.zeros(side.size, dtype=bool)
        if not side.any() or state.setting[i] or np.isnan(state.mean[i, 0]):
            return none
        name = self.config.channels[i]
        noise = state.noise[name]
        lo, hi = self._limits[i]
        if name in self._log_channels:
            lo = math.log(lo) if lo > 0 else -math.inf
            hi = math.log(hi) if 0 < hi < math.inf else math.inf
        level = float(state.mean[i, 0])
        variance = float(state.cov[i, 0, 0]) + noise.measurement_variance
        sd = math.sqrt(max(variance, 0.0) * max(float(state.z_scale[i]), 1.0))
        out = none
        if level - self._c * sd <= lo:
            out = out | (side < 0)
        if level + self._c * sd >= hi:
            out = out | (side > 0)
        return out

    def _learn(
        self,
        state: TrackerState,
        per_channel: list[tuple[np.ndarray, np.ndarray]],
        clipped: list[np.ndarray],
    ) -> None:
        """Initialise the channels that have enough readings for the first time (clipped
        readings tell nothing of the noise: a channel learns from the others, or, when every
        reading is the same value at its limit, is a set value)."""
        fresh: list[int] = []
        fit: list[int] = []
        robust: list[tuple[float, float, float]] = []
        learnable: dict[int, np.ndarray] = {}
        for i, name in enumerate(self.config.channels):
            if not np.isnan(state.mean[i, 0]):
                continue
            t, y = per_channel[i]
            finite = np.isfinite(y)
            off = finite & (clipped[i] == 0)
            constant = bool(finite.any()) and float(np.ptp(y[finite])) == 0.0
            if np.count_nonzero(off) >= _MIN_LEARN_SAMPLES or not constant:
                finite = off
            learnable[i] = finite
            if name in state.noise:
                fresh.append(i)
                continue
            stats = _robust_noise(y[finite])
            if stats is None and _read_back(y[finite]):
                stats = (0.0, 0.0, 1.0)  # a set value read back: exact, a setting
            if stats is None:
                continue  # too few readings yet: wait for the next window
            fresh.append(i)
            if stats[0] == 0.0:
                state.noise[name] = ChannelNoise(0.0, 0.0, 0.0, 0.0)
            else:
                fit.append(i)
                robust.append(stats)
        for constant_rate in (False, True):
            group = [
                (i, stats)
                for i, stats in zip(fit, robust, strict=True)
                if (self.config.channels[i] in self.config.ramps) == constant_rate
            ]
            if group:
                self._fit_group(state, per_channel, learnable, group, constant_rate=constant_rate)
        for i in fresh:
            t, y = per_channel[i]
            finite = learnable[i]
            if not finite.any():
                continue
            noise = state.noise[self.config.channels[i]]
            state.setting[i] = noise.measurement_variance == 0.0
            state.mean[i] = (float(y[finite][0]), 0.0)
            var0 = noise.measurement_variance
            # A set value read back is exact; a measured one starts within its noise.
            state.cov[i] = np.diag([var0, var0]) if var0 > 0 else np.zeros((2, 2))
            state.time[i] = float(t[finite][0])
            state.last_value[i] = math.nan

    def _fit_group(
        self,
        state: TrackerState,
        per_channel: list[tuple[np.ndarray, np.ndarray]],
        learnable: Mapping[int, np.ndarray],
        group: list[tuple[int, tuple[float, float, float]]],
        *,
        constant_rate: bool,
    ) -> None:
        series = []
        for i, _ in group:
            t, y = per_channel[i]
            series.append((t[learnable[i]], y[learnable[i]]))
        robust = [stats for _, stats in group]
        fitted = _fit_noise(series, robust, constant_rate=constant_rate)
        for (i, _), noise, (_, y) in zip(group, fitted, series, strict=True):
            name = self.config.channels[i]
            raw = np.exp(y) if name in self._log_channels else y
            digits = _significant_digits(raw)
            noise = dataclasses.replace(noise, significant_digits=digits)
            if digits > 0 and 0 < noise.repeat_probability < 1:
                # The step while learned, at the typical reading, over the ratio its repeats
                # imply: the noise sigma, which does not change when the step does.
                step = _tracked_step(float(np.median(y)), noise, name in self._log_channels)
                sigma = step / step_to_noise_from_repeats(noise.repeat_probability)
                noise = dataclasses.replace(noise, read_out_sigma=sigma)
            state.noise[name] = noise
            state.repeat_pairs[i] = max(y.size - 1, 0)
            state.repeat_count[i] = noise.repeat_probability * state.repeat_pairs[i]
            same = np.diff(y) == 0
            state.run_trials[i] = np.count_nonzero(same[:-1])
            state.run_continued[i] = np.count_nonzero(same[:-1] & same[1:])

    def _filter_and_detect(
        self,
        state: TrackerState,
        per_channel: list[tuple[np.ndarray, np.ndarray]],
        censored: list[np.ndarray],
        grid: np.ndarray,
        end_rel: float,
        flags: list[Flag],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        c = len(cfg.channels)
        levels = np.full((c, grid.size), math.nan)
        variances = np.full((c, grid.size), math.nan)
        rates = np.full((c, grid.size), math.nan)
        rate_vars = np.full((c, grid.size), math.nan)
        active = [i for i in range(c) if not np.isnan(state.mean[i, 0]) and not state.setting[i]]
        for i in range(c):  # settings: hold the set value
            if i in active or np.isnan(state.mean[i, 0]):
                continue
            before = state.mean[i, 0]
            self._watch_setting(state, i, per_channel[i], flags)
            levels[i] = _held(grid, per_channel[i], before)
            variances[i] = max(state.cov[i, 0, 0], 0.0)
            rates[i], rate_vars[i] = state.mean[i, 1], state.cov[i, 1, 1]
        if not active:
            return levels, variances, rates, rate_vars
        steps = max(per_channel[i][0].size for i in active)
        width = _bucket(steps)
        times = np.empty((len(active), width))
        readings = np.full((len(active), width), math.nan)
        for row, i in enumerate(active):
            t, y = per_channel[i]
            times[row, : t.size] = t
            # A channel without readings in this window is only predicted forward (its
            # uncertainty grows with the gap).
            times[row, t.size :] = t[-1] if t.size else state.time[i]
            readings[row, : y.size] = y
        noise = [state.noise[cfg.channels[i]] for i in active]
        model = LocalLinearTrend(
            level_diffusion=np.array([n.level_diffusion for n in noise]),
            rate_diffusion=np.array([n.rate_diffusion for n in noise]),
            measurement_variance=np.array([n.measurement_variance for n in noise]),
        )
        with jax.enable_x64(True):
            initial = FilterState(
                jnp.asarray(state.mean[active]),
                jnp.asarray(state.cov[active]),
                jnp.asarray(state.time[active]),
            )
            result = kalman_filter(model, times, readings, initial)
            raw_z = np.array(result.normalized_innovation)
            for row, i in enumerate(active):
                # The filter follows a censored reading; the tests do not count it.
                raw_z[row, : censored[i].size][censored[i]] = math.nan
            scale = np.sqrt(np.maximum(state.z_scale[active], 1.0))
            z = raw_z / scale[:, None]
            # The CUSUM sums innovations: correlated ones (a model slightly too stiff for a
            # wandering channel) add up faster than white ones, by (1 + rho) / (1 - rho).
            rho = np.clip(state.z_corr[active], 0.0, 0.9)
            long_run = np.sqrt(np.maximum(state.z_scale[active] * (1 + rho) / (1 - rho), 1.0))
            z_cusum = raw_z / long_run[:, None]
            # The drift-rate CUSUM sums hundreds of them: the whole autocorrelation counts
            # (a level diffusion learned too small leaves correlations that decay over ~1/K
            # readings, which the lag-1 value misses), measured by the variance of the sums
            # of whole windows.
            z_ramp = raw_z / np.sqrt(np.maximum(long_run**2, state.z_block[active]))[:, None]
            gp0, gm0 = state.cusum_upper[active], state.cusum_lower[active]
            carried = jnp.asarray(_with_carry(z_cusum, gp0, gm0, cfg.cusum_k))
            cs = cusum_jit(carried, k=cfg.cusum_k, h=self._h)
            est = estimate_at(np.broadcast_to(grid, (len(active), grid.size)), result, model)
        upper, lower, alarm = (np.asarray(a)[:, 1:] for a in cs)
        mean, cov = np.asarray(result.mean), np.asarray(result.cov)
        innovation = np.asarray(result.innovation)
        pred_var = np.asarray(result.innovation_variance)
        est_mean, est_cov = np.asarray(est.mean), np.asarray(est.cov)
        for row, i in enumerate(active):
            t, y = per_channel[i]
            n = t.size
            levels[i], variances[i] = est_mean[row, :, 0], est_cov[row, :, 0, 0]
            rates[i], rate_vars[i] = est_mean[row, :, 1], est_cov[row, :, 1, 1]
            if n == 0:
                continue
            zi = z[row, :n]
            block = self._update_scale(state, i, raw_z[row, :n])
            flagged_before = len(flags)
            self._disagreements(state, i, t, y, zi, innovation[row, :n], pred_var[row, :n], flags)
            reopen = self._drifts(
                state, i, t, y, zi, alarm[row, :n], mean[row, :n], pred_var[row, :n], flags
            )
            self._stuck(state, i, t, y, censored[i], flags)
            rate_alarm = self._ramps(state, i, t, y, z_ramp[row, :n], mean[row, :n], flags)
            state.mean[i], state.cov[i], state.time[i] = mean[row, n - 1], cov[row, n - 1], t[-1]
            state.cusum_upper[i], state.cusum_lower[i] = upper[row, n - 1], lower[row, n - 1]
            if alarm[row, n - 1]:
                state.cusum_upper[i] = state.cusum_lower[i] = 0.0
            if reopen is not None:
                # The level moved: let the filter follow it at once instead of over minutes.
                state.cov[i, 0, 0] += reopen**2
                state.cov[i, 1, 1] += (reopen / 10.0) ** 2
                state.ramp_upper[i] = state.ramp_lower[i] = 0.0
            if rate_alarm is not None:
                # The drift rate changed: let the filter learn the new one.
                state.cov[i, 1, 1] += rate_alarm**2
            if block is not None and len(flags) == flagged_before:
                self._adapt(state, i, block, n)
        return levels, variances, rates, rate_vars

    def _adapt(self, state: TrackerState, i: int, block: float, n: int) -> None:
        """Re-learn a channel's diffusions when its innovations show that the model is far too
        stiff. For a random walk filtered with a diffusion ``q'`` where the truth has ``q``, the
        long-run variance of the normalized innovations is ``q / q'`` (``K² S = q'`` in the
        steady state): a noise learned in a calm first minute (a wander that beats over
        minutes) shows as window sums far wider than their length. Only windows without a flag
        on the channel count (a fault is not a misfit), and only a large misfit acts, after
        which the diffusions are multiplied by it and the statistics start again."""
        w = min(1.0, n / _MISFIT_MEMORY)
        state.z_misfit[i] = (1.0 - w) * state.z_misfit[i] + w * block
        if state.z_misfit[i] <= _MISFIT_TRIGGER:
            return
        name = self.config.channels[i]
        noise = state.noise[name]
        factor = min(float(state.z_misfit[i]), 100.0)
        state.noise[name] = dataclasses.replace(
            noise,
            level_diffusion=noise.level_diffusion * factor,
            rate_diffusion=noise.rate_diffusion * factor,
        )
        state.z_misfit[i] = state.z_block[i] = state.z_scale[i] = 1.0
        state.z_corr[i] = 0.0

    # ------------------------------------------------------------------------------ detectors
    def _update_scale(self, state: TrackerState, i: int, z: np.ndarray) -> float | None:
        """Running mean of z² (outliers clipped, so a fault does not hide itself), their lag-1
        autocorrelation and their long-run variance; returns the window's
        ``(sum z)² / n`` (None for a window too short)."""
        finite = z[np.isfinite(z)]
        if finite.size == 0:
            return None
        w = min(1.0, finite.size / _SCALE_MEMORY)
        clipped = np.clip(finite, -5.0, 5.0)
        mean_sq = float(np.mean(clipped**2))
        state.z_scale[i] = (1.0 - w) * state.z_scale[i] + w * mean_sq
        if clipped.size > 1:
            lag1 = float(np.mean(clipped[1:] * clipped[:-1])) / max(mean_sq, 1e-12)
            state.z_corr[i] = (1.0 - w) * state.z_corr[i] + w * lag1
        if clipped.size < _MIN_BLOCK:
            return None
        block = float(np.sum(clipped)) ** 2 / clipped.size
        wb = clipped.size / _BLOCK_MEMORY
        state.z_block[i] = (1.0 - wb) * state.z_block[i] + wb * block
        return block

    def _flag(
        self,
        kind: str,
        i: int,
        *,
        time_rel: float,
        end_rel: float | None,
        expected: float,
        observed: float,
        tolerance: float,
        severity: str,
        state: TrackerState,
        detail: dict[str, Any],
    ) -> Flag:
        cfg = self.config
        channel = cfg.channels[i]
        quantity = CHANNEL_QUANTITY.get(channel, channel)
        if channel in self._log_channels:
            # Tracked in log space: report values in the channel's unit, the test in log units.
            detail = {**detail, "scale": "log"}
            expected, observed = math.exp(expected), math.exp(observed)
        return Flag(
            kind=kind,
            quantity=quantity,
            channel=channel,
            time_s=state.origin_s + float(time_rel),
            end_s=None if end_rel is None else state.origin_s + float(end_rel),
            expected=float(expected),
            observed=float(observed),
            residual=float(observed - expected),
            tolerance=float(tolerance),
            severity=severity,
            twin_version=cfg.twin_version,
            calibration_version=cfg.calibration.version,
            detail=detail,
        )

    def _disagreements(
        self,
        state: TrackerState,
        i: int,
        t: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        innovation: np.ndarray,
        pred_var: np.ndarray,
        flags: list[Flag],
    ) -> None:
        outliers = np.abs(np.nan_to_num(z)) > self._c
        for episode in merge_alarms(outliers, kind="disagreement", max_gap=0):
            k = episode.start + int(np.nanargmax(np.abs(z[episode.start : episode.end])))
            sd = math.sqrt(pred_var[k])
            flags.append(
                self._flag(
                    "disagreement",
                    i,
                    time_rel=t[episode.start],
                    end_rel=t[episode.end - 1],
                    expected=y[k] - innovation[k],
                    observed=y[k],
                    tolerance=self._c * sd,
                    severity="critical" if abs(z[k]) > 3 * self._c else "warning",
                    state=state,
                    detail={"z": float(z[k]), "samples": episode.end - episode.start},
                )
            )

    def _drifts(
        self,
        state: TrackerState,
        i: int,
        t: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        alarm: np.ndarray,
        mean: np.ndarray,
        pred_var: np.ndarray,
        flags: list[Flag],
    ) -> float | None:
        reopen: float | None = None
        for episode in merge_alarms(alarm, kind="drift", max_gap=int(self.config.rate_hz * 5)):
            k = episode.start
            t_alarm = float(t[k])
            if t_alarm - state.last_drift_s[i] < _DRIFT_HOLDOFF_S:
                state.last_drift_s[i] = float(t[episode.end - 1])
                continue
            # Onset: the last sample before the alarm where the statistic was still small.
            lookback = max(0, k - int(self.config.rate_hz * 60))
            zs = np.nan_to_num(z[lookback : k + 1])
            sign = 1.0 if zs.sum() >= 0 else -1.0
            run = np.cumsum((sign * zs - self.config.cusum_k)[::-1])[::-1]
            onset = lookback + int(np.argmax(run))
            before = mean[max(onset - 1, 0), 0]
            window = y[onset : k + 1]
            observed = float(np.nanmean(window)) if np.isfinite(window).any() else float(y[k])
            sd = math.sqrt(pred_var[k])
            shift_sigma = (observed - before) / sd
            flags.append(
                self._flag(
                    "drift",
                    i,
                    time_rel=t[onset],
                    end_rel=t_alarm,
                    expected=before,
                    observed=observed,
                    tolerance=self.config.cusum_k * sd,
                    severity="critical" if abs(shift_sigma) > 10 else "warning",
                    state=state,
                    detail={
                        "cusum_h": self._h,
                        "cusum_k": self.config.cusum_k,
                        "shift_sigma": float(shift_sigma),
                        "delay_s": float(t_alarm - t[onset]),
                    },
                )
            )
            state.last_drift_s[i] = float(t[episode.end - 1])
            reopen = abs(observed - before)
        return reopen

    def _stuck(
        self,
        state: TrackerState,
        i: int,
        t: np.ndarray,
        y: np.ndarray,
        censored: np.ndarray,
        flags: list[Flag],
    ) -> None:
        """Runs of identical readings that a live sensor starts less often than the test's
        share of the budget allows (:func:`twin.stuck_run_threshold`), for the step-to-noise
        ratio implied by the channel's measured repeat probability (counted since learning,
        outside flagged runs); on a significant-digit read-out the ratio follows the step at
        the reading's value. A censored reading (clipped at a limit) breaks a run: a quantity
        resting at the end of its range repeats the limit, which says nothing of the sensor."""
        name = self.config.channels[i]
        noise = state.noise[name]
        if noise.measurement_variance == 0 or state.repeat_pairs[i] < 1:
            return
        in_log = name in self._log_channels
        last, run = state.last_value[i], int(state.run_length[i])
        run_start = math.nan
        pairs = repeats = trials = continued = 0
        flagged = bool(state.flagged_stuck[i])
        ratio = self._step_to_noise(state, i, noise)
        for k in range(y.size):
            v = y[k]
            if not math.isfinite(v):
                continue
            if censored[k]:
                last, run, run_start, flagged = math.nan, 0, math.nan, False
                continue
            if v != last:
                if math.isfinite(last) and not flagged:
                    pairs += 1
                    trials += run >= 2
                last, run, run_start, flagged = v, 1, t[k], False
                continue
            run += 1
            if not flagged:
                pairs, repeats = pairs + 1, repeats + 1
                if run >= 3:
                    trials, continued = trials + 1, continued + 1
            if flagged:
                continue
            if noise.significant_digits > 0 and noise.quantum > 0:
                # The step follows the value (10x coarser above a decade): the ratio here is
                # the step here over the noise sigma measured while learning; the noise implied
                # at the finest step seen is a lower bound of it.
                step_here = _tracked_step(v, noise, in_log)
                ratio_here = ratio * step_here / noise.quantum
                if math.isfinite(noise.read_out_sigma) and noise.read_out_sigma > 0:
                    ratio_here = max(ratio_here, step_here / noise.read_out_sigma)
                min_run = self._min_run(max(ratio, ratio_here))
            else:
                min_run = self._min_run(ratio)
            if run >= min_run:
                flagged = True
                start = run_start
                if math.isnan(start):
                    start = t[k] - (run - 1) / self.config.rate_hz
                flags.append(
                    self._flag(
                        "stuck",
                        i,
                        time_rel=start,
                        end_rel=t[k],
                        expected=math.nan,
                        observed=v,
                        tolerance=float(min_run),
                        severity="warning",
                        state=state,
                        detail={"identical_readings": run, "min_run": min_run},
                    )
                )
        state.last_value[i], state.run_length[i] = last, run
        state.flagged_stuck[i] = flagged
        state.repeat_pairs[i] += pairs
        state.repeat_count[i] += repeats
        state.run_trials[i] += trials
        state.run_continued[i] += continued

    def _step_to_noise(self, state: TrackerState, i: int, noise: ChannelNoise) -> float:
        """Read-out step over noise sigma at the channel's typical value, from the measured
        repeat probability (with half a repeat of prior, so that no count is not certainty);
        where runs continue more often than that ratio explains (read-out noise correlated
        from one reading to the next, as real sensors behind a filter show), the ratio that
        explains the measured continuation, since it is the continuation that makes long runs
        (its count shrunk towards the repeat-derived value by :data:`_RUN_PRIOR` readings)."""
        p = (state.repeat_count[i] + 0.5) / (state.repeat_pairs[i] + 1.0)
        key = round(float(p), 4)
        ratio = self._ratio_cache.get(key)
        if ratio is None:
            ratio = self._ratio_cache[key] = step_to_noise_from_repeats(key)
        grid = _ratio_grid(ratio)
        prior = self._continuation_cache.get(grid)
        if prior is None:
            prior = self._continuation_cache[grid] = continuation_probability(grid)
        c = (state.run_continued[i] + _RUN_PRIOR * prior) / (state.run_trials[i] + _RUN_PRIOR)
        if c <= prior:
            return ratio
        c_key = round(float(c), 3)
        matched = self._ratio_cache.get(-c_key)  # negative keys: from the continuation
        if matched is None:
            matched = self._ratio_cache[-c_key] = step_to_noise_from_continuation(c_key)
        return max(ratio, matched)

    def _min_run(self, ratio: float) -> int:
        key = _ratio_grid(ratio)  # rounded up: a run no shorter than the exact ratio's
        run = self._run_cache.get(key)
        if run is None:
            run = stuck_run_threshold(key, self.per_test_rate, self.config.rate_hz)
            self._run_cache[key] = run
        return run

    def _ramps(
        self,
        state: TrackerState,
        i: int,
        t: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        mean: np.ndarray,
        flags: list[Flag],
    ) -> float | None:
        """A change of drift rate: a two-sided CUSUM on ``z`` matched to the channel's ramp of
        interest (see :meth:`ramp_design`); returns the ramp to re-open the rate by on an
        alarm, else None."""
        name = self.config.channels[i]
        ramp = self.config.ramps.get(name)
        if ramp is None:
            return None
        design = self.ramp_design(state.noise[name], ramp)
        if design is None:
            return None
        gp, gm = float(state.ramp_upper[i]), float(state.ramp_lower[i])
        alarmed: float | None = None
        for k in np.flatnonzero(np.isfinite(z)):
            gp = max(0.0, gp + z[k] - design.k)
            gm = max(0.0, gm - z[k] - design.k)
            if gp <= design.h and gm <= design.h:
                continue
            sign = 1.0 if gp > design.h else -1.0
            gp = gm = 0.0
            if alarmed is not None or t[k] - state.last_drift_s[i] < _DRIFT_HOLDOFF_S:
                continue
            alarmed = ramp
            state.last_drift_s[i] = float(t[k])
            flags.append(
                self._flag(
                    "drift",
                    i,
                    time_rel=t[k] - design.delay_samples / self.config.rate_hz,
                    end_rel=t[k],
                    expected=float(mean[k, 1]),
                    observed=float(mean[k, 1] + sign * ramp),
                    tolerance=ramp,
                    severity="warning",
                    state=state,
                    detail={
                        "test": "drift_rate",
                        "ramp_of_interest": sign * ramp,
                        "cusum_k": design.k,
                        "cusum_h": design.h,
                    },
                )
            )
        state.ramp_upper[i], state.ramp_lower[i] = gp, gm
        return alarmed

    def ramp_design(self, noise: ChannelNoise, ramp: float) -> CusumDesign | None:
        """The drift-rate CUSUM of a channel with ``noise`` for a ramp of interest ``ramp``
        [U/s]: matched to the mean innovations the ramp leaves in the channel's steady-state
        filter, at the test's share of the budget (None for a channel without noise)."""
        if noise.measurement_variance <= 0:
            return None
        key = (noise.level_diffusion, noise.rate_diffusion, noise.measurement_variance, ramp)
        design = self._design_cache.get(key)
        if design is None:
            signature = self.signature(noise, ramp=ramp)
            design = matched_cusum(signature, self.per_test_rate, self.config.rate_hz)
            self._design_cache[key] = design
        return design

    def expected_delay(
        self,
        channel: str,
        noise: ChannelNoise,
        *,
        step: float = 0.0,
        ramp: float = 0.0,
        paths: int = 1000,
        seed: int = 0,
    ) -> np.ndarray:
        """Detection delays [s] of a step ``step`` [U] and/or ramp ``ramp`` [U/s] on ``channel``
        with ``noise``, one per simulated path (inf: not within 600 s): the disagreement test,
        the step CUSUM and, where the channel has one, the drift-rate CUSUM, on the fault's
        mean innovations plus N(0, 1) noise, at this tracker's thresholds."""
        signature = np.abs(self.signature(noise, step=step, ramp=ramp))
        design = self.ramp_design(noise, self.config.ramps[channel]) if (
            channel in self.config.ramps
        ) else None  # fmt: skip
        rng = np.random.default_rng(seed)
        g_step, g_ramp = np.zeros(paths), np.zeros(paths)
        delay = np.full(paths, math.inf)
        for j, m in enumerate(signature):
            z = m + rng.standard_normal(paths)
            g_step = np.maximum(0.0, g_step + z - self.config.cusum_k)
            alarm = (np.abs(z) > self._c) | (g_step > self._h)
            if design is not None:
                g_ramp = np.maximum(0.0, g_ramp + z - design.k)
                alarm |= g_ramp > design.h
            delay[alarm & np.isinf(delay)] = (j + 1) / self.config.rate_hz
            if not np.isinf(delay).any():
                break
        return delay

    def signature(self, noise: ChannelNoise, *, step: float = 0.0, ramp: float = 0.0) -> np.ndarray:
        """Mean normalized innovations [sigma] that a step ``step`` [U] plus a ramp ``ramp``
        [U/s] leave in a channel's steady-state filter, sample by sample from the onset."""
        dt = 1.0 / self.config.rate_hz
        gain, s = steady_state_filter(
            noise.level_diffusion, noise.rate_diffusion, noise.measurement_variance, dt
        )
        j = np.arange(1, int(_SIGNATURE_S * self.config.rate_hz) + 1)
        return innovation_signature(step + ramp * dt * j, gain, s, dt)

    def _watch_setting(
        self,
        state: TrackerState,
        i: int,
        channel: tuple[np.ndarray, np.ndarray],
        flags: list[Flag],
    ) -> None:
        if not state.setting[i]:
            return
        t, y = channel
        # Changes closer together than max_gap_s are one episode, one flag (first change to
        # last, value before to value after): a set value turned continuously (a focus knob,
        # a drift compensation) is not one flag per reading.
        episode: list[float] = []  # first change, last change, value before, changes
        for k in np.flatnonzero(np.isfinite(y)):
            if y[k] == state.mean[i, 0]:
                continue
            if episode and t[k] - episode[1] <= self.config.max_gap_s:
                episode[1], episode[3] = t[k], episode[3] + 1
            else:
                if episode:
                    flags.append(self._setting_flag(state, i, episode))
                episode = [t[k], t[k], state.mean[i, 0], 1]
            state.mean[i, 0] = y[k]
        if episode:
            flags.append(self._setting_flag(state, i, episode))
        if y.size:
            state.time[i] = t[-1]

    def _setting_flag(self, state: TrackerState, i: int, episode: list[float]) -> Flag:
        start, end, before, changes = episode
        return self._flag(
            "setting_change",
            i,
            time_rel=start,
            end_rel=None if changes == 1 else end,
            expected=before,
            observed=state.mean[i, 0],
            tolerance=0.0,
            severity="info",
            state=state,
            detail={"changes": int(changes)},
        )

    def _dropouts(
        self,
        state: TrackerState,
        per_channel: list[tuple[np.ndarray, np.ndarray]],
        end_rel: float,
        flags: list[Flag],
    ) -> None:
        gap = self.config.max_gap_s
        found: list[Flag] = []
        for i in range(len(self.config.channels)):
            t, y = per_channel[i]
            seen = t[np.isfinite(y)]
            prev = state.last_seen[i]
            if math.isnan(prev) and seen.size == 0:
                continue
            points = np.concatenate(([prev], seen)) if not math.isnan(prev) else seen
            for a, b in itertools.pairwise(points):
                if b - a > gap:
                    # A dropout already reported as ongoing is reported again, closed: same
                    # start (the store's key), now with its end.
                    found.append(self._dropout_flag(state, i, a, b))
                state.in_dropout[i] = False
            last = float(points[-1])
            if end_rel - last > gap and not state.in_dropout[i]:
                found.append(self._dropout_flag(state, i, last, None))
                state.in_dropout[i] = True
            state.last_seen[i] = last
        flags.extend(self._whole_instrument(state, found))

    def _whole_instrument(self, state: TrackerState, found: list[Flag]) -> list[Flag]:
        """One flag for the instrument (channel ``*``) instead of one per channel when (nearly)
        every channel fell silent, or came back, together: the publisher or the link stopped."""
        known = int(np.count_nonzero(~np.isnan(state.last_seen)))
        if len(found) < 2 or len(found) < 0.9 * known:
            return found
        gap = self.config.max_gap_s
        starts = [f.time_s for f in found]
        ends = [f.end_s for f in found]
        closed = [e for e in ends if e is not None]
        if max(starts) - min(starts) > gap or 0 < len(closed) < len(ends):
            return found
        if closed and max(closed) - min(closed) > gap:
            return found
        first = found[0]
        end_s = min(closed) if closed else None
        return [
            dataclasses.replace(
                first,
                quantity="telemetry",
                channel="*",
                time_s=min(starts),
                end_s=end_s,
                detail={
                    "gap_s": None if end_s is None else end_s - min(starts),
                    "ongoing": end_s is None,
                    "channels": len(found),
                    "scope": "instrument",
                },
            )
        ]

    def _dropout_flag(self, state: TrackerState, i: int, a: float, b: float | None) -> Flag:
        return self._flag(
            "dropout",
            i,
            time_rel=a,
            end_rel=b,
            expected=math.nan,
            observed=math.nan,
            tolerance=self.config.max_gap_s,
            severity="warning",
            state=state,
            detail={"gap_s": None if b is None else float(b - a), "ongoing": b is None},
        )

    # ------------------------------------------------------------------------------ estimates
    def _estimates(
        self,
        grid: np.ndarray,
        origin: float,
        levels: np.ndarray,
        variances: np.ndarray,
        rates: np.ndarray,
        rate_vars: np.ndarray,
    ) -> list[Estimate]:
        cfg = self.config
        out: list[Estimate] = []
        if grid.size == 0:
            return out
        times = grid + origin
        derived: StateEstimate | None = None
        if cfg.derives_state:
            idx = [self._index[name] for name in INPUT_CHANNELS]
            if not np.isnan(levels[idx]).any():
                readings = {name: levels[self._index[name]] for name in INPUT_CHANNELS}
                var = {name: variances[self._index[name]] for name in INPUT_CHANNELS}
                derived = derive_state_series(cfg.calibration, readings, variances=var)
        # A directly reported quantity (the vendor's C10) is a measurement of it: taken in
        # with the derived value as the prior, or alone where the model's channels are absent.
        reported = [n for n in REPORTED_CHANNELS if n in self._index]
        reported = [n for n in reported if np.isfinite(levels[self._index[n]]).any()]
        if reported:
            derived = fuse_reported(
                cfg.calibration,
                derived,
                {n: levels[self._index[n]] for n in reported},
                variances={n: variances[self._index[n]] for n in reported},
            )
        if derived is not None:
            for q in STATE_QUANTITIES:
                if q.name not in derived.values:
                    continue
                values, std = derived.values[q.name], derived.std[q.name]
                out.extend(
                    Estimate(float(t), q.name, float(v), float(s), q.unit)
                    for t, v, s in zip(times, values, std, strict=True)
                    if math.isfinite(v)
                )
        for channel, quantity in _DRIFT_QUANTITIES.items():
            i = self._index.get(channel)
            if i is None or np.isnan(rates[i]).all():
                continue
            out.extend(
                Estimate(float(t), quantity, float(v), float(math.sqrt(max(s, 0.0))), "m/s")
                for t, v, s in zip(times, rates[i], rate_vars[i], strict=True)
                if math.isfinite(v) and math.isfinite(s)
            )
        return out


def _held(grid: np.ndarray, channel: tuple[np.ndarray, np.ndarray], before: float) -> np.ndarray:
    """A set value at each report instant: its last reading at or before the instant (the
    value before the window where none is)."""
    t, y = channel
    finite = np.isfinite(y)
    t, y = t[finite], y[finite]
    k = np.searchsorted(t, grid, side="right") - 1
    return np.where(k >= 0, y[np.maximum(k, 0)] if y.size else before, before)


def _ratio_grid(ratio: float) -> float:
    """``ratio`` rounded up to a grid of 1 % steps, so the run tables are computed a few
    hundred times at most."""
    if not ratio > 0:
        return 1e-3
    return float(1.01 ** math.ceil(math.log(ratio) / math.log(1.01) - 1e-9))


def _copy_state(s: TrackerState) -> TrackerState:
    return TrackerState.from_json(s.to_json())


def _report_grid(start_rel: float, end_rel: float, interval: float, origin: float) -> np.ndarray:
    """Report instants in ``[start, end)``, on multiples of ``interval`` since the epoch."""
    first = math.ceil((start_rel + origin) / interval) * interval - origin
    n = max(0, math.ceil((end_rel - first) / interval - 1e-9))
    return first + interval * np.arange(n)


def _bucket(steps: int) -> int:
    """Pad window lengths to a few sizes, so the jitted filter compiles a few times only."""
    return padded_length(steps, minimum=64)


def _with_carry(z: np.ndarray, gp: np.ndarray, gm: np.ndarray, k: float) -> np.ndarray:
    """Prepend a sample that restores the CUSUM statistics carried from the last window."""
    # cusum() starts from zero; one leading pseudo-sample z0 with g+ = max(0, z0 - k) = gp is
    # possible only for one side, so the carry uses the larger side (the other restarts at 0).
    first = np.where(gp >= gm, gp, -gm)
    first = first + np.sign(first) * k
    first = np.where((gp == 0) & (gm == 0), np.nan, first)
    return np.concatenate([first[:, None], z], axis=1)
