"""Dense reference vs torch.func autodiff on the toy MDPs of :mod:`toy_mdps` (float64, exact expectations).

For a case with old weights W_old (features h(s) / temperature as the reference's h):

=========  =========================================================  ==========================================
quantity   reference (this package)                                   autodiff (:mod:`toy_mdps.torch_eval`)
=========  =========================================================  ==========================================
g̃ vs ∇J    expected_gradient(w_t(s), h, π, A_t)                       torch.func.grad of J(W) at W_old
g̃ vs ∇L    same                                                       grad of the surrogate L(W_old, W) at W_old
H̃ vs ∇²L   expected_hessian(w_t(s), h, π, A_t)                        hessian of L(W_old, W) at W_old (Lemma C.1)
F̃ vs ∇²KL  expected_fisher(ν(s), h, π)                                hessian of D̄_KL(W_old ‖ W) at W_old (eq 6)
H̃ vs ∇²J   expected_hessian (contextual bandits only, T = 1)          hessian of J(W) at W_old
=========  =========================================================  ==========================================

Weights: w_t(s) = γ^t d_t(s) over flattened (t, s) rows (finite) or the unnormalised occupancy d_γ(s)
(discounted) — the weights of E_τ[Σ_t γ^t ·]; ν = the same state weights normalised to sum 1 (the state
distribution of the average KL), as in :func:`toy_mdps.kl_weights`.

This module imports torch and :mod:`toy_mdps`; the rest of :mod:`reference` needs only NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.func import grad, hessian

from reference.last_layer import expected_fisher, expected_gradient, expected_hessian
from reference.tolerances import EXACT_RTOL
from toy_mdps import build_case, kl_weights
from toy_mdps.torch_eval import average_kl, objective_J, surrogate_L

__all__ = ["AGREEMENT_RTOL", "Comparison", "compare_case"]

AGREEMENT_RTOL = EXACT_RTOL
"""Largest accepted error relative to the largest entry of the autodiff value."""


@dataclass(frozen=True)
class Comparison:
    """One reference-vs-autodiff comparison.

    Attributes:
        case: The case id.
        quantity: What is compared, e.g. "H̃ vs ∇²L".
        shape: Shape of the compared arrays.
        max_abs: max |reference − autodiff|.
        max_rel: max_abs / max |autodiff| (0 when both are 0).
    """

    case: str
    quantity: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    @property
    def ok(self) -> bool:
        """Whether the two agree to :data:`AGREEMENT_RTOL`."""
        return self.max_rel <= AGREEMENT_RTOL


def _compare(case: str, quantity: str, ref: NDArray[np.float64], auto: Any) -> Comparison:
    """Build a :class:`Comparison` of ``ref`` and the torch tensor ``auto`` (reshaped like ref)."""
    a = auto.detach().numpy().reshape(ref.shape)
    max_abs = float(np.max(np.abs(ref - a)))
    scale = float(np.max(np.abs(a)))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Comparison(case, quantity, ref.shape, max_abs, max_rel)


def compare_case(case: dict[str, Any]) -> list[Comparison]:
    """Compare g̃, H̃ and F̃ of one toy case with torch.func autodiff of J, L and D̄_KL.

    Args:
        case: A case dict of ``toy_mdps.CASES``.

    Returns:
        The comparisons (four, five for a contextual bandit).
    """
    toy = build_case(case)
    setting, temp, top_k = toy.setting, toy.temperature, toy.top_k
    flat = toy.flat()
    h_flat = flat.features / toy.temperature
    g = expected_gradient(flat.weights, h_flat, flat.probs, flat.advantages)
    H = expected_hessian(flat.weights, h_flat, flat.probs, flat.advantages)
    nu = kl_weights(toy.evaluate())
    F = expected_fisher(nu, toy.features / toy.temperature, toy.probs())

    w_old = torch.from_numpy(np.array(toy.W))

    def J(W: torch.Tensor) -> torch.Tensor:
        return objective_J(toy.mdp, toy.features, W, setting=setting, temperature=temp, top_k=top_k)

    def L(W: torch.Tensor) -> torch.Tensor:
        return surrogate_L(
            toy.mdp, toy.features, w_old, W, setting=setting, temperature=temp, top_k=top_k
        )

    def kl(W: torch.Tensor) -> torch.Tensor:
        return average_kl(
            toy.mdp, toy.features, w_old, W, setting=setting, temperature=temp, top_k=top_k
        )

    out = [
        _compare(toy.id, "g̃ vs ∇J", g, grad(J)(w_old)),
        _compare(toy.id, "g̃ vs ∇L", g, grad(L)(w_old)),
        _compare(toy.id, "H̃ vs ∇²L", H, hessian(L)(w_old)),
        _compare(toy.id, "F̃ vs ∇²KL", F, hessian(kl)(w_old)),
    ]
    if case["kind"] == "bandit":
        out.append(_compare(toy.id, "H̃ vs ∇²J", H, hessian(J)(w_old)))
    return out
