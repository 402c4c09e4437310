"""Remainders of the quadratic models as ‖Δ‖ → 0: eq 5/16, eq 66 and eq 6/26, with fitted log-log slopes.

For a toy at W0, a random unit direction D and steps Δ = εD (‖Δ‖ = ε), with exact g = ∇J:

- ``J - m_H[H̃]``: J(W0+Δ) − J(W0) − (gᵀΔ + ½ ΔᵀH̃Δ), H̃ the Lemma C.1 Hessian (what CAPO's m_H models);
- ``L - m_H[H̃]``: L_π(π_{W0+Δ}) − J(W0) − (gᵀΔ + ½ ΔᵀH̃Δ)                               (eq 66);
- ``J - m_H[∇²J]``: J(W0+Δ) − J(W0) − (gᵀΔ + ½ Δᵀ∇²JΔ)                                  (eq 5/16);
- ``KL - m_F``: D̄_KL(π_{W0} ‖ π_{W0+Δ}) − ½ ΔᵀF̃Δ                                       (eq 6/26).

A slope ≈ 3 means a cubic remainder; ≈ 2 means the quadratic model misses a second-order term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from verification.common import HOLDS, Check, conditional, fit_slope, fmt, progress
from verification.theorems.toys import KINDS, derivatives, functions, toy_case

RESIDUALS = ("J - m_H[H̃]", "L - m_H[H̃]", "J - m_H[∇²J]", "KL - m_F")
"""Names of the four remainders (module docstring)."""

EPS = np.logspace(-3.0, -0.5, 11)
"""Step norms ‖Δ‖; the slope is fitted on ‖Δ‖ ≤ FIT_MAX."""

FIT_MAX = 10**-1.5
ROUNDOFF = 1e-13
"""Residuals below this are float64 round-off of J(W0+Δ) − J(W0) and are not fitted."""

CUBIC_MIN, QUAD_BAND = 2.7, (1.7, 2.3)
"""A slope ≥ 2.7 counts as cubic (or better); a slope in [1.7, 2.3] as quadratic."""


def residual_curves(toy: Any, direction: np.ndarray) -> dict[str, np.ndarray]:
    """The four remainders of the module docstring at every ε of :data:`EPS`."""
    d = derivatives(toy)
    J, L, KL = functions(toy, toy.W)
    P = d.g.size
    out: dict[str, list[float]] = {name: [] for name in RESIDUALS}
    for eps in EPS:
        delta = eps * direction
        w = torch.from_numpy(toy.W.reshape(P) + delta).reshape(toy.W.shape)
        lin = float(d.g @ delta)
        q_L, q_J, q_F = (float(delta @ M @ delta) for M in (d.H_L, d.H_J, d.F))
        Jn, Ln, KLn = float(J(w)), float(L(w)), float(KL(w))
        out["J - m_H[H̃]"].append(Jn - d.J - lin - 0.5 * q_L)
        out["L - m_H[H̃]"].append(Ln - d.J - lin - 0.5 * q_L)
        out["J - m_H[∇²J]"].append(Jn - d.J - lin - 0.5 * q_J)
        out["KL - m_F"].append(KLn - 0.5 * q_F)
    return {k: np.array(v) for k, v in out.items()}


def run(quick: bool) -> dict[str, Any]:
    """Fit slopes on many random toys of every family.

    Returns:
        ``{"records": [...], "curves": {kind: {...}}}``: one record per (toy, direction) with the four
        slopes, the Hessian mismatch ‖∇²J − H̃‖/‖∇²J‖, and one example curve per family for the plot.
    """
    n_toys, n_dirs = (3, 1) if quick else (12, 2)
    records: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    jobs = [(kind, s) for kind in KINDS for s in range(n_toys)]
    for kind, seed in progress(jobs, "expansions"):
        toy = toy_case(kind, seed)
        d = derivatives(toy)
        mismatch = float(np.linalg.norm(d.H_J - d.H_L) / max(np.linalg.norm(d.H_J), 1e-300))
        rng = np.random.default_rng(seed)
        for j in range(n_dirs):
            D = rng.standard_normal(d.g.size)
            D /= np.linalg.norm(D)
            res = residual_curves(toy, D)
            fit = EPS <= FIT_MAX * 1.0001
            rec: dict[str, Any] = {
                "kind": kind,
                "toy": toy.id,
                "direction": j,
                "hessian_mismatch": mismatch,
            }
            for name, r in res.items():
                rec[f"slope {name}"] = fit_slope(EPS[fit], r[fit], ROUNDOFF)
            records.append(rec)
            if kind not in curves:
                curves[kind] = {"eps": EPS.tolist(), **{k: v.tolist() for k, v in res.items()}}
    return {"records": records, "curves": curves}


def _slopes(records: list[dict[str, Any]], name: str, kinds: tuple[str, ...]) -> np.ndarray:
    vals = [r[f"slope {name}"] for r in records if r["kind"] in kinds]
    return np.array([v for v in vals if np.isfinite(v)])


def _summary(s: np.ndarray) -> str:
    if s.size == 0:
        return "no fit"
    return f"slopes median {np.median(s):.2f}, min {s.min():.2f}, max {s.max():.2f} (n={s.size})"


def checks(result: dict[str, Any]) -> list[Check]:
    """Summary rows: which remainders are cubic, for bandits and for multi-step MDPs."""
    recs = result["records"]
    return [*_capo_model_checks(recs), *_remainder_checks(recs)]


def _capo_model_checks(recs: list[dict[str, Any]]) -> list[Check]:
    """CAPO's Hessian model H̃ (Lemma C.1) against the true ∇²J: bandits vs multi-step MDPs."""
    multi = ("token", "finite", "discounted")
    out = []
    b = _slopes(recs, "J - m_H[H̃]", ("bandit",))
    m = _slopes(recs, "J - m_H[H̃]", multi)
    b_ok = bool(b.size and (b >= CUBIC_MIN).all())
    m_quad = float(np.mean((m >= QUAD_BAND[0]) & (m <= QUAD_BAND[1]))) if m.size else 0.0
    mism = max(r["hessian_mismatch"] for r in recs if r["kind"] in multi)
    out.append(
        Check(
            claim="J(θ+Δ) − J(θ) − m_H(Δ) = O(‖Δ‖³) with H̃ the Lemma C.1 Hessian (CAPO's model)",
            equation="eq 5 with eq 8 / Lemma C.1",
            verdict=conditional("for contextual bandits (T = 1); multi-step MDPs: only O(‖Δ‖²)")
            if b_ok and m_quad > 0.5
            else (HOLDS if b_ok and m.size and (m >= CUBIC_MIN).all() else "fails"),
            worst=(
                f"bandits: {_summary(b)}; multi-step: {_summary(m)}, {100 * m_quad:.0f}% ≈ 2; "
                f"max ‖∇²J − H̃‖/‖∇²J‖ = {fmt(mism)}"
            ),
            must_hold=False,
            ok=b_ok,
        )
    )
    b_mism = max((r["hessian_mismatch"] for r in recs if r["kind"] == "bandit"), default=0.0)
    out.append(
        Check(
            claim="Lemma C.1 (eq 37): ∇²J = E[Σ_t γ^t A (∇log π ∇log πᵀ + ∇² log π)] (= H̃)",
            equation="eq 37, 44",
            verdict=conditional("for T = 1 (contextual bandits); T > 1: it is ∇²L, not ∇²J")
            if b_mism <= 1e-10 < mism
            else (HOLDS if mism <= 1e-10 else "fails"),
            worst=f"‖∇²J − H̃‖_F/‖∇²J‖_F: bandits {fmt(b_mism)}, multi-step up to {fmt(mism)}",
            must_hold=False,
            ok=mism <= 1e-10,
        )
    )
    return out


