"""The fast preview of an experiment: the specimen's projected potential (abTEM) imaged with
the twin's linear approximations (``twin.incoherent_stem_preview``,
``twin.weak_phase_hrtem_preview``), for interactive what-ifs in milliseconds once the
potential is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulations._experiment import PreparedExperiment, prepare_experiment
from simulations._experiment_spec import ExperimentSpecV1, HrtemModeV1, StateV1, StemModeV1
from simulations._mapping import ExperimentInputError, focal_spread

__all__ = ["Preview", "preview_experiment", "projected_potential"]


@dataclass(frozen=True)
class Preview:
    """A preview image [arbitrary units for STEM; vacuum = 1 for HRTEM] on the potential's
    grid of pixel ``sampling`` [Å], and the approximation that made it."""

    image: np.ndarray
    sampling: tuple[float, float]
    approximation: str


def projected_potential(prepared: PreparedExperiment, slice_thickness: float) -> np.ndarray:
    """The specimen's projected potential [V·Å] on the prepared grid (abTEM, infinite
    projection), axis 0 along x."""
    import abtem

    with abtem.config.set({"diagnostics.progress_bar": False, "precision": "float64"}):
        potential = abtem.Potential(
            prepared.atoms,
            gpts=prepared.gpts,
            slice_thickness=slice_thickness,
            projection="infinite",
        )
        projected: Any = potential.project().compute()
        return np.asarray(projected.array, dtype=float)


def preview_experiment(
    spec: ExperimentSpecV1,
    state: StateV1,
    *,
    potential: np.ndarray | None = None,
    exponent: float = 2.0,
    **limits: Any,
) -> Preview:
    """The linear-imaging preview of ``spec`` in ``state``: incoherent STEM for ``stem``
    (whatever the detectors), the weak-phase image for ``hrtem``; other modes have none.
    ``potential`` reuses a projected potential already made (what-ifs on one specimen)."""
    import twin

    if not isinstance(spec.mode, StemModeV1 | HrtemModeV1):
        raise ExperimentInputError(
            f"mode {spec.mode.mode!r} has no fast preview (stem and hrtem have)"
        )
    prepared = prepare_experiment(spec, state, **limits)
    if potential is None:
        potential = projected_potential(prepared, spec.slice_thickness)
    lengths = prepared.atoms.cell.lengths()
    sampling = (float(lengths[0]) / prepared.gpts[0], float(lengths[1]) / prepared.gpts[1])
    aberrations = twin.Aberrations.from_dict(dict(state.aberrations))
    if isinstance(spec.mode, StemModeV1):
        image = twin.incoherent_stem_preview(
            potential,
            sampling=sampling[0],
            energy=state.energy,
            semiangle_cutoff=state.convergence_semiangle,
            aberrations=aberrations,
            exponent=exponent,
            source_size=state.source_size,
        )
        approximation = "incoherent STEM: probe intensity convolved with V^exponent"
    else:
        image = twin.weak_phase_hrtem_preview(
            potential,
            sampling=sampling[0],
            energy=state.energy,
            aberrations=aberrations,
            focal_spread=focal_spread(state),
        )
        approximation = "weak-phase HRTEM: 1 + 2 Re(F^-1[i sigma V CTF])"
    return Preview(np.asarray(image, dtype=float), sampling, approximation)
