"""Memory behaviour of SparseAdamMoments: bounded tables, one validation pass over the gradient rows."""

from __future__ import annotations

import pytest
import torch

import capo
from tests.tolerances import BF16_RTOL


def test_tables_never_hold_more_rows_than_the_vocabulary() -> None:
    """Growth doubles the capacity, but never past V rows (the dense [V, H] size is the worst case)."""
    mom = capo.SparseAdamMoments(vocab_size=100, hidden_size=2)
    mom.update(torch.arange(60), torch.ones(60, 2))
    mom.update(torch.arange(60, 100), torch.ones(40, 2))
    m, v = mom.gather(torch.arange(100))
    assert mom.num_rows == 100
    assert mom.state_dict()["exp_avg"].shape == (100, 2)
    assert mom._m.shape[0] == 100  # capacity: 60 doubled would be 120
    assert torch.equal(m, mom._m[:100]) and v.shape == (100, 2)


def test_a_nonfinite_row_in_a_later_block_is_still_rejected() -> None:
    hidden = 2**16  # 4 MiB blocks of float64 temporaries hold 8 rows
    grads = torch.zeros(20, hidden)
    grads[17, 5] = float("inf")
    mom = capo.SparseAdamMoments(vocab_size=32, hidden_size=hidden)
    with pytest.raises(ValueError, match="non-finite"):
        mom.update(torch.arange(20), grads)
    mom.update(torch.arange(0), torch.zeros(0, hidden))  # an empty update is fine
    assert mom.t == 1


def _track(dtype: torch.dtype | None, steps: int = 300) -> capo.SparseAdamMoments:
    """Moments after ``steps`` updates of ~90 % of 64 rows each step (the rest decay)."""
    g = torch.Generator().manual_seed(0)
    mom = capo.SparseAdamMoments(64, 16, dtype=dtype)
    for _ in range(steps):
        rows = torch.nonzero(torch.rand(64, generator=g) < 0.9).squeeze(1)
        mom.update(rows, torch.randn(rows.numel(), 16, generator=g))
    return mom


def test_bf16_moments_follow_the_float32_moments_without_bias() -> None:
    """bf16 storage (float32 arithmetic, stochastic rounding) tracks the float32 moments: no drift.

    With bf16 arithmetic β2 = 0.999 rounds to 1 and round-to-nearest stalls v (a 0.1 % step is below
    half an ulp): v then drifts upward by several percent. Here the mean relative error of v stays
    within 0.5 % and the median within BF16_RTOL.
    """
    ref, low = _track(None), _track(torch.bfloat16)
    assert low.dtype == torch.bfloat16 and low._m.dtype == torch.bfloat16
    for a, b in zip(low.to_dense(), ref.to_dense(), strict=True):
        rel = (a.float() - b) / b.abs().clamp_min(1e-30)
        assert abs(float(rel.mean())) < 5e-3
        assert float(rel.abs().median()) < BF16_RTOL


def test_capo_moments_dtype_reaches_the_trainer_and_bad_values_are_refused(tmp_path) -> None:
    from tests.capo import _trainer_helpers as H

    tr = H.trainer(str(tmp_path), capo_moments_dtype="bfloat16", max_steps=1)
    tr.train()
    assert tr.capo_moments is not None and tr.capo_moments._m.dtype == torch.bfloat16
    assert tr.capo_moments.t == 1
    with pytest.raises(ValueError, match="capo_moments_dtype"):
        H.config(str(tmp_path), capo_moments_dtype="bf16")
