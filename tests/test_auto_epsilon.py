"""``smart.epsilon=auto``: the radius the probe calibrates, on real models, through a fit, a resume and DDP."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoTokenizer

from lightning_smart import ConfigError, SmartConfig, probe
from lightning_smart.app.cli import build, train
from lightning_smart.config import RADIUS_GRID
from lightning_smart.tasks import SequenceTask
from tests.helpers.app import TINY, app_config, stopped_run
from tests.helpers.models import tiny_bert, token_examples, token_loader

AUTO = {"epsilon": "auto", "sigma": 0.01, "eta": 1.0, "epsilon_scale": "relative", "shared_dropout": True}


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, deterministic=True, num_sanity_val_steps=0)
    return pl.Trainer(**(defaults | kwargs))


# -- the choice, against probe.measure at each radius ------------------------------------------------------


@pytest.fixture(scope="module")
def movie_batch(minilm_path: str, movie_texts: list[tuple[str, float]]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = movie_texts[:16]
    batch = dict(tokenizer([t for t, _ in texts], padding=True, truncation=True, max_length=48, return_tensors="pt"))
    batch["labels"] = torch.tensor([int(rating > 0) for _, rating in texts])
    return batch


@pytest.fixture(scope="module")
def minilm_l2(minilm_path: str) -> SequenceTask:
    """The real MiniLM cut to 2 layers, with its new head and its dropout (0.1)."""
    torch.manual_seed(0)
    return SequenceTask(minilm_path, num_labels=2, smart=SmartConfig(**AUTO), model_overrides={"num_hidden_layers": 2})


@pytest.fixture(scope="module")
def measured(minilm_l2: SequenceTask, movie_batch: dict) -> dict[float, float]:
    """The ratio at each grid radius, from :func:`probe.measure` run on its own at that radius (same masks)."""
    ratios = {}
    for radius in RADIUS_GRID:
        minilm_l2.smart = SmartConfig(**(AUTO | {"epsilon": radius}))
        torch.manual_seed(11)
        found = probe.measure(minilm_l2, movie_batch)
        ratios[radius] = found["perturbation_kl"] / found["dropout_kl"]
    return ratios


def test_the_ratio_grows_with_the_radius_on_the_real_model(measured: dict[float, float]) -> None:
    """What the search relies on: larger radius, larger ratio (the same masks and ascent direction)."""
    ratios = [measured[r] for r in RADIUS_GRID]
    assert all(a < b for a, b in itertools.pairwise(ratios)), ratios


@pytest.mark.parametrize("start", [None, 0.003, 1.0], ids=["middle", "from-below", "from-above"])
@pytest.mark.parametrize("scale", [0.5, 1.5, 1e6], ids=["reached-low", "reached-high", "unreached"])
def test_auto_chooses_the_smallest_grid_radius_at_which_measure_reaches_the_target(
    minilm_l2: SequenceTask, movie_batch: dict, measured: dict[float, float], start: float | None, scale: float
) -> None:
    """Targets between the measured ratios (so the answer is a different radius for each), searched from below,
    above and the middle: the radius and the ℓs at every radius tried are measure's, bit for bit."""
    ratios = sorted(measured.values())
    target = {0.5: ratios[1] * 1.5, 1.5: ratios[4] * 1.01, 1e6: ratios[-1] * 1e6}[scale]
    reaching = [r for r in RADIUS_GRID if measured[r] >= target]
    expected = reaching[0] if reaching else RADIUS_GRID[-1]

    minilm_l2.smart = SmartConfig(**AUTO, target_ratio=target)
    torch.manual_seed(11)
    found = probe.calibrate(minilm_l2, movie_batch, 0, step=7, start=start)
    assert (found.step, found.epsilon, found.reached) == (7, expected, bool(reaching))
    assert all(found.ratio(radius) == measured[radius] for radius, _ in found.tried)
    assert len(found.tried) < len(RADIUS_GRID) or start == 0.003  # a search, not a scan
    if not reaching:
        message = probe.unreached_warning(found, target)
        assert message is not None and message.startswith(
            f"smart.epsilon=auto at step 7: no radius of the grid reaches smart.target_ratio={target:g} (ratio of")
        assert message.endswith("R_s uses the largest, 1, until the next calibration. Lower smart.target_ratio or"
                                " give a number.")


# -- inside a fit ---------------------------------------------------------------------------------------


