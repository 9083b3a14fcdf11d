"""Verified snapshots: what the telemetry and the twin say about one acquisition, field by field.

An acquisition event (``beamtwin.acquisitions.v1``) carries the state a data file claims
(high tension, defocus, probe current, ...) in canonical SI units. :func:`build_snapshot`
compares each claim with the instrument's recorded state over the acquisition window
``[start, end]`` and returns the body of a snapshot (``beamtwin.snapshot.v1``): window statistics
of the telemetry channels and of the twin's state quantities, one verdict per field, and the
twin's flags in the window. Pure numpy on arrays the caller read; no I/O.

Units: the body is in the event's canonical units (m, V, eV, A, s, rad, K); twin quantities are
converted from the twin's (Å, mrad) by :data:`FIELD_SOURCES`. Times are integer microseconds
since the Unix epoch (UTC) on input and ISO 8601 strings with a ``Z`` in the body.

Verdicts (see :data:`VERDICTS`):

* ``consistent``: the reported value lies within the tolerance of the state during the window;
* ``disagrees``: it lies outside (the note names a likely unit or sign error when the ratio
  reported/expected is close to a power of ten, degrees/radians or -1);
* ``stale``: it disagrees with the window but matches the state at an earlier time of the
  lookback history (a value written before a refocus); ``matched_time`` says when;
* ``placeholder``: the file marks the value as a placeholder or a disconnected default, so it is
  never counted as agreement;
* ``missing``: the twin knows the quantity but the file does not record it;
* ``unverifiable``: the twin has no counterpart for the field, no telemetry for it, the
  telemetry was silent for longer than the staleness limit at the acquisition, or the
  acquisition time is only the file's modification time (the event's ``time_source`` is
  ``file_mtime``: the window then says ``time_status: file_time`` and the note what the
  comparison would have said); the note says which.

Tolerance of a field (canonical unit), with the table :data:`FIELD_TOLERANCES`::

    base      = max(abs_floor, rel * |expected|, k * sqrt(twin_std**2 + resolution**2))
    tolerance = base + rounding / 2 + half_range

``twin_std`` is the read-out noise of the twin's value (robust estimate from successive
samples), ``resolution`` the field's typical reporting resolution, ``rounding`` the vendor's
rounding step for ``rounded`` values (parsed from the field's note), ``half_range`` the largest
distance of the window's minimum or maximum from its mean (the state the window covered). A
field is consistent when ``|reported - expected| <= tolerance``, ``expected`` the window mean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from twin._errors import TwinError
from twin._instrument import CORRECTOR_CHANNELS, INPUT_CHANNELS

__all__ = [
    "DEFAULT_SNAPSHOT_CONFIG",
    "FIELD_SOURCES",
    "FIELD_TOLERANCES",
    "SNAPSHOT_SCHEMA",
    "UNVERIFIABLE_FIELDS",
    "VERDICTS",
    "ChannelSeries",
    "FieldSource",
    "FieldTolerance",
    "QuantitySeries",
    "SnapshotConfig",
    "SnapshotError",
    "align_channels",
    "build_snapshot",
    "snapshot_channels",
    "unit_error_note",
]

SNAPSHOT_SCHEMA = "beamtwin.snapshot.v1"


class SnapshotError(TwinError, ValueError):
    """A snapshot asked of impossible inputs: a naive time or one that is not a time, an
    acquisition that ends before it starts, a negative limit, series of unequal lengths."""


#: Every verdict, worst first.
VERDICTS: tuple[str, ...] = (
    "disagrees",
    "stale",
    "placeholder",
    "missing",
    "unverifiable",
    "consistent",
)
_US_PER_S = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Significant digits kept of every float in the body: recomputing a snapshot from the same
#: telemetry gives the same bytes even where the last bits of a float differ.
_SIGNIFICANT_DIGITS = 12
_PLACEHOLDER_QUALITIES = frozenset({"placeholder", "disconnected_default"})


# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True, slots=True)
class ChannelSeries:
    """Samples of one telemetry channel: ``time_us`` [µs since the epoch, UTC, increasing],
    ``value`` [``unit``, the channel's canonical unit]."""

    unit: str
    time_us: np.ndarray
    value: np.ndarray


@dataclass(frozen=True, slots=True)
class QuantitySeries:
    """One quantity of the twin's derived state over time, in the twin's unit (``unit``, as in
    :data:`twin.STATE_QUANTITIES`: Å, mrad, eV, ...)."""

    unit: str
    time_us: np.ndarray
    value: np.ndarray


@dataclass(frozen=True, slots=True)
class FieldSource:
    """Where the twin's value of an acquisition field comes from.

    Attributes:
        unit: the field's canonical unit (the event's).
        quantity: the twin state quantity, or ``None``.
        quantity_scale: field unit per twin unit (``1e-10`` for Å -> m).
        channel: the telemetry channel read directly (used when the state is not available,
            or alone when ``quantity`` is ``None``).
        depends_on: the channels the quantity is derived from (checked for silence).
    """

    unit: str
    quantity: str | None
    quantity_scale: float
    channel: str | None
    depends_on: tuple[str, ...]


_PROJECTORS = ("projector.p1_current", "projector.p2_current", "projector.p3_current")

#: Acquisition field -> its twin counterpart. The twin's ``energy`` [eV] is the high tension
#: [V] times e/e, so both fields read it unscaled.
FIELD_SOURCES: Mapping[str, FieldSource] = {
    "high_tension": FieldSource("V", "energy", 1.0, "gun.high_tension", ("gun.high_tension",)),
    "beam_energy": FieldSource("eV", "energy", 1.0, "gun.high_tension", ("gun.high_tension",)),
    "defocus": FieldSource(
        "m",
        "defocus",
        1e-10,
        None,
        ("gun.high_tension", "objective.lens_current", "holder.temperature", "stage.z"),
    ),
    "spherical_aberration": FieldSource("m", "C30", 1e-10, None, CORRECTOR_CHANNELS),
    "convergence_semiangle": FieldSource(
        "rad",
        "convergence_semiangle",
        1e-3,
        None,
        ("condenser.aperture_diameter", "condenser.c3_current"),
    ),
    "probe_current": FieldSource(
        "A",
        "probe_current",
        1.0,
        None,
        ("gun.emission_current", "condenser.aperture_diameter", "condenser.c1_current"),
    ),
    "camera_length": FieldSource("m", "camera_length", 1.0, None, _PROJECTORS),
    "pixel_size": FieldSource("m", "pixel_size", 1.0, None, ("scan.field_of_view", "scan.pixels")),
    "dwell_time": FieldSource("s", "dwell_time", 1.0, "scan.dwell_time", ("scan.dwell_time",)),
    "stage_x": FieldSource("m", "stage_x", 1.0, "stage.x", ("stage.x",)),
    "stage_y": FieldSource("m", "stage_y", 1.0, "stage.y", ("stage.y",)),
    "stage_z": FieldSource("m", "stage_z", 1.0, "stage.z", ("stage.z",)),
    "holder_temperature": FieldSource(
        "K", "holder_temperature", 1.0, "holder.temperature", ("holder.temperature",)
    ),
    "emission_current": FieldSource(
        "A", None, 1.0, "gun.emission_current", ("gun.emission_current",)
    ),
    "extraction_voltage": FieldSource(
        "V", None, 1.0, "gun.extraction_voltage", ("gun.extraction_voltage",)
    ),
    "holder_pressure": FieldSource(
        "Pa", None, 1.0, "holder.gas_pressure", ("holder.gas_pressure",)
    ),
    "stage_alpha": FieldSource("rad", None, 1.0, "stage.alpha", ("stage.alpha",)),
    "stage_beta": FieldSource("rad", None, 1.0, "stage.beta", ("stage.beta",)),
}

#: Fields the twin has no counterpart for, and why (the note of their ``unverifiable``).
UNVERIFIABLE_FIELDS: Mapping[str, str] = {
    "magnification": "the indicated magnification is a display setting the twin does not model",
    "spot_size": "the spot size index is a console setting; the twin models the C1 current",
    "screen_current": "no telemetry channel measures the fluorescent-screen current",
    "exposure_time": "the twin does not follow the camera's exposure of this dataset",
    "frame_count": "the number of frames is a property of the data, not of the instrument",
    "reciprocal_pixel_size": "a diffraction calibration; the twin does not model the detector",
    "acquisition_mode": "a text field, not a measured quantity",
    "detector": "a text field, not a measured quantity",
    "holder": "a text field, not a measured quantity",
    "operator": "a text field, not a measured quantity",
    "acquisition_start": "a text field, not a measured quantity",
}


@dataclass(frozen=True, slots=True)
class FieldTolerance:
    """How close a reported value must be to the twin's (the field's canonical unit).

    Attributes:
        abs_floor: the smallest tolerance [unit].
        rel: tolerance relative to the expected value [1].
        resolution: the typical resolution a value of this field is reported with [unit];
            combined with the twin's noise as ``k * sqrt(twin_std² + resolution²)``.
    """

    abs_floor: float
    rel: float
    resolution: float = 0.0


#: The tolerance table (canonical units). Why each: the accuracy a vendor's value can claim.
FIELD_TOLERANCES: Mapping[str, FieldTolerance] = {
    # Files state the nominal high tension; a divider calibration is good to ~0.1 %.
    "high_tension": FieldTolerance(abs_floor=10.0, rel=1e-3, resolution=1.0),
    "beam_energy": FieldTolerance(abs_floor=10.0, rel=1e-3, resolution=1.0),
    "extraction_voltage": FieldTolerance(abs_floor=5.0, rel=5e-3, resolution=1.0),
    # Emission and probe currents: gauges and Faraday-cup calibrations, ~10-20 %.
    "emission_current": FieldTolerance(abs_floor=1e-8, rel=0.1, resolution=1e-9),
    "probe_current": FieldTolerance(abs_floor=1e-13, rel=0.2, resolution=1e-13),
    # Convergence semi-angle from aperture / lens settings: ~5 %, 0.1 mrad.
    "convergence_semiangle": FieldTolerance(abs_floor=1e-4, rel=0.05, resolution=1e-5),
    # Camera length labels are nominal per projector setting: ~5 %.
    "camera_length": FieldTolerance(abs_floor=1e-4, rel=0.05, resolution=1e-4),
    # Defocus: 2 nm floor (focus step of a console), 5 % of a large defocus.
    "defocus": FieldTolerance(abs_floor=2e-9, rel=0.05, resolution=1e-9),
    # Cs: a corrector's C30 is known to ~1 µm; an uncorrected Cs to ~10 %.
    "spherical_aberration": FieldTolerance(abs_floor=1e-6, rel=0.1, resolution=1e-7),
    # Calibrated pixel size: ~2 % (magnification calibration).
    "pixel_size": FieldTolerance(abs_floor=1e-13, rel=0.02, resolution=0.0),
    "dwell_time": FieldTolerance(abs_floor=1e-8, rel=0.01, resolution=1e-9),
    # Stage read-back: 50 nm (encoder vs. reported position), 0.1° tilt.
    "stage_x": FieldTolerance(abs_floor=5e-8, rel=1e-3, resolution=1e-9),
    "stage_y": FieldTolerance(abs_floor=5e-8, rel=1e-3, resolution=1e-9),
    "stage_z": FieldTolerance(abs_floor=5e-8, rel=1e-3, resolution=1e-9),
    "stage_alpha": FieldTolerance(abs_floor=math.radians(0.1), rel=0.0, resolution=1.7e-5),
    "stage_beta": FieldTolerance(abs_floor=math.radians(0.1), rel=0.0, resolution=1.7e-5),
    # Holder thermocouples: 0.5 K.
    "holder_temperature": FieldTolerance(abs_floor=0.5, rel=2e-3, resolution=0.01),
    # Gas-cell pressure transducers: ~1 % of reading, 10 Pa (0.075 Torr) at the low end.
    "holder_pressure": FieldTolerance(abs_floor=10.0, rel=0.01, resolution=1.0),
}


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    """Parameters of :func:`build_snapshot`.

    Attributes:
        lookback_s: how far before the start the history is searched for a ``stale`` match [s].
        context_s: telemetry this long before the start (and the last sample before that) is
            used with the window for the as-of value, the staleness and the noise estimate [s].
        staleness_limit_s: a channel with no sample inside the window whose last sample is older
            than this at the start makes its fields ``unverifiable`` [s].
        gap_threshold_s: stretches without a sample longer than this inside the window are
            listed as gaps [s].
        k: coverage factor on the noise term of the tolerance [1].
        stale_bin_s: the lookback history is averaged in bins this long before matching, so
            one noisy sample cannot make a match [s].
        tolerances: the tolerance table (default :data:`FIELD_TOLERANCES`).
    """

    lookback_s: float = 600.0
    context_s: float = 10.0
    staleness_limit_s: float = 60.0
    gap_threshold_s: float = 2.0
    k: float = 3.0
    stale_bin_s: float = 1.0
    tolerances: Mapping[str, FieldTolerance] = field(default_factory=lambda: FIELD_TOLERANCES)

    def __post_init__(self) -> None:
        for name in (
            "lookback_s",
            "context_s",
            "staleness_limit_s",
            "gap_threshold_s",
            "k",
            "stale_bin_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SnapshotError(f"{name} must be finite and >= 0, not {value!r}")
        if self.stale_bin_s <= 0 or self.gap_threshold_s <= 0:
            raise SnapshotError("stale_bin_s and gap_threshold_s must be > 0")


DEFAULT_SNAPSHOT_CONFIG = SnapshotConfig()


def snapshot_channels(field_names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The telemetry channels a snapshot of these fields reads (default: every field the twin
    has a counterpart for; the ``missing`` verdict needs them all): every input channel of the
    twin's state when a field comes from a state quantity, plus the channels fields read
    directly. Sorted by name."""
    names = FIELD_SOURCES if field_names is None else [n for n in field_names]
    out: set[str] = set()
    for name in names:
        source = FIELD_SOURCES.get(name)
        if source is None:
            continue
        if source.quantity is not None:
            out.update(INPUT_CHANNELS)
        if source.channel is not None:
            out.add(source.channel)
        out.update(source.depends_on)
    return tuple(sorted(out))


def align_channels(
    channels: Mapping[str, ChannelSeries], names: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The named channels on one time grid, each held at its last sample (as-of semantics), so
    the state can be derived at every grid time.

    The grid is the union of the channels' sample times from the first time every channel has
    a sample on; when that union is more than four times the densest channel (unsynchronised
    clocks), the densest channel's times. Non-finite samples are dropped first.

    Returns:
        ``(time_us, {name: values})``, or ``None`` when a channel has no finite sample.
    """
    clean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        series = channels.get(name)
        if series is None:
            return None
        t, v = _finite_samples(series.time_us, series.value)
        if len(t) == 0:
            return None
        clean[name] = (t, v)
    if not clean:
        return None
    t0 = max(int(t[0]) for t, _ in clean.values())
    union = np.unique(np.concatenate([t[t >= t0] for t, _ in clean.values()]))
    densest = max(clean.values(), key=lambda tv: len(tv[0]))[0]
    if len(union) > 4 * len(densest):
        union = densest[densest >= t0]
        if len(union) == 0 or union[0] != t0:
            union = np.concatenate([[t0], union]).astype(np.int64)
    grid = union.astype(np.int64)
    out = {}
    for name, (t, v) in clean.items():
        idx = np.searchsorted(t, grid, side="right") - 1
        out[name] = v[idx]
    return grid, out


# ---------------------------------------------------------------------- statistics
def _finite_samples(time_us: Any, value: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time_us, dtype=np.int64).reshape(-1)
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if len(t) != len(v):
        raise SnapshotError("time_us and value must have the same length")
    keep = np.isfinite(v)
    t, v = t[keep], v[keep]
    if len(t) > 1 and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    return t, v


def _robust_noise(v: np.ndarray) -> float:
    """Read-out noise of a series from successive differences (median absolute deviation,
    insensitive to steps and slow drift) [unit]."""
    if len(v) < 3:
        return 0.0
    d = np.diff(v)
    mad = float(np.median(np.abs(d - np.median(d))))
    return 1.4826 * mad / math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class _Stats:
    n: int
    mean: float | None
    min: float | None
    max: float | None
    std: float | None
    drift_rate: float | None
    as_of_us: int | None  # the sample used when the window holds none
    last_age_s: float | None  # start - last sample at or before start
    noise: float
    gaps: list[list[str]]


def _stats(
    t: np.ndarray, v: np.ndarray, start_us: int, end_us: int, gap_threshold_s: float
) -> _Stats:
    """Window statistics of finite samples ``(t, v)`` over ``[start_us, end_us]``."""
    inside = (t >= start_us) & (t <= end_us)
    tw, vw = t[inside], v[inside]
    before = np.searchsorted(t, start_us, side="right") - 1
    last_age = None if before < 0 else (start_us - int(t[before])) / _US_PER_S
    noise = _robust_noise(v)
    n = len(vw)
    if n:
        mean = float(np.mean(vw))
        constant = bool(np.all(vw == vw[0]))
        std = (0.0 if constant else float(np.std(vw, ddof=1))) if n >= 2 else None
        drift = None
        span = float(tw[-1] - tw[0]) / _US_PER_S
        if n >= 2 and span > 0 and constant:
            drift = 0.0
        elif n >= 2 and span > 0:
            ts = (tw - tw[0]) / _US_PER_S
            tc = ts - ts.mean()
            drift = float(np.sum(tc * (vw - mean)) / np.sum(tc * tc))
        return _Stats(
            n=n,
            mean=mean,
            min=float(np.min(vw)),
            max=float(np.max(vw)),
            std=std,
            drift_rate=drift,
            as_of_us=None,
            last_age_s=last_age,
            noise=noise,
            gaps=_gaps(tw, start_us, end_us, gap_threshold_s),
        )
    gaps = _gaps(tw, start_us, end_us, gap_threshold_s)
    if before < 0:
        return _Stats(0, None, None, None, None, None, None, None, noise, gaps)
    value = float(v[before])
    return _Stats(0, value, value, value, None, None, int(t[before]), last_age, noise, gaps)


def _gaps(tw: np.ndarray, start_us: int, end_us: int, threshold_s: float) -> list[list[str]]:
    """Stretches of ``[start, end]`` longer than the threshold without a sample: before the
    first, between samples, after the last (as ``provenance_store.find_gaps`` counts them)."""
    if end_us <= start_us:
        return []
    edges = np.concatenate([[start_us], tw, [end_us]]).astype(np.int64)
    lengths = np.diff(edges)
    threshold_us = threshold_s * _US_PER_S
    return [
        [_iso(int(edges[i])), _iso(int(edges[i + 1]))]
        for i in np.flatnonzero(lengths > threshold_us)
    ]


# ---------------------------------------------------------------------- tolerances, notes
_UNIT_FACTORS: Mapping[str, float] = {
    "pm": 1e-12,
    "Å": 1e-10,
    "A": 1.0,
    "nm": 1e-9,
    "µm": 1e-6,
    "um": 1e-6,
    "mm": 1e-3,
    "cm": 1e-2,
    "m": 1.0,
    "°": math.pi / 180,
    "deg": math.pi / 180,
    "mrad": 1e-3,
    "rad": 1.0,
    "V": 1.0,
    "kV": 1e3,
    "eV": 1.0,
    "keV": 1e3,
    "pA": 1e-12,
    "nA": 1e-9,
    "µA": 1e-6,
    "uA": 1e-6,
    "ns": 1e-9,
    "µs": 1e-6,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "K": 1.0,
}
_STEP_IN_NOTE = re.compile(
    r"\(\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([^\s()0-9][^\s()]*)\s*\)"
)


def _rounding_step(entry: Mapping[str, Any]) -> float:
    """The rounding step [canonical unit] of a ``rounded`` value: from its note (``... (1 nm)``),
    else from the decimals of ``source_value`` in ``source_unit``; 0 when neither tells."""
    note = entry.get("note") or ""
    for number, unit in reversed(_STEP_IN_NOTE.findall(str(note))):
        factor = _UNIT_FACTORS.get(unit)
        if factor is not None:
            return float(number) * factor
    source_value, source_unit = entry.get("source_value"), entry.get("source_unit")
    factor = _UNIT_FACTORS.get(str(source_unit)) if source_unit is not None else None
    if factor is None or isinstance(source_value, bool):
        return 0.0
    text = str(source_value).strip()
    match = re.fullmatch(r"[-+]?[0-9]*\.([0-9]+)", text)
    if match is None:
        return factor if re.fullmatch(r"[-+]?[0-9]+", text) else 0.0
    return 10.0 ** -len(match.group(1)) * factor


_KNOWN_RATIOS: tuple[tuple[float, str], ...] = (
    (180 / math.pi, "x57.3: degrees read as radians"),
    (math.pi / 180, "x0.01745: radians read as degrees"),
)


def unit_error_note(reported: float, expected: float, *, within: float = 0.02) -> str | None:
    """A note when ``reported / expected`` is close to a power of ten (``1e3``, ``1e-6``, ...),
    to the degree/radian ratio, or to -1 (a sign convention); ``None`` otherwise.

    ``within``: how close, in decades of the ratio (0.02 ≈ 5 %).
    """
    if expected == 0 or reported == 0 or not (math.isfinite(reported) and math.isfinite(expected)):
        return None
    ratio = reported / expected
    decades = math.log10(abs(ratio))
    if ratio < 0:
        if abs(decades) <= within:
            return "likely sign convention error (x-1): the reported value has the opposite sign"
        return None
    power = round(decades)
    if power != 0 and abs(decades - power) <= within:
        factor = f"1e{power}"
        return (
            f"likely unit error (x{factor}): the reported value is {factor} times the "
            f"telemetry's; multiply it by 1e{-power} to correct"
        )
    for known, text in _KNOWN_RATIOS:
        if abs(decades - math.log10(known)) <= within:
            return f"likely unit error ({text})"
    return None


# ---------------------------------------------------------------------- helpers
def _iso(us: int) -> str:
    t = _EPOCH + timedelta(microseconds=int(us))
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}"
    return text + "Z"


def _to_us(value: Any) -> int:
    """``value`` (an aware datetime, an ISO 8601 string, or µs since the epoch) in µs."""
    if isinstance(value, bool):
        raise SnapshotError("a time cannot be a bool")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise SnapshotError(f"naive datetime {value.isoformat()}: times must be UTC-aware")
        return (value - _EPOCH) // timedelta(microseconds=1)
    raise SnapshotError(f"not a time: {value!r}")


def _num(value: float | None) -> float | None:
    """A finite float rounded to the body's significant digits, or ``None``."""
    if value is None:
        return None
    x = float(value)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{_SIGNIFICANT_DIGITS}g}") if x != 0 else 0.0


class _Verbatim(float):
    """A float kept as it is by :func:`_jsonable` (not rounded)."""


def _verbatim(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | np.number):
        x = float(value)
        return _Verbatim(x) if math.isfinite(x) else None
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, datetime):
        return _iso(_to_us(value))
    if isinstance(value, _Verbatim):
        return float(value)
    if isinstance(value, float):
        return _num(value)
    return value


