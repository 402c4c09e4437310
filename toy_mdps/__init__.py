"""Tiny finite MDPs with exact evaluation (V, Q, A, d_t, J) by dynamic programming.

Conventions (paper §3, App. E, App. K): S states, K actions, d features, T horizon.

- Finite setting: T decision steps t = 0..T−1, V_T = 0; d_t [T, S] are state marginals (rows sum to 1).
- Discounted setting: d_γ [S] is the *unnormalised* occupancy Σ_t γ^t Pr(s_t = ·), mass 1/(1 − γ).
- :func:`state_weights` / :func:`time_weights` weight E_τ[Σ_t γ^t f]; :func:`kl_weights` (the same,
  normalised to sum 1) weight the average KL D̄_KL.
- W is [K, d]; ψ = W.reshape(-1) row-major, index a * d + j (the paper's (e_a − π) ⊗ h, eq 7).

The torch twin (:mod:`toy_mdps.torch_eval`: ``objective_J``, ``surrogate_L``, ``lastlayer_surrogate``,
``average_kl``) is imported lazily, so ``import toy_mdps`` does not import torch.
"""

from __future__ import annotations

from typing import Any

from toy_mdps.cases import CASES, ToyCase, build_case, case_by_id
from toy_mdps.exact import (
    Evaluation,
    FlatTimeStates,
    average_kl,
    evaluate,
    evaluate_discounted,
    evaluate_finite_horizon,
    flat_time_states,
    kl_rows,
    kl_weights,
    policy_transitions,
    state_weights,
    surrogate_objective,
    time_advantages,
    time_weights,
)
from toy_mdps.mdp import SETTINGS, FiniteMDP, contextual_bandit, random_mdp
from toy_mdps.policies import (
    LinearSoftmaxPolicy,
    masked_softmax,
    random_features,
    tabular_features,
    top_k_mask,
)
from toy_mdps.sampling import TokenSamples, sample_tokens
from toy_mdps.token_mdp import REWARDS, TokenMDP, token_mdp

_TORCH_NAMES = {
    "objective_J": "objective_J",
    "surrogate_L": "surrogate_L",
    "lastlayer_surrogate": "lastlayer_surrogate",
    "average_kl_torch": "average_kl",
    "policy_probs_torch": "policy_probs",
    "evaluate_torch": "evaluate_torch",
    "TorchEvaluation": "TorchEvaluation",
}


def __getattr__(name: str) -> Any:
    """Lazily import the torch twin's names (``average_kl_torch`` is ``torch_eval.average_kl``)."""
    if name in _TORCH_NAMES:
        from toy_mdps import torch_eval

        return getattr(torch_eval, _TORCH_NAMES[name])
    raise AttributeError(f"module 'toy_mdps' has no attribute {name!r}")


__all__ = [
    "CASES",
    "REWARDS",
    "SETTINGS",
    "Evaluation",
    "FiniteMDP",
    "FlatTimeStates",
    "LinearSoftmaxPolicy",
    "TokenMDP",
    "TokenSamples",
    "ToyCase",
    "average_kl",
    "build_case",
    "case_by_id",
    "contextual_bandit",
    "evaluate",
    "evaluate_discounted",
    "evaluate_finite_horizon",
    "flat_time_states",
    "kl_rows",
    "kl_weights",
    "masked_softmax",
    "policy_transitions",
    "random_features",
    "random_mdp",
    "sample_tokens",
    "state_weights",
    "surrogate_objective",
    "tabular_features",
    "time_advantages",
    "time_weights",
    "token_mdp",
    "top_k_mask",
]
