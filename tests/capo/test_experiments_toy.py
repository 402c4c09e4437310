"""Tests of the toy stability experiment: exact task vs toy_mdps, training pieces, analysis, end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import capo
import toy_mdps
from capo_app.experiments import analysis
from capo_app.experiments.toy_stability import QUICK, run_experiment
from capo_app.experiments.toy_task import TaskSpec, arithmetic_tree
from capo_app.experiments.toy_train import TrainSpec, adam_ascent, advantages, cosine_lr, train
from tests.tolerances import EXACT_ATOL, EXACT_RTOL, MC_TARGET_RTOL

SMALL = TaskSpec(vocab_size=3, horizon=2, n_prompts=2, n_random=4, seed=5)


def _random_W(tree, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal((tree.spec.vocab_size, tree.dim))


def test_tree_matches_dense_token_mdp():
    """J, visitation and the average KL (App. K eq 106) equal toy_mdps' dense DP on the same MDP."""
    tree = arithmetic_tree(SMALL)
    dense = toy_mdps.token_mdp(3, 2, "sum", 2, seed=5)
    np.testing.assert_array_equal(tree.targets, dense.targets)
    p, q = tree.probs(_random_W(tree)), tree.probs(_random_W(tree, 1))
    J, d = tree.evaluate(p)
    ev = toy_mdps.evaluate_finite_horizon(dense.mdp, p)
    assert J == pytest.approx(ev.J, rel=EXACT_RTOL)
    lengths = dense.lengths()
    for t in range(2):
        np.testing.assert_allclose(
            d[lengths == t], ev.d[t][lengths == t], rtol=EXACT_RTOL, atol=EXACT_ATOL
        )
    assert tree.average_kl(d, p, q) == pytest.approx(toy_mdps.average_kl(ev, p, q), rel=EXACT_RTOL)