def _stats_body(s: _Stats, unit: str, scale: float, with_age: bool) -> dict[str, Any]:
    def sc(x: float | None) -> float | None:
        return None if x is None else x * scale

    body: dict[str, Any] = {
        "unit": unit,
        "n": s.n,
        "mean": _num(sc(s.mean)),
        "min": _num(sc(s.min)),
        "max": _num(sc(s.max)),
        "std": _num(sc(s.std)),
        "drift_rate": _num(sc(s.drift_rate)),
        "as_of_time": None if s.as_of_us is None else _iso(s.as_of_us),
    }
    if with_age:
        body["last_sample_age_s"] = _num(s.last_age_s)
        body["gaps"] = s.gaps
    return body


@dataclass(frozen=True, slots=True)
class _Series:
    """A channel or quantity as the snapshot uses it."""

    unit: str
    stats: _Stats
    history: tuple[np.ndarray, np.ndarray]  # [start - lookback, start) (t, v)


@dataclass(frozen=True, slots=True)
class _Expected:
    """The twin's value of a field over the window: statistics and history in the unit of its
    quantity or channel; ``scale`` converts them to the field's unit."""

    stats: _Stats
    scale: float
    quantity: str | None
    channel: str | None
    history: tuple[np.ndarray, np.ndarray]  # [start - lookback, start) (t, v)


