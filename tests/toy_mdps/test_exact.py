"""Exact DP evaluation (toy_mdps/exact.py) against brute force, Bellman equations and App. E / K lemmas."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from tests.toy_mdps.brute_force import action_value, objective_and_marginals
from toy_mdps import (
    FiniteMDP,
    ToyCase,
    average_kl,
    evaluate,
    evaluate_discounted,
    evaluate_finite_horizon,
    flat_time_states,
    kl_weights,
    policy_transitions,
    random_mdp,
    state_weights,
    surrogate_objective,
    time_advantages,
    time_weights,
    token_mdp,
)


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def random_policy(S: int, K: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(K), size=S)


@pytest.mark.parametrize(
    "mdp",
    [random_mdp(3, 2, 3, seed=0), random_mdp(3, 2, 3, gamma=0.7, seed=1), token_mdp(3, 3).mdp],
    ids=["random-S3-K2-T3", "random-S3-K2-T3-gamma0.7", "token-K3-T3-sum"],
)
def test_dp_equals_brute_force_enumeration_of_all_trajectories(mdp) -> None:
    """J, d_t and Q_t from the DP equal sums over every trajectory (App. K eq 84)."""
    probs = random_policy(mdp.n_states, mdp.n_actions, seed=2)
    ev = evaluate_finite_horizon(mdp, probs)
    J, d = objective_and_marginals(mdp, probs)
    close(ev.J, J)
    close(ev.d, d)
    reachable = [(t, s) for t in range(mdp.horizon) for s in range(mdp.n_states) if d[t, s] > 0]
    for t, s in reachable[:12]:
        for a in range(mdp.n_actions):
            close(ev.Q[t, s, a], action_value(mdp, probs, t, s, a))


def test_finite_horizon_bellman_equations(toy_case: ToyCase) -> None:
    """Q_t = R + γ P V_{t+1}, V_t = Σ_a π Q_t, V_T = 0, d_{t+1} = d_t P_π (App. K eq 86, 93)."""
    mdp, probs = toy_case.mdp, toy_case.probs()
    ev = evaluate_finite_horizon(mdp, probs)
    assert ev.V.shape == (mdp.horizon + 1, mdp.n_states)
    assert ev.Q.shape == ev.A.shape == (mdp.horizon, mdp.n_states, mdp.n_actions)
    close(ev.V[-1], 0.0)
    close(ev.Q, mdp.rewards + mdp.gamma * np.einsum("sap,tp->tsa", mdp.transitions, ev.V[1:]))
    close(ev.V[:-1], np.einsum("sa,tsa->ts", probs, ev.Q))
    close(ev.d[1:], ev.d[:-1] @ policy_transitions(mdp, probs))
    close(ev.J, mdp.rho0 @ ev.V[0])


def test_discounted_bellman_equations(toy_case: ToyCase) -> None:
    """V = r_π + γ P_π V, Q = R + γ P V, d_γ = ρ0 + γ d_γ P_π (App. E), each case with γ = 0.9."""
    m, probs = toy_case.mdp, toy_case.probs()
    mdp = FiniteMDP(m.transitions, m.rewards, m.rho0, horizon=m.horizon, gamma=0.9)
    ev = evaluate_discounted(mdp, probs)
    P_pi = policy_transitions(mdp, probs)
    close(ev.V, (probs * mdp.rewards).sum(1) + mdp.gamma * P_pi @ ev.V)
    close(ev.Q, mdp.rewards + mdp.gamma * mdp.transitions @ ev.V)
    close(ev.d, mdp.rho0 + mdp.gamma * ev.d @ P_pi)


def test_discounted_evaluation_is_the_long_horizon_limit_of_the_finite_one() -> None:
    """With γ = 0.8 and T = 300 (γ^T ≈ 1e-29), finite J, V_0 and Σ_t γ^t d_t equal J, V, d_γ."""
    mdp = random_mdp(4, 3, 300, gamma=0.8, seed=3)
    probs = random_policy(4, 3, seed=4)
    fin, disc = evaluate_finite_horizon(mdp, probs), evaluate_discounted(mdp, probs)
    close(fin.J, disc.J)
    close(fin.V[0], disc.V)
    close(state_weights(fin), state_weights(disc))


def test_state_marginals_sum_to_one_and_occupancy_to_effective_horizon(toy_case: ToyCase) -> None:
    """Each d_t sums to 1; state_weights sum to Σ_t γ^t (finite) or 1/(1 − γ); kl_weights sum to 1."""
    mdp = toy_case.mdp
    ev = toy_case.evaluate()
    if ev.setting == "finite":
        close(ev.d.sum(axis=1), np.ones(mdp.horizon))
        close(state_weights(ev).sum(), (mdp.gamma ** np.arange(mdp.horizon)).sum())
    else:
        close(ev.d.sum(), 1.0 / (1.0 - mdp.gamma))
    close(kl_weights(ev).sum(), 1.0)
    assert np.all(time_weights(ev) >= 0)


def test_advantage_has_zero_mean_under_the_policy(toy_case: ToyCase) -> None:
    """E_{a∼π}[A(s, a)] = 0 for every state (and every t)."""
    ev = toy_case.evaluate()
    close(np.einsum("sa,tsa->ts", toy_case.probs(), time_advantages(ev)), 0.0)


@pytest.mark.parametrize("setting", ["finite", "discounted"])
def test_performance_difference_lemma(setting: str) -> None:
    """J(π') − J(π) = Σ_t E_{s∼d_{π',t}, a∼π'}[A_{π,t}(s, a)] (Lemma K.1 eq 85; App. E, unnormalised d_γ)."""
    mdp = random_mdp(5, 3, 4, gamma=0.9 if setting == "discounted" else 1.0, seed=5)
    p, q = random_policy(5, 3, seed=6), random_policy(5, 3, seed=7)
    ev_p, ev_q = evaluate(mdp, p, setting), evaluate(mdp, q, setting)
    gap = np.einsum("ts,tsa,sa->", time_weights(ev_q), time_advantages(ev_p), q)
    close(ev_q.J - ev_p.J, gap)