def _fit(max_steps: int, **smart: object) -> tuple[SequenceTask, pl.Trainer, list[str]]:
    """A tiny BERT with dropout, validated every 4 steps; the warnings about the radius."""
    pl.seed_everything(2)
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, smart=SmartConfig(**(AUTO | smart)), lr=5e-2)
    run = trainer(max_steps=max_steps, val_check_interval=4, check_val_every_n_epoch=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.fit(task, token_loader(48, 8), token_loader(16, 8, seed=3))
    return task, run, [str(w.message) for w in caught if "smart.epsilon=auto" in str(w.message)]


def test_r_s_is_off_until_the_first_calibration_and_plain_before_it() -> None:
    """Until the first validation the steps are plain fine-tuning, bit for bit; a fit that ends first says so."""
    auto, _, warned = _fit(4)
    plain, _, _ = _fit(4, lambda_s=0.0)
    assert auto.smart_epsilon is None and auto.smart_calibrations == []
    for (name, a), b in zip(auto.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert warned == ["smart.epsilon=auto never calibrated in this fit (no validation ran before its last step), so"
                      " R_s was off throughout: validate sooner (trainer.val_check_interval) or give a number"]


def test_a_calibration_after_each_validation_logged_and_probed() -> None:
    """Validated at 4, 8 and 12: calibrated at steps 4 and 8, each radius a grid radius, logged as smart/epsilon,
    its ratio the probe's; the unreachable target warns with the numbers."""
    task, run, warned = _fit(12, target_ratio=1e9)
    assert [c.step for c in task.smart_calibrations] == [4, 8] == [p.step for p in task.smart_probes]
    assert all(c.epsilon == 1.0 and not c.reached for c in task.smart_calibrations)
    assert run.callback_metrics["smart/epsilon"] == task.smart_epsilon == 1.0
    assert run.callback_metrics["smart/probe_ratio"] == pytest.approx(task.smart_calibrations[-1].ratio(1.0))
    assert len(warned) == 2 and all(w.startswith(f"smart.epsilon=auto at step {s}: no radius of the grid reaches")
                                    for w, s in zip(warned, (4, 8), strict=True))
    # The second search starts from the radius in force: at the top, one radius tried.
    assert [r for r, _ in task.smart_calibrations[1].tried] == [1.0]
    assert task.smart_calibration_s > 0


# -- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("smart", "message"), [
    ({"epsilon": "auto"}, "smart.epsilon=auto with smart.epsilon_scale=absolute: auto chooses among radii relative"
     " to each token's RMS; set smart.epsilon_scale=relative or give a number"),
    (AUTO | {"rule": "mtdnn"}, "smart.epsilon=auto with smart.rule=mtdnn: that rule normalizes δ to ≈ 1 per"
     " coordinate and projects onto no ball, so there is no radius to choose; set smart.rule=paper or drop"
     " smart.epsilon=auto"),
    (AUTO | {"ascent_steps": 0}, "smart.epsilon=auto with smart.ascent_steps=0: without an ascent step ε bounds"
     " nothing, so there is no radius to choose; set smart.ascent_steps ≥ 1 or give a number"),
    ({"epsilon": "big"}, "smart.epsilon='big' is not allowed: epsilon must be a number > 0 or 'auto'"),
    (AUTO | {"target_ratio": 0}, "smart.target_ratio=0 is not allowed: target_ratio must be > 0"),
], ids=["absolute", "mtdnn", "no-ascent", "other-string", "target"])
def test_auto_is_refused_at_construction_naming_the_alternative(smart: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        SmartConfig(**smart)
    assert str(raised.value) == message


def test_auto_with_an_absolute_scale_is_refused_by_the_app_before_its_folder(tmp_path: Path) -> None:
    overrides = [*TINY, "smart=relative_shared", "smart.epsilon=auto", "smart.epsilon_scale=absolute"]
    with app_config(overrides) as cfg, pytest.raises(ConfigError) as raised:
        build(cfg, tmp_path / "run")
    assert str(raised.value).endswith("set smart.epsilon_scale=relative or give a number")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("dropout", "validate", "message"), [
    (0.0, True, "smart.epsilon=auto needs dropout as the ratio's reference, and the model has no dropout module with"
     " p > 0: give a number instead, e.g. smart.epsilon=0.1 (relative to each token's RMS), or train with dropout"),
    (0.1, False, "smart.epsilon=auto calibrates the radius after each validation, and this fit never validates (no"
     " val_dataloader, no validation_step or limit_val_batches=0): give a number, e.g. smart.epsilon=0.1, or"
     " validate"),
], ids=["no-dropout", "no-validation"])
def test_auto_without_a_reference_or_a_validation_is_refused_before_any_optimizer_step(
    dropout: float, validate: bool, message: str
) -> None:
    task = SequenceTask(tiny_bert(dropout=dropout), num_labels=3, smart=SmartConfig(**AUTO), lr=5e-2)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    run = trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None)
    with pytest.raises(ConfigError) as raised:
        run.fit(task, token_loader(16, 8), token_loader(8, 8, seed=3) if validate else None)
    assert str(raised.value) == message
    assert run.global_step == 0 and all(torch.equal(p, before[n]) for n, p in task.named_parameters())


