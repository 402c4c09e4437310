"""Lemma E.1 (discounted) and Lemma K.3 (finite horizon): J(π') ≥ L_π(π') − C √D̄_KL(π ‖ π').

Over random MDPs and random policy pairs (π' = π perturbed at scales 0.01..10, and independent π'),
with exact J, L_π and D̄_KL (state distribution :func:`toy_mdps.kl_weights`) and ε = max_{t,s,a} |A_π|:

- discounted: C = 2√2 γ ε / (1 − γ)²  (eq 65, eq 13);  finite, γ = 1: C = T √((T−1)(2T−1)/3) ε (eq 100).

A violation (slack = J(π') − L_π(π') + C√KL < 0) is a counterexample. The tightest constant observed is
c* = max (L_π(π') − J(π')) / (ε √KL), to compare with C / ε; an adversarial scipy search maximises
the same ratio over π' for a few MDPs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize

from reference import discounted_constant, finite_horizon_constant
from toy_mdps import average_kl, evaluate, masked_softmax, random_mdp, surrogate_objective
from verification.common import FAILS, HOLDS, Check, fmt, progress

SCALES = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Perturbation scales of π' = softmax(logits + scale · Z)."""

SLACK_TOL = 1e-12
"""A slack above −SLACK_TOL is not a violation (float64 round-off of J and L)."""


def _softmax(logits: np.ndarray) -> np.ndarray:
    return masked_softmax(logits, np.ones(logits.shape, dtype=bool))


def _mdp_spec(seed: int) -> tuple[Any, str]:
    rng = np.random.default_rng(seed)
    S, K = int(rng.integers(2, 7)), int(rng.integers(2, 5))
    if seed % 2 == 0:
        T = int(rng.choice([1, 2, 3, 5, 8]))
        return random_mdp(S, K, T, 1.0, seed=seed, concentration=0.3), "finite"
    gamma = float(rng.choice([0.5, 0.8, 0.9, 0.95, 0.99]))
    return random_mdp(S, K, 4, gamma, seed=seed, concentration=0.3), "discounted"


def constant(mdp: Any, setting: str, eps: float) -> float:
    """The paper's C for this MDP and setting (via :mod:`reference.bounds`)."""
    if setting == "finite":
        return finite_horizon_constant(mdp.horizon, eps)
    return discounted_constant(mdp.gamma, eps)


