"""Step-boundary helpers of the trainer (capo/moments_sync.py) against capo's own subset shifts."""

from __future__ import annotations

import pytest
import torch

import capo
from capo.moments_sync import allreduce_sparse_rows, gather_values, global_shifts, merge_rows
from tests.capo._batches import BATCH_CASES, random_batch
from tests.tolerances import EXACT_ATOL, EXACT_RTOL


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


@pytest.mark.parametrize("case", BATCH_CASES, ids=[c["id"] for c in BATCH_CASES])
@pytest.mark.parametrize("step_model", ["sgd", "adam"])
def test_global_shifts_equal_one_subset_of_all_accepted_tokens(case, step_model):
    """m_H, m_F of the accepted update (eq 10 with b = all accepted tokens), assembled from
    micro-batch gradient sums, equal directional_shifts with subsets = 0 for every token."""
    batch = random_batch(**case)
    n = batch.num_tokens
    moments = capo.SparseAdamMoments(case["V"], case["H"])
    g = torch.Generator().manual_seed(7)
    moments.update(
        torch.arange(case["V"]), torch.randn(case["V"], case["H"], generator=g, dtype=torch.float64)
    )
    step = capo.AdamStep(0.05, moments) if step_model == "adam" else capo.SGDStep(0.05)
    parts = [
        batch.select_tokens(torch.arange(n)[: n // 2]),
        batch.select_tokens(torch.arange(n)[n // 2 :]),
    ]
    grads = [capo.last_layer_gradient(p, reduction="sum") for p in parts]
    ids, rows = merge_rows(grads, case["H"], torch.float64, torch.device("cpu"))
    union, total = allreduce_sparse_rows(ids, rows, case["V"], identity)
    m_h, m_f = global_shifts(step, union, total / n, parts, n, identity, chunk_size=3)
    expected = capo.directional_shifts(batch, step, torch.zeros(n, dtype=torch.int64))
    torch.testing.assert_close(
        torch.tensor([m_h, m_f], dtype=torch.float64),
        torch.stack([expected.m_H[0], expected.m_F[0]]),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


def test_global_shifts_without_accepted_tokens_are_nan():
    step = capo.SGDStep(0.1)
    ids, rows = merge_rows([], 4, torch.float64, torch.device("cpu"))
    union, total = allreduce_sparse_rows(ids, rows, 10, identity)
    m_h, m_f = global_shifts(step, union, total, [], 0, identity)
    assert m_h != m_h and m_f != m_f


def test_gather_values_drops_padding_and_nan():
    out = gather_values(torch.tensor([1.0, float("nan"), 3.0]), identity)
    assert out.tolist() == [1.0, 3.0]
    assert gather_values(torch.empty(0), identity).numel() == 0
