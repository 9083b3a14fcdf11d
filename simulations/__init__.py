"""Virtual microscopes and virtual experiments that run against the twin.

Today: a virtual STEM streaming realistic telemetry with a known true state and injectable
faults (:class:`VirtualMicroscope`), and a reader of real Protochips holder logs to replay them
(:func:`read_holder_log`). Both hand out :class:`TelemetryBlock` objects; publishing them is the
caller's business.
"""

from simulations._block import TelemetryBlock
from simulations._errors import (
    BlockError,
    BlockTypeError,
    FaultError,
    HolderLogError,
    MicroscopeConfigError,
    SimulationError,
    UnknownChannel,
)
from simulations._fault_suite import (
    FAULT_SUITE,
    TESTS_PER_CHANNEL,
    CaseResult,
    FaultCase,
    FixedThresholdDetector,
    oracle_delay,
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
    "FAULT_SUITE",
    "HOLDER_LOG_CHANNELS",
    "STANDARD_CHANNEL_MODELS",
    "TESTS_PER_CHANNEL",
    "BlockError",
    "BlockTypeError",
    "CaseResult",
    "ChannelModel",
    "Dropout",
    "Excursion",
    "Fault",
    "FaultCase",
    "FaultError",
    "FaultTarget",
    "FixedThresholdDetector",
    "HolderLog",
    "HolderLogError",
    "HolderLogNote",
    "MicroscopeConfigError",
    "NoiseBurst",
    "Ramp",
    "SensorFault",
    "SimulationError",
    "Spike",
    "Step",
    "Stuck",
    "TelemetryBlock",
    "TruthFault",
    "UnknownChannel",
    "VirtualMicroscope",
    "default_channel_model",
    "extra_channel_models",
    "iter_blocks",
    "lens_temperature_rise",
    "models_for_state",
    "nominal_channels",
    "oracle_delay",
    "read_holder_log",
    "run_case",
    "score",
    "state_step",
    "true_state",
]
