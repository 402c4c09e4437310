import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import capo
from reference import DenseAdamStep, DenseSGDStep, subset_shifts
from tests.capo._batches import BATCH_CASES, adam_pair, dense_inputs, partitions, random_batch
from tests.tolerances import BF16_RTOL, EXACT_ATOL, EXACT_RTOL, FLOAT32_ATOL, FLOAT32_RTOL

GRANULARITIES = [None, "one-token", "completion", "group", "batch"]


def _steps(case, n_updates):
    sparse, dense = adam_pair(case["seed"], case["V"], case["H"], n_updates)
    return [
        (capo.SGDStep(lr=0.3), DenseSGDStep(lr=0.3)),
        (capo.AdamStep(lr=0.05, moments=sparse), DenseAdamStep(lr=0.05, state=dense)),
    ]


@pytest.fixture(params=BATCH_CASES, ids=lambda c: c["id"])
def case(request):
    return request.param


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("n_updates", [0, 3], ids=lambda n: f"t={n}")
def test_shifts_match_dense_reference_sgd_and_adam(case, granularity, n_updates):
    """m_H, m_F (eqs 10, 58, 63) equal the dense (K·d)×(K·d) reference for every granularity."""
    batch = random_batch(**case)
    subsets = None if granularity is None else partitions(case["N"], case["seed"])[granularity]
    for step, dense_step in _steps(case, n_updates):
        got = capo.directional_shifts(batch, step, subsets, chunk_size=2)
        ref_h, ref_f = subset_shifts(
            *dense_inputs(batch, case["V"]),
            dense_step,
            None if subsets is None else subsets.numpy(),
        )
        np.testing.assert_allclose(got.m_H.numpy(), ref_h, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        np.testing.assert_allclose(got.m_F.numpy(), ref_f, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        assert got.m_H.dtype == torch.float64


def test_grad_dot_is_first_order_term_and_nonnegative_for_sgd(case):
    """⟨g_b, Δ_b⟩ = η‖g_b‖² ≥ 0 for SGD; whole-batch ⟨g, Δ⟩ equals the token-sum identity."""
    batch = random_batch(**case)
    whole = torch.zeros(case["N"], dtype=torch.int64)
    got = capo.directional_shifts(batch, capo.SGDStep(0.3), whole)
    _, grads = capo.last_layer_gradient(batch)
    np.testing.assert_allclose(
        got.grad_dot.numpy(), [0.3 * float((grads**2).sum())], rtol=EXACT_RTOL, atol=EXACT_ATOL
    )


@pytest.mark.parametrize("granularity", [None, "group"], ids=str)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, FLOAT32_RTOL), (torch.bfloat16, BF16_RTOL)])
def test_low_precision_inputs_accumulate_in_float32(dtype, rtol, granularity):
    case = BATCH_CASES[0]
    b64 = random_batch(**case)
    low = capo.TokenBatch(
        hidden=b64.hidden.to(dtype),
        support_ids=b64.support_ids,
        support_probs=b64.support_probs.to(torch.float32),
        action_index=b64.action_index,
        advantages=b64.advantages.to(dtype),
    )
    subsets = None if granularity is None else partitions(case["N"], 0)[granularity]
    sparse, dense = adam_pair(0, case["V"], case["H"], 2, dtype=torch.float32)
    pairs = [
        (capo.SGDStep(0.3), DenseSGDStep(0.3)),
        (capo.AdamStep(0.05, sparse), DenseAdamStep(0.05, dense)),
    ]
    for step, dense_step in pairs:
        got = capo.directional_shifts(low, step, subsets)
        ref_h, ref_f = subset_shifts(
            *dense_inputs(low, case["V"]), dense_step, None if subsets is None else subsets.numpy()
        )
        assert got.m_H.dtype == torch.float32
        np.testing.assert_allclose(got.m_H.numpy(), ref_h, rtol=rtol, atol=FLOAT32_ATOL)
        np.testing.assert_allclose(got.m_F.numpy(), ref_f, rtol=rtol, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("granularity", [None, "group"], ids=str)
def test_empty_batch_returns_empty_tensors(granularity):
    batch = random_batch(0, N=0, k=3, V=5, H=2)
    moments = capo.SparseAdamMoments(5, 2, dtype=torch.float64)
    subsets = None if granularity is None else torch.zeros(0, dtype=torch.int64)
    for step in (capo.SGDStep(0.1), capo.AdamStep(0.1, moments)):
        out = capo.directional_shifts(batch, step, subsets)
        assert out.m_H.shape == out.m_F.shape == (0,)
        assert capo.select(out, capo.Thresholds(-1.0, 1.0, 1.0)).shape == (0,)


def _corrupt(batch, bad_hidden, bad_adv):
    h, adv = batch.hidden.clone(), batch.advantages.clone()
    h[bad_hidden, 0] = float("nan")
    adv[bad_adv] = float("inf")
    return capo.TokenBatch(h, batch.support_ids, batch.support_probs, batch.action_index, adv)


@pytest.mark.parametrize("granularity", [None, "completion"], ids=str)
def test_nonfinite_tokens_are_rejected_and_leave_the_rest_unchanged(granularity):
    case = BATCH_CASES[5]
    batch = random_batch(**case)
    bad = _corrupt(batch, bad_hidden=[2], bad_adv=[5, 7])
    keep = torch.ones(case["N"], dtype=torch.bool)
    keep[[2, 5, 7]] = False
    subsets = None if granularity is None else partitions(case["N"], 0)["completion"]
    sparse, _ = adam_pair(0, case["V"], case["H"], 2)
    step = capo.AdamStep(0.05, sparse)
    got = capo.directional_shifts(bad, step, subsets, chunk_size=3)
    clean = capo.directional_shifts(
        batch.select_tokens(keep), step, None if subsets is None else subsets[keep], chunk_size=3
    )
    assert got.n_nonfinite == 3
    assert torch.equal(got.token_finite, keep)
    accepted = capo.select(got, capo.Thresholds())
    if subsets is None:
        assert not accepted[~keep].any() and accepted[keep].all()
        torch.testing.assert_close(got.m_H[keep], clean.m_H, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        torch.testing.assert_close(got.m_F[keep], clean.m_F, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    else:  # tokens 5, 7 are not the whole of completion 1 or 2: those subsets survive on the rest
        torch.testing.assert_close(got.m_H, clean.m_H, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        torch.testing.assert_close(got.m_F, clean.m_F, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        assert accepted.all()


def test_subset_with_only_nonfinite_tokens_is_rejected():
    batch = random_batch(0, N=4, k=2, V=5, H=3)
    bad = _corrupt(batch, bad_hidden=[0], bad_adv=[1])
    out = capo.directional_shifts(bad, capo.SGDStep(0.1), torch.tensor([0, 0, 1, 1]))
    assert out.n_tokens.tolist() == [0, 2]
    assert capo.select(out, capo.Thresholds()).tolist() == [False, True]
    assert torch.isnan(out.m_H[0]) and torch.isfinite(out.m_H[1])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 12),
    k=st.integers(1, 4),
    extra_v=st.integers(0, 4),
    h=st.integers(1, 4),
    n_subsets=st.one_of(st.none(), st.integers(1, 5)),
    adam=st.booleans(),
    chunk=st.integers(1, 14),
)
def test_shifts_invariant_to_token_permutation_and_chunk_size(
    seed, n, k, extra_v, h, n_subsets, adam, chunk
):
    V = k + extra_v
    batch = random_batch(seed, N=n, k=k, V=V, H=h)
    g = torch.Generator().manual_seed(seed)
    subsets = None if n_subsets is None else torch.randint(0, n_subsets, (n,), generator=g)
    step = capo.AdamStep(0.05, adam_pair(seed, V, h, 2)[0]) if adam else capo.SGDStep(0.2)
    base = capo.directional_shifts(batch, step, subsets, num_subsets=n_subsets)
    perm = torch.randperm(n, generator=g)
    permuted = capo.directional_shifts(
        batch.select_tokens(perm),
        step,
        None if subsets is None else subsets[perm],
        num_subsets=n_subsets,
        chunk_size=chunk,
    )
    order = perm if subsets is None else torch.arange(base.num_subsets)
    for name in ("m_H", "m_F"):
        torch.testing.assert_close(
            getattr(permuted, name),
            getattr(base, name)[order],
            rtol=EXACT_RTOL,
            atol=EXACT_ATOL,
            equal_nan=True,  # empty subsets
        )


def test_adam_token_level_does_not_touch_the_moments():
    sparse, _ = adam_pair(0, 6, 3, 2)
    before = sparse.state_dict()
    capo.directional_shifts(random_batch(0, N=5, k=2, V=6, H=3), capo.AdamStep(0.1, sparse))
    after = sparse.state_dict()
    assert before["t"] == after["t"]
    assert all(torch.equal(before[k], after[k]) for k in ("row_ids", "exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"subsets": torch.zeros(3, dtype=torch.int64)}, "subsets"),
        ({"subsets": torch.zeros(5, dtype=torch.int32)}, "subsets"),
        ({"subsets": torch.tensor([0, 1, -1, 0, 0])}, "subsets"),
        ({"subsets": torch.tensor([0, 1, 2, 0, 0]), "num_subsets": 2}, "num_subsets"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    batch = random_batch(0, N=5, k=2, V=6, H=3)
    with pytest.raises(ValueError, match=match):
        capo.directional_shifts(batch, capo.SGDStep(0.1), **kwargs)


def test_adam_checks_vocab_and_hidden_size_against_the_moments():
    batch = random_batch(0, N=5, k=2, V=6, H=3)
    with pytest.raises(ValueError, match="support_ids"):
        capo.directional_shifts(batch, capo.AdamStep(0.1, capo.SparseAdamMoments(4, 3)))
    with pytest.raises(ValueError, match="hidden"):
        capo.directional_shifts(batch, capo.AdamStep(0.1, capo.SparseAdamMoments(6, 4)))
    with pytest.raises(ValueError, match="step"):
        capo.directional_shifts(batch, "adam")  # type: ignore[arg-type]
