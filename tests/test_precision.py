"""Mixed precision on the shipped all-MiniLM-L6-v2 and real movie snippets (SPEC §5)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from lightning_smart import SmartConfig
from lightning_smart.perturbation import captured
from lightning_smart.tasks import SequenceTask


def ascent_direction(task: SequenceTask, batch: dict, autocast: bool) -> torch.Tensor:
    """g/‖g‖∞ of the first ascent step, read off δ1 − δ0 with η far below ε (no projection)."""
    site = task.smart_perturbation_site()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with captured(site) as record:
            z = task.smart_forward(batch)
        delta1, _, finite = task.smart_perturbation(batch, 0, site, record.output, z.detach())
    from lightning_smart.perturbation import sample_noise

    delta0 = sample_noise(record.output, batch["attention_mask"], task.smart.sigma, task.smart_noise_seed(0))
    assert bool(finite)
    return ((delta1 - delta0) / task.smart.eta).flatten()


@pytest.fixture(scope="module")
def minilm_batch(minilm_path: str, movie_texts: list[tuple[str, float]]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = [text for text, rating in movie_texts[:8]]
    batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt"))
    batch["labels"] = torch.tensor([int(rating > 0) for _, rating in movie_texts[:8]])
    return batch


def test_bf16_ascent_direction_agrees_with_float32(minilm_path: str, minilm_batch: dict) -> None:
    cosines = {}
    for precision in ("fp32", "autocast"):
        smart = SmartConfig(eta=1e-9, epsilon=1.0, ascent_precision=precision, probe=False)
        task = SequenceTask(minilm_path, num_labels=2, smart=smart,
                            model_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
        reference = ascent_direction(task, minilm_batch, autocast=False)
        mixed = ascent_direction(task, minilm_batch, autocast=True)
        cosines[precision] = torch.nn.functional.cosine_similarity(reference, mixed, dim=0).item()
    print(f"cosine with the fp32 ascent direction under bf16-mixed: {cosines}")
    assert cosines["fp32"] >= 0.9
    assert cosines["autocast"] < 0.9  # the naive bf16 ascent is what the default avoids


def test_epsilon_below_bf16_resolution_warns_once_with_the_numbers(minilm_path: str, minilm_batch: dict) -> None:
    task = SequenceTask(minilm_path, num_labels=2, smart=SmartConfig(probe=False),
                        model_overrides={"num_hidden_layers": 1})
    below = r"smart.epsilon=1e-05 \(absolute\) is below what torch.bfloat16 resolves"
    with pytest.warns(UserWarning, match=below) as record, torch.autocast("cpu", dtype=torch.bfloat16):
        task.training_step(minilm_batch, 0)
        task.training_step(minilm_batch, 1)
    assert sum("resolves" in str(w.message) for w in record) == 1
    relative = SequenceTask(minilm_path, num_labels=2, model_overrides={"num_hidden_layers": 1},
                            smart=SmartConfig(epsilon=0.02, sigma=0.01, epsilon_scale="relative", probe=False))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            relative.training_step(minilm_batch, 0)
