"""Ready LightningModules built on the SMART mixin."""

from lightning_smart.tasks.base import FineTuneTask
from lightning_smart.tasks.sequence import SequenceTask
from lightning_smart.tasks.token_level import CausalLMTask, TokenTask

__all__ = ["CausalLMTask", "FineTuneTask", "SequenceTask", "TokenTask"]
