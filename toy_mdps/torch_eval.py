"""Differentiable float64 torch twin of :mod:`toy_mdps.exact`, functional in the weights W [K, d].

Every function is a pure function of W (no in-place state), so ``torch.func.grad`` / ``hessian`` /
``jacrev`` apply. Hessians of W [K, d] come out as [K, d, K, d]; reshape to (K·d, K·d) in row-major
order (index a * d + j is W[a, j]), which matches the paper's (e_a − π) ⊗ h (eq 7).

Generating functions of the paper's last-layer quantities (all weights as in :mod:`toy_mdps.exact`):

- ∇ :func:`objective_J` = g (policy gradient theorem, eq 2/7 with exact expectations).
- ∇ :func:`surrogate_L` at W_new = W_old equals ∇J (eq 67); its Hessian there is H̃ of eq 8 (eq 66).
- Hessian of :func:`average_kl` at W_new = W_old is F̃ (eqs 6, 9) under the *normalised* state weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from toy_mdps.mdp import FiniteMDP, check_setting

TensorLike = torch.Tensor | NDArray[np.float64]


def _t(x: TensorLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64)
    return torch.from_numpy(np.array(x, dtype=np.float64))


def _support(logits: torch.Tensor, top_k: int | None) -> torch.Tensor | None:
    if top_k is None:
        return None
    K = logits.shape[-1]
    if not 1 <= top_k <= K:
        raise ValueError(f"top_k must lie in [1, K={K}], got {top_k}")
    order = torch.argsort(logits.detach(), dim=-1, descending=True, stable=True)[..., :top_k]
    return torch.zeros(logits.shape, dtype=torch.bool).scatter(-1, order, True)


def _log_probs(
    features: TensorLike, W: torch.Tensor, temperature: float, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (0 off the support, never ±inf) and the support mask (None = all)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    h = _t(features)
    if W.ndim != 2 or h.ndim != 2 or W.shape[1] != h.shape[1]:
        raise ValueError(
            f"W must have shape [K, d] with d = features.shape[1], got {tuple(W.shape)}"
        )
    logits = h @ W.T / temperature
    mask = _support(logits, top_k)
    if mask is None:
        return torch.log_softmax(logits, dim=-1), None
    m = logits.detach().masked_fill(~mask, float("-inf")).amax(dim=-1, keepdim=True)
    z = logits - m
    log_norm = torch.log(torch.where(mask, torch.exp(z), 0.0).sum(dim=-1, keepdim=True))
    return torch.where(mask, z - log_norm, 0.0), mask


def policy_probs(
    features: TensorLike, W: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """π_W(a | s), shape [S, K]; twin of :meth:`toy_mdps.policies.LinearSoftmaxPolicy.probs`.

    Args:
        features: h(s), shape [S, d].
        W: Weights, shape [K, d].
        temperature: Logits W h / temperature.
        top_k: Support size k (probability renormalised over the k largest logits), or None.

    Returns:
        Probabilities, shape [S, K], exactly 0 off the support.
    """
    logp, mask = _log_probs(features, W, temperature, top_k)
    p = torch.exp(logp)
    return p if mask is None else torch.where(mask, p, 0.0)


@dataclass(frozen=True, eq=False)
class TorchEvaluation:
    """Torch twin of :class:`toy_mdps.exact.Evaluation`, plus time-axis views.

    Attributes:
        V: [T+1, S] (finite) or [S] (discounted).
        Q: [T, S, K] or [S, K].
        A: [T, S, K] or [S, K].
        d: State marginals [T, S] or unnormalised discounted occupancy [S].
        J: Scalar objective.
        weights: γ^t d_t, [T, S] (finite) or d_γ as [1, S] (discounted).
        advantages: A with a time axis, [T, S, K] or [1, S, K].
    """

    V: torch.Tensor
    Q: torch.Tensor
    A: torch.Tensor
    d: torch.Tensor
    J: torch.Tensor
    weights: torch.Tensor
    advantages: torch.Tensor


def evaluate_torch(mdp: FiniteMDP, probs: torch.Tensor, setting: str) -> TorchEvaluation:
    """Exact evaluation of π (differentiable in ``probs``); see :mod:`toy_mdps.exact`.

    Args:
        mdp: The MDP.
        probs: π(a | s), shape [S, K].
        setting: "finite" (App. K) or "discounted" (App. E).

    Returns:
        The evaluation as float64 tensors.
    """
    check_setting(setting)
    P, R, rho0 = _t(mdp.transitions), _t(mdp.rewards), _t(mdp.rho0)
    gamma, S = mdp.gamma, mdp.n_states
    P_pi = torch.einsum("sa,sat->st", probs, P)
    if setting == "finite":
        T = mdp.horizon
        Vs = [torch.zeros(S, dtype=torch.float64)]
        Qs: list[torch.Tensor] = []
        for _ in range(T):
            Q_t = R + gamma * P @ Vs[0]
            Qs.insert(0, Q_t)
            Vs.insert(0, (probs * Q_t).sum(-1))
        ds = [rho0]
        for _ in range(T - 1):
            ds.append(ds[-1] @ P_pi)
        V, Q, d = torch.stack(Vs), torch.stack(Qs), torch.stack(ds)
        A = Q - V[:T, :, None]
        disc = gamma ** torch.arange(T, dtype=torch.float64)
        return TorchEvaluation(V, Q, A, d, rho0 @ V[0], disc[:, None] * d, A)
    if not gamma < 1.0:
        raise ValueError(f"gamma must be < 1 in the discounted setting, got {gamma}")
    M = torch.eye(S, dtype=torch.float64) - gamma * P_pi
    V = torch.linalg.solve(M, (probs * R).sum(-1))
    Q = R + gamma * P @ V
    d = torch.linalg.solve(M.T, rho0)
    A = Q - V[:, None]
    return TorchEvaluation(V, Q, A, d, rho0 @ V, d[None], A[None])


def objective_J(
    mdp: FiniteMDP,
    features: TensorLike,
    W: torch.Tensor,
    *,
    setting: str = "finite",
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """J(π_W) (eq 1 / eq 84), differentiable in W.

    Args:
        mdp: The MDP.
        features: h(s), shape [S, d].
        W: Weights, shape [K, d].
        setting: "finite" or "discounted".
        temperature: Policy temperature.
        top_k: Policy support size, or None.

    Returns:
        Scalar tensor.
    """
    probs = policy_probs(features, W, temperature, top_k)
    return evaluate_torch(mdp, probs, setting).J


def lastlayer_surrogate(
    mdp: FiniteMDP,
    features: TensorLike,
    W_old: torch.Tensor,
    W: torch.Tensor,
    *,
    setting: str = "finite",
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Σ_t Σ_s w_t(s) Σ_a π_W(a | s) A_{old,t}(s, a), with w and A of π_{W_old} held fixed.

    Its gradient at W = W_old is g̃ (eq 7) and its Hessian there is H̃ (eq 8), both with exact
    expectations: Σ w Σ_a π A [(e_a − π)(e_a − π)ᵀ − F(s)] ⊗ h hᵀ / temperature².

    Args:
        mdp: The MDP.
        features: h(s), shape [S, d].
        W_old: Weights of π (detached), shape [K, d].
        W: Weights of π', shape [K, d].
        setting: "finite" or "discounted".
        temperature: Policy temperature.
        top_k: Policy support size, or None.

    Returns:
        Scalar tensor: L_π(π') − J(π).
    """
    with torch.no_grad():
        old = evaluate_torch(
            mdp, policy_probs(features, W_old.detach(), temperature, top_k), setting
        )
    probs_new = policy_probs(features, W, temperature, top_k)
    return torch.einsum("ts,tsa,sa->", old.weights, old.advantages, probs_new)