def test_surrogate_equals_J_and_average_kl_is_zero_at_the_old_policy(toy_case: ToyCase) -> None:
    """L_π(π) = J(π) (Lemma E.1 / K.3, since E_π A = 0) and D̄_KL(π ‖ π) = 0."""
    probs = toy_case.probs()
    ev = toy_case.evaluate()
    close(surrogate_objective(ev, probs), ev.J)
    close(average_kl(ev, probs, probs), 0.0)


def test_average_kl_uses_the_normalised_time_average_in_the_finite_setting() -> None:
    """D̄_KL = (1/T) Σ_t E_{s∼d_t} KL(π ‖ π') (App. K eq 106)."""
    mdp = random_mdp(4, 3, 3, seed=8)
    p, q = random_policy(4, 3, seed=9), random_policy(4, 3, seed=10)
    ev = evaluate_finite_horizon(mdp, p)
    kl = (p * np.log(p / q)).sum(axis=1)
    close(average_kl(ev, p, q), (ev.d @ kl).sum() / mdp.horizon)


def test_flat_time_states_reproduces_the_surrogate_gain(toy_case: ToyCase) -> None:
    """Σ_m w_m Σ_a π'(a|s_m) A_m(a) over the flat (t, s) rows equals L_π(π') − J(π)."""
    ev, probs = toy_case.evaluate(), toy_case.probs()
    q = toy_case.probs(toy_case.W + 0.1)
    flat = flat_time_states(ev, toy_case.features, probs)
    assert flat.features.shape == (flat.weights.shape[0], toy_case.features.shape[1])
    close(flat.probs, probs[flat.states])
    gain = np.einsum("m,ma,ma->", flat.weights, q[flat.states], flat.advantages)
    close(gain, surrogate_objective(ev, q) - ev.J)


def test_bad_probs_and_setting_raise_value_error_naming_the_argument() -> None:
    mdp = random_mdp(3, 2, 2, seed=0)
    with pytest.raises(ValueError, match="probs"):
        evaluate_finite_horizon(mdp, np.ones((3, 3)) / 3)
    with pytest.raises(ValueError, match="probs"):
        evaluate_finite_horizon(mdp, np.full((3, 2), 0.7))
    with pytest.raises(ValueError, match="setting"):
        evaluate(mdp, np.full((3, 2), 0.5), "average")
    with pytest.raises(ValueError, match="gamma"):
        evaluate_discounted(mdp, np.full((3, 2), 0.5))
