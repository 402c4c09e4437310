"""Token MDPs: vocabulary K, horizon T, states = prefixes, s_{t+1} = s_t ∘ a_t (paper §3).

Each prompt p (drawn uniformly by ρ0) starts from its empty prefix; a state is a pair (p, tokens) with
0 ≤ len(tokens) ≤ T. The reward is terminal and verifiable: R(s, a) = r_p(s ∘ a) when s ∘ a has length T,
0 otherwise. Full-length prefixes (reached at time T, never acted in) are absorbing self-loops with zero
reward, which keeps the finite-horizon DP exact: V_T = 0 and d_t puts no mass on them for t < T.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from toy_mdps.mdp import FiniteMDP

REWARDS = ("sum", "match", "random")
"""Verifiable rewards: "sum" (1 if Σ tokens ≡ target_p mod K), "match" (1 if tokens = answer_p),
"random" (a seeded uniform [0, 1) value per full sequence)."""

Prefix = tuple[int, tuple[int, ...]]


@dataclass(frozen=True, eq=False)
class TokenMDP:
    """A token MDP with its prefix <-> state-index mapping.

    Attributes:
        mdp: The finite-horizon MDP (horizon T, gamma 1).
        vocab_size: K.
        n_prompts: Number of prompts (contexts) p.
        reward: Name of the verifiable reward (one of :data:`REWARDS`).
        prefixes: State index -> (prompt, tokens), ordered by prompt, then length, then lexicographically.
        children: children[s, a] = index of s ∘ a, shape [S, K] (s itself for full-length prefixes).
        terminal_rewards: r_p(tokens) for full-length prefixes, 0 elsewhere, shape [S].
        targets: Hidden answer of each prompt: [n_prompts] ("sum"), [n_prompts, T] ("match"), or an
            empty array ("random").
        index: (prompt, tokens) -> state index, the inverse of ``prefixes``.
    """

    mdp: FiniteMDP
    vocab_size: int
    n_prompts: int
    reward: str
    prefixes: tuple[Prefix, ...]
    children: NDArray[np.int64]
    terminal_rewards: NDArray[np.float64]
    targets: NDArray[np.int64]
    index: dict[Prefix, int] = field(repr=False, default_factory=dict)

    @property
    def horizon(self) -> int:
        """T, the sequence length."""
        return self.mdp.horizon

    def state_index(self, prompt: int, tokens: tuple[int, ...] | list[int]) -> int:
        """Index of the state (prompt, tokens).

        Args:
            prompt: Prompt id in [0, n_prompts).
            tokens: Token ids, length ≤ T.

        Returns:
            The state index.

        Raises:
            ValueError: If the prefix is not a state of this MDP.
        """
        key = (int(prompt), tuple(int(a) for a in tokens))
        if key not in self.index:
            raise ValueError(f"tokens {key[1]} with prompt {key[0]} is not a state of this MDP")
        return self.index[key]

    def prefix(self, state: int) -> Prefix:
        """(prompt, tokens) of a state index."""
        return self.prefixes[state]

    def lengths(self) -> NDArray[np.int64]:
        """Prefix length of each state (= the only time at which it can be visited), shape [S]."""
        return np.array([len(tokens) for _, tokens in self.prefixes], dtype=np.int64)


def _check_arguments(vocab_size: int, horizon: int, reward: str, n_prompts: int) -> None:
    """ValueError naming the argument that is out of range."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")


def _tree(
    prefixes: list[Prefix],
    index: dict[Prefix, int],
    K: int,
    T: int,
    reward: str,
    targets: NDArray[np.int64],
    random_values: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(children [S, K] state ids (a leaf is its own child), terminal reward [S] of each leaf)."""
    S = len(prefixes)
    children = np.zeros((S, K), dtype=np.int64)
    terminal = np.zeros(S)
    for i, (p, tokens) in enumerate(prefixes):
        if len(tokens) == T:
            children[i] = i
            if reward == "sum":
                terminal[i] = float(sum(tokens) % K == targets[p])
            elif reward == "match":
                terminal[i] = float(tokens == tuple(int(a) for a in targets[p]))
            else:
                terminal[i] = random_values[i]
        else:
            children[i] = [index[(p, (*tokens, a))] for a in range(K)]
    return children, terminal


def token_mdp(
    vocab_size: int, horizon: int, reward: str = "sum", n_prompts: int = 1, seed: int = 0
) -> TokenMDP:
    """Build a token MDP with a seeded verifiable terminal reward.

    Args:
        vocab_size: K ≥ 1.
        horizon: T ≥ 1 (states: n_prompts · Σ_{n=0}^{T} K^n).
        reward: One of :data:`REWARDS`.
        n_prompts: Number of prompts, drawn uniformly by ρ0.
        seed: Seed of the hidden targets (or of the random rewards).

    Returns:
        The token MDP.

    Raises:
        ValueError: If an argument is out of range or the state space exceeds 10⁴ states.
    """
    _check_arguments(vocab_size, horizon, reward, n_prompts)
    K, T = vocab_size, horizon
    n_states = n_prompts * sum(K**n for n in range(T + 1))
    if n_states > 10_000:
        raise ValueError(f"vocab_size={K}, horizon={T} give {n_states} states (> 10000)")
    prefixes: list[Prefix] = [
        (p, tokens)
        for p in range(n_prompts)
        for n in range(T + 1)
        for tokens in itertools.product(range(K), repeat=n)
    ]
    index = {pre: i for i, pre in enumerate(prefixes)}
    rng = np.random.default_rng(seed)
    if reward == "sum":
        targets = rng.integers(K, size=n_prompts)
    elif reward == "match":
        targets = rng.integers(K, size=(n_prompts, T))
    else:
        targets = np.zeros(0, dtype=np.int64)
    random_values = rng.random(n_states)

    S = len(prefixes)
    children, terminal = _tree(prefixes, index, K, T, reward, targets, random_values)

    P = np.zeros((S, K, S))
    np.put_along_axis(P, children[:, :, None], 1.0, axis=2)
    lengths = np.array([len(t) for _, t in prefixes])
    R = np.where((lengths == T - 1)[:, None], terminal[children], 0.0)
    rho0 = np.zeros(S)
    rho0[[index[(p, ())] for p in range(n_prompts)]] = 1.0 / n_prompts
    mdp = FiniteMDP(P, R, rho0, horizon=T, gamma=1.0)
    return TokenMDP(mdp, K, n_prompts, reward, tuple(prefixes), children, terminal, targets, index)
