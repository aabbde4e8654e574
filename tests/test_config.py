"""Every hyperparameter is validated at construction, with an error naming the key and the range."""

from __future__ import annotations

import pytest

from lightning_smart import ConfigError, SmartConfig, TeacherConfig


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epsilon", 0.0, "smart.epsilon=0.0 is not allowed: epsilon must be > 0"),
    ("epsilon", -1, "smart.epsilon=-1 is not allowed: epsilon must be > 0"),
    ("eta", 0, "smart.eta=0 is not allowed: eta must be > 0"),
    ("sigma", -1e-5, "smart.sigma=-1e-05 is not allowed: sigma must be ≥ 0"),
    ("lambda_s", -1, "smart.lambda_s=-1 is not allowed: lambda_s must be ≥ 0"),
    ("ascent_steps", -1, "smart.ascent_steps=-1 is not allowed: ascent_steps must be an integer ≥ 0"),
    ("ascent_steps", 1.5, "smart.ascent_steps=1.5 is not allowed: ascent_steps must be an integer ≥ 0"),
    ("rule", "foo", "smart.rule='foo' is not allowed: rule must be one of paper, mtdnn"),
    ("norm", "l1", "smart.norm='l1' is not allowed: norm must be one of inf, l2"),
    ("epsilon_scale", "big", "smart.epsilon_scale='big' is not allowed: epsilon_scale must be one of absolute,"),
    ("perturbed_precision", "fp8", "smart.perturbed_precision='fp8' is not allowed: perturbed_precision must be one"
     " of auto, fp32, autocast"),
    ("epsilon", float("nan"), "smart.epsilon=nan is not allowed: epsilon must be a finite number"),
    ("perturb_at", "", "smart.perturb_at='' is not allowed"),
    ("shared_dropout", "yes", "smart.shared_dropout='yes' is not allowed: shared_dropout must be true or false"),
])
def test_smart_config_rejects_bad_values(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        SmartConfig(**{key: value})
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("mu", -0.5, "teacher.mu=-0.5 is not allowed: mu must be ≥ 0"),
    ("beta", 1.0, "teacher.beta=1.0 is not allowed: beta must be in [0, 1)"),
    ("beta_final", -0.1, "teacher.beta_final=-0.1 is not allowed: beta_final must be in [0, 1)"),
    ("warmup_fraction", 1.5, "teacher.warmup_fraction=1.5 is not allowed: warmup_fraction must be in [0, 1]"),
    ("half_life", 0.0, "teacher.half_life=0.0 is not allowed"),
])
def test_teacher_config_rejects_bad_values(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        TeacherConfig(**{key: value})
    assert str(error.value).startswith(message)


def test_defaults_are_the_papers() -> None:
    smart, teacher = SmartConfig(), TeacherConfig()
    assert (smart.epsilon, smart.sigma, smart.eta, smart.ascent_steps, smart.lambda_s) == (1e-5, 1e-5, 1e-3, 1, 1.0)
    assert (smart.rule, smart.norm, smart.epsilon_scale) == ("paper", "inf", "absolute")
    assert (teacher.mu, teacher.beta, teacher.beta_final, teacher.warmup_fraction) == (1.0, 0.99, 0.999, 0.1)
