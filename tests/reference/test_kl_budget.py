"""The KL budget's predictions (capo.kl_budget, capo.true_kl) against the dense twin on toy MDPs (design §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capo.kl_budget import state_fisher_kl
from capo.true_kl import full_vocab_kl
from reference.kl_budget import exact_kl, quadratic_kl, scaled_step, tempered_probs
from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from toy_mdps import ToyCase
from toy_mdps.exact import average_kl, kl_weights


def setup(case: ToyCase, step_norm: float = 0.3, seed: int = 0):
    """(state weights, features, W, a step Δ of norm ``step_norm``) of a toy case."""
    weights = kl_weights(case.evaluate())
    delta = np.random.default_rng(seed).standard_normal(case.W.shape)
    return weights, case.features, case.W, step_norm * delta / np.linalg.norm(delta)


def test_last_layer_prediction_is_the_dense_quadratic_model(toy_case):
    """Σ_s w(s) ½vᵀFv (capo, whole vocabulary as support) == ½ vec(Δ)ᵀ F̃_τ vec(Δ) (dense eqs 6, 9)."""
    w, h, W, delta = setup(toy_case)
    tau = toy_case.temperature
    probs = tempered_probs(W, h, tau)
    ids = torch.arange(W.shape[0]).expand(h.shape[0], -1)
    per_state = state_fisher_kl(
        torch.tensor(h), ids, torch.tensor(probs), torch.tensor(delta), None, tau
    )
    expected = quadratic_kl(w, h, W, delta, tau)
    assert float(torch.tensor(w) @ per_state) == pytest.approx(expected, rel=EXACT_RTOL)


def test_lookahead_kl_is_the_dense_exact_kl(toy_case):
    """Σ_s w(s) KL(π_W || π_W+Δ) by capo's full-vocabulary chunks == the dense exact KL."""
    w, h, W, delta = setup(toy_case)
    tau = toy_case.temperature
    ht, Wt = torch.tensor(h), torch.tensor(W)
    per_state = full_vocab_kl(ht, Wt, None, ht, Wt + torch.tensor(delta), None, tau, chunk_size=2)
    expected = exact_kl(w, h, W, delta, tau)
    assert float(torch.tensor(w) @ per_state) == pytest.approx(expected, rel=EXACT_RTOL)


def test_dense_exact_kl_is_the_toy_average_kl(toy_case):
    """The twin's KL is the toy's own D̄_KL (eq 6) of the full-softmax policy."""
    if toy_case.top_k is not None:
        pytest.skip("top-k policies are not the softmax the twin models")
    w, h, W, delta = setup(toy_case)
    old, new = toy_case.probs(W), toy_case.probs(W + delta)
    expected = average_kl(toy_case.evaluate(), old, new)
    got = exact_kl(w, h, W, delta, toy_case.temperature)
    assert got == pytest.approx(expected, rel=EXACT_RTOL, abs=EXACT_ATOL)


def test_scaled_step_meets_the_budget_up_to_the_cubic_remainder(toy_case):
    """D̄(sΔ) / δ − 1 = O(s) = O(sqrt δ): a 100x smaller budget gives a ~10x smaller relative miss."""
    w, h, W, delta = setup(toy_case, step_norm=3.0)
    misses = []
    for budget in (1e-4, 1e-6):
        s, kl = scaled_step(w, h, W, delta, budget, toy_case.temperature)
        assert 0.0 < s < 1.0
        misses.append(abs(kl / budget - 1.0))
    assert misses[0] < 0.2
    assert misses[1] <= misses[0] / 5.0
