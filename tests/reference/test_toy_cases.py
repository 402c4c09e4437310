"""Exact last-layer g̃, H̃, F̃ on every toy MDP vs torch.func autodiff of J, L and the average KL.

Weights (see toy_mdps.exact): g̃ and H̃ use w_t(s) = γ^t d_t(s) over flattened (t, s) rows (or the
unnormalised discounted occupancy d_γ), F̃ uses ν = the state weights normalised to sum 1. Features are
h(s) / temperature, since the policy's logits are W h / temperature.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from reference import (
    expected_fisher,
    expected_gradient,
    expected_hessian,
    sample_fisher,
    sample_gradient,
)
from reference.agreement import compare_case
from tests.tolerances import EXACT_ATOL, EXACT_RTOL, MC_TARGET_RTOL
from toy_mdps import CASES, ToyCase, build_case, kl_weights, sample_tokens
from toy_mdps.torch_eval import average_kl, objective_J, surrogate_L


def _opts(case: ToyCase) -> dict:
    return {"setting": case.setting, "temperature": case.temperature, "top_k": case.top_k}


def _flat_reference(case: ToyCase):
    flat = case.flat()
    return flat.weights, flat.features / case.temperature, flat.probs, flat.advantages


def _W(case: ToyCase) -> torch.Tensor:
    return torch.from_numpy(np.array(case.W))


def _kd(case: ToyCase) -> int:
    return case.W.size


def test_expected_gradient_is_the_gradient_of_J(toy_case):
    """Policy gradient theorem (eqs 2, 7, 31): g̃ = ∇_W J(π_W)."""
    auto = grad(lambda W: objective_J(toy_case.mdp, toy_case.features, W, **_opts(toy_case)))
    np.testing.assert_allclose(
        expected_gradient(*_flat_reference(toy_case)),
        auto(_W(toy_case)).numpy().ravel(),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


def test_expected_gradient_is_the_gradient_of_the_surrogate_at_w_old(toy_case):
    """Eq 67: ∇_{W'} L_π(π_{W'}) at W' = W equals g̃."""
    W_old = _W(toy_case)
    L = lambda W: surrogate_L(toy_case.mdp, toy_case.features, W_old, W, **_opts(toy_case))  # noqa: E731
    np.testing.assert_allclose(
        expected_gradient(*_flat_reference(toy_case)),
        grad(L)(W_old).numpy().ravel(),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


def test_expected_hessian_is_the_hessian_of_the_surrogate_at_w_old(toy_case):
    """Lemma C.1 / eq 66: H̃ (eq 8) is ∇² of L_π(π_W) at W = W_old (A and d of π_old held fixed)."""
    W_old = _W(toy_case)
    L = lambda W: surrogate_L(toy_case.mdp, toy_case.features, W_old, W, **_opts(toy_case))  # noqa: E731
    kd = _kd(toy_case)
    np.testing.assert_allclose(
        expected_hessian(*_flat_reference(toy_case)),
        hessian(L)(W_old).reshape(kd, kd).numpy(),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


def test_expected_fisher_is_the_hessian_of_the_average_kl_at_w_old(toy_case):
    """Eq 6 / App. B: F̃ (eq 9) under the normalised state weights ν is ∇² D̄_KL(π_old ‖ π_W) at W_old."""
    W_old = _W(toy_case)
    kl = lambda W: average_kl(toy_case.mdp, toy_case.features, W_old, W, **_opts(toy_case))  # noqa: E731
    kd = _kd(toy_case)
    nu = kl_weights(toy_case.evaluate())
    np.testing.assert_allclose(
        expected_fisher(nu, toy_case.features / toy_case.temperature, toy_case.probs()),
        hessian(kl)(W_old).reshape(kd, kd).numpy(),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


BANDITS = [c for c in CASES if c["kind"] == "bandit"]


@pytest.mark.parametrize("spec", BANDITS, ids=[c["id"] for c in BANDITS])
def test_contextual_bandit_surrogate_hessian_equals_the_true_hessian_of_J(spec):
    """T = 1: d does not depend on π and Σ_a ∇²π_a = 0, so ∇²L = ∇²J."""
    case = build_case(spec)
    J = lambda W: objective_J(case.mdp, case.features, W, **_opts(case))  # noqa: E731
    kd = _kd(case)
    np.testing.assert_allclose(
        expected_hessian(*_flat_reference(case)),
        hessian(J)(_W(case)).reshape(kd, kd).numpy(),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


def test_surrogate_hessian_is_not_the_hessian_of_J_beyond_bandits():
    """Lemma C.1 ignores ∇d_π and ∇A_π: for T > 1 the model Hessian H̃ differs from ∇²J."""
    case = build_case(next(c for c in CASES if c["id"] == "random-S5-K3-T4-d4"))
    J = lambda W: objective_J(case.mdp, case.features, W, **_opts(case))  # noqa: E731
    gap = expected_hessian(*_flat_reference(case)) - hessian(J)(_W(case)).reshape(12, 12).numpy()
    assert np.abs(gap).max() > 1e3 * EXACT_ATOL


@pytest.mark.parametrize("case_id", ["token-K3-T3-sum-d4", "random-S5-K3-T4-disc0.9-d4"])
def test_trajectory_samples_estimate_the_exact_gradient_and_fisher(case_id):
    """Token means over sampled trajectories: (N/n)·sample_gradient → g̃ (E_τ Σ_t weights) and
    sample_fisher → F̃ under ν (the token distribution is the normalised state weights)."""
    case = build_case(next(c for c in CASES if c["id"] == case_id))
    probs, ev = case.probs(), case.evaluate()
    flat = _flat_reference(case)
    g_exact = expected_gradient(*flat)
    F_exact = expected_fisher(kl_weights(ev), case.features / case.temperature, probs)
    rng = np.random.default_rng(0)
    g_sum, F_sum, batches, err = 0.0, 0.0, 0, np.inf
    while err > MC_TARGET_RTOL and batches < 40:
        tok = sample_tokens(case.mdp, probs, ev, 400, rng, features=case.features)
        h = tok.features / case.temperature
        scale = tok.actions.shape[0] / tok.n_trajectories
        g_sum = g_sum + scale * sample_gradient(h, tok.probs, tok.actions, tok.weighted_advantages)
        F_sum = F_sum + sample_fisher(h, tok.probs, tok.actions)
        batches += 1
        err = max(
            np.linalg.norm(g_sum / batches - g_exact) / np.linalg.norm(g_exact),
            np.linalg.norm(F_sum / batches - F_exact) / np.linalg.norm(F_exact),
        )
    assert err <= MC_TARGET_RTOL


def test_agreement_report_agrees_on_every_case():
    """The rows printed by ``python -m reference --all``."""
    rows = [row for case in CASES for row in compare_case(case)]
    assert rows and all(r.ok for r in rows), [r for r in rows if not r.ok]
