"""NEFTune as a preset (``smart=neftune``): uniform noise α/√(L·d) on the input embeddings of the training forward.

Checked against the definition (Jain et al., 2023, Algorithm 1; Hugging Face's ``neftune_post_forward_hook``): the
noise is read off the model itself (the first decoder layer's input minus the clean embeddings), and the step's
loss is recomputed in float64 from ``inputs_embeds`` with that noise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from lightning_smart import ConfigError, SmartConfig
from lightning_smart.app.schema import register_configs
from lightning_smart.tasks import SequenceTask
from tests.helpers.models import SEQ, VOCAB, tiny_llama, token_batch

ALPHA = 5.0


def causal_batch(n: int = 8) -> dict[str, torch.Tensor]:
    batch = token_batch(n)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def noise_of_step(task: SequenceTask, batch: dict[str, torch.Tensor], batch_idx: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's loss, and the noise its forward added to the embeddings (first layer's input − clean)."""
    seen: list[torch.Tensor] = []
    layer = task.model.model.layers[0]
    hook = layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("hidden_states", args[0]
                                                                                         if args else None)),
                                           with_kwargs=True)
    try:
        loss = task.training_step(batch, batch_idx)
    finally:
        hook.remove()
    clean = task.model.get_input_embeddings()(batch["input_ids"])
    return loss, (seen[0] - clean).detach()


def test_neftune_adds_uniform_noise_of_scale_alpha_over_root_l_d_at_real_tokens() -> None:
    task = SequenceTask(tiny_llama().double(), num_labels=VOCAB, smart=SmartConfig(lambda_s=0.0, neftune_alpha=ALPHA))
    batch = causal_batch()
    mask = batch["attention_mask"]
    assert (mask.sum(1) < SEQ).any()  # some examples are padded: L differs from T
    loss, noise = noise_of_step(task, batch)
    width = noise.shape[-1]
    assert torch.all(noise[mask == 0] == 0)  # padding gets none
    bound = ALPHA / torch.sqrt(mask.sum(1).double() * width)  # α/√(L·d), L the example's real tokens
    scaled = noise / bound[:, None, None]
    real = scaled[mask == 1]
    assert real.abs().max() <= 1 + 1e-12
    # U(−1, 1): quartiles −0.5, 0, 0.5 (≈ 1,500 draws; standard error ≈ 0.03), and the bound reached per example
    quartiles = torch.quantile(real.flatten(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    torch.testing.assert_close(quartiles, torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64), atol=0.1, rtol=0)
    assert all(float(scaled[b][mask[b] == 1].abs().max()) > 0.9 for b in range(len(mask)))
    # the loss is the causal LM's cross-entropy on the noisy embeddings, recomputed here in float64
    embeds = task.model.get_input_embeddings()(batch["input_ids"]) + noise
    logits = task.model(inputs_embeds=embeds, attention_mask=mask).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1),
                               ignore_index=-100)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)  # the task loss is taken in float32
    assert float(loss.detach() - task.smart_task_loss(task.smart_forward(batch), batch).detach()) != 0  # it acts


def test_neftune_is_off_at_evaluation_and_its_noise_replays_with_the_step() -> None:
    task = SequenceTask(tiny_llama().double(), num_labels=VOCAB, smart=SmartConfig(lambda_s=0.0, neftune_alpha=ALPHA))
    batch = causal_batch()
    first, noise = noise_of_step(task, batch, 0)
    again, same = noise_of_step(task, batch, 0)
    _, other = noise_of_step(task, batch, 1)
    assert torch.equal(noise, same) and first == again  # a function of (seed, rank, step, batch): resumes replay it
    assert not torch.equal(noise, other)
    assert not task.model.get_input_embeddings()._forward_hooks  # nothing left on the model after the step
    task.eval()
    with torch.no_grad():
        plain = task.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(task.smart_forward(batch), plain, rtol=0, atol=0)


def test_neftune_with_the_adversarial_term_and_a_negative_alpha_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^smart.neftune_alpha=5 with smart.lambda_s=1: NEFTune's noise on the task"
                                          r" forward would also move the clean output that R_s compares with"):
        SmartConfig(lambda_s=1.0, neftune_alpha=5.0)
    with pytest.raises(ConfigError, match=r"^smart.neftune_alpha=-1.0 is not allowed: neftune_alpha must be ≥ 0"):
        SmartConfig(lambda_s=0.0, neftune_alpha=-1.0)


def test_the_neftune_preset_composes_as_hugging_face_runs_it() -> None:
    register_configs()
    with initialize_config_module("lightning_smart.conf", version_base="1.3"):
        cfg = compose("config", overrides=["smart=neftune"])
    smart = SmartConfig(**cfg.smart)
    assert (smart.lambda_s, smart.neftune_alpha, smart.acts) == (0.0, 5.0, True)


def test_a_training_step_that_skips_smart_loss_is_refused_under_neftune() -> None:
    class OwnStep(SequenceTask):
        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return self.smart_task_loss(self.smart_forward(batch), batch)

    task = OwnStep(tiny_llama(), num_labels=VOCAB, smart=SmartConfig(lambda_s=0.0, neftune_alpha=ALPHA))
    with pytest.raises(TypeError, match=r"did not call self\.smart_loss"):
        task.training_step(causal_batch(), 0)
