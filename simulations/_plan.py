"""An experiment planned before it is queued: the state it will use (the twin's estimate,
or the spec's whole state, with the spec's overrides), that state's uncertainty, the hash
that identifies both, and the cost estimate checked against the limits. Pure: the caller
reads the twin's estimate from the store and hands its values in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simulations._cost import CostEstimate, ExperimentLimits
from simulations._experiment import draw_members, prepare_experiment
from simulations._experiment_spec import ExperimentSpecV1, StateV1, UncertaintyV1
from simulations._mapping import resolve_state, state_from_twin, uncertainty_from_twin
from simulations._specimens import SpecimenLimits

__all__ = ["ExperimentPlan", "plan_experiment"]


@dataclass(frozen=True)
class ExperimentPlan:
    """The state [abTEM units] and uncertainty an experiment runs with, their SHA-256 (what a
    resubmission is matched by, with the spec's hash), the cost estimate and the specimen's
    structure hash."""

    state: StateV1
    uncertainty: UncertaintyV1 | None
    state_sha256: str
    estimate: CostEstimate
    structure_sha256: str

    def state_document(self) -> dict[str, Any]:
        """The state and uncertainty as stored with the job."""
        return {
            "state": self.state.model_dump(mode="json"),
            "uncertainty": None
            if self.uncertainty is None
            else self.uncertainty.model_dump(mode="json"),
        }


def plan_experiment(
    spec: ExperimentSpecV1,
    *,
    twin_values: Mapping[str, float] | None = None,
    twin_std: Mapping[str, float] | None = None,
    defaults: Mapping[str, Any] | None = None,
    limits: ExperimentLimits | None = None,
    specimen_limits: SpecimenLimits | None = None,
) -> ExperimentPlan:
    """Plan ``spec``: the twin's estimate (``twin_values`` / ``twin_std`` by twin quantity
    name, in the twin's units; ``None`` for a spec that gives the whole state) becomes the
    state, the spec's overrides apply, the specimen is built and the cost estimated.

    Raises:
        ExperimentInputError: no state (no estimate and no ``state`` in the spec).
        SpecimenError, ExperimentTooLarge: a bad specimen, an experiment over the limits.
    """
    twin_state = None
    uncertainty = spec.uncertainty
    if spec.state is None and (twin_values or spec.instrument is not None):
        # What the twin does not estimate (Cc, spreads, source size; energy or convergence
        # when the twin has not seen them yet) may come from the overrides.
        fields = {k: v for k, v in spec.overrides.items() if k in StateV1.model_fields}
        twin_state = state_from_twin(twin_values or {}, defaults={**(defaults or {}), **fields})
        if uncertainty is None and twin_std:
            uncertainty = uncertainty_from_twin(twin_std)
    state = resolve_state(spec, twin_state)
    prepared = prepare_experiment(spec, state, limits=limits, specimen_limits=specimen_limits)
    if spec.ensemble_size > 1:  # refuses an uncertainty an ensemble cannot vary, now
        draw_members(state, spec.uncertainty or uncertainty, 2, spec.seed)
    document = {
        "state": state.model_dump(mode="json"),
        "uncertainty": None if uncertainty is None else uncertainty.model_dump(mode="json"),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return ExperimentPlan(
        state=state,
        uncertainty=uncertainty,
        state_sha256=hashlib.sha256(text.encode()).hexdigest(),
        estimate=prepared.estimate,
        structure_sha256=prepared.structure_sha256,
    )
