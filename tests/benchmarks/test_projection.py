"""The projection's counting is right at small shapes: allocations, FLOPs, and the fit's extrapolation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import projection
from allocations import OpCounter
from projection_step import measure_step, rows_key

import capo

H, V, K = 16, 512, 4


def test_counter_counts_allocations_views_and_frees_exactly() -> None:
    with OpCounter() as c:
        with c.phase("p") as p:
            x = torch.empty(1000)  # 4000 B
            view = x[10:]  # a view allocates nothing
            y = x * 2  # 4000 B
            del x  # still alive through the view
            z = y @ torch.ones(1000, 3)  # ones 12000 B, freed at once; z 12 B
            del view  # frees x
        assert (p.live_end, p.peak) == (4012, 20012)
        del y, z
        assert c.live == 0
    assert [op.flops for op in p.ops if op.name == "aten.mm"] == [2 * 1000 * 3]


def test_counter_agrees_with_the_storages_select_tokens_returns() -> None:
    """What accept_micro_batch leaves alive, counted op by op, equals the bytes of the storages it returns."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(V, H, generator=g, dtype=torch.bfloat16)
    hidden = torch.randn(2, 30, H, generator=g).bfloat16()
    ids = torch.randint(0, V, (2, 30), generator=g)
    valid = torch.rand(2, 30, generator=g) < 0.8
    adv = torch.randn(2, 30, generator=g)
    with OpCounter() as c, c.phase("select") as p:
        sel = capo.masking.accept_micro_batch(
            hidden, ids, valid, adv, weight=weight, bias=None, support_size=K, temperature=0.9,
            step=capo.SGDStep(1e-3), thresholds=capo.Thresholds(), granularity="token",
        )  # fmt: skip
    tensors = [v for v in vars(sel).values() if isinstance(v, torch.Tensor)]
    tensors += [v for v in vars(sel.batch).values() if isinstance(v, torch.Tensor)]
    tensors += [v for v in vars(sel.shifts).values() if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    storages.pop(valid.untyped_storage().data_ptr(), None)  # the caller's own mask
    assert p.retained >= sum(storages.values())  # plus what the dataclasses keep out of sight
    assert p.retained <= sum(storages.values()) + 64 * 8


@pytest.mark.usefixtures("fused_kernels")
def test_support_recomputed_from_hidden_is_the_logits_matmul() -> None:
    """Recomputing the support is the selection's only matmul: the [n, H] x [H, V] logits product."""
    q = measure_step(
        H, V, K, micro_batches=1, n=64, pool=32, dtype=torch.bfloat16, support="hidden"
    )
    assert q["work.select.flops"] == 2 * 64 * H * V


@pytest.mark.usefixtures("fused_kernels")
def test_support_from_the_forward_runs_no_matmul() -> None:
    """As in training: the support folded from TRL's tiles, the fused kernel: no FLOPs of matmuls."""
    q = measure_step(H, V, K, micro_batches=1, n=64, pool=32, dtype=torch.bfloat16)
    assert q["work.select.flops"] == q["work.support.flops"] == 0
    assert q["work.support.kernels"] > 0  # the fold of each tile is counted


@pytest.mark.usefixtures("fused_kernels")
def test_fit_predicts_a_held_out_shape() -> None:
    """q = a + b·n + c·U fitted on a grid predicts a larger, unseen (n, U) within 2 %."""
    runs = [
        measure_step(H, V, K, 2, n, pool, torch.bfloat16)
        for n, pool in [(64, 32), (128, 32), (64, 128), (128, 128), (96, 64)]
    ]
    held_out = measure_step(H, V, K, 2, 256, 200, torch.bfloat16)
    for key in ("mem.peak_forward", "mem.peak_step_end", "mem.gradient.retained"):
        (a, b, c), _ = projection.fit_linear(runs, key)
        predicted = a + b * held_out["n"] + c * held_out[rows_key(key)]
        assert math.isclose(predicted, held_out[key], rel_tol=0.02), key


@pytest.mark.usefixtures("fused_kernels")
@pytest.mark.slow
def test_quick_projection_writes_every_named_buffer(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert projection.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for _, keys, _ in projection.MEMORY_ROWS:
        assert sum(result["projected"][key]["value"] for key in keys.split("+")) >= 0.0
