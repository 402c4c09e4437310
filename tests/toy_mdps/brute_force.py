"""Brute-force enumeration of every trajectory of a tiny finite-horizon MDP (obviously correct, slow)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from toy_mdps import FiniteMDP


def trajectories(
    mdp: FiniteMDP, probs: np.ndarray, start: list[tuple[int, float]], steps: int
) -> Iterator[tuple[float, list[int], list[int]]]:
    """Yield (probability, states, actions) of every positive-probability path of ``steps`` actions."""
    stack: list[tuple[float, list[int], list[int]]] = [(p, [s], []) for s, p in start if p > 0]
    while stack:
        prob, states, actions = stack.pop()
        s = states[-1]
        for a in range(mdp.n_actions):
            pa = prob * probs[s, a]
            if pa == 0:
                continue
            if len(actions) + 1 == steps:
                yield pa, states, [*actions, a]
                continue
            for s2 in range(mdp.n_states):
                ps = pa * mdp.transitions[s, a, s2]
                if ps > 0:
                    stack.append((ps, [*states, s2], [*actions, a]))


def discounted_return(mdp: FiniteMDP, states: list[int], actions: list[int]) -> float:
    return sum(
        mdp.gamma**t * mdp.rewards[s, a]
        for t, (s, a) in enumerate(zip(states, actions, strict=True))
    )


def objective_and_marginals(mdp: FiniteMDP, probs: np.ndarray) -> tuple[float, np.ndarray]:
    """J and d_t [T, S] by summing over all trajectories."""
    J, d = 0.0, np.zeros((mdp.horizon, mdp.n_states))
    start = list(enumerate(mdp.rho0))
    for prob, states, actions in trajectories(mdp, probs, start, mdp.horizon):
        J += prob * discounted_return(mdp, states, actions)
        d[np.arange(mdp.horizon), states] += prob
    return J, d


def action_value(mdp: FiniteMDP, probs: np.ndarray, t: int, s: int, a: int) -> float:
    """Q_t(s, a) = R(s, a) + γ E[Σ_{t' > t} γ^{t'−t−1} R] by enumerating the continuations."""
    q = mdp.rewards[s, a]
    left = mdp.horizon - t - 1
    if left == 0:
        return float(q)
    start = list(enumerate(mdp.transitions[s, a]))
    tail = sum(
        prob * discounted_return(mdp, states, actions)
        for prob, states, actions in trajectories(mdp, probs, start, left)
    )
    return float(q + mdp.gamma * tail)
