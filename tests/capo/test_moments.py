import numpy as np
import pytest
import torch

import capo
from tests.capo._batches import adam_pair
from tests.tolerances import EXACT_ATOL, EXACT_RTOL, FLOAT32_ATOL, FLOAT32_RTOL


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.7), (0.0, 0.0)], ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_moments_equal_dense_adam_after_random_sparse_updates(seed, betas):
    """Lazy β^Δt decay of untouched rows reproduces the dense [V, H] Adam recursion."""
    sparse, dense = adam_pair(seed, V=9, H=4, n_updates=7, betas=betas)
    m, v = sparse.to_dense()
    assert sparse.t == dense.t == 7
    np.testing.assert_allclose(m.numpy(), dense.m, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(v.numpy(), dense.v, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_float32_moments_match_dense_adam_to_float32_rounding():
    sparse, dense = adam_pair(3, V=9, H=4, n_updates=7, dtype=torch.float32)
    m, v = sparse.to_dense()
    assert m.dtype == torch.float32
    np.testing.assert_allclose(m.numpy(), dense.m, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    np.testing.assert_allclose(v.numpy(), dense.v, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_read_gives_decayed_rows_and_zeros_for_untouched_rows():
    mom = capo.SparseAdamMoments(
        vocab_size=6, hidden_size=2, betas=(0.5, 0.25), dtype=torch.float64
    )
    mom.update(torch.tensor([1]), torch.tensor([[2.0, -4.0]], dtype=torch.float64))
    mom.update(torch.tensor([3]), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    m, v = mom.read(torch.tensor([1, 0, 1]))
    # m_2[1] = 0.5 * (0.5 * [2, -4]); v_2[1] = 0.25 * (0.75 * [4, 16]); row 0 never touched.
    expected_m = torch.tensor([[0.5, -1.0], [0.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    expected_v = torch.tensor([[0.75, 3.0], [0.0, 0.0], [0.75, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(m, expected_m, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    torch.testing.assert_close(v, expected_v, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    assert mom.num_rows == 2  # memory grows with rows touched, not V


def test_state_dict_round_trip_is_exact():
    sparse, _ = adam_pair(0, V=11, H=3, n_updates=5, dtype=torch.float32)
    restored = capo.SparseAdamMoments(11, 3)
    restored.load_state_dict(sparse.state_dict())
    ids = torch.arange(11)
    for a, b in zip(sparse.read(ids), restored.read(ids), strict=True):
        assert torch.equal(a, b)
    for key, value in sparse.state_dict().items():
        other = restored.state_dict()[key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    g = torch.randn(2, 3)
    sparse.update(torch.tensor([4, 10]), g)
    restored.update(torch.tensor([4, 10]), g)
    for a, b in zip(sparse.to_dense(), restored.to_dense(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "ids,grads,match",
    [
        (torch.tensor([0, 0]), torch.zeros(2, 3), "unique"),
        (torch.tensor([0, 7]), torch.zeros(2, 3), "row_ids"),
        (torch.tensor([0, 1], dtype=torch.int32), torch.zeros(2, 3), "row_ids"),
        (torch.tensor([0, 1]), torch.zeros(2, 4), "row_grads"),
        (torch.tensor([0, 1]), torch.full((2, 3), float("nan")), "row_grads"),
    ],
)
def test_update_rejects_bad_input(ids, grads, match):
    with pytest.raises(ValueError, match=match):
        capo.SparseAdamMoments(7, 3).update(ids, grads)


def test_load_state_dict_rejects_other_sizes():
    state = capo.SparseAdamMoments(7, 3).state_dict()
    with pytest.raises(ValueError, match="vocab_size"):
        capo.SparseAdamMoments(8, 3).load_state_dict(state)


def test_default_moments_follow_float64_gradients_exactly():
    """docs/design.md §3: float64 inputs are computed in float64, so the default tables promote."""
    moments = capo.SparseAdamMoments(vocab_size=5, hidden_size=3)
    g = torch.tensor([[1e-9 + 1.0, 2.0, 3.0]], dtype=torch.float64)
    moments.update(torch.tensor([2]), g)
    m, _ = moments.read(torch.tensor([2]))
    assert m.dtype == torch.float64
    assert m[0, 0].item() == (1 - moments.betas[0]) * g[0, 0].item()
