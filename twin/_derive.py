"""The instrument model over long series, with few compiled shapes.

:func:`twin.derive_state` is jitted, so every new input length compiles the model again (a
fraction of a second each). Series of any length therefore go through
:func:`derive_state_series`, which pads each piece to a power of two between
:data:`MIN_PADDED` and :data:`MAX_PADDED` samples and derives longer series piece by piece:
at most five shapes are ever compiled per variant (with or without variances), and
:func:`warm_up_derivation` compiles them all up front. The tracker's filter windows use the
same rounding (:func:`padded_length`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from twin._instrument import (
    INPUT_CHANNELS,
    STATE_QUANTITIES,
    Calibration,
    StateEstimate,
    derive_state,
)

#: Shortest padded length [samples].
MIN_PADDED = 256
#: Longest piece derived at once [samples]; longer series are derived piece by piece.
MAX_PADDED = 4096


def padded_length(n: int, *, minimum: int = MIN_PADDED) -> int:
    """The power of two at or above ``n`` (and at least ``minimum``) an input of ``n`` samples
    is padded to, so that jitted code sees a few lengths only."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def derive_state_series(
    calibration: Calibration,
    readings: Mapping[str, ArrayLike],
    *,
    variances: Mapping[str, ArrayLike] | None = None,
    held: Mapping[str, float] | None = None,
) -> StateEstimate:
    """:func:`twin.derive_state` of 1-D series of any length, in few compiled shapes.

    Args:
        readings: channel name -> values on a common time grid (one length ``n``; canonical
            SI units), every name of :data:`twin.INPUT_CHANNELS` not in ``held``.
        variances: channel name -> variance per sample [unit²]; as for ``derive_state``.
        held: input channels without a series, held at one value each.

    Returns:
        The state on the same grid (arrays of length ``n``).
    """
    series = {name: np.asarray(v, dtype=float).reshape(-1) for name, v in readings.items()}
    n = max((v.size for v in series.values()), default=0)
    var = {name: np.asarray(v, dtype=float).reshape(-1) for name, v in (variances or {}).items()}
    values: dict[str, list[np.ndarray]] = {q.name: [] for q in STATE_QUANTITIES}
    std: dict[str, list[np.ndarray]] = {q.name: [] for q in STATE_QUANTITIES}
    for lo in range(0, n, MAX_PADDED):
        hi = min(n, lo + MAX_PADDED)
        size = padded_length(hi - lo)
        piece = _piece(series, lo, hi, size)
        for name, value in (held or {}).items():
            piece[name] = np.full(size, value)
        piece_var = _piece(var, lo, hi, size) if variances is not None else None
        estimate = derive_state(calibration, piece, variances=piece_var)
        for name in values:
            values[name].append(np.asarray(estimate.values[name])[: hi - lo])
            std[name].append(np.asarray(estimate.std[name])[: hi - lo])
    empty = np.empty(0)
    return StateEstimate(
        values={k: np.concatenate(v) if v else empty for k, v in values.items()},
        std={k: np.concatenate(v) if v else empty for k, v in std.items()},
        calibration_version=calibration.version,
    )


def _piece(series: Mapping[str, np.ndarray], lo: int, hi: int, size: int) -> dict[str, np.ndarray]:
    # Padded with the last row (valid inputs), sliced off again after the derivation.
    return {
        name: np.pad(v[lo:hi], (0, size - (hi - lo)), mode="edge") for name, v in series.items()
    }


def warm_up_derivation(calibration: Calibration | None = None, *, variances: bool = False) -> None:
    """Compile :func:`derive_state_series` for every padded length (a fraction of a second
    each), so that no caller waits for a compilation later."""
    cal = calibration or Calibration(instrument_id="warm-up")
    size = MIN_PADDED
    while size <= MAX_PADDED:
        ones = {name: np.ones(size) for name in INPUT_CHANNELS}
        derive_state(cal, ones, variances=ones if variances else None)
        size *= 2
