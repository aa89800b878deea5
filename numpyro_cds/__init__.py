"""numpyro_cds: consistent diffusion samplers for NumPyro models."""

__version__ = "0.1.0"  # before the imports: infer.py writes it into checkpoints

from .consistency import ConsistencyConfig, consistency_sampler
from .importance import ImportanceSummary, summarize_weights
from .infer import CDSInference
from .monitor import MonitorConfig
from .networks import ControlNetwork, TimeEmbedding
from .report import TrainingDivergedWarning, UnreliableDrawsWarning
from .sde import AbstractSchedule, LinearSchedule
from .target import Target, target_from_model
from .train import TrainConfig, fit
from .trained import Draws, TrainedSampler
from .whitening import AffineWhitening, fit_whitening

__all__ = [
    "CDSInference",
    "UnreliableDrawsWarning",
    "TrainingDivergedWarning",
    "MonitorConfig",
    "ImportanceSummary",
    "summarize_weights",
    "Target",
    "target_from_model",
    "AbstractSchedule",
    "LinearSchedule",
    "ControlNetwork",
    "TimeEmbedding",
    "ConsistencyConfig",
    "TrainConfig",
    "consistency_sampler",
    "fit",
    "Draws",
    "TrainedSampler",
    "AffineWhitening",
    "fit_whitening",
    "__version__",
]
