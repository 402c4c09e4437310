"""``capo_kl_mode: target`` (δ-driven steps, an extension beyond the paper): s = min(s_max, sqrt(δ / KL̂))."""

from __future__ import annotations

import math

import pytest

from capo import metrics
from capo.kl_budget import budget_scale
from tests.capo import _trainer_helpers as H


def test_target_scale_moves_every_step_to_delta_up_to_s_max():
    assert budget_scale(1e-4, 1e-3, s_max=10.0) == pytest.approx(math.sqrt(10.0))  # up
    assert budget_scale(4e-3, 1e-3, s_max=10.0) == pytest.approx(0.5)  # down, as the cap
    assert budget_scale(1e-9, 1e-3, s_max=10.0) == 10.0  # a ~0 KL: bounded by s_max
    assert budget_scale(0.0, 1e-3, s_max=10.0) == 10.0
    assert budget_scale(1e-4, 1e-3) == 1.0  # the cap (default s_max = 1) never scales up
    assert budget_scale(math.nan, 1e-3, s_max=10.0) == 0.0


def test_cap_stays_the_default_mode(tmp_path):
    assert H.config(str(tmp_path)).capo_kl_mode == "cap"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(capo_kl_mode="trust"), "capo_kl_mode"),
        (dict(capo_kl_mode="target"), "capo_kl_budget"),
        (dict(capo_kl_budget=1e-3, capo_kl_mode="target", capo_kl_max_scale=0.5), "max_scale"),
        (dict(capo_kl_budget=1e-3, capo_kl_max_scale=math.inf), "max_scale"),
    ],
)
def test_bad_target_options_are_rejected(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        H.config(str(tmp_path), **overrides)


def test_target_steps_scale_up_a_small_step_and_hold_the_measured_kl_near_delta(tmp_path):
    """At a tiny lr the unscaled step's KL is far below δ: target mode scales it up (s > 1) and the
    measured KL lands near δ, where the cap would leave the step (and its KL) unchanged."""
    delta = 1e-4
    tr = H.trainer(
        str(tmp_path), capo_enabled=False, capo_log_true_kl=True, max_steps=4, learning_rate=1e-5,
        optim="adamw_torch", capo_kl_budget=delta, capo_kl_mode="target", capo_kl_max_scale=1e3,
        capo_kl_backtrack=True,
    )  # fmt: skip
    tr.train()
    steps = [
        h for h in tr.state.log_history if metrics.KL_SCALE in h and h[metrics.KL_PREDICTED] > 0
    ]
    assert steps, "no step moved the policy"
    for h in steps:
        assert h[metrics.KL_SCALE] > 1.0
        assert h[metrics.TRUE_KL] <= 1.1 * delta
        assert h[metrics.TRUE_KL] >= 0.5 * delta
