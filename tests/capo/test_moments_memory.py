"""Memory behaviour of SparseAdamMoments: bounded tables, one validation pass over the gradient rows."""

from __future__ import annotations

import pytest
import torch

import capo


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
