"""What the installed transformers' ``from_pretrained`` does to the models the ready tasks load.

From 5.25, ``from_pretrained`` kernelizes by default (``kernels`` is one of its dependencies), and each later
``train()``/``eval()`` switch kernelizes again: a layer that transformers maps to a kernel on the Hub for the device the
model is on is swapped for it. It maps none for the CPU; for CUDA it maps GELU (eval mode) and Llama's RMSNorm (train
and eval) among others. Here the same kernels are mapped for the CPU, so that the suite sees what a GPU would: offline,
a model that kernelizes fails to load; the tasks load theirs with ``use_kernels=False``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kernels import LayerRepository, use_kernel_mapping
from peft import PeftModel
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightning_smart.tasks import CausalLMTask, SequenceTask
from tests.helpers.models import SEQ, VOCAB, tiny_llama

# transformers' own CUDA kernels for these layers (its hub_kernels mapping), mapped here for the CPU
KERNELS_ON_CPU = {
    "GeLU": {"cpu": LayerRepository(repo_id="kernels-community/activation", layer_name="Gelu", version=1)},
    "RMSNorm": {"cpu": LayerRepository(repo_id="kernels-community/liger-kernels", layer_name="LigerRMSNorm",
                                       version=4)},
}
LORA = {"r": 4, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama().save_pretrained(folder)
    return folder


def swapped(model: nn.Module) -> list[str]:
    """The modules whose forward a kernel replaced (kernels sets it on the instance)."""
    return [name for name, module in model.named_modules() if "forward" in vars(module)]


def test_from_pretrained_fetches_the_kernel_mapped_for_the_device_by_default(minilm_path: str) -> None:
    with use_kernel_mapping(KERNELS_ON_CPU), pytest.raises(
        ValueError, match="is not available in the local cache and Hugging Face Hub is in offline mode"
    ):
        AutoModelForSequenceClassification.from_pretrained(minilm_path, num_hidden_layers=2)


def test_the_tasks_load_without_kernels_and_swap_none_in_either_mode(minilm_path: str, llama_folder: Path) -> None:
    with use_kernel_mapping(KERNELS_ON_CPU):
        tasks = [SequenceTask(minilm_path, num_labels=2, model_overrides={"num_hidden_layers": 2}),
                 CausalLMTask(str(llama_folder)), CausalLMTask(str(llama_folder), lora=LORA)]
        for task in tasks:
            task.eval()  # Lightning's switches around a validation: each would kernelize again
            task.train()
            base = task.model.get_base_model() if isinstance(task.model, PeftModel) else task.model
            assert base.use_kernels is False
            assert swapped(task.model) == []


def test_the_loaded_models_compute_as_fresh_copies_of_their_weights(
    minilm_path: str, llama_folder: Path, movie_texts: list[tuple[str, float]]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = dict(tokenizer([text for text, _ in movie_texts[:4]], padding=True, return_tensors="pt"))
    tokens = {"input_ids": torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))}
    with use_kernel_mapping(KERNELS_ON_CPU):
        loaded = {"minilm": (SequenceTask(minilm_path, num_labels=2, model_overrides={"num_hidden_layers": 2}), texts),
                  "llama": (CausalLMTask(str(llama_folder)), tokens)}
        for name, (task, batch) in loaded.items():
            model = task.model.eval()
            fresh = type(model)(model.config)
            fresh.load_state_dict(model.state_dict())
            with torch.no_grad():
                assert torch.equal(model(**batch).logits, fresh.eval()(**batch).logits), name
