"""The arithmetic prefix tree (toy_mdps.prefix_tree) against the dense token MDP of toy_mdps."""

from __future__ import annotations

import numpy as np
import pytest

import toy_mdps
from tests.tolerances import EXACT_ATOL, EXACT_RTOL, MC_TARGET_RTOL
from toy_mdps.prefix_tree import TaskSpec, arithmetic_tree

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


def test_punished_repeats_earn_nothing_and_nothing_else_changes():
    spec = TaskSpec(vocab_size=4, horizon=3, n_prompts=5, n_random=2)
    plain = arithmetic_tree(spec).terminal_rewards
    punished = arithmetic_tree(
        TaskSpec(**{**spec.__dict__, "punish_repeats": True})
    ).terminal_rewards
    repeats = [a * 16 + a * 4 + a for a in range(4)]
    assert punished[:, repeats].sum() == 0
    others = np.setdiff1d(np.arange(64), repeats)
    np.testing.assert_array_equal(punished[:, others], plain[:, others])


def test_underflowing_policy_gives_a_finite_kl():
    tree = arithmetic_tree(SMALL)
    p = tree.probs(_random_W(tree))
    q = tree.probs(_random_W(tree, 1, scale=1e4))  # some probabilities underflow to 0
    _, d = tree.evaluate(p)
    assert np.isfinite(tree.average_kl(d, p, q))


def test_sampled_reward_is_unbiased_for_J():
    tree = arithmetic_tree(TaskSpec(vocab_size=4, horizon=2, n_prompts=4, n_random=3, seed=1))
    probs = tree.probs(_random_W(tree, 2, 0.5))
    J, _ = tree.evaluate(probs)
    rng = np.random.default_rng(0)
    prompts = rng.integers(4, size=40_000)
    _, _, r = tree.sample(probs, prompts, rng)
    assert r.mean() == pytest.approx(J, rel=MC_TARGET_RTOL)