def _remainder_checks(recs: list[dict[str, Any]]) -> list[Check]:
    """Eqs 66, 5/16 and 6/26: the remainders are cubic in ‖Δ‖ on every kind of toy MDP."""
    out = []
    for name, eq, claim in (
        (
            "L - m_H[H̃]",
            "eq 66 (Lemma E.1)",
            "L_π(π_{θ+Δ}) − J(π_θ) − m_H(Δ) is o(‖Δ‖²) (here: cubic)",
        ),
        (
            "J - m_H[∇²J]",
            "eq 5 / 16 (Prop. A.1)",
            "J(θ+Δ) − J(θ) − m_H(Δ) = O(‖Δ‖³) with the true Hessian ∇²J",
        ),
        ("KL - m_F", "eq 6 / 26 (Prop. B.1)", "D̄_KL(π_θ ‖ π_{θ+Δ}) − m_F(Δ) = O(‖Δ‖³)"),
    ):
        s = _slopes(recs, name, KINDS)
        ok = bool(s.size and (s >= CUBIC_MIN).all())
        out.append(
            Check(
                claim=claim,
                equation=eq,
                verdict=HOLDS if ok else "fails",
                worst=f"{_summary(s)}; all kinds",
                must_hold=name != "J - m_H[H̃]",
                ok=ok,
            )
        )
    return out
