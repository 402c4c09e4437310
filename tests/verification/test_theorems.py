"""Fast subset of the theorem checks (verification/theorems/*) as real assertions."""

from __future__ import annotations

import numpy as np
import pytest

from verification.common import fit_slope
from verification.theorems import expansions, lemma_bounds, monotonic
from verification.theorems.toys import derivatives, toy_case

SLOPE_MARGIN = 0.3
"""A fitted log-log slope counts as p when within ±0.3 of p."""


def _slopes(kind: str, seed: int) -> dict[str, float]:
    toy = toy_case(kind, seed)
    D = np.random.default_rng(seed).standard_normal(toy.W.size)
    res = expansions.residual_curves(toy, D / np.linalg.norm(D))
    fit = expansions.EPS <= expansions.FIT_MAX * 1.0001
    return {k: fit_slope(expansions.EPS[fit], v[fit], expansions.ROUNDOFF) for k, v in res.items()}


@pytest.mark.parametrize("kind", ["bandit", "token", "discounted"])
def test_kl_minus_m_F_is_cubic(kind: str) -> None:
    """Eq 6 / 26: D̄_KL(π_θ ‖ π_{θ+Δ}) − ½ΔᵀF̃Δ = O(‖Δ‖³): fitted slope ≈ 3."""
    assert _slopes(kind, 0)["KL - m_F"] == pytest.approx(3.0, abs=SLOPE_MARGIN)


@pytest.mark.parametrize("kind", ["bandit", "finite"])
def test_surrogate_minus_m_H_is_cubic(kind: str) -> None:
    """Eq 66: L_π(π_{θ+Δ}) − J(π_θ) − m_H(Δ) with H̃ (Lemma C.1) has a cubic remainder."""
    assert _slopes(kind, 1)["L - m_H[H̃]"] == pytest.approx(3.0, abs=SLOPE_MARGIN)


def test_J_minus_m_H_is_cubic_for_bandits_but_quadratic_for_multistep_mdps() -> None:
    """Eq 5 with H̃ of eq 8: exact for T = 1 (L ≡ J), only O(‖Δ‖²) for T > 1 (∇²J ≠ H̃)."""
    assert _slopes("bandit", 2)["J - m_H[H̃]"] == pytest.approx(3.0, abs=SLOPE_MARGIN)
    multi = _slopes("token", 2)
    assert multi["J - m_H[H̃]"] == pytest.approx(2.0, abs=SLOPE_MARGIN)
    assert multi["J - m_H[∇²J]"] == pytest.approx(3.0, abs=SLOPE_MARGIN)


def test_lemma_C1_hessian_equals_hessian_of_J_only_for_bandits() -> None:
    """Lemma C.1 (eq 37) as ∇²J: exact for a contextual bandit, not for a multi-step MDP."""
    b, m = derivatives(toy_case("bandit", 3)), derivatives(toy_case("finite", 3))
    assert np.abs(b.H_J - b.H_L).max() <= 1e-10 * np.abs(b.H_J).max()
    assert np.abs(m.H_J - m.H_L).max() > 1e-3 * np.abs(m.H_J).max()


def test_lemma_E1_and_K3_hold_on_random_policy_pairs() -> None:
    """Lemma E.1 (eq 65) and K.3 (eq 100): J(π') ≥ L_π(π') − C√D̄_KL on N random pairs."""
    res = lemma_bounds.run(quick=True)
    recs = res["records"]
    assert {r["setting"] for r in recs} == {"finite", "discounted"}
    assert len(recs) >= 100
    assert min(r["slack"] for r in recs) >= -lemma_bounds.SLACK_TOL
    assert all(c.ok for c in lemma_bounds.checks(res))


def test_bandit_surrogate_gap_is_zero() -> None:
    """For T = 1 the surrogate is exact (L_π(π') = J(π')), so C = 0 in eq 100 is tight."""
    toy = toy_case("bandit", 4)
    p, q = toy.probs(), toy.probs(toy.W + 1.0)
    t = lemma_bounds.pair_terms(toy.mdp, "finite", p, q)
    assert t["C"] == 0.0
    assert t["J_new"] == pytest.approx(t["L"], abs=1e-12)


def test_aggregation_bounds_eq74_eq79_and_sharper_bound_hold() -> None:
    """Eqs 71-74 and 79, and m_H(Δθ) ≥ mean m_H(Δθ_i) − ½M(mean‖Δθ_i‖² − ‖Δθ‖²), on accepted sets."""
    recs = []
    toy = toy_case("finite", 0)
    d = derivatives(toy)
    rng = np.random.default_rng(0)
    grads = monotonic._trajectory_grads(toy, 6, rng)
    M = float(np.max(np.abs(np.linalg.eigvalsh(d.H_J))))
    D = 0.5 * grads
    mH = D @ d.g + 0.5 * np.einsum("ip,pq,iq->i", D, d.H_J, D)
    r = float(np.max(np.linalg.norm(D, axis=1)))
    for B in range(1, 7):
        idx = np.argsort(-mH)[:B]
        recs.append(monotonic._evaluate_set(toy, d, D[idx], mH[idx], float(mH[idx].min()), 1.0,
                                            M, r, 1.0, float(mH[idx].min()) - 0.5 * M * r**2, 0.5))  # fmt: skip
    for key in ("eq74_convexity_slack", "eq79_slack", "sharp_slack"):
        assert min(x[key] for x in recs) >= -monotonic.TOL, key
    assert all(x["threshold_half_ok"] for x in recs)


def test_half_M_r2_threshold_is_sharp() -> None:
    """Eq 12: with δ_H = ω + ½Mr² no counterexample exists; with ω + 0·Mr² the search finds one."""
    assert monotonic._gap(np.zeros(2 + 4 + 4) + 1.0, 2, 2, 0.5) >= 0.0
    res = {a["c"]: a for a in monotonic.adversarial(quick=True)}
    assert res[0.0]["min_normalised_gap"] < -0.4
    assert res[0.5]["min_normalised_gap"] >= -1e-9
