import numpy as np
import pytest
import torch

import capo
from reference import DenseAdamStep, DenseSGDStep
from tests.capo._batches import adam_pair
from tests.tolerances import EXACT_ATOL, EXACT_RTOL


@pytest.mark.parametrize("n_updates", [0, 4])
def test_adam_step_rows_equal_dense_adam_step(n_updates):
    """Δ = η m̂/(√v̂ + ε) with prospective moments and bias correction at t + 1 (docs/design.md §2)."""
    V, H = 8, 3
    sparse, dense = adam_pair(0, V, H, n_updates)
    g = torch.randn(V, H, dtype=torch.float64)
    rows = torch.tensor([5, 0, 2])
    full = np.zeros((V, H))
    full[rows.numpy()] = g[rows].numpy()
    got = capo.AdamStep(0.01, sparse).propose(rows, g[rows])
    ref = DenseAdamStep(0.01, dense).propose(full)[rows.numpy()]
    np.testing.assert_allclose(got.numpy(), ref, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    assert sparse.t == n_updates  # proposing changes nothing


def test_sgd_step_is_lr_times_gradient():
    g = torch.randn(4, 3, dtype=torch.float64)
    got = capo.SGDStep(0.5).propose(torch.arange(4), g)
    np.testing.assert_allclose(got.numpy(), DenseSGDStep(0.5).propose(g.numpy()), rtol=EXACT_RTOL)


def test_bad_step_arguments():
    with pytest.raises(ValueError, match="lr"):
        capo.SGDStep(float("nan"))
    with pytest.raises(ValueError, match="lr"):
        capo.AdamStep(-1.0, capo.SparseAdamMoments(3, 2))
    with pytest.raises(ValueError, match="moments"):
        capo.AdamStep(0.1, None)  # type: ignore[arg-type]
