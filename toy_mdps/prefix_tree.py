"""An exact "arithmetic" token MDP at scale: a prefix tree evaluated level by level (for experiments).

P prompts, vocabulary K, horizon T. Prompt p has a hidden target y_p; a completion of T tokens earns
reward 1 iff Σ tokens ≡ y_p (mod K) (the "sum" reward of :func:`toy_mdps.token_mdp`). States are prefixes,
ordered exactly as :func:`toy_mdps.token_mdp` orders them (prompt, then length, then lexicographically),
so that a small instance can be checked against the dense DP of :mod:`toy_mdps`. Unlike
:class:`toy_mdps.FiniteMDP` nothing here is dense in S × K × S: evaluation, visitation and sampling walk
the tree level by level, so tens of thousands of states cost milliseconds.

The policy is linear-softmax, π(· | s) = softmax(W h(s)), with W [K, d] the "last layer" and fixed
features h(s) [d] (the "backbone"): the paper's last-layer model is then the policy itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from toy_mdps.exact import kl_rows
from toy_mdps.policies import masked_softmax

Array = NDArray[np.float64]

__all__ = ["ArithmeticTree", "TaskSpec", "arithmetic_tree"]


@dataclass(frozen=True)
class TaskSpec:
    """Size and feature design of the arithmetic tree.

    Attributes:
        vocab_size: K.
        horizon: T (completion length).
        n_prompts: P.
        n_random: d_r, dimension of the per-state random features ("backbone noise", N(0, 1/d_r) each).
        cue_scale: Scale of the one-hot cue of the token that would finish the sum now,
            e_{(y_p − Σ prefix) mod K}.
        cue_noise: Probability that a state's cue points at a uniformly drawn wrong token instead.
        bias_scale: Value of the constant feature, the component that every hidden state shares (LLM
            hidden states are strongly anisotropic: a step along it moves a token's logit everywhere).
        n_junk: How many of the K tokens are "junk" (ids K − n_junk .. K − 1): a completion containing
            one earns 0 (a format error), the sum runs mod K_d = K − n_junk over the digit tokens.
        punish_repeats: A completion that repeats one token T times earns 0 (a punished degenerate
            mode: collapsing onto one token everywhere, which shared features make easy, fails).
        seed: Seed of the targets (drawn as in :func:`toy_mdps.token_mdp`) and of the features.
    """

    vocab_size: int = 8
    horizon: int = 3
    n_prompts: int = 32
    n_random: int = 16
    cue_scale: float = 1.0
    cue_noise: float = 0.0
    bias_scale: float = 1.0
    n_junk: int = 0
    punish_repeats: bool = False
    seed: int = 0

    @property
    def n_digits(self) -> int:
        """K_d = K − n_junk, the modulus of the sum."""
        return self.vocab_size - self.n_junk


@dataclass(frozen=True, eq=False)
class ArithmeticTree:
    """The prefix tree of all prompts, with features and per-level index arithmetic.

    State (p, tokens) with n = len(tokens) and lexicographic rank j has index p·L + offset[n] + j,
    L = Σ_{n ≤ T} K^n; its child by token a is p·L + offset[n + 1] + j·K + a.

    Attributes:
        spec: The task specification.
        targets: y_p, shape [P].
        features: h(s), shape [S, d], d = 1 + T + K_d + d_r (bias, one-hot level, cue over the digit
            tokens, random).
        offsets: offset[n] = Σ_{m < n} K^m, shape [T + 2].
        terminal_rewards: Reward of each full-length prefix, shape [P, K^T].
    """

    spec: TaskSpec
    targets: NDArray[np.int64]
    features: Array
    offsets: NDArray[np.int64]
    terminal_rewards: Array

    @property
    def n_states(self) -> int:
        """S = P · L."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.features.shape[1])

    @property
    def states_per_prompt(self) -> int:
        """L = Σ_{n ≤ T} K^n."""
        return int(self.offsets[-1])

    def level(self, n: int) -> NDArray[np.int64]:
        """State indices of all prefixes of length n, shape [P, K^n] (row p = prompt p)."""
        K, L = self.spec.vocab_size, self.states_per_prompt
        base = np.arange(self.spec.n_prompts)[:, None] * L + self.offsets[n]
        return base + np.arange(K**n)[None, :]

    def probs(self, W: Array) -> Array:
        """π(a | s) for every state, shape [S, K]."""
        logits = self.features @ W.T
        return masked_softmax(logits, np.ones(logits.shape, dtype=bool))

    def _level_probs(self, probs: Array, n: int) -> Array:
        """π at the length-n prefixes, shape [P, K^n, K]."""
        return probs[self.level(n)]

    def evaluate(self, probs: Array) -> tuple[float, Array]:
        """Exact J = E_p E_π[r] and the visitation d(s) = Pr(reach s) of every state.

        Args:
            probs: π, shape [S, K].

        Returns:
            (J, d) with d shape [S] (d sums to T + 1 over all levels, 1 per level).
        """
        P, K, T = self.spec.n_prompts, self.spec.vocab_size, self.spec.horizon
        value = self.terminal_rewards
        for n in range(T - 1, -1, -1):
            pi = self._level_probs(probs, n)
            value = np.einsum("pjk,pjk->pj", pi, value.reshape(P, K**n, K))
        d = np.zeros(self.n_states)
        reach = np.full((P, 1), 1.0 / P)
        d[self.level(0)] = reach
        for n in range(T):
            reach = (reach[:, :, None] * self._level_probs(probs, n)).reshape(P, K ** (n + 1))
            d[self.level(n + 1)] = reach
        return float(value.mean()), d

    def average_kl(self, d: Array, probs_old: Array, probs_new: Array) -> float:
        """D̄_KL(π ‖ π') = (1/T) Σ_{s non-terminal} d(s) KL(π(·|s) ‖ π'(·|s)) (App. K eq 106).

        Args:
            d: Visitation of the old policy (from :meth:`evaluate`), shape [S].
            probs_old: π, shape [S, K].
            probs_new: π', shape [S, K].

        Returns:
            The average forward KL under the old policy's state distribution.
        """
        idx = np.concatenate([self.level(n).ravel() for n in range(self.spec.horizon)])
        q = np.maximum(probs_new[idx], np.finfo(np.float64).tiny)  # underflow: large, finite KL
        return float(d[idx] @ kl_rows(probs_old[idx], q) / self.spec.horizon)

    def mean_entropy(self, d: Array, probs: Array) -> float:
        """Visitation-weighted policy entropy per decision step (nats)."""
        idx = np.concatenate([self.level(n).ravel() for n in range(self.spec.horizon)])
        p = probs[idx]
        ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
        return float(d[idx] @ ent / self.spec.horizon)

    def sample(
        self, probs: Array, prompts: NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], Array]:
        """Roll out one completion per entry of ``prompts``.

        Args:
            probs: π, shape [S, K].
            prompts: Prompt ids, shape [B].
            rng: NumPy generator.

        Returns:
            (states [B, T], actions [B, T], rewards [B]).
        """
        K, T, L = self.spec.vocab_size, self.spec.horizon, self.states_per_prompt
        B = prompts.shape[0]
        states = np.zeros((B, T), dtype=np.int64)
        actions = np.zeros((B, T), dtype=np.int64)
        rank = np.zeros(B, dtype=np.int64)
        for n in range(T):
            s = prompts * L + self.offsets[n] + rank
            cdf = np.cumsum(probs[s], axis=1)
            u = rng.random(B) * cdf[:, -1]
            a = np.minimum((u[:, None] >= cdf).sum(axis=1), K - 1)
            states[:, n], actions[:, n] = s, a
            rank = rank * K + a
        rewards = self.terminal_rewards[prompts, rank]
        return states, actions, rewards


