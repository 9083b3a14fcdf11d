"""A seeded fault suite for the twin's detectors, and its scoring.

Each :class:`FaultCase` is one fault injected into a virtual microscope at ``onset_s``; the
suite covers what the twin must catch (defocus steps of 5-50 nm, a 0.1 kV high-tension step,
a 0.5 K holder temperature excursion, 0.1 nm/s of extra stage drift, a stuck sensor, a
dropout). :func:`run_case` streams the telemetry through a :class:`twin.Tracker` window by
window, as the twin worker does, and :func:`score` says whether the fault was detected, with
what delay, and how many flags were false alarms. A fault-free run long enough to contain tip
flashes of the cold FEG (:meth:`VirtualMicroscope.tip_flashes`) counts the flags a flash raises
on its channel as detections of a true change, apart from the false alarms.
:class:`FixedThresholdDetector` is the reference: a static alarm band around each channel's
reading, as vendor software sets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simulations._block import TelemetryBlock
from simulations._faults import Dropout, Excursion, Fault, Ramp, Step, Stuck
from simulations._optical_state import state_step
from simulations._virtual_microscope import STANDARD_CHANNEL_MODELS, VirtualMicroscope
from twin import (
    Calibration,
    Flag,
    Tracker,
    default_tracker_config,
    innovation_signature,
    innovation_threshold,
    matched_cusum,
    steady_state_filter,
    stuck_run_threshold,
)

__all__ = [
    "FAULT_SUITE",
    "TESTS_PER_CHANNEL",
    "CaseResult",
    "FaultCase",
    "FixedThresholdDetector",
    "oracle_delay",
    "run_case",
    "score",
]

#: Tests of each channel that share the instrument's false-alarm budget in the twin's tracker;
#: the oracle runs at the same per-channel-test rate.
TESTS_PER_CHANNEL = 4

#: Start of every run: the first ``LEARN_S`` seconds teach the tracker the noise.
LEARN_S = 60.0
_T0_NS = 1_795_435_200_000_000_000


@dataclass(frozen=True)
class FaultCase:
    """One fault of the suite.

    Attributes:
        name: a short label.
        fault: the fault (``None`` for a fault-free run).
        channel: the channel whose flag counts as the detection.
        kinds: flag kinds that count.
        onset_s: when the fault starts [s after the start of the run].
        effect_s: when the fault has an effect a detector could see (a dropout is visible only
            once it lasts longer than the tolerated gap).
    """

    name: str
    fault: Fault | None
    channel: str
    kinds: tuple[str, ...]
    onset_s: float
    effect_s: float | None = None


def _suite(calibration: Calibration) -> tuple[FaultCase, ...]:
    onset = 300.0
    cases = [
        FaultCase(
            f"defocus step {nm} nm",
            state_step(calibration, "defocus", at_s=onset, delta=nm * 10.0),
            "objective.lens_current",
            ("drift", "disagreement"),
            onset,
        )
        for nm in (5, 10, 20, 50)
    ]
    cases += [
        FaultCase(
            "HT step 0.1 kV",
            Step("gun.high_tension", at_s=onset, delta=100.0),
            "gun.high_tension",
            ("drift", "disagreement"),
            onset,
        ),
        FaultCase(
            "holder temperature excursion 0.5 K",
            Excursion("holder.temperature", start_s=onset, duration_s=20.0, amplitude=0.5),
            "holder.temperature",
            ("drift", "disagreement"),
            onset,
        ),
        FaultCase(
            "stage drift 0.1 nm/s",
            Ramp("stage.x", start_s=onset, rate_per_s=0.1e-9),
            "stage.x",
            ("drift", "disagreement"),
            onset,
        ),
        FaultCase(
            "stuck objective current sensor",
            Stuck("objective.lens_current", start_s=onset),
            "objective.lens_current",
            ("stuck",),
            onset,
        ),
        FaultCase(
            "holder temperature dropout 30 s",
            Dropout("holder.temperature", start_s=onset, end_s=onset + 30.0),
            "holder.temperature",
            ("dropout",),
            onset,
        ),
    ]
    return tuple(cases)


#: The suite for the default calibration of the virtual microscope.
FAULT_SUITE: tuple[FaultCase, ...] = _suite(Calibration())


@dataclass
class CaseResult:
    """How a detector did on one run."""

    case: FaultCase
    seed: int
    duration_s: float
    detected: bool
    delay_s: float | None
    false_alarms: int
    flags: list[Flag] = field(default_factory=list)
    #: The flags counted as false alarms.
    false_alarm_flags: list[Flag] = field(default_factory=list)
    #: True changes of the instrument in the run (tip flashes), how many raised a flag on
    #: their channel, and how many flags they raised (none of them false alarms).
    true_events: int = 0
    true_events_detected: int = 0
    event_flags: int = 0


def _alarm_time(flag: Flag, max_gap_s: float) -> float:
    """When the detector could have raised the flag [s since the epoch]."""
    if flag.kind == "dropout":
        return flag.time_s + max_gap_s
    if flag.kind in ("drift", "stuck") and flag.end_s is not None:
        return flag.end_s
    return flag.time_s


def score(
    case: FaultCase,
    flags: Sequence[Flag],
    *,
    start_s: float,
    duration_s: float,
    seed: int,
    max_gap_s: float,
    rate_hz: float = 10.0,
    detection_window_s: float = 180.0,
    events: Sequence[tuple[str, float]] = (),
) -> CaseResult:
    """Detection (the first matching flag raised from the onset to ``detection_window_s``
    after it), its delay, and the false alarms (every other flag after the learning period,
    except further flags of the faulty channel while the fault lasts, and the level-change
    flags (drift, disagreement) on the channel of a true event ``(channel, time [s since the
    epoch])`` from the event to ``detection_window_s`` after it)."""
    onset = start_s + case.onset_s
    detected_at: float | None = None
    false_alarm_flags: list[Flag] = []
    slack = 0.5 / rate_hz
    hit: set[int] = set()
    event_flags = 0
    for flag in flags:
        t = _alarm_time(flag, max_gap_s)
        if t < start_s + LEARN_S:
            continue
        explained = [
            k
            for k, (channel, at) in enumerate(events)
            if flag.channel == channel
            and flag.kind in ("drift", "disagreement")
            and at - slack <= t <= at + detection_window_s
        ]
        if explained:
            hit.update(explained)
            event_flags += 1
            continue
        on_channel = case.fault is not None and flag.channel == case.channel
        # Half a sample period of slack: tick times carry the source clock's jitter.
        if (
            on_channel
            and onset - 0.5 / rate_hz <= t <= onset + detection_window_s
            and flag.kind in case.kinds
        ):
            detected_at = t if detected_at is None else min(detected_at, t)
            continue
        if on_channel and t >= onset - 0.5 / rate_hz:
            continue  # the fault's later consequences on its own channel
        false_alarm_flags.append(flag)
    return CaseResult(
        case=case,
        seed=seed,
        duration_s=duration_s - LEARN_S,
        detected=detected_at is not None,
        delay_s=None if detected_at is None else max(0.0, detected_at - onset),
        false_alarms=len(false_alarm_flags),
        flags=list(flags),
        false_alarm_flags=false_alarm_flags,
        true_events=len(events),
        true_events_detected=len(hit),
        event_flags=event_flags,
    )


def _microscope(case: FaultCase, seed: int, rate_hz: float, **kwargs: object) -> VirtualMicroscope:
    faults = [] if case.fault is None else [case.fault]
    return VirtualMicroscope(
        rate_hz=rate_hz,
        seed=seed,
        start_ns=_T0_NS,
        faults=faults,
        **kwargs,  # type: ignore[arg-type]
    )


def _telemetry(
    case: FaultCase, seed: int, duration_s: float, rate_hz: float, **kwargs: object
) -> TelemetryBlock:
    return _microscope(case, seed, rate_hz, **kwargs).generate(round(duration_s * rate_hz))


def oracle_delay(
    case: FaultCase,
    *,
    seed: int = 0,
    duration_s: float = 600.0,
    rate_hz: float = 10.0,
    false_alarms_per_day: float = 1.0,
    max_gap_s: float = 2.0,
    detection_window_s: float = 180.0,
) -> float | None:
    """Delay [s] of the optimal detector of one case (None: not detected in the window).

    The oracle knows the fault's shape and sign and the channel's model: the deterministic part
    of the truth (nominal, drift, wander, lens warm-up: given, a floor), its random walk and
    read-out noise (with the read-out step's variance) as statistics. A change of the truth is
    seen through the exact steady-state Kalman filter of that model and a one-sided CUSUM
    matched to the fault's innovation signature; a stuck sensor by the shortest run of
    identical readings the true noise and step make rare enough; a dropout by the gap rule
    itself. Each runs at the tracker's per-channel-test false-alarm rate.
    """
    if case.fault is None:
        return None
    block = _telemetry(case, seed, duration_s, rate_hz)
    names = block.channel_names
    per_test = false_alarms_per_day / (len(names) * TESTS_PER_CHANNEL)
    i = names.index(case.channel)
    t = (block.times_ns - _T0_NS) / 1e9
    y = block.values[i]
    model = STANDARD_CHANNEL_MODELS[case.channel]
    onset = case.onset_s
    if isinstance(case.fault, Dropout):
        before = t[(t < onset) & np.isfinite(y)]
        return float(before[-1] + max_gap_s - onset)
    if isinstance(case.fault, Stuck):
        min_run = stuck_run_threshold(model.resolution / model.noise, per_test, rate_hz)
        same = np.concatenate(([False], y[1:] == y[:-1]))
        run = np.zeros(y.size, dtype=np.int64)
        for k in range(1, y.size):
            run[k] = run[k - 1] + 1 if same[k] else 0
        hit = np.flatnonzero((run + 1 >= min_run) & (t >= onset))
        return None if hit.size == 0 else float(max(t[hit[0]] - onset, 0.0))
    return _oracle_truth_fault(case, block, i, seed, per_test, rate_hz, detection_window_s)


def _oracle_truth_fault(
    case: FaultCase,
    block: TelemetryBlock,
    i: int,
    seed: int,
    per_test: float,
    rate_hz: float,
    window_s: float,
) -> float | None:
    fault = case.fault
    assert isinstance(fault, Step | Ramp | Excursion)
    model = STANDARD_CHANNEL_MODELS[case.channel]
    still = dataclasses.replace(model, random_walk=0.0)
    deterministic = _telemetry(
        FaultCase("", None, "", (), 0.0), seed, block.n_ticks / rate_hz, rate_hz,
        models={case.channel: still},
    ).true_values  # fmt: skip
    assert deterministic is not None
    t = (block.times_ns - _T0_NS) / 1e9
    residual = block.values[i] - deterministic[i]
    dt = 1.0 / rate_hz
    r = model.noise**2 + model.resolution**2 / 12.0
    gain, s = steady_state_filter(model.random_walk**2, 0.0, r, dt)
    after = case.onset_s + dt * np.arange(1, round(window_s * rate_hz) + 1, dtype=np.float64)
    offsets = fault.offset(after)
    sign = 1.0 if float(np.sum(offsets)) >= 0 else -1.0
    signature = innovation_signature(sign * offsets, gain, s, dt)
    design = matched_cusum(signature, per_test, rate_hz, two_sided=False)
    level, g = float(residual[0]), 0.0
    learn = LEARN_S
    for k in range(1, residual.size):
        nu = residual[k] - level
        level += float(gain[0]) * nu
        if t[k] < learn:
            continue
        g = max(0.0, g + sign * nu / math.sqrt(s) - design.k)
        if g > design.h:
            if t[k] >= case.onset_s - 0.5 * dt:
                delay = max(float(t[k] - case.onset_s), 0.0)
                return delay if delay <= window_s else None
            g = 0.0
    return None


def run_case(
    case: FaultCase,
    *,
    seed: int = 0,
    duration_s: float = 600.0,
    rate_hz: float = 10.0,
    window_s: float = 10.0,
    false_alarms_per_day: float = 1.0,
    calibration: Calibration | None = None,
    chunk_s: float = 3600.0,
    extra_channels: int = 0,
) -> CaseResult:
    """Stream one case through a twin tracker (a first window of :data:`LEARN_S`, then
    ``window_s`` windows) and score its flags. The telemetry is generated ``chunk_s`` at a
    time and each window gets only its own samples, as the twin worker reads them, so a run of
    days costs time in proportion to its length and memory for one chunk. ``extra_channels``
    adds the virtual microscope's further channels (the demo runs 68), with their ranges."""
    cal = calibration or Calibration()
    vm = _microscope(case, seed, rate_hz, extra_channels=extra_channels)
    names = [spec.name for spec in vm.channels]
    config = default_tracker_config(
        cal,
        channels=names,
        rate_hz=rate_hz,
        false_alarms_per_day=false_alarms_per_day,
        limits={spec.name: (spec.lower, spec.upper) for spec in vm.channels},
    )
    tracker = Tracker(config)
    start = _T0_NS / 1e9
    state = tracker.initial_state(start_s=start)
    flags: list[Flag] = []
    edges = [start, *np.arange(start + LEARN_S, start + duration_s + window_s / 2, window_s)]
    ticks, produced = round(duration_s * rate_hz), 0
    chunk = max(1, round(chunk_s * rate_hz))
    pending_t, pending_v = np.zeros(0), np.zeros((len(names), 0))
    for end in edges[1:]:
        while produced < ticks and (pending_t.size == 0 or pending_t[-1] < end):
            block = vm.generate(min(chunk, ticks - produced))
            produced += block.n_ticks
            pending_t = np.concatenate([pending_t, block.times_ns / 1e9])
            pending_v = np.concatenate([pending_v, block.values], axis=1)
        cut = int(np.searchsorted(pending_t, end, side="left"))
        t_w, v_w = pending_t[:cut], pending_v[:, :cut]
        samples = {name: (t_w, v_w[i]) for i, name in enumerate(names)}
        update = tracker.update(state, samples, until_s=float(end))
        pending_t, pending_v = pending_t[cut:], pending_v[:, cut:]
        state = update.state
        flags.extend(update.flags)
    events = [(channel, start + at) for channel, at in vm.tip_flashes(0.0, duration_s)]
    return score(
        case,
        flags,
        start_s=start,
        duration_s=duration_s,
        seed=seed,
        max_gap_s=config.max_gap_s,
        rate_hz=rate_hz,
        events=events,
    )


class FixedThresholdDetector:
    """The reference: each channel alarms when its reading leaves a fixed band.

    The band is centred on the channel's median over the learning period, and its half-width
    is ``c`` robust standard deviations of the readings there, with ``c`` the per-sample
    threshold that white Gaussian readings would cross ``false_alarms_per_day`` times a day on
    the whole instrument (shared among its channels, as the twin shares it among its tests).
    It sees level changes only: it cannot tell a stuck sensor or a dropout.
    """

    def __init__(self, *, false_alarms_per_day: float = 1.0, rate_hz: float = 10.0) -> None:
        self.false_alarms_per_day = false_alarms_per_day
        self.rate_hz = rate_hz

    def run(
        self, case: FaultCase, *, seed: int = 0, duration_s: float = 600.0, rate_hz: float = 10.0
    ) -> CaseResult:
        block = _telemetry(case, seed, duration_s, rate_hz)
        t_s = block.times_ns / 1e9
        start = _T0_NS / 1e9
        learn = t_s < start + LEARN_S
        c = innovation_threshold(self.false_alarms_per_day / block.n_channels, self.rate_hz)
        flags: list[Flag] = []
        for i, name in enumerate(block.channel_names):
            y = block.values[i]
            ref = y[learn & np.isfinite(y)]
            if ref.size == 0:
                continue
            centre = float(np.median(ref))
            sd = 1.4826 * float(np.median(np.abs(ref - centre)))
            if sd == 0:
                continue  # a set value: no band to set
            outside = np.abs(y - centre) > c * sd
            outside &= ~learn
            edges = np.flatnonzero(np.diff(np.concatenate(([0], outside.astype(np.int8)))) == 1)
            for k in edges:
                flags.append(
                    Flag(
                        kind="drift",
                        quantity=name,
                        channel=name,
                        time_s=float(t_s[k]),
                        end_s=float(t_s[k]),
                        expected=centre,
                        observed=float(y[k]),
                        residual=float(y[k] - centre),
                        tolerance=c * sd,
                        severity="warning",
                        twin_version="fixed-threshold",
                        calibration_version="",
                        detail={},
                    )
                )
        flags.sort(key=lambda f: f.time_s)
        return score(
            case,
            flags,
            start_s=start,
            duration_s=duration_s,
            seed=seed,
            max_gap_s=math.inf,
            rate_hz=rate_hz,
        )