def test_a_model_left_in_eval_mode_is_refused_naming_train() -> None:
    model = tiny_bert(dropout=0.1).eval()
    assert "its dropout modules are all in eval mode (call .train() on the model" in probe.no_dropout_error(model)


# -- resume through the app -------------------------------------------------------------------------------

# 64 training examples in batches of 16 (4 steps an epoch), 8 steps, validated and last.ckpt written every 2 steps:
# the radius is calibrated at steps 2, 4 and 6.
RESUMABLE = [
    *[o for o in TINY if not o.startswith(("checkpoint.", "trainer.max_steps", "trainer.val_check_interval"))],
    "trainer.max_steps=8", "trainer.val_check_interval=2", "checkpoint.save_last=true",
    "smart=relative_shared", "teacher=off", "smart.epsilon=auto", "smart.target_ratio=0.03",
]


def _auto_state(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    ckpt = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8
    state = ckpt["smart_auto_epsilon"]
    return ckpt["state_dict"], {k: v for k, v in state.items() if k != "calibration_s"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    with app_config(RESUMABLE) as cfg:
        summary = train(cfg, out)
    assert summary["smart_epsilon"] == _auto_state(out)[1]["epsilon"]  # summary.json carries the radius in force
    return out


@pytest.mark.parametrize(("at", "saved"), [(3, 2), (5, 4)], ids=["mid-first-epoch", "epoch-end"])
@pytest.mark.slow
def test_a_resumed_auto_run_ends_with_the_uninterrupted_student_and_radius(
    tmp_path: Path, straight: Path, at: int, saved: int
) -> None:
    """Stopped after the validation at step ``saved`` and before the calibration it makes due: the resumed run
    calibrates there, from the restored radius, as the uninterrupted one did."""
    _, last = stopped_run(RESUMABLE, tmp_path / "stopped", at)
    saved_state = torch.load(last, weights_only=False)
    assert saved_state["global_step"] == saved and saved_state["smart_auto_epsilon"]["due"]

    with app_config([*RESUMABLE, f"ckpt_path={last}"]) as cfg:
        summary = train(cfg, tmp_path / "resumed")
    (student, radius), (resumed_student, resumed_radius) = _auto_state(straight), _auto_state(tmp_path / "resumed")
    assert [c["step"] for c in radius["calibrations"]] == [2, 4, 6]
    assert resumed_radius == radius and radius["epsilon"] in RADIUS_GRID
    assert summary["smart_epsilon"] == radius["epsilon"]
    assert student.keys() == resumed_student.keys()
    for name, value in student.items():
        assert torch.equal(value, resumed_student[name]), name


# -- DDP ----------------------------------------------------------------------------------------------------


class Record(pl.Callback):
    """Each rank writes its calibrations and what its own batch alone measured at the first one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.local: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module._smart_calibration_due:
            with torch.random.fork_rng(), probe.probing(module, batch, batch_idx) as alone:
                self.local.append(float(alone.dropout_kl))

    def on_train_end(self, trainer, module):
        found = [c._asdict() for c in module.smart_calibrations]
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({"calibrations": found,
                                                                                "local": self.local}))


class Halves(pl.LightningDataModule):
    """Rank r of w takes examples r, r + w, …: different batches on each rank."""

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return torch.utils.data.DataLoader(token_examples(48)[rank::world], batch_size=4)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return token_loader(8, 4, seed=3)


@pytest.mark.slow
def test_ddp_ranks_calibrate_the_same_radius(tmp_path: Path) -> None:
    """Two gloo processes, each on its own batches: one radius, from the ℓs averaged over the ranks."""
    pl.seed_everything(3)
    task = SequenceTask(tiny_bert(dropout=0.1), num_labels=3, lr=5e-2, smart=SmartConfig(**AUTO, target_ratio=0.5))
    run = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=9, val_check_interval=3,
                     check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=[Record(tmp_path)],
                     use_distributed_sampler=False)
    run.fit(task, datamodule=Halves())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [c["step"] for c in ranks[0]["calibrations"]] == [3, 6]
    assert ranks[0]["calibrations"] == ranks[1]["calibrations"]
    # Each rank's own batch measures something else; the calibration's dropout ℓs is their mean.
    local = [r["local"][0] for r in ranks]
    assert local[0] != local[1]
    assert ranks[0]["calibrations"][0]["dropout_kl"] == pytest.approx(sum(local) / 2, rel=1e-6)
