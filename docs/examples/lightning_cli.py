"""SMART fine-tuning with Lightning's own LightningCLI: no Hydra, no app.

    python lightning_cli.py fit --model.model <a Hub name or a folder> \
        --model.smart.lambda_s 1 \
        --trainer.callbacks+=lightning_smart.EMATeacherCallback \
        --trainer.callbacks.mu 1

SequenceTask's arguments are --model.* flags (its smart: SmartConfig gives
--model.smart.*), the data module's are --data.config.* flags (its config:
TextDataConfig), and the teacher is a callback like any other.
"""

from lightning.pytorch.cli import LightningCLI

from lightning_smart.data import TextDataModule
from lightning_smart.tasks import SequenceTask


def main() -> None:
    LightningCLI(SequenceTask, TextDataModule)


if __name__ == "__main__":
    main()
