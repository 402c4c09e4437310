"""Trajectory sampling (toy_mdps/sampling.py): flat token arrays, tested in expectation against exact values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tests.tolerances import EXACT_ATOL, EXACT_RTOL, MC_TARGET_RTOL
from toy_mdps import ToyCase, build_case, case_by_id, sample_tokens, time_weights

MAX_TRAJECTORIES = 64_000


def averaged_until_below_target(
    case: ToyCase, statistic: Callable, expected: np.ndarray, **kwargs
) -> float:
    """Relative L1 error of the Monte Carlo mean, doubling the sample size until below target."""
    rng = np.random.default_rng(0)
    n = 2_000
    while True:
        samples = sample_tokens(
            case.mdp, case.probs(), case.evaluate(), n, rng, case.features, **kwargs
        )
        error = np.abs(statistic(samples) - expected).sum() / np.abs(expected).sum()
        if error < MC_TARGET_RTOL or n >= MAX_TRAJECTORIES:
            return error
        n *= 2


def visit_counts(case: ToyCase) -> Callable:
    def statistic(samples) -> np.ndarray:
        counts = np.zeros(time_weights(case.evaluate()).shape)
        t = samples.times if case.setting == "finite" else np.zeros_like(samples.times)
        np.add.at(counts, (t, samples.states), 1.0)
        return counts / samples.n_trajectories

    return statistic


@pytest.mark.parametrize("case_id", ["random-S5-K3-T4-d4", "token-K3-T3-sum-d4"])
def test_empirical_visit_frequencies_converge_to_the_state_marginals(case_id: str) -> None:
    """(1/n) #{i: s_t = s} → d_t(s) (finite setting, App. K)."""
    case = build_case(case_by_id(case_id))
    expected = case.evaluate().d
    assert averaged_until_below_target(case, visit_counts(case), expected) < MC_TARGET_RTOL


def test_geometric_stopping_visits_converge_to_the_discounted_occupancy() -> None:
    """With stopping probability 1 − γ per step, (1/n) #{visits of s} → d_γ(s) = Σ_t γ^t Pr(s_t = s)."""
    case = build_case(case_by_id("random-S5-K3-T4-disc0.9-d4"))
    expected = case.evaluate().d[None]
    assert averaged_until_below_target(case, visit_counts(case), expected) < MC_TARGET_RTOL


@pytest.mark.parametrize("case_id", ["token-K3-T3-sum-d4", "random-S4-K2-disc0.8-tabular"])
def test_sampled_policy_gradient_converges_to_the_exact_one(case_id: str) -> None:
    """(1/n) Σ_i discount_i A_i (e_{a_i} − π_i) ⊗ h_i → Σ w Σ_a π A (e_a − π) ⊗ h (eq 7)."""
    case = build_case(case_by_id(case_id))
    flat = case.flat()
    coef = flat.probs * flat.advantages
    coef -= flat.probs * coef.sum(axis=1, keepdims=True)
    expected = np.einsum("m,ma,mj->aj", flat.weights, coef, flat.features)

    def statistic(s) -> np.ndarray:
        u = np.eye(case.mdp.n_actions)[s.actions] - s.probs
        g = np.einsum("i,ia,ij->aj", s.weighted_advantages, u, s.features)
        return g / s.n_trajectories

    assert averaged_until_below_target(case, statistic, expected) < MC_TARGET_RTOL


def test_flat_arrays_are_consistent_with_the_exact_evaluation() -> None:
    """Tokens grouped by trajectory with t = 0..T−1; probs, h, A_t(s, a) and γ^t of the visited pairs."""
    case = build_case(case_by_id("random-S5-K3-T4-d4"))
    ev, probs, T = case.evaluate(), case.probs(), case.mdp.horizon
    s = sample_tokens(case.mdp, probs, ev, 7, np.random.default_rng(1), case.features)
    np.testing.assert_array_equal(s.trajectory_ids, np.repeat(np.arange(7), T))
    np.testing.assert_array_equal(s.times, np.tile(np.arange(T), 7))
    np.testing.assert_array_equal(s.probs, probs[s.states])
    np.testing.assert_array_equal(s.features, case.features[s.states])
    np.testing.assert_array_equal(s.advantages, ev.A[s.times, s.states, s.actions])
    np.testing.assert_allclose(
        s.discounts, case.mdp.gamma**s.times, rtol=EXACT_RTOL, atol=EXACT_ATOL
    )
    assert np.all(probs[s.states, s.actions] > 0)


def test_truncated_discounted_rollouts_have_horizon_length_and_gamma_power_discounts() -> None:
    case = build_case(case_by_id("random-S5-K3-T4-disc0.9-d4"))
    ev = case.evaluate()
    s = sample_tokens(
        case.mdp, case.probs(), ev, 5, np.random.default_rng(2), discount_mode="truncate"
    )
    assert s.states.shape == (5 * case.mdp.horizon,) and s.features.shape == (20, 0)
    np.testing.assert_allclose(s.discounts, 0.9**s.times, rtol=EXACT_RTOL)
    np.testing.assert_array_equal(s.advantages, ev.A[s.states, s.actions])


def test_bad_input_raises_value_error_naming_the_argument() -> None:
    case = build_case(case_by_id("random-S5-K3-T4-d4"))
    ev, probs, rng = case.evaluate(), case.probs(), np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_trajectories"):
        sample_tokens(case.mdp, probs, ev, 0, rng)
    with pytest.raises(ValueError, match="discount_mode"):
        sample_tokens(case.mdp, probs, ev, 1, rng, discount_mode="exp")
    with pytest.raises(ValueError, match="features"):
        sample_tokens(case.mdp, probs, ev, 1, rng, features=np.zeros((2, 3)))
