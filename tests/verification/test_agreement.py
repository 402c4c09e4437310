"""Fast subset of the agreement report (verification/agreement.py, twins.py, truncation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tolerances import BF16_RTOL, EXACT_RTOL, FLOAT32_RTOL
from verification import agreement, batches, common, truncation, twins

POINT = {"N": 12, "k": 3, "H": 4, "V": 9, "seed": 11}


@pytest.fixture(scope="module")
def grid_records() -> list[dict]:
    return agreement.grid_agreement([POINT])


@pytest.mark.parametrize("step", ["sgd", "adam"])
def test_capo_reference_autodiff_agree_on_g_m_H_m_F_in_float64(
    step: str, grid_records: list[dict]
) -> None:
    """g̃_b (eq 7), m_H (eqs 10, 62-63), m_F (eqs 10, 57-58): three routes agree at every granularity."""
    rs = [r for r in grid_records if r["step"] == step]
    assert {r["granularity"] for r in rs} == {"token", "completion", "group", "batch"}
    errs = [v for r in rs for k, v in r.items() if k.startswith(("capo_vs", "ref_vs"))]
    assert len(errs) >= 4 * 9 - 1
    assert max(errs) <= EXACT_RTOL


def test_autodiff_route_detects_a_wrong_step() -> None:
    """The comparison can fail: a different learning rate changes m_H and m_F far beyond EXACT_RTOL."""
    raw = batches.random_batch(0, 8, 3, 4, 7)
    hist = batches.AdamHistory.random(0, 7, 4, 2)
    a = twins.capo_shifts(raw, None, "adam", 0.01, hist)
    b = twins.autodiff_shifts(raw, None, "adam", 0.011, hist)
    assert common.rel_error(a.m_F, b.m_F) > 1e-3


def test_float32_and_bf16_inputs_stay_within_their_tolerances() -> None:
    """docs/design.md §3: lower precisions accumulate in float32; bf16 error comes from input rounding."""
    recs = agreement.dtype_agreement([POINT])
    for r in recs:
        tol = FLOAT32_RTOL if r["dtype"] == "float32" else BF16_RTOL
        assert max(r["total_m_H"], r["total_m_F"]) <= tol
        assert max(r["accumulation_m_H"], r["accumulation_m_F"]) <= FLOAT32_RTOL
    bf16 = [r for r in recs if r["dtype"] == "bfloat16"]
    assert all(r["input_rounding_m_F"] > r["accumulation_m_F"] for r in bf16)


def test_shifts_gradient_and_support_are_chunk_size_invariant() -> None:
    """The chunking is a memory bound only: results agree for chunk sizes 1..1000 (float64)."""
    rows, checks = truncation.chunk_invariance(quick=True)
    assert checks[0].ok
    assert max(r["max_rel"] for r in rows) <= EXACT_RTOL


def test_topk_with_full_support_is_exact_and_error_shrinks_with_k() -> None:
    """§4.1: the top-k model with k = V equals the full-vocabulary model; error at k=V/2 < at k=1."""
    recs = truncation.token_mdp_curve(quick=True)
    by_k = {k: max(r["max_err"] for r in recs if r["k"] == k) for k in {r["k"] for r in recs}}
    assert by_k[16] <= EXACT_RTOL
    assert by_k[8] < by_k[1]


def test_rel_error_and_slope_fit() -> None:
    """rel_error is norm-wise relative; fit_slope recovers the exponent of a power law."""
    assert common.rel_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
    x = np.logspace(-3, -1, 7)
    assert common.fit_slope(x, 5 * x**3) == pytest.approx(3.0)
    assert np.isnan(common.fit_slope(x[:2], x[:2]))
    assert torch.is_tensor(batches.random_batch(0, 2, 2, 2, 3).hidden)
