"""The KL budget's quadratic rule on toy MDPs (verification.theorems.kl_budget; design §5)."""

from __future__ import annotations

import numpy as np
import pytest

from verification.common import fit_slope
from verification.theorems import kl_budget
from verification.theorems.toys import KINDS, toy_case

SLOPE_MARGIN = 0.3
"""A fitted log-log slope counts as p when within ±0.3 of p."""


@pytest.mark.parametrize("kind", KINDS)
def test_budget_rule_and_the_two_predictions_have_cubic_remainders(kind: str) -> None:
    """Eq 6: KL(sΔ) − s²·KL̂ = O(s³), and capo's lookahead − last_layer = O(s³) (linear softmax)."""
    toy = toy_case(kind, 3)
    d = np.random.default_rng(3).standard_normal(toy.W.shape)
    res = kl_budget.residual_curves(toy, d / np.linalg.norm(d))
    for name in kl_budget.RESIDUALS:
        slope = fit_slope(kl_budget.SCALES, res[name], kl_budget.ROUNDOFF)
        assert slope == pytest.approx(3.0, abs=SLOPE_MARGIN), name


def test_the_report_rows_hold() -> None:
    """Both summary rows of the theorem report hold on the quick grid."""
    assert all(c.ok for c in kl_budget.checks(kl_budget.run(quick=True)))