def surrogate_L(
    mdp: FiniteMDP,
    features: TensorLike,
    W_old: torch.Tensor,
    W_new: torch.Tensor,
    *,
    setting: str = "finite",
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """L_π(π') = J(π) + E_{s∼d_π, a∼π'}[A_π(s, a)] (Lemma E.1 eq 65; Lemma K.3), d_π, A_π detached.

    Args:
        mdp: The MDP.
        features: h(s), shape [S, d].
        W_old: Weights of π, shape [K, d].
        W_new: Weights of π', shape [K, d].
        setting: "finite" or "discounted".
        temperature: Policy temperature.
        top_k: Policy support size, or None.

    Returns:
        Scalar tensor.
    """
    with torch.no_grad():
        J_old = objective_J(
            mdp, features, W_old.detach(), setting=setting, temperature=temperature, top_k=top_k
        )
    gain = lastlayer_surrogate(
        mdp, features, W_old, W_new, setting=setting, temperature=temperature, top_k=top_k
    )
    return J_old + gain


def average_kl(
    mdp: FiniteMDP,
    features: TensorLike,
    W_old: torch.Tensor,
    W_new: torch.Tensor,
    *,
    setting: str = "finite",
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """D̄_KL(π ‖ π') = Σ_s ν(s) KL(π(· | s) ‖ π'(· | s)), ν = normalised state weights of π (eq 6).

    ν = (1 − γ) d_γ (discounted) or (1/T) Σ_t d_t (finite, γ = 1), as in
    :func:`toy_mdps.exact.kl_weights`. +inf where π' has no mass on part of π's support (top-k) at a
    state of positive weight; states of zero weight contribute 0.

    Args:
        mdp: The MDP.
        features: h(s), shape [S, d].
        W_old: Weights of π (detached), shape [K, d].
        W_new: Weights of π', shape [K, d].
        setting: "finite" or "discounted".
        temperature: Policy temperature.
        top_k: Policy support size, or None.

    Returns:
        Scalar tensor.
    """
    with torch.no_grad():
        logp_old, mask_old = _log_probs(features, W_old.detach(), temperature, top_k)
        p_old = (
            torch.exp(logp_old) if mask_old is None else torch.where(mask_old, logp_old.exp(), 0)
        )
        w = evaluate_torch(mdp, p_old, setting).weights.sum(0)
        nu = w / w.sum()
    logp_new, mask_new = _log_probs(features, W_new, temperature, top_k)
    terms = p_old * (logp_old - logp_new)
    if mask_old is not None and mask_new is not None:
        terms = torch.where(mask_old & ~mask_new, float("inf"), terms)
    kl = terms.sum(-1)
    return torch.where(nu > 0, nu * kl, 0.0).sum()
