"""SMART fine-tuning from the command line with Lightning's own ``LightningCLI``: no Hydra, no app.

    python lightning_cli.py fit --model.model sentence-transformers/all-MiniLM-L6-v2 \
        --model.smart.lambda_s 1 --trainer.callbacks+=lightning_smart.EMATeacherCallback --trainer.callbacks.mu 1

Every argument of ``SequenceTask`` is a ``--model.*`` flag (``smart: SmartConfig`` gives ``--model.smart.*``), every
argument of ``TextDataModule`` a ``--data.*`` flag, and the teacher is a callback like any other.
"""

from lightning.pytorch.cli import LightningCLI

from lightning_smart.data import TextDataModule
from lightning_smart.tasks import SequenceTask


def main() -> None:
    LightningCLI(SequenceTask, TextDataModule)


if __name__ == "__main__":
    main()
