"""Random toy problems for the theorem checks, and their exact derivatives by torch.func.

Each toy is a :class:`toy_mdps.ToyCase` (temperature 1, full softmax, so the linear-softmax policy *is*
the last-layer model and θ = ψ = vec(W)). For a toy at W, :func:`derivatives` returns the exact
g = ∇J, the true Hessian ∇²J, the Lemma C.1 Hessian H̃ = ∇²L (the surrogate's, eq 8/66) and the
Fisher F̃ = ∇²D̄_KL (eq 6/9), as (K·d)-vectors / (K·d)² matrices, row-major like ψ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import grad, hessian

from toy_mdps import ToyCase, build_case
from toy_mdps.torch_eval import average_kl, objective_J, surrogate_L

KINDS = ("bandit", "token", "finite", "discounted")
"""Toy families: contextual bandits (T = 1), token MDPs, random finite-horizon MDPs, discounted MDPs."""


def toy_case(kind: str, seed: int) -> ToyCase:
    """A seeded random toy of the given family (small: K·d ≤ 24).

    Args:
        kind: One of :data:`KINDS`.
        seed: Seed of the MDP, features and weights.

    Returns:
        The built case.
    """
    rng = np.random.default_rng(1000 + seed)
    spec: dict[str, Any]
    if kind == "bandit":
        spec = {
            "kind": "bandit",
            "n_contexts": int(rng.integers(2, 5)),
            "n_arms": int(rng.integers(2, 5)),
            "setting": "finite",
        }
    elif kind == "token":
        spec = {
            "kind": "token",
            "vocab_size": int(rng.integers(2, 4)),
            "horizon": int(rng.integers(2, 4)),
            "reward": "random",
            "setting": "finite",
        }
    elif kind == "finite":
        spec = {
            "kind": "random",
            "n_states": int(rng.integers(3, 6)),
            "n_actions": int(rng.integers(2, 4)),
            "horizon": int(rng.integers(2, 5)),
            "gamma": 1.0,
            "setting": "finite",
        }
    elif kind == "discounted":
        spec = {
            "kind": "random",
            "n_states": int(rng.integers(3, 6)),
            "n_actions": int(rng.integers(2, 4)),
            "horizon": 4,
            "gamma": float(rng.choice([0.5, 0.8, 0.9])),
            "setting": "discounted",
        }
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    spec.update(
        id=f"{kind}-{seed}",
        seed=seed,
        features="random",
        dim=int(rng.integers(2, 5)),
        w_scale=float(rng.choice([0.5, 1.0, 2.0])),
    )
    return build_case(spec)


@dataclass
class Derivatives:
    """Exact derivatives of a toy at W (ψ = W.reshape(-1)).

    Attributes:
        J: J(W). g: ∇J [P]. H_J: ∇²J [P, P]. H_L: ∇²L = H̃ [P, P]. F: ∇²D̄_KL = F̃ [P, P].
    """

    J: float
    g: np.ndarray
    H_J: np.ndarray
    H_L: np.ndarray
    F: np.ndarray


def functions(toy: ToyCase, W0: np.ndarray) -> tuple[Any, Any, Any]:
    """(J(W), L(W), D̄_KL(W0 ‖ W)) as torch functions of W [K, d] for the toy at old weights W0."""
    w_old = torch.from_numpy(np.array(W0, dtype=np.float64))
    kw: dict[str, Any] = {
        "setting": toy.setting,
        "temperature": toy.temperature,
        "top_k": toy.top_k,
    }

    def J(W: torch.Tensor) -> torch.Tensor:
        return objective_J(toy.mdp, toy.features, W, **kw)

    def L(W: torch.Tensor) -> torch.Tensor:
        return surrogate_L(toy.mdp, toy.features, w_old, W, **kw)

    def KL(W: torch.Tensor) -> torch.Tensor:
        return average_kl(toy.mdp, toy.features, w_old, W, **kw)

    return J, L, KL


def derivatives(toy: ToyCase, W0: np.ndarray | None = None) -> Derivatives:
    """Exact J, ∇J, ∇²J, ∇²L, ∇²D̄_KL at W0 (default: the toy's weights) by torch.func."""
    W0 = toy.W if W0 is None else W0
    J, L, KL = functions(toy, W0)
    w = torch.from_numpy(np.array(W0, dtype=np.float64))
    P = w.numel()
    return Derivatives(
        J=float(J(w)),
        g=grad(J)(w).reshape(P).numpy(),
        H_J=hessian(J)(w).reshape(P, P).numpy(),
        H_L=hessian(L)(w).reshape(P, P).numpy(),
        F=hessian(KL)(w).reshape(P, P).numpy(),
    )