# ---------------------------------------------------------------------- the snapshot
def build_snapshot(
    *,
    event: Mapping[str, Any],
    channels: Mapping[str, ChannelSeries],
    state: Mapping[str, QuantitySeries],
    twin_version: str,
    calibration_version: str,
    telemetry_complete: bool,
    watermark: Any = None,
    flags: Sequence[Mapping[str, Any]] = (),
    history_channels: Mapping[str, ChannelSeries] | None = None,
    history_state: Mapping[str, QuantitySeries] | None = None,
    config: SnapshotConfig = DEFAULT_SNAPSHOT_CONFIG,
) -> dict[str, Any]:
    """The snapshot body (``beamtwin.snapshot.v1``) of one acquisition; see the module docs.

    Args:
        event: the acquisition event as a JSON-like mapping (``dataset_id``, ``instrument_id``,
            ``start_time``, ``end_time`` as ISO strings or aware datetimes, ``state``: field ->
            ``{value, unit, quality, source, note, source_value, source_unit}``).
        channels: telemetry channel -> samples [canonical unit]; should cover
            ``[start - context_s, end]`` and hold the last sample before that (for the as-of
            value and the staleness of a channel that fell silent). Samples before
            ``start - context_s`` (but that last one) are not used, nor those after ``end``.
        state: twin quantity -> its derived series [twin unit] over the same span; empty when
            the twin's state could not be derived (channels missing).
        twin_version, calibration_version: what derived ``state``.
        telemetry_complete: whether the store held telemetry of the needed channels at or
            after the end of the window when this was computed.
        watermark: how far the telemetry reached then (a time, or ``None``).
        flags: the twin's flags in the window (``kind``, ``quantity``, ``channel``, ``time``,
            ``severity``).
        history_channels, history_state: the lookback history ``[start - lookback_s, start)``
            of channels / quantities, searched for a ``stale`` match of a field that disagrees;
            a series not given here is searched in ``channels`` / ``state`` instead.
        config: tolerances and limits.

    Returns:
        A JSON-ready dict: plain str / int / float / bool / None / list / dict, finite floats
        only, equal for equal inputs.

    Raises:
        SnapshotError: bad times (naive, not a time, end before start).
    """
    start_us = _to_us(event["start_time"])
    end_us = _to_us(event.get("end_time") or event["start_time"])
    if end_us < start_us:
        raise SnapshotError("the acquisition ends before it starts")
    lo_us = start_us - round(config.lookback_s * _US_PER_S)
    context_us = start_us - round(config.context_s * _US_PER_S)

    def clip(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Keep [start - context, end] plus the last sample before (as-of, staleness).
        first = max(int(np.searchsorted(t, context_us, side="left")) - 1, 0)
        last = int(np.searchsorted(t, end_us, side="right"))
        return t[first:last], v[first:last]

    def lookback(series: ChannelSeries | QuantitySeries | None) -> tuple[np.ndarray, np.ndarray]:
        if series is None:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        t, v = _finite_samples(series.time_us, series.value)
        keep = (t >= lo_us) & (t < start_us)
        return t[keep], v[keep]

    hist_c = history_channels or {}
    hist_s = history_state or {}

    chan_data: dict[str, _Series] = {}
    for name in sorted(channels):
        series = channels[name]
        t, v = clip(*_finite_samples(series.time_us, series.value))
        if len(t) == 0:
            continue
        chan_data[name] = _Series(
            series.unit,
            _stats(t, v, start_us, end_us, config.gap_threshold_s),
            lookback(hist_c.get(name, series)),
        )
    state_data: dict[str, _Series] = {}
    for name in sorted(state):
        series_q = state[name]
        t, v = clip(*_finite_samples(series_q.time_us, series_q.value))
        if len(t) == 0:
            continue
        state_data[name] = _Series(
            series_q.unit,
            _stats(t, v, start_us, end_us, config.gap_threshold_s),
            lookback(hist_s.get(name, series_q)),
        )

    reported_fields: Mapping[str, Any] = event.get("state") or {}
    # A window from the file's modification time need not be the acquisition's.
    file_time = event.get("time_source") == "file_mtime"
    fields_body: dict[str, Any] = {}
    for name in sorted(set(reported_fields) | set(FIELD_SOURCES)):
        entry = reported_fields.get(name)
        verdict = _field_verdict(name, entry, chan_data, state_data, start_us, lo_us, config)
        if verdict is not None:
            fields_body[name] = _file_time(verdict) if file_time else verdict

    state_body: dict[str, Any] = {}
    used = {s.quantity: s for s in FIELD_SOURCES.values() if s.quantity is not None}
    for name, sq in state_data.items():
        source = used.get(name)
        if source is None:
            continue
        state_body[name] = _stats_body(sq.stats, source.unit, source.quantity_scale, with_age=False)
    channels_body = {
        name: _stats_body(sc.stats, sc.unit, 1.0, with_age=True) for name, sc in chan_data.items()
    }
    flags_body = sorted(
        (
            {
                "kind": f.get("kind"),
                "quantity": f.get("quantity"),
                "channel": f.get("channel"),
                "time": None if f.get("time") is None else _iso(_to_us(f["time"])),
                "severity": f.get("severity"),
            }
            for f in flags
        ),
        key=lambda f: (
            f["time"] or "",
            str(f["kind"]),
            str(f["quantity"]),
            str(f["channel"]),
            str(f["severity"]),
        ),
    )
    body = {
        "schema": SNAPSHOT_SCHEMA,
        "dataset_id": event.get("dataset_id"),
        "instrument_id": event.get("instrument_id"),
        "window": {
            "start": _iso(start_us),
            "end": _iso(end_us),
            **({"time_status": "file_time"} if file_time else {}),
        },
        "twin_version": twin_version,
        "calibration_version": calibration_version,
        "telemetry": {
            "complete": bool(telemetry_complete),
            "watermark": None if watermark is None else _iso(_to_us(watermark)),
        },
        "parameters": {
            "lookback_s": _num(config.lookback_s),
            "context_s": _num(config.context_s),
            "staleness_limit_s": _num(config.staleness_limit_s),
            "gap_threshold_s": _num(config.gap_threshold_s),
            "k": _num(config.k),
        },
        "state": state_body,
        "channels": channels_body,
        "fields": fields_body,
        "flags": flags_body,
    }
    body["images"] = _image_verdicts(event, reported_fields, state_data)
    result: dict[str, Any] = _jsonable(body)
    return result


#: Image-measured quantity -> (acquisition field it checks, twin quantity, field unit per twin
#: unit, floor of the comparison's sd [field unit]: the rounding of the metadata).
_IMAGE_CHECKS = {
    "defocus": ("defocus", "defocus", 1e-10, 1e-9),
    "convergence_semiangle": ("convergence_semiangle", "convergence_semiangle", 1e-3, 0.2e-3),
}


def _image_verdict(measured: float, sd: float, other: float, other_sd: float) -> dict[str, Any]:
    scale = math.hypot(sd, other_sd)
    z = (measured - other) / scale if scale > 0 else math.inf
    return {
        "value": other,
        "z_score": z,
        "verdict": "disagrees" if abs(z) > _IMAGE_Z else "consistent",
    }


_IMAGE_Z = 3.0


def _image_verdicts(
    event: Mapping[str, Any],
    reported: Mapping[str, Any],
    state_data: Mapping[str, _Series],
) -> dict[str, Any]:
    """Each image measurement of the event against the file's own metadata and the twin's
    estimate over the window: ``consistent`` or ``disagrees`` (|z| > 3, the sds of both sides
    combined, the metadata's with a floor for its rounding: 1 nm of defocus, 0.2 mrad)."""
    images = event.get("image_measurements") or {}
    out: dict[str, Any] = {}
    for item in images.get("measurements") or []:
        check = _IMAGE_CHECKS.get(item.get("quantity"))
        if check is None:
            continue
        field, quantity, per_twin_unit, floor = check
        value, sd = float(item["value"]), max(float(item["sd"]), 0.0)
        entry: dict[str, Any] = {
            "measured": value, "sd": sd, "unit": item.get("unit"),
            "quality": item.get("quality"), "file": None, "twin": None,
        }  # fmt: skip
        meta = reported.get(field)
        if (
            meta is not None
            and meta.get("quality") == "ok"
            and isinstance(meta.get("value"), int | float)
        ):
            entry["file"] = _image_verdict(value, sd, float(meta["value"]), floor)
        twin_series = state_data.get(quantity)
        if twin_series is not None and twin_series.stats.mean is not None:
            twin_sd = (twin_series.stats.std or 0.0) * per_twin_unit
            entry["twin"] = _image_verdict(
                value, sd, twin_series.stats.mean * per_twin_unit, max(twin_sd, floor)
            )
        out[item["quantity"]] = entry
    return out


#: Verdicts that compare the file's value with the telemetry of the window.
_COMPARED = frozenset({"consistent", "disagrees", "stale"})


def _file_time(verdict: dict[str, Any]) -> dict[str, Any]:
    """``verdict`` when the window is the file's modification time (``file_time``): a
    comparison with the telemetry then verifies nothing about the acquisition."""
    if verdict["verdict"] not in _COMPARED:
        return verdict
    said = {"consistent": "agrees with", "disagrees": "disagrees with", "stale": "matches older"}
    note = (
        "file_time: the acquisition time is only the file's modification time; the value "
        f"{said[verdict['verdict']]} the telemetry then, which need not be the acquisition's"
    )
    return {
        **verdict,
        "verdict": "unverifiable",
        "note": "; ".join(filter(None, [note, verdict.get("note")])),
    }


def _expected(
    source: FieldSource,
    chan_data: Mapping[str, _Series],
    state_data: Mapping[str, _Series],
) -> _Expected | None:
    """The twin's value of a field: its state quantity when derived, else its channel."""
    picked: _Series | None = None
    quantity = channel = None
    scale = 1.0
    if source.quantity is not None and source.quantity in state_data:
        picked, quantity, scale = (
            state_data[source.quantity],
            source.quantity,
            source.quantity_scale,
        )
    elif source.channel is not None and source.channel in chan_data:
        picked, channel = chan_data[source.channel], source.channel
    if picked is None or picked.stats.mean is None:
        return None
    return _Expected(picked.stats, scale, quantity, channel, picked.history)


def _unavailable_note(source: FieldSource, chan_data: Mapping[str, Any]) -> str:
    if source.quantity is not None:
        lacking = [c for c in INPUT_CHANNELS if c not in chan_data]
        if len(lacking) == len(INPUT_CHANNELS):
            what = source.channel or f"the channels the twin's {source.quantity} is derived from"
            return f"no telemetry of {what} at or before the acquisition"
        if source.channel is not None and source.channel not in chan_data:
            return (
                f"no telemetry of {source.channel}, and the twin's {source.quantity} needs "
                f"every input channel (none stored for {', '.join(lacking) or 'the window'})"
            )
        if source.channel is None:
            return (
                f"the twin's {source.quantity} needs telemetry of every input channel; none "
                f"stored for {', '.join(lacking) or 'the window'}"
            )
    return f"no telemetry of {source.channel} at or before the acquisition"


def _field_verdict(
    name: str,
    entry: Mapping[str, Any] | None,
    chan_data: Mapping[str, _Series],
    state_data: Mapping[str, _Series],
    start_us: int,
    lo_us: int,
    config: SnapshotConfig,
) -> dict[str, Any] | None:
    source = FIELD_SOURCES.get(name)
    out: dict[str, Any] = {
        "verdict": "unverifiable",
        "reported": None,
        "expected": None,
        "unit": source.unit if source else (entry or {}).get("unit"),
        "tolerance": None,
        "residual": None,
        "quality": None,
        "source": None,
        "quantity": None,
        "channel": None,
        "matched_time": None,
        "note": None,
    }
    if entry is not None:
        raw = entry.get("value")
        # Reported values verbatim (finite ones): they are the file's, not computed here.
        out["reported"] = _verbatim(raw)
        out["quality"] = entry.get("quality")
        out["source"] = entry.get("source")
        if entry.get("unit") is not None or source is None:
            out["unit"] = entry.get("unit")
    if source is None:
        if entry is None:
            return None
        out["note"] = "no twin counterpart: " + UNVERIFIABLE_FIELDS.get(
            name, "the twin does not model this field"
        )
        if out["quality"] in _PLACEHOLDER_QUALITIES:
            out["verdict"] = "placeholder"
            out["note"] = _placeholder_note(entry) + "; " + out["note"]
        return out

    expected = _expected(source, chan_data, state_data)
    if expected is not None:
        out["quantity"] = expected.quantity
        out["channel"] = expected.channel
        out["expected"] = _num(expected.stats.mean * expected.scale)  # type: ignore[operator]

    if entry is None:
        if expected is None or _silent(source, expected, chan_data, config) is not None:
            return None  # the twin does not know it either
        out["verdict"] = "missing"
        out["note"] = "the file does not record this field; the twin's value is `expected`"
        return out

    if out["quality"] in _PLACEHOLDER_QUALITIES:
        out["verdict"] = "placeholder"
        out["note"] = _placeholder_note(entry) + "; not compared"
        return out
    raw = entry.get("value")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        out["note"] = "the reported value is not a finite number"
        return out
    reported = float(raw)
    if expected is None:
        out["note"] = _unavailable_note(source, chan_data)
        return out
    silent = _silent(source, expected, chan_data, config)
    if silent is not None:
        out["note"] = silent
        return out

    tol = config.tolerances.get(name, FieldTolerance(0.0, 0.0, 0.0))
    st, scale = expected.stats, expected.scale
    mean = st.mean * scale  # type: ignore[operator]
    half_range = max(st.max * scale - mean, mean - st.min * scale)  # type: ignore[operator]
    rounding = _rounding_step(entry) / 2 if entry.get("quality") == "rounded" else 0.0
    noise = st.noise * abs(scale)

    def base(at: float) -> float:
        return max(tol.abs_floor, tol.rel * abs(at), config.k * math.hypot(noise, tol.resolution))

    tolerance = base(mean) + rounding + half_range
    residual = reported - mean
    out["tolerance"] = _num(tolerance)
    out["residual"] = _num(residual)
    if abs(residual) <= tolerance:
        out["verdict"] = "consistent"
        return out
    matched = _stale_match(reported, expected, base, rounding, lo_us, config)
    if matched is not None:
        out["verdict"] = "stale"
        out["matched_time"] = _iso(matched)
        ago = (start_us - matched) / _US_PER_S
        out["note"] = (
            f"disagrees with the state during the acquisition but matches the state at "
            f"{_iso(matched)}, {ago:.1f} s before its start: the file likely recorded an "
            f"earlier setting (e.g. before a refocus)"
        )
        return out
    out["verdict"] = "disagrees"
    out["note"] = unit_error_note(reported, mean)
    return out


def _placeholder_note(entry: Mapping[str, Any]) -> str:
    quality = entry.get("quality")
    what = (
        "a placeholder the vendor writes when it does not know the value"
        if quality == "placeholder"
        else "the acquisition software's default while its microscope channel was disconnected"
    )
    extra = entry.get("note")
    return f"the file's value is {what}" + (f" ({extra})" if extra else "")


def _silent(
    source: FieldSource,
    expected: _Expected,
    chan_data: Mapping[str, _Series],
    config: SnapshotConfig,
) -> str | None:
    """Why the twin's value cannot be trusted at the acquisition (a channel it depends on fell
    silent for longer than the staleness limit), or ``None``."""
    names = (expected.channel,) if expected.channel is not None else source.depends_on
    for name in names:
        if name is None or name not in chan_data:
            continue
        st = chan_data[name].stats
        if st.n > 0:
            continue
        age = st.last_age_s
        if age is not None and age > config.staleness_limit_s:
            return (
                f"telemetry of {name} silent for {age:.1f} s before the acquisition "
                f"(staleness limit {config.staleness_limit_s:g} s)"
            )
    return None


def _stale_match(
    reported: float,
    expected: _Expected,
    base: Any,
    rounding: float,
    lo_us: int,
    config: SnapshotConfig,
) -> int | None:
    """The latest time of the lookback history whose state (averaged per ``stale_bin_s``)
    matches ``reported`` within tolerance; ``None`` when none does."""
    t, v = expected.history
    keep = t >= lo_us
    t, v = t[keep], v[keep] * expected.scale
    if len(t) == 0:
        return None
    bin_us = max(round(config.stale_bin_s * _US_PER_S), 1)
    bins = (t - lo_us) // bin_us
    starts = np.flatnonzero(np.concatenate([[True], bins[1:] != bins[:-1]]))
    sums = np.add.reduceat(v, starts)
    counts = np.diff(np.concatenate([starts, [len(v)]]))
    means = sums / counts
    last_t = t[np.concatenate([starts[1:] - 1, [len(t) - 1]])]
    for i in range(len(means) - 1, -1, -1):
        if abs(reported - means[i]) <= base(means[i]) + rounding:
            return int(last_t[i])
    return None
