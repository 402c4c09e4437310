"""The KL budget's quadratic rule on toy MDPs (an extension beyond the paper, docs/design.md §5).

For a toy at W (linear-softmax policy, every parameter is the last layer), a random unit step direction D
and scales s (step sΔ, Δ = D):

- ``KL - s²·KL̂``: D̄(sΔ) − s²·KL̂(Δ), the exact average KL (dense twin, :mod:`reference.kl_budget`) minus
  the quadratic model that the budget's s = min(1, sqrt(δ / KL̂)) relies on (eq 6): O(s³);
- ``lookahead - last_layer``: the two predictions of ``capo.kl_budget`` computed by the library itself
  (``capo.true_kl.full_vocab_kl`` at θ + sΔ vs ``capo.kl_budget.state_fisher_kl`` with the whole vocabulary
  as support): for this policy they coincide up to the same O(s³) remainder.

A fitted log-log slope ≈ 3 means a cubic remainder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from capo.kl_budget import state_fisher_kl
from capo.true_kl import full_vocab_kl
from reference.kl_budget import exact_kl, quadratic_kl, tempered_probs
from toy_mdps.exact import kl_weights
from verification.common import HOLDS, Check, fit_slope, progress
from verification.theorems.toys import KINDS, toy_case

RESIDUALS = ("KL - s²·KL̂", "lookahead - last_layer")
"""Names of the two remainders (module docstring)."""

SCALES = np.logspace(-3.0, -1.0, 9)
"""Scales s of the unit step."""

ROUNDOFF = 1e-15
"""Residuals below this are float64 round-off of KLs of order s² and are not fitted."""

CUBIC_MIN = 2.7
"""A slope >= 2.7 counts as cubic (or better)."""


def capo_predictions(toy: Any, direction: np.ndarray, s: float) -> tuple[float, float]:
    """(lookahead, last_layer) of capo for the step s·direction, weighted by the toy's KL state weights."""
    w = torch.tensor(kl_weights(toy.evaluate()))
    h, W = torch.tensor(toy.features), torch.tensor(toy.W)
    delta = torch.tensor(s * direction)
    look = full_vocab_kl(h, W, None, h, W + delta, None, toy.temperature)
    probs = torch.tensor(tempered_probs(toy.W, toy.features, toy.temperature))
    ids = torch.arange(W.shape[0]).expand(h.shape[0], -1)
    last = state_fisher_kl(h, ids, probs, delta, None, toy.temperature)
    return float(w @ look), float(w @ last)


def residual_curves(toy: Any, direction: np.ndarray) -> dict[str, np.ndarray]:
    """The two remainders of the module docstring at every s of :data:`SCALES`."""
    weights = kl_weights(toy.evaluate())
    model = quadratic_kl(weights, toy.features, toy.W, direction, toy.temperature)
    out: dict[str, list[float]] = {name: [] for name in RESIDUALS}
    for s in SCALES:
        kl = exact_kl(weights, toy.features, toy.W, s * direction, toy.temperature)
        out[RESIDUALS[0]].append(kl - s**2 * model)
        look, last = capo_predictions(toy, direction, s)
        out[RESIDUALS[1]].append(look - last)
    return {k: np.array(v) for k, v in out.items()}


def run(quick: bool) -> dict[str, Any]:
    """Fitted slopes of both remainders on random toys of every family (one direction each)."""
    n_toys = 2 if quick else 8
    records: list[dict[str, Any]] = []
    for kind, seed in progress([(k, s) for k in KINDS for s in range(n_toys)], "kl budget"):
        toy = toy_case(kind, seed)
        d = np.random.default_rng(seed).standard_normal(toy.W.shape)
        res = residual_curves(toy, d / np.linalg.norm(d))
        rec: dict[str, Any] = {"kind": kind, "toy": toy.id}
        for name, r in res.items():
            rec[f"slope {name}"] = fit_slope(SCALES, r, ROUNDOFF)
        records.append(rec)
    return {"records": records}


def checks(result: dict[str, Any]) -> list[Check]:
    """One summary row per remainder: cubic on every toy."""
    out = []
    for name, claim in (
        (
            RESIDUALS[0],
            "KL(sΔ) − s²·KL̂(Δ) = O(s³): the budget's rule s = sqrt(δ/KL̂) is exact to O(s³)",
        ),
        (
            RESIDUALS[1],
            "linear softmax: capo's lookahead and last_layer predictions agree up to O(s³)",
        ),
    ):
        slopes = np.array([r[f"slope {name}"] for r in result["records"]])
        slopes = slopes[np.isfinite(slopes)]
        ok = bool(slopes.size and (slopes >= CUBIC_MIN).all())
        worst = f"min slope {slopes.min():.2f} (n={slopes.size})" if slopes.size else "no fit"
        out.append(
            Check(
                claim=claim,
                equation="eq 6 (KL budget, design §5)",
                verdict=HOLDS if ok else "fails",
                worst=worst,
                must_hold=True,
                ok=ok,
            )
        )
    return out