def pair_terms(mdp: Any, setting: str, p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """Exact J(π'), L_π(π'), D̄_KL(π ‖ π'), ε and C for the pair (π = p, π' = q)."""
    ev = evaluate(mdp, p, setting)
    eps = float(np.max(np.abs(ev.A)))
    return {
        "J_new": evaluate(mdp, q, setting).J,
        "L": surrogate_objective(ev, q),
        "KL": average_kl(ev, p, q),
        "eps": eps,
        "C": constant(mdp, setting, eps),
    }


def run(quick: bool) -> dict[str, Any]:
    """Evaluate the bound on many random pairs and run the adversarial search."""
    n_mdps = 16 if quick else 200
    records = []
    for seed in progress(range(n_mdps), "lemma E.1 / K.3"):
        mdp, setting = _mdp_spec(seed)
        rng = np.random.default_rng(10_000 + seed)
        logits = rng.standard_normal((mdp.n_states, mdp.n_actions)) * rng.choice([0.5, 1.0, 3.0])
        p = _softmax(logits)
        others = [logits + s * rng.standard_normal(logits.shape) for s in SCALES]
        others.append(3.0 * rng.standard_normal(logits.shape))
        for j, lq in enumerate(others):
            t = pair_terms(mdp, setting, p, _softmax(lq))
            gap = t["L"] - t["J_new"]
            root = np.sqrt(max(t["KL"], 0.0))
            records.append(
                {
                    "mdp": seed,
                    "setting": setting,
                    "T": mdp.horizon,
                    "gamma": mdp.gamma,
                    "pair": j,
                    **t,
                    "slack": -gap + t["C"] * root,
                    "ratio": gap / (t["eps"] * root) if t["eps"] * root > 0 else 0.0,
                    "paper_ratio": t["C"] / t["eps"] if t["eps"] > 0 else 0.0,
                }
            )
    adversarial = adversarial_search(2 if quick else 8)
    return {"records": records, "adversarial": adversarial}


def adversarial_search(n_mdps: int) -> list[dict[str, Any]]:
    """Maximise (L_π(π') − J(π')) / (ε √KL) over the logits of π' with scipy (Nelder–Mead + restarts)."""
    out = []
    for seed in progress(range(n_mdps), "adversarial π'"):
        mdp, setting = _mdp_spec(seed + 500)
        if setting == "finite" and mdp.horizon == 1:
            continue
        rng = np.random.default_rng(seed)
        base = rng.standard_normal((mdp.n_states, mdp.n_actions))
        p = _softmax(base)

        def neg_ratio(
            x: np.ndarray, p: np.ndarray = p, mdp: Any = mdp, setting: str = setting
        ) -> float:
            t = pair_terms(mdp, setting, p, _softmax(x.reshape(p.shape)))
            root = np.sqrt(max(t["KL"], 1e-300))
            return -(t["L"] - t["J_new"]) / (t["eps"] * root)

        best = 0.0
        for _ in range(3):
            x0 = base.ravel() + rng.standard_normal(base.size) * rng.choice([0.3, 1.0, 3.0])
            res = minimize(
                neg_ratio, x0, method="Nelder-Mead", options={"maxiter": 600, "xatol": 1e-6}
            )
            best = max(best, -float(res.fun))
        eps = float(np.max(np.abs(evaluate(mdp, p, setting).A)))
        out.append(
            {
                "mdp": seed + 500,
                "setting": setting,
                "T": mdp.horizon,
                "gamma": mdp.gamma,
                "best_ratio": best,
                "paper_ratio": constant(mdp, setting, eps) / eps,
            }
        )
    return out


def checks(result: dict[str, Any]) -> list[Check]:
    """One row per lemma: violations, worst slack, tightest constant vs the paper's."""
    out = []
    for setting, name, eq in (
        ("discounted", "Lemma E.1 (discounted, C = 2√2γε/(1−γ)²)", "eq 65"),
        ("finite", "Lemma K.3 (finite horizon, C = T√((T−1)(2T−1)/3)ε)", "eq 100"),
    ):
        rs = [r for r in result["records"] if r["setting"] == setting]
        viol = [r for r in rs if r["slack"] < -SLACK_TOL]
        worst = min(r["slack"] for r in rs)
        ratio = max(rs, key=lambda r: r["ratio"])
        used = max(r["ratio"] / r["paper_ratio"] for r in rs if r["paper_ratio"] > 0)
        adv = [a for a in result["adversarial"] if a["setting"] == setting]
        adv_viol = [a for a in adv if a["best_ratio"] > a["paper_ratio"]]
        adv_txt = (
            f"; adversarial search: best c* {fmt(max(a['best_ratio'] for a in adv))}, at most "
            f"{100 * max(a['best_ratio'] / a['paper_ratio'] for a in adv):.1f}% of C/ε of its MDP"
            if adv
            else ""
        )
        out.append(
            Check(
                claim=f"{name}: J(π') ≥ L_π(π') − C√D̄_KL over random policy pairs",
                equation=eq,
                verdict=HOLDS if not viol and not adv_viol else FAILS,
                worst=(
                    f"{len(viol)}/{len(rs)} violations; min slack {fmt(worst)}; tightest c* = "
                    f"{fmt(ratio['ratio'])} vs paper C/ε = {fmt(ratio['paper_ratio'])} "
                    f"(T={ratio['T']}, γ={ratio['gamma']:g}); at most {100 * used:.1f}% of C used{adv_txt}"
                ),
                must_hold=False,
                ok=not viol and not adv_viol,
                details={"violations": viol[:20], "adversarial_violations": adv_viol},
            )
        )
    return out
