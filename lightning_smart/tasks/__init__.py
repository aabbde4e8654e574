"""Ready LightningModules built on the SMART mixin."""

from lightning_smart.tasks.sequence import SequenceTask

__all__ = ["SequenceTask"]
