"""CAPOConfig: variant mapping onto TRL options, defaults, and validation errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from capo.config import CAPOConfig
from capo.methods import PAPER_THRESHOLDS


def make(**kw: Any) -> CAPOConfig:
    return CAPOConfig(
        output_dir="/tmp/capo-test-config", use_cpu=True, bf16=False, report_to=[], **kw
    )


@pytest.mark.parametrize(
    ("variant", "loss_type", "scale_rewards"),
    [("grpo", "grpo", "group"), ("dr_grpo", "dr_grpo", "none"), ("reinforce", "grpo", "none")],
)
def test_variant_sets_trl_loss_type_and_scale_rewards(variant, loss_type, scale_rewards):
    cfg = make(capo_variant=variant)
    assert (cfg.loss_type, cfg.scale_rewards) == (loss_type, scale_rewards)


def test_defaults_are_the_papers_capo_setting():
    cfg = make()
    paper = PAPER_THRESHOLDS["capo"]
    assert (cfg.hessian_low, cfg.hessian_high, cfg.fisher_max) == (
        paper.hessian_low,
        paper.hessian_high,
        paper.fisher_max,
    )
    assert cfg.capo_enabled and cfg.capo_variant == "grpo"
    assert (cfg.capo_granularity, cfg.capo_step_model, cfg.capo_support_size) == (
        "token",
        "adam",
        50,
    )


def test_every_capo_field_has_help():
    fields = [f for f in dataclasses.fields(CAPOConfig) if f.name.startswith("capo_")]
    fields += [f for f in dataclasses.fields(CAPOConfig) if f.name in ("hessian_low", "fisher_max")]
    assert len(fields) >= 10
    assert all(f.metadata.get("help") for f in fields)


def test_matching_explicit_trl_options_are_accepted():
    cfg = make(capo_variant="dr_grpo", loss_type="dr_grpo", scale_rewards=False)
    assert (cfg.loss_type, cfg.scale_rewards) == ("dr_grpo", "none")


def test_none_disables_a_bound():
    cfg = make(hessian_low=None, hessian_high=None, fisher_max=None)
    assert cfg.hessian_low is None and cfg.fisher_max is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capo_variant": "ppo"}, "capo_variant"),
        ({"capo_variant": "dr_grpo", "loss_type": "grpo"}, "loss_type"),
        ({"capo_variant": "grpo", "scale_rewards": "batch"}, "scale_rewards"),
        ({"capo_granularity": "sentence"}, "capo_granularity"),
        ({"capo_step_model": "rmsprop"}, "capo_step_model"),
        ({"capo_support_size": 0}, "capo_support_size"),
        ({"capo_chunk_size": 0}, "capo_chunk_size"),
        ({"hessian_low": 1e-2, "hessian_high": -1e-2}, "hessian_low"),
        ({"hessian_low": float("nan")}, "hessian_low"),
        ({"fisher_max": 0.0}, "fisher_max"),
        (
            {"importance_sampling_level": "sequence", "loss_type": "grpo"},
            "importance_sampling_level",
        ),
        (
            {"capo_variant": "reinforce", "multi_objective_aggregation": "normalize_then_sum"},
            "multi_objective_aggregation",
        ),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_thresholds_given_to_a_baseline_are_said_to_be_unused():
    """A baseline masks nothing: thresholds other than the defaults warn once instead of being dropped silently."""
    with pytest.warns(UserWarning, match=r"fisher_max=0.001 unused: capo_enabled=False"):
        make(capo_enabled=False, fisher_max=1e-3)
