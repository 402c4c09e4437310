"""Toy cases as data: readable ids, a seed and constructor arguments; :func:`build_case` builds them.

Every case is tiny (K·d ≤ 40) so that dense (K·d)×(K·d) Hessians via ``torch.func`` are instant.
Case dict keys:

- ``id``: readable name; ``seed``: int; ``setting``: "finite" or "discounted".
- ``kind``: "bandit" (``n_contexts``, ``n_arms``), "token" (``vocab_size``, ``horizon``, ``reward``,
  optional ``n_prompts``) or "random" (``n_states``, ``n_actions``, ``horizon``, ``gamma``).
- ``features``: "tabular" or "random" (then ``dim``); optional ``temperature``, ``top_k``,
  ``w_scale`` (W ~ N(0, w_scale²), default 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from toy_mdps.exact import Evaluation, FlatTimeStates, evaluate, flat_time_states
from toy_mdps.mdp import FiniteMDP, check_setting, contextual_bandit, random_mdp
from toy_mdps.policies import LinearSoftmaxPolicy, random_features, tabular_features
from toy_mdps.token_mdp import TokenMDP, token_mdp

CASES: list[dict[str, Any]] = [
    {"id": "bandit-3ctx-4arm-d3", "kind": "bandit", "n_contexts": 3, "n_arms": 4,
     "features": "random", "dim": 3, "setting": "finite", "seed": 0},
    {"id": "bandit-4ctx-3arm-tabular-temp0.7", "kind": "bandit", "n_contexts": 4, "n_arms": 3,
     "features": "tabular", "temperature": 0.7, "setting": "finite", "seed": 1},
    {"id": "token-K3-T3-sum-d4", "kind": "token", "vocab_size": 3, "horizon": 3, "reward": "sum",
     "features": "random", "dim": 4, "setting": "finite", "seed": 2},
    {"id": "token-K2-T3-match-tabular", "kind": "token", "vocab_size": 2, "horizon": 3,
     "reward": "match", "features": "tabular", "w_scale": 0.5, "setting": "finite", "seed": 3},
    {"id": "token-K3-T2-random-2prompt-d5", "kind": "token", "vocab_size": 3, "horizon": 2,
     "reward": "random", "n_prompts": 2, "features": "random", "dim": 5, "setting": "finite",
     "seed": 4},
    {"id": "token-K4-T2-sum-d5-top2", "kind": "token", "vocab_size": 4, "horizon": 2, "reward": "sum",
     "features": "random", "dim": 5, "top_k": 2, "setting": "finite", "seed": 5},
    {"id": "random-S5-K3-T4-d4", "kind": "random", "n_states": 5, "n_actions": 3, "horizon": 4,
     "gamma": 1.0, "features": "random", "dim": 4, "setting": "finite", "seed": 6},
    {"id": "random-S4-K3-T3-tabular", "kind": "random", "n_states": 4, "n_actions": 3, "horizon": 3,
     "gamma": 1.0, "features": "tabular", "setting": "finite", "seed": 7},
    {"id": "random-S5-K4-T3-d4-top3", "kind": "random", "n_states": 5, "n_actions": 4, "horizon": 3,
     "gamma": 1.0, "features": "random", "dim": 4, "top_k": 3, "setting": "finite", "seed": 8},
    {"id": "random-S5-K3-T4-disc0.9-d4", "kind": "random", "n_states": 5, "n_actions": 3,
     "horizon": 4, "gamma": 0.9, "features": "random", "dim": 4, "setting": "discounted", "seed": 9},
    {"id": "random-S4-K2-disc0.8-tabular", "kind": "random", "n_states": 4, "n_actions": 2,
     "horizon": 4, "gamma": 0.8, "features": "tabular", "setting": "discounted", "seed": 10},
]  # fmt: skip
"""The toy cases (see the module docstring for the keys)."""


@dataclass(frozen=True, eq=False)
class ToyCase:
    """A built case: MDP, features, weights, setting and policy options.

    Attributes:
        id: The case id.
        mdp: The MDP.
        features: h(s), shape [S, d].
        W: Weights, shape [K, d].
        setting: "finite" or "discounted".
        temperature: Policy temperature.
        top_k: Policy support size, or None.
        token: The token MDP (prefix <-> state mapping) for "token" cases, else None.
    """

    id: str
    mdp: FiniteMDP
    features: NDArray[np.float64]
    W: NDArray[np.float64]
    setting: str
    temperature: float = 1.0
    top_k: int | None = None
    token: TokenMDP | None = None

    def policy(self, W: NDArray[np.float64] | None = None) -> LinearSoftmaxPolicy:
        """The linear-softmax policy at ``W`` (default: the case's weights)."""
        return LinearSoftmaxPolicy(
            self.features, self.W if W is None else W, self.temperature, self.top_k
        )

    def probs(self, W: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """π_W(a | s), shape [S, K]."""
        return self.policy(W).probs()

    def evaluate(self, W: NDArray[np.float64] | None = None) -> Evaluation:
        """Exact evaluation of π_W in the case's setting."""
        return evaluate(self.mdp, self.probs(W), self.setting)

    def flat(self) -> FlatTimeStates:
        """Flat (t, s) rows of the case's policy (:func:`toy_mdps.exact.flat_time_states`)."""
        probs = self.probs()
        return flat_time_states(evaluate(self.mdp, probs, self.setting), self.features, probs)


def build_case(case: dict[str, Any]) -> ToyCase:
    """Build a case dict of :data:`CASES` (or one of the same form).

    Args:
        case: The case description.

    Returns:
        The built case.

    Raises:
        ValueError: If ``kind``, ``features`` or ``setting`` is unknown, or a key is missing.
    """
    try:
        seed = int(case["seed"])
        kind, feats, setting = case["kind"], case["features"], case["setting"]
    except KeyError as err:
        raise ValueError(f"case is missing the key {err.args[0]!r}: {case}") from None
    check_setting(setting)
    token: TokenMDP | None = None
    if kind == "bandit":
        mdp = contextual_bandit(case["n_contexts"], case["n_arms"], seed=seed)
    elif kind == "token":
        token = token_mdp(
            case["vocab_size"],
            case["horizon"],
            reward=case.get("reward", "sum"),
            n_prompts=case.get("n_prompts", 1),
            seed=seed,
        )
        mdp = token.mdp
    elif kind == "random":
        mdp = random_mdp(
            case["n_states"], case["n_actions"], case["horizon"], case.get("gamma", 1.0), seed=seed
        )
    else:
        raise ValueError(f"case kind must be 'bandit', 'token' or 'random', got {kind!r}")
    if feats == "tabular":
        features = tabular_features(mdp.n_states)
    elif feats == "random":
        features = random_features(mdp.n_states, case["dim"], seed=seed + 1)
    else:
        raise ValueError(f"case features must be 'tabular' or 'random', got {feats!r}")
    rng = np.random.default_rng(seed + 2)
    W = case.get("w_scale", 1.0) * rng.standard_normal((mdp.n_actions, features.shape[1]))
    return ToyCase(
        id=str(case.get("id", kind)),
        mdp=mdp,
        features=features,
        W=W,
        setting=setting,
        temperature=float(case.get("temperature", 1.0)),
        top_k=case.get("top_k"),
        token=token,
    )


def case_by_id(case_id: str) -> dict[str, Any]:
    """The case dict of :data:`CASES` with this id.

    Args:
        case_id: A case id.

    Returns:
        The case dict.

    Raises:
        ValueError: If no case has this id.
    """
    for case in CASES:
        if case["id"] == case_id:
            return case
    raise ValueError(f"case_id {case_id!r} is not in CASES")
