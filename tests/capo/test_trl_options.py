"""Every TRL option the step model leaves out is refused or warned about, in one line naming it (one test per
row of capo.trl_options.RULES, the table of docs/design.md §6)."""

from __future__ import annotations

import warnings

import pytest

from capo import CAPOConfig
from capo.trl_options import RULES, unmodelled

TRIGGERS = {
    "top_entropy_quantile": {"top_entropy_quantile": 0.2},
    "entropy_coef": {"entropy_coef": 0.01},
    "use_adaptive_entropy": {"use_adaptive_entropy": True},
    "off_policy_mask_threshold": {"off_policy_mask_threshold": 0.5},
    "fsdp": {"fsdp": "full_shard"},
    "beta": {"beta": 0.04},
    "num_iterations": {"num_iterations": 2},
    "steps_per_generation": {"steps_per_generation": 2, "gradient_accumulation_steps": 1},
    "vllm_importance_sampling_correction": {"use_vllm": True},
    "router_aux_loss_coef": {"router_aux_loss_coef": 0.01},
}
"""A value of each option that the step model leaves out."""


def make(**kw):
    base = {"output_dir": "/tmp/capo-test-options", "use_cpu": True, "bf16": False, "report_to": []}
    return CAPOConfig(**{**base, **kw})


def test_every_rule_has_a_trigger_here():
    assert set(TRIGGERS) == {rule.option for rule in RULES}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.option)
def test_an_option_the_model_leaves_out_is_refused_or_warned(rule):
    """Refused: ValueError naming the option; warned: one warning naming it, and the summary lists it."""
    if rule.status == "refused":
        with pytest.raises(ValueError, match=rf"^{rule.option}=.* with CAPO: "):
            make(**TRIGGERS[rule.option])
        return
    with pytest.warns(UserWarning, match=rf"^{rule.option}=.* with CAPO: ") as caught:
        cfg = make(**TRIGGERS[rule.option])
    assert len([w for w in caught if "with CAPO" in str(w.message)]) == 1
    assert unmodelled(cfg) == [rule.option]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.option)
def test_the_baselines_take_every_option_silently(rule):
    """With the curvature model off (the GRPO baselines) nothing is modelled, so nothing is refused."""
    kw = TRIGGERS[rule.option]
    if rule.option == "fsdp":
        pytest.skip("TrainingArguments itself validates FSDP on a CPU machine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cfg = make(capo_enabled=False, **kw)
    assert unmodelled(cfg) == []


@pytest.mark.parametrize(
    ("kw", "option"),
    [
        (
            {"loss_type": "dapo"},
            "loss_type",
        ),  # TRL's default, given explicitly: still the user's choice
        ({"capo_variant": "dr_grpo", "scale_rewards": "group"}, "scale_rewards"),
    ],
)
def test_an_explicit_trl_default_is_never_replaced_silently(kw, option):
    with pytest.raises(ValueError, match=rf"needs {option}="):
        make(**kw)