def test_junk_tokens_zero_the_reward():
    tree = arithmetic_tree(TaskSpec(vocab_size=4, horizon=2, n_prompts=3, n_random=2, n_junk=1))
    ranks = np.arange(16)
    digits = np.stack([ranks // 4, ranks % 4], axis=1)
    for p in range(3):
        expect = (digits < 3).all(1) & (digits.sum(1) % 3 == tree.targets[p])
        np.testing.assert_array_equal(tree.terminal_rewards[p], expect.astype(float))


def test_sampled_reward_is_unbiased_for_J():
    tree = arithmetic_tree(TaskSpec(vocab_size=4, horizon=2, n_prompts=4, n_random=3, seed=1))
    probs = tree.probs(_random_W(tree, 2, 0.5))
    J, _ = tree.evaluate(probs)
    rng = np.random.default_rng(0)
    prompts = rng.integers(4, size=40_000)
    _, _, r = tree.sample(probs, prompts, rng)
    assert r.mean() == pytest.approx(J, rel=MC_TARGET_RTOL)


def test_advantages_closed_form():
    r = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    centred = np.array([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    np.testing.assert_allclose(advantages(r, 4, "dr_grpo"), centred)
    std = np.sqrt(0.25)  # unbiased std of (1, 0, 0, 0)
    np.testing.assert_allclose(advantages(r, 4, "grpo")[:4], centred[:4] / (std + 1e-4))
    np.testing.assert_allclose(advantages(r, 4, "reinforce"), r)


def test_cosine_lr_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = get_cosine_schedule_with_warmup(opt, 3, 25)
    for step in range(25):
        assert cosine_lr(2.0, step, 25, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_adam_ascent_matches_torch_adam():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 4))
    param = torch.nn.Parameter(torch.from_numpy(W.copy()))
    opt = torch.optim.Adam([param], lr=0.1, betas=(0.9, 0.999), eps=1e-8, maximize=True)
    m = v = np.zeros_like(W)
    for t in range(1, 4):
        g = rng.standard_normal(W.shape)
        param.grad = torch.from_numpy(g.copy())
        opt.step()
        W, m, v = adam_ascent(W, m, v, g, 0.1, t, (0.9, 0.999), 1e-8)
    np.testing.assert_allclose(W, param.detach().numpy(), rtol=1e-12)


def test_rejecting_everything_freezes_the_policy():
    tree = arithmetic_tree(TaskSpec(vocab_size=4, horizon=2, n_prompts=4, n_random=3))
    reject_all = capo.Thresholds(fisher_max=-1.0)
    log = train(
        tree, TrainSpec(lr=1.0, prompts_per_step=2, group_size=4, steps=5, thresholds=reject_all), 0
    )
    assert log.rejection_rate == [1.0] * 5
    assert log.J == [log.J[0]] * 6
    assert log.kl == [0.0] * 5


def test_loose_thresholds_equal_the_baseline():
    tree = arithmetic_tree(TaskSpec(vocab_size=4, horizon=2, n_prompts=4, n_random=3))
    spec = TrainSpec(lr=0.5, prompts_per_step=2, group_size=4, steps=6)
    loose = capo.Thresholds(hessian_low=-1e30, hessian_high=1e30, fisher_max=1e30)
    a, b = train(tree, spec, 3), train(tree, replace(spec, thresholds=loose), 3)
    np.testing.assert_allclose(a.J, b.J, rtol=EXACT_RTOL)
    assert max(b.rejection_rate) == 0.0


def test_analysis_definitions():
    assert analysis.collapsed([0.5, 0.6, 0.3, 0.3, 0.3], margin=0.05)
    assert not analysis.collapsed([0.5, 0.6, 0.3, 0.3, 0.5], margin=0.05)
    assert analysis.completions_to_reach([0.1, 0.5, 0.9], [0, 10, 20], 0.5) == 10
    assert analysis.completions_to_reach([0.1, 0.5, 0.9], [0, 10, 20], 0.95) is None
    np.testing.assert_allclose(analysis.smooth([1.0, 3.0, 5.0], 2), [1.0, 2.0, 4.0])
    m, se = analysis.mean_se([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(m, [2.0, 2.0])
    np.testing.assert_allclose(se, [1.0, 0.0])
    assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)


MICRO = replace(
    QUICK,
    base=replace(QUICK.base, steps=6),
    lr_grid=(1.0,),
    fisher_grid=(1e-2,),
    seeds=(0, 1),
)


def test_micro_experiment_writes_report(tmp_path):
    from capo_app.experiments.toy_report import write_report

    res = run_experiment(MICRO)
    path = write_report(res, tmp_path)
    summary = json.loads((tmp_path / "toy_results.json").read_text())
    assert path.read_text().startswith("# Toy token-MDP stability experiment")
    assert set(summary["methods"]) == {
        "grpo_conservative",
        "grpo_a",
        "dr_grpo_a",
        "reinforce_a",
        "capo_a",
        "dr_capo_a",
        "rein_capo_a",
    }
    assert summary["lr_aggressive"] == 1.0 and summary["lr_conservative"] == pytest.approx(0.2)
    for name, m in summary["methods"].items():
        assert 0.0 <= m["J_final_mean"] <= 1.0 and m["n_seeds"] == 2
        assert 0 <= m["collapsed_seeds"] <= 2
        assert 0.0 <= m["rejection_peak"] <= 1.0
        if not name.endswith("capo_a"):
            assert m["rejection_peak"] == 0.0
    conservative = summary["methods"]["grpo_conservative"]
    assert conservative["completions_total"] == 6 * 2 * 3 * 4  # steps × prompts × ratio × G
    assert conservative["ratio_vs_conservative"] is None or math.isfinite(
        conservative["ratio_vs_conservative"]
    )
    assert set(summary["ablation_sgd"]) == {"capo_a", "dr_capo_a", "rein_capo_a"}
    for fig in summary["figures"].values():
        assert (tmp_path / fig).stat().st_size > 0