def arithmetic_tree(spec: TaskSpec) -> ArithmeticTree:
    """Build the tree, its targets (as :func:`toy_mdps.token_mdp` draws them) and its features.

    Args:
        spec: The task specification.

    Returns:
        The arithmetic tree.

    Raises:
        ValueError: If a size is out of range or the tree exceeds 2·10⁵ states.
    """
    K, T, P, Kd = spec.vocab_size, spec.horizon, spec.n_prompts, spec.n_digits
    if Kd < 2 or T < 1 or P < 1 or spec.n_random < 0 or spec.n_junk < 0:
        raise ValueError(f"bad task sizes: {spec}")
    if not 0.0 <= spec.cue_noise <= 1.0:
        raise ValueError(f"cue_noise must lie in [0, 1], got {spec.cue_noise}")
    offsets = np.concatenate([[0], np.cumsum([K**n for n in range(T + 1)])]).astype(np.int64)
    L = int(offsets[-1])
    if P * L > 200_000:
        raise ValueError(f"{P} prompts × {L} prefixes exceed 200000 states")
    rng = np.random.default_rng(spec.seed)
    targets = rng.integers(Kd, size=P).astype(np.int64)
    rng.random(P * L)  # keep the stream aligned with toy_mdps.token_mdp (its "random" rewards)
    frng = np.random.default_rng([spec.seed, 1])

    d = 1 + T + Kd + spec.n_random
    feats = np.zeros((P * L, d))
    full_sum = full_valid = full_repeat = None
    for n in range(T + 1):
        ranks = np.arange(K**n)
        digits = (ranks[:, None] // K ** np.arange(n - 1, -1, -1)[None, :]) % K if n else None
        if digits is None:
            prefix_sum, valid = np.zeros(1, dtype=np.int64), np.ones(1, dtype=bool)
        else:
            prefix_sum, valid = digits.sum(axis=1), np.asarray((digits < Kd).all(axis=1))
        idx = (np.arange(P)[:, None] * L + offsets[n] + ranks[None, :]).ravel()
        need = ((targets[:, None] - prefix_sum[None, :]) % Kd).ravel()
        wrong = frng.random(need.shape[0]) < spec.cue_noise
        shift = frng.integers(1, Kd, size=need.shape[0])
        cue = np.where(wrong, (need + shift) % Kd, need)
        feats[idx, 0] = spec.bias_scale
        if n < T:
            feats[idx, 1 + n] = 1.0
            feats[idx, 1 + T + cue] = spec.cue_scale
        if n == T:
            full_sum, full_valid = prefix_sum, valid
            full_repeat = (digits == digits[:, :1]).all(axis=1) if digits is not None else None
    if spec.n_random:
        feats[:, 1 + T + Kd :] = frng.standard_normal((P * L, spec.n_random)) / np.sqrt(
            spec.n_random
        )
    assert full_sum is not None and full_valid is not None
    hit = (full_sum[None, :] % Kd == targets[:, None]) & full_valid[None, :]
    if spec.punish_repeats and full_repeat is not None:
        hit &= ~full_repeat[None, :]
    rewards = hit.astype(np.float64)
    return ArithmeticTree(spec, targets, feats, offsets, rewards)
