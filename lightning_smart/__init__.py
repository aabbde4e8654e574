"""lightning-smart: SMART robust fine-tuning (Jiang et al., 2020) as a drop-in for PyTorch Lightning."""

from lightning_smart.config import ConfigError, SmartConfig, TeacherConfig
from lightning_smart.divergence import bernoulli_symmetric_kl, squared_error, symmetric_divergence, symmetric_kl
from lightning_smart.module import SmartLightningModule, TeacherProtocol
from lightning_smart.perturbation import ascent_step, project, sample_noise
from lightning_smart.teacher import EMATeacherCallback

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EMATeacherCallback",
    "SmartConfig",
    "SmartLightningModule",
    "TeacherConfig",
    "TeacherProtocol",
    "__version__",
    "ascent_step",
    "bernoulli_symmetric_kl",
    "project",
    "sample_noise",
    "squared_error",
    "symmetric_divergence",
    "symmetric_kl",
]
