"""The naive baseline of ``benchmarks/`` computes the same numbers as ``capo`` (float64, small shapes).

A correctness test, not a timed one: the benchmark's speed-ups only mean something if both sides agree.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import capo
from tests.tolerances import EXACT_ATOL, EXACT_RTOL

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "naive.py"
_spec = importlib.util.spec_from_file_location("capo_benchmarks_naive", _PATH)
assert _spec is not None and _spec.loader is not None
naive = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = naive
_spec.loader.exec_module(naive)

CASES: list[dict[str, Any]] = [
    {"id": "N12-k3-V9-H5", "seed": 0, "N": 12, "k": 3, "V": 9, "H": 5},
    {"id": "N30-k5-V6-H4-repeats", "seed": 1, "N": 30, "k": 5, "V": 6, "H": 4},
    {"id": "N7-k1-V5-H3", "seed": 2, "N": 7, "k": 1, "V": 5, "H": 3},
]
LR = 0.05


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=EXACT_RTOL, atol=EXACT_ATOL)


@pytest.fixture(params=CASES, ids=[c["id"] for c in CASES])
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    c = request.param
    g = torch.Generator().manual_seed(c["seed"])
    n, k, v, h = c["N"], c["k"], c["V"], c["H"]
    batch = capo.TokenBatch(
        hidden=torch.randn(n, h, generator=g, dtype=torch.float64),
        support_ids=torch.rand(n, v, generator=g).argsort(dim=1)[:, :k],
        support_probs=torch.softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), 1),
        action_index=torch.randint(0, k, (n,), generator=g),
        advantages=torch.randn(n, generator=g, dtype=torch.float64),
    )
    mom = capo.SparseAdamMoments(v, h, dtype=torch.float64)
    for _ in range(3):  # some rows touched at different steps: exercises the lazy decay
        rows = torch.randperm(v, generator=g)[: max(1, v // 2)]
        mom.update(rows, 0.1 * torch.randn(rows.numel(), h, generator=g, dtype=torch.float64))
    return {"batch": batch, "mom": mom, "V": v}


@pytest.mark.parametrize("adam", [False, True], ids=["sgd", "adam"])
def test_token_level_shifts_agree(case: dict[str, Any], adam: bool) -> None:
    b, mom = case["batch"], case["mom"]
    step = capo.AdamStep(LR, mom) if adam else capo.SGDStep(LR)
    got = capo.directional_shifts(b, step, chunk_size=4)
    m_h, m_f = naive.shifts_token(b, LR, naive.DenseAdam.from_sparse(mom) if adam else None)
    close(got.m_H, m_h)
    close(got.m_F, m_f)


@pytest.mark.parametrize("adam", [False, True], ids=["sgd", "adam"])
@pytest.mark.parametrize("blocks", [1, 3], ids=["whole-batch", "blocks-of-3"])
def test_subset_level_shifts_agree(case: dict[str, Any], adam: bool, blocks: int) -> None:
    b, mom = case["batch"], case["mom"]
    subsets = torch.div(torch.arange(b.num_tokens), blocks, rounding_mode="floor")
    if blocks == 1:
        subsets = torch.zeros_like(subsets)
    step = capo.AdamStep(LR, mom) if adam else capo.SGDStep(LR)
    got = capo.directional_shifts(b, step, subsets, chunk_size=2)
    dense = naive.DenseAdam.from_sparse(mom) if adam else None
    m_h, m_f = naive.shifts_subsets(b, LR, dense, subsets)
    close(got.m_H, m_h)
    close(got.m_F, m_f)


def test_select_agrees(case: dict[str, Any]) -> None:
    shifts = capo.directional_shifts(case["batch"], capo.SGDStep(LR))
    th = capo.Thresholds(hessian_low=-0.05, hessian_high=0.05, fisher_max=0.02)
    assert torch.equal(capo.select(shifts, th), naive.select(shifts.m_H, shifts.m_F, th))


def test_batch_gradient_and_moments_update_agree(case: dict[str, Any]) -> None:
    b, mom = case["batch"], case["mom"]
    dense = naive.DenseAdam.from_sparse(mom)
    rows, grads = capo.last_layer_gradient(b, chunk_size=3)
    n_rows, n_grads = naive.batch_gradient(b)
    assert torch.equal(rows, n_rows)
    close(grads, n_grads)
    mom.update(rows, grads)
    dense.update_loop(n_rows, n_grads)
    m, v = mom.to_dense()
    close(m, dense.m)
    close(v, dense.v)
    assert mom.t == dense.t


def test_support_agrees(case: dict[str, Any]) -> None:
    b, v = case["batch"], case["V"]
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(v, b.hidden_size, generator=g, dtype=torch.float64)
    sampled = torch.randint(0, v, (b.num_tokens,), generator=g)
    k = b.support_size
    got = capo.support_from_hidden(b.hidden, weight, sampled, k, chunk_size=5)
    ids, p, index = naive.support(b.hidden, weight, sampled, k)
    assert torch.equal(got.support_ids, ids)
    assert torch.equal(got.action_index, index)
    close(got.support_probs, p)
