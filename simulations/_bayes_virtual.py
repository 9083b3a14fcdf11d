"""Reference measurements taken on the virtual microscope, whose true constants are known.

The truth comes from the twin's own instrument model (:func:`twin.derive_state`, JAX) with a
calibration holding the true constants, independent of the pyro model's forward code; the
telemetry is the true channel values plus the sensor noise of the virtual microscope's channel
models (:data:`~simulations.STANDARD_CHANNEL_MODELS`) averaged over the exposure; the measured
value carries the noise of its measurement (Thon fit, CBED disk, ring radii).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from simulations._bayes_model import (
    CALIBRATED_CONSTANTS,
    MEASURED_QUANTITIES,
    ReferenceMeasurement,
    constants_of,
    default_prior_sd,
)
from simulations._optical_state import nominal_channels
from simulations._virtual_microscope import STANDARD_CHANNEL_MODELS
from twin import Calibration, derive_state

__all__ = [
    "MEASUREMENT_SD",
    "candidate_settings",
    "draw_true_calibration",
    "measure_virtually",
]

#: Standard uncertainty of one reference measurement: a Thon-ring fit of a 1024^2 HRTEM image
#: [Å], a CBED disk radius [mrad], the ring radii of a standard [relative, of the camera length].
MEASUREMENT_SD = {"defocus": 5.0, "convergence_semiangle": 0.1, "camera_length": 0.003}
#: Telemetry samples averaged over one reference exposure (1 s at 10 Hz).
EXPOSURE_TICKS = 10


def draw_true_calibration(prior: Calibration, rng: np.random.Generator) -> Calibration:
    """True constants drawn from the prior (what simulation-based calibration needs)."""
    sd = default_prior_sd(prior)
    mean = constants_of(prior)
    draw = mean + np.array([sd[c] for c in CALIBRATED_CONSTANTS]) * rng.normal(size=len(mean))
    version = f"{prior.version}+truth-{int(rng.integers(1 << 30))}"
    return prior.revised(version, **dict(zip(CALIBRATED_CONSTANTS, map(float, draw), strict=True)))


def candidate_settings(
    quantity: str, n: int, rng: np.random.Generator | None = None
) -> list[dict[str, float]]:
    """``n`` settings of the channels ``quantity`` depends on: spread evenly over their ranges
    (a grid) when ``rng`` is None, drawn uniformly otherwise. Ranges: objective current +-0.03 %
    (defocus +-1 µm) with holder temperature 288-323 K; C3 current +-0.2 A with apertures
    20-70 µm; projector currents +-5 %."""
    base = nominal_channels()
    u = np.linspace(-1.0, 1.0, n) if rng is None else rng.uniform(-1.0, 1.0, n)
    v = np.linspace(-1.0, 1.0, n)[::-1] if rng is None else rng.uniform(-1.0, 1.0, n)
    if rng is None and n > 2:  # a 2D grid: temperature cycles within each current sweep
        side = math.ceil(math.sqrt(n))
        u = np.repeat(np.linspace(-1, 1, side), side)[:n]
        v = np.tile(np.linspace(-1, 1, side), side)[:n]
    out = []
    for a, b in zip(u, v, strict=True):
        s: dict[str, float]
        if quantity == "defocus":
            s = {
                "gun.high_tension": base["gun.high_tension"],
                "objective.lens_current": base["objective.lens_current"] * (1 + 3e-4 * a),
                "holder.temperature": 305.5 + 17.5 * b,
                "stage.z": base["stage.z"],
            }
        elif quantity == "convergence_semiangle":
            s = {
                "condenser.c3_current": base["condenser.c3_current"] + 0.2 * a,
                "condenser.aperture_diameter": 45e-6 + 25e-6 * b,
            }
        else:
            s = {
                name: base[name] * (1 + 0.05 * (a if i == 0 else b))
                for i, name in enumerate(MEASURED_QUANTITIES["camera_length"][1])
            }
        out.append(s)
    return out


def measure_virtually(
    truth: Calibration,
    quantity: str,
    settings: Sequence[Mapping[str, float]],
    rng: np.random.Generator,
    *,
    sd: float | None = None,
) -> list[ReferenceMeasurement]:
    """Reference measurements of ``quantity`` at ``settings`` on a microscope whose true
    calibration is ``truth``: noisy telemetry, noisy measured values."""
    base = nominal_channels()
    channels = MEASURED_QUANTITIES[quantity][1]
    readings = {name: np.full(len(settings), value) for name, value in base.items()}
    for i, s in enumerate(settings):
        for name, value in s.items():
            readings[name][i] = value
    true_values = np.asarray(derive_state(truth, readings)[quantity], dtype=float)
    unit_sd = MEASUREMENT_SD[quantity] if sd is None else sd
    out = []
    for i in range(len(settings)):
        noise_sd = {
            c: STANDARD_CHANNEL_MODELS[c].noise / math.sqrt(EXPOSURE_TICKS) for c in channels
        }
        telemetry = {c: float(readings[c][i] + rng.normal() * noise_sd[c]) for c in channels}
        m_sd = unit_sd * (true_values[i] if quantity == "camera_length" else 1.0)
        out.append(
            ReferenceMeasurement(
                quantity=quantity,
                value=float(true_values[i] + rng.normal() * m_sd),
                sd=float(m_sd),
                telemetry=telemetry,
                telemetry_sd={c: s for c, s in noise_sd.items() if s > 0},
            )
        )
    return out
