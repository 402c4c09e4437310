import numpy as np
import pytest
import torch

import capo
from reference import DenseAdamState, DenseAdamStep, DenseSGDStep, subset_shifts
from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from toy_mdps.cases import CASES, build_case
from toy_mdps.sampling import sample_tokens


def brute_force_support(logits, sampled, k, temperature):
    """Full softmax over V, then the top-k set (sampled id replacing the k-th if absent)."""
    z = logits / temperature
    full = torch.softmax(z, dim=1)
    ids, probs = [], []
    for i in range(z.shape[0]):
        top = torch.argsort(z[i], descending=True)[:k].tolist()
        if int(sampled[i]) not in top:
            top[-1] = int(sampled[i])
        ids.append(sorted(top))
        probs.append(full[i, sorted(top)] / full[i, top].sum())
    return torch.tensor(ids), torch.stack(probs), torch.log(full.gather(1, sampled[:, None]))[:, 0]


def sorted_rows(support):
    order = torch.argsort(support.support_ids, dim=1)
    return support.support_ids.gather(1, order), support.support_probs.gather(1, order)


@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_support_from_logits_matches_full_softmax(k, temperature):
    g = torch.Generator().manual_seed(k)
    N, V = 11, 9
    logits = 3 * torch.randn(N, V, generator=g, dtype=torch.float64)
    sampled = torch.randint(0, V, (N,), generator=g)  # often outside the top k
    sup = capo.support_from_logits(logits, sampled, k, temperature, chunk_size=4)
    ids, probs, logprob = brute_force_support(logits, sampled, k, temperature)
    got_ids, got_probs = sorted_rows(sup)
    assert torch.equal(got_ids, ids)
    torch.testing.assert_close(got_probs, probs, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    torch.testing.assert_close(sup.sampled_logprob, logprob, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    assert torch.equal(sup.support_ids.gather(1, sup.action_index[:, None])[:, 0], sampled)
    sup.token_batch(torch.randn(N, 2, dtype=torch.float64), torch.randn(N, dtype=torch.float64))


def test_support_from_hidden_and_logit_chunks_agree_with_whole_logits():
    g = torch.Generator().manual_seed(0)
    N, V, H = 13, 20, 6
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(V, H, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64)
    sampled = torch.randint(0, V, (N,), generator=g)
    whole = capo.support_from_logits(h @ W.T + b, sampled, 4, 0.9)
    from_hidden = capo.support_from_hidden(h, W, sampled, 4, 0.9, bias=b, chunk_size=5)
    chunks = capo.support_from_logits(iter((h @ W.T + b).split([3, 0, 10])), sampled, 4, 0.9)
    for other in (from_hidden, chunks):
        assert torch.equal(other.support_ids, whole.support_ids)
        assert torch.equal(other.action_index, whole.action_index)
        torch.testing.assert_close(
            other.support_probs, whole.support_probs, rtol=EXACT_RTOL, atol=0
        )


def test_support_bad_arguments():
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="sampled_ids"):
        capo.support_from_logits(logits, torch.tensor([0, 1, 2, 5]), 2)
    with pytest.raises(ValueError, match="sampled_ids"):
        capo.support_from_logits(logits, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="k must"):
        capo.support_from_logits(logits, torch.tensor([0, 1, 2, 3]), 6)
    with pytest.raises(ValueError, match="temperature"):
        capo.support_from_logits(logits, torch.tensor([0, 1, 2, 3]), 2, temperature=0.0)
    with pytest.raises(ValueError, match="weight"):
        capo.support_from_hidden(
            torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.int64), 2
        )


def test_support_of_empty_batch():
    sup = capo.support_from_logits(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64), 3)
    assert sup.support_ids.shape == (0, 3) and sup.support_probs.shape == (0, 3)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_toy_mdp_shifts_per_trajectory_match_reference(case):
    """Support extraction + shifts on toy-MDP rollouts equal the dense reference (eq 10 per subset)."""
    toy = build_case(case)
    probs = toy.probs()
    rng = np.random.default_rng(case["seed"])
    samples = sample_tokens(toy.mdp, probs, toy.evaluate(), 4, rng, features=toy.features)
    K, d = toy.W.shape
    k = toy.top_k or K
    h = torch.from_numpy(samples.features)
    sup = capo.support_from_hidden(
        h, torch.from_numpy(toy.W), torch.from_numpy(samples.actions), k, toy.temperature
    )
    dense_p = torch.zeros(h.shape[0], K, dtype=torch.float64).scatter_(
        1, sup.support_ids, sup.support_probs
    )
    np.testing.assert_allclose(dense_p.numpy(), samples.probs, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    batch = sup.token_batch(h, torch.from_numpy(samples.weighted_advantages))
    subsets = torch.from_numpy(samples.trajectory_ids)
    moments = capo.SparseAdamMoments(K, d, dtype=torch.float64)
    state = DenseAdamState(K, d)
    g = np.random.default_rng(0).normal(size=(K, d))
    moments.update(torch.arange(K), torch.from_numpy(g))
    state.update(g)
    pairs = [
        (capo.SGDStep(0.5), DenseSGDStep(0.5)),
        (capo.AdamStep(0.05, moments), DenseAdamStep(0.05, state)),
    ]
    for step, dense_step in pairs:
        for sub in (None, subsets):
            got = capo.directional_shifts(batch, step, sub)
            ref_h, ref_f = subset_shifts(
                samples.features, samples.probs, samples.actions, samples.weighted_advantages,
                dense_step, None if sub is None else sub.numpy(),
            )  # fmt: skip
            np.testing.assert_allclose(got.m_H.numpy(), ref_h, rtol=EXACT_RTOL, atol=EXACT_ATOL)
            np.testing.assert_allclose(got.m_F.numpy(), ref_f, rtol=EXACT_RTOL, atol=EXACT_ATOL)
