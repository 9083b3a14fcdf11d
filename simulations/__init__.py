"""Virtual microscopes and virtual experiments that run against the twin.

Today: a virtual STEM streaming realistic telemetry with a known true state and injectable
faults (:class:`VirtualMicroscope`), and a reader of real Protochips holder logs to replay them
(:func:`read_holder_log`). Both hand out :class:`TelemetryBlock` objects; publishing them is the
caller's business.

Bayesian experiments (pyro, docs/bayesian.md): :func:`calibrate` (posterior of the instrument
model's constants from reference measurements), :func:`fit_forecast` (forecasts of a drifting
quantity), :func:`design_calibration` (a ranked plan by expected information gain), and their
checks on the virtual microscope (:func:`simulation_based_calibration`,
:func:`evaluate_forecast`, :func:`rehearse_design`).
"""

from simulations._bayes_calibration import CalibrationPosterior, calibrate
from simulations._bayes_design import (
    DesignPlan,
    PlannedMeasurement,
    default_target_sd,
    design_calibration,
    rehearse_design,
)
from simulations._bayes_forecast import (
    Forecast,
    ForecastModel,
    ForecastScore,
    crps_gaussian,
    crps_samples,
    evaluate_forecast,
    fit_forecast,
    llt_forecast,
    persistence_forecast,
)
from simulations._bayes_model import (
    CALIBRATED_CONSTANTS,
    CONSTANT_UNITS,
    MEASURED_QUANTITIES,
    ReferenceMeasurement,
    default_prior_sd,
)
from simulations._bayes_sbc import SbcResult, simulation_based_calibration, virtual_reference_set
from simulations._bayes_virtual import (
    MEASUREMENT_SD,
    candidate_settings,
    draw_true_calibration,
    measure_virtually,
)
from simulations._block import TelemetryBlock
from simulations._errors import (
    BayesError,
    BlockError,
    BlockTypeError,
    FaultError,
    HolderLogError,
    InvalidMeasurement,
    MicroscopeConfigError,
    MissingTelemetry,
    NotConverged,
    SimulationError,
    TooFewMeasurements,
    TooShortSeries,
    UnknownChannel,
)
from simulations._fault_suite import (
    FAULT_SUITE,
    CaseResult,
    FaultCase,
    FixedThresholdDetector,
    run_case,
    score,
)
from simulations._faults import (
    Dropout,
    Excursion,
    Fault,
    FaultTarget,
    NoiseBurst,
    Ramp,
    SensorFault,
    Spike,
    Step,
    Stuck,
    TruthFault,
)
from simulations._holder_log import (
    HOLDER_LOG_CHANNELS,
    HolderLog,
    HolderLogNote,
    read_holder_log,
)
from simulations._optical_state import (
    models_for_state,
    nominal_channels,
    state_step,
    true_state,
)
from simulations._virtual_microscope import (
    STANDARD_CHANNEL_MODELS,
    ChannelModel,
    VirtualMicroscope,
    default_channel_model,
    extra_channel_models,
    iter_blocks,
    lens_temperature_rise,
)

__all__ = [
    "CALIBRATED_CONSTANTS",
    "CONSTANT_UNITS",
    "FAULT_SUITE",
    "HOLDER_LOG_CHANNELS",
    "MEASURED_QUANTITIES",
    "MEASUREMENT_SD",
    "STANDARD_CHANNEL_MODELS",
    "BayesError",
    "BlockError",
    "BlockTypeError",
    "CalibrationPosterior",
    "CaseResult",
    "ChannelModel",
    "DesignPlan",
    "Dropout",
    "Excursion",
    "Fault",
    "FaultCase",
    "FaultError",
    "FaultTarget",
    "FixedThresholdDetector",
    "Forecast",
    "ForecastModel",
    "ForecastScore",
    "HolderLog",
    "HolderLogError",
    "HolderLogNote",
    "InvalidMeasurement",
    "MicroscopeConfigError",
    "MissingTelemetry",
    "NoiseBurst",
    "NotConverged",
    "PlannedMeasurement",
    "Ramp",
    "ReferenceMeasurement",
    "SbcResult",
    "SensorFault",
    "SimulationError",
    "Spike",
    "Step",
    "Stuck",
    "TelemetryBlock",
    "TooFewMeasurements",
    "TooShortSeries",
    "TruthFault",
    "UnknownChannel",
    "VirtualMicroscope",
    "calibrate",
    "candidate_settings",
    "crps_gaussian",
    "crps_samples",
    "default_channel_model",
    "default_prior_sd",
    "default_target_sd",
    "design_calibration",
    "draw_true_calibration",
    "evaluate_forecast",
    "extra_channel_models",
    "fit_forecast",
    "iter_blocks",
    "lens_temperature_rise",
    "llt_forecast",
    "measure_virtually",
    "models_for_state",
    "nominal_channels",
    "persistence_forecast",
    "read_holder_log",
    "rehearse_design",
    "run_case",
    "score",
    "simulation_based_calibration",
    "state_step",
    "true_state",
    "virtual_reference_set",
]
