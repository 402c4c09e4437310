"""The top-k support folded from the policy forward's own logit tiles (capo.forward_support) is the support
:func:`capo.support.support_from_hidden` recomputes (docs/design.md §2): same ids (only ties may swap), same π
and log π(a), for every way TRL's fused LM head tiles the rows and the vocabulary; the trainer then never
recomputes it, and falls back to recomputing it, with one warning, when it cannot take it from the forward.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import trl.kernels.chunked_logprob as kernels
import trl.trainer.utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

import capo
import capo.forward_support as fs
import capo.masking
import capo.optimizer_step
from capo import metrics
from capo.forward_support import ForwardSupport, TileSupport, capture_forward_support
from capo.hidden_capture import capture_hidden, completion_hidden
from capo.support import Support, support_from_hidden, support_from_logits
from tests.capo import _golden
from tests.capo import _trainer_helpers as H
from tests.tolerances import EXACT_ATOL, EXACT_RTOL, FLOAT32_ATOL, FLOAT32_RTOL

B, P, T, K, TAU = 4, 5, 7, 8, 0.7
TOL = {torch.float64: (EXACT_RTOL, EXACT_ATOL), torch.float32: (FLOAT32_RTOL, FLOAT32_ATOL)}


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, P + T] ids and attention mask (a left-padded prompt, ragged completions), [B, T] valid (a tool hole)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[1, :2] = 0
    mask[0, -3:] = 0
    mask[2, -1:] = 0
    valid = mask[:, -T:].bool()
    valid[3, 2] = False
    return ids, mask, valid


def assert_same_support(got: Support, ref: Support, dtype: torch.dtype) -> None:
    """Same id set per row with the same π per id (tie swaps allowed), same sampled id and log π(a)."""
    rtol, atol = TOL[dtype]
    got_ids, order = got.support_ids.sort(dim=1)
    ref_ids, ref_order = ref.support_ids.sort(dim=1)
    assert torch.equal(got_ids, ref_ids)
    torch.testing.assert_close(
        got.support_probs.gather(1, order),
        ref.support_probs.gather(1, ref_order),
        rtol=rtol,
        atol=atol,
    )
    sampled = got.support_ids.gather(1, got.action_index[:, None])
    assert torch.equal(sampled, ref.support_ids.gather(1, ref.action_index[:, None]))
    torch.testing.assert_close(got.sampled_logprob, ref.sampled_logprob, rtol=rtol, atol=atol)


def forward_and_reference(dtype: torch.dtype, seed: int = 0, ids=None) -> tuple[Support, Support]:
    """The support folded from TRL's fused forward, and support_from_hidden on its captured hidden states."""
    model = H.tiny_model(dtype)
    add_fused_lm_head(model, temperature=TAU, outputs=("log_probs", "entropy"))
    base_ids, mask, valid = batch(seed)
    ids = base_ids if ids is None else ids
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-T] = -100
    vocab = model.config.vocab_size
    tiles = TileSupport(ids, mask, T, valid, K, TAU, vocab, dtype)
    with capture_hidden(model) as cap, capture_forward_support(tiles), torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    got = tiles.support(out.log_probs[:, -T:])
    assert tiles.failure is None and got is not None
    hidden = completion_hidden(cap.hidden, T)[valid]
    weight = model.lm_head.weight.detach()
    return got, support_from_hidden(hidden, weight, ids[:, -T:][valid], K, TAU)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_support_equals_support_from_hidden(dtype):
    """One vocabulary tile, one token chunk (TRL's defaults on the tiny model), full rows (no Triton)."""
    got, ref = forward_and_reference(dtype)
    assert got.support_probs.dtype == ref.support_probs.dtype == got.sampled_logprob.dtype
    assert_same_support(got, ref, dtype)


def test_many_vocabulary_tiles_and_token_chunks_give_the_same_support(monkeypatch):
    """Tiles of 7 columns (< k, a ragged last one) and token chunks of 5 rows: the same support."""
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 7)
    monkeypatch.setattr(kernels, "TOKEN_CHUNK_SIZE", 5)
    got, ref = forward_and_reference(torch.float64)
    assert_same_support(got, ref, torch.float64)


def test_a_sampled_id_outside_the_top_k_replaces_the_kth():
    """Each completion's last token is its position's least likely id: it is the k-th support entry."""
    model = H.tiny_model(torch.float64)
    ids, mask, valid = batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    last = [int(mask[b].nonzero().max()) for b in range(B)]  # causal: earlier logits do not change
    for b, p in enumerate(last):
        ids[b, p] = int(logits[b, p - 1].argmin())
    got, ref = forward_and_reference(torch.float64, ids=ids)
    assert_same_support(got, ref, torch.float64)
    rows = torch.cumsum(valid.flatten(), 0).view(B, T) - 1
    for b, p in enumerate(last):
        if valid[b, p - P]:
            i = int(rows[b, p - P])
            assert int(got.action_index[i]) == K - 1 and int(got.support_ids[i, -1]) == ids[b, p]
            top = torch.topk(logits[b, p - 1], K - 1).indices
            assert set(got.support_ids[i, :-1].tolist()) == set(top.tolist())


class FakeTritonKernel:
    """Stands in for TRL's Triton ``_forward_kernel`` on a CPU: ``kernel[(n,)](...)`` runs the torch fold."""

    def __init__(self) -> None:
        self.arg_names = fs._arg_names(kernels._forward_kernel)  # the un-jitted kernel's parameters
        self.fold, self.launches = (
            kernels._forward_tile,
            0,
        )  # TRL's own torch fold, never the wrapped one

    def __getitem__(self, grid):
        self.launches += 1
        return self.fold


def fold_in_trl_order(
    logits: torch.Tensor, targets: torch.Tensor, rows: int, cols: int, triton: bool, **scalars
) -> None:
    """Hand [R, V] logits to TRL's (current, maybe wrapped) fold as its forward loops: row blocks, then tiles."""
    n_rows, vocab = logits.shape
    stats = [torch.zeros(n_rows, dtype=torch.float32) for _ in range(7)]
    stats[0].fill_(-torch.inf)
    flags = {f"HAS_{n.upper()}": False for n in kernels.OPTIONAL_OUTPUTS}
    scalars = {**dict(logit_scale=1.0, softcap=1.0, inv_t=1 / TAU, HAS_SOFTCAP=False), **scalars}
    for r0 in range(0, n_rows, rows):
        sl = slice(r0, min(r0 + rows, n_rows))
        for start in range(0, vocab, cols):
            tile = logits[sl, start : start + cols].contiguous()
            n = tile.shape[0]
            fold = kernels._forward_kernel[(n,)] if triton else kernels._forward_tile
            fold(tile, tile.stride(0), targets[sl], *(s[sl] for s in stats), start, tile.shape[1],
                 BLOCK_SIZE=1024, **flags, **scalars)  # fmt: skip


def test_compact_rows_map_to_the_valid_completion_tokens(monkeypatch):
    """Triton's compact rows (completion tokens with a label, row-major; one tool-masked) fed straight to the
    wrapped kernel in blocks of 3 rows and tiles of 11 columns: the support of the valid ones."""
    monkeypatch.setattr(kernels, "_forward_kernel", FakeTritonKernel())
    ids, mask, valid = batch()
    labelled = mask[:, -T:].bool()
    vocab = 50
    logits = torch.randn(int(labelled.sum()), vocab, generator=torch.Generator().manual_seed(3))
    targets = ids[:, -T:][labelled]
    tiles = TileSupport(ids, mask, T, valid, K, TAU, vocab, torch.float64)
    with capture_forward_support(tiles):
        fold_in_trl_order(logits.double(), targets, rows=3, cols=11, triton=True)
    logps = torch.log_softmax(logits.double() / TAU, 1).gather(1, targets[:, None])[:, 0]
    full = torch.zeros(B, T, dtype=torch.float64).masked_scatter(labelled, logps)
    got = tiles.support(full)
    assert tiles.failure is None and tiles.compact is True and got is not None
    keep = valid[labelled]
    ref = support_from_logits(logits.double()[keep], targets[keep], K, TAU)
    assert_same_support(got, ref, torch.float64)


def test_trls_compact_forward_gives_the_same_support(monkeypatch):
    """TRL's own forward made to score compactly on a CPU (its Triton switch on, the fake kernel folding)."""
    fake = FakeTritonKernel()
    monkeypatch.setattr(kernels, "_forward_kernel", fake)
    monkeypatch.setattr(kernels, "_use_triton", lambda device: True)
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: True)
    got, ref = forward_and_reference(torch.float64)
    assert fake.launches > 0
    assert_same_support(got, ref, torch.float64)


@pytest.mark.parametrize(
    "change, reason",
    [(dict(logit_scale=2.0), "scaled or soft-capped"), (dict(inv_t=1.0), "1/τ"), ({}, "rows")],
)
def test_what_the_capture_cannot_vouch_for_falls_back_with_one_warning(monkeypatch, change, reason):
    """Scaled logits, another temperature, one compact row missing: no support, and one warning for two
    forwards (the caller then recomputes the support with support_from_hidden)."""
    monkeypatch.setattr(kernels, "_forward_kernel", FakeTritonKernel())
    ids, mask, valid = batch()
    labelled = mask[:, -T:].bool()
    n = int(labelled.sum()) - (0 if change else 1)
    logits = torch.randn(n, 50, dtype=torch.float64)
    source = ForwardSupport(50, K, TAU, torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with source.capture(ids, mask, T, valid) as tiles:
                fold_in_trl_order(logits, ids[:, -T:][labelled], 4, 16, True, **change)
            assert source.result(tiles, torch.zeros(B, T)) is None
    assert tiles is not None and reason in str(tiles.failure)
    assert len([w for w in caught if "recomputes the top-k support" in str(w.message)]) == 1


def counted(monkeypatch) -> list[int]:
    """Count the calls of support_from_hidden from the library (the masking test, the step's store)."""
    calls = [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        return support_from_hidden(*args, **kwargs)

    monkeypatch.setattr(capo.masking, "support_from_hidden", counting)
    monkeypatch.setattr(capo.optimizer_step, "support_from_hidden", counting)
    return calls


def capo_metrics(trainer) -> list[dict[str, float]]:
    return [
        {k: v for k, v in h.items() if k.startswith("capo/")} for h in trainer.state.log_history
    ]


def test_training_never_recomputes_the_support_and_logs_what_recomputing_logs(
    tmp_path, monkeypatch
):
    """The golden CAPO run (global shifts, last-layer KL prediction, true KL) for 2 steps: no call of
    support_from_hidden; forcing the fallback (one warning) calls it and logs the same capo/* metrics."""
    calls = counted(monkeypatch)
    run = dict(_golden.RUNS["capo_adam"], max_steps=2)
    fast = H.trainer(str(tmp_path / "fast"), **run)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*recomputes the top-k support")
        fast.train()
    assert calls[0] == 0
    monkeypatch.setattr(fs, "missing_trl_internals", lambda: "forced by the test")
    slow = H.trainer(str(tmp_path / "slow"), **run)
    with pytest.warns(UserWarning, match="forced by the test") as caught:
        slow.train()
    assert calls[0] > 0
    assert len([w for w in caught if "recomputes the top-k support" in str(w.message)]) == 1
    got, ref = capo_metrics(fast), capo_metrics(slow)
    assert [sorted(h) for h in got] == [sorted(h) for h in ref] and any(got)
    for g, r in zip(got, ref, strict=True):
        for name in g:
            assert g[name] == pytest.approx(r[name], rel=EXACT_RTOL, abs=EXACT_ATOL), name


def test_the_kl_prediction_without_the_curvature_model_takes_the_forwards_support(
    tmp_path, monkeypatch
):
    """capo_enabled=False with a last-layer KL prediction: the step's store holds the forward's support."""
    calls = counted(monkeypatch)
    trainer = H.trainer(
        str(tmp_path),
        capo_enabled=False,
        capo_log_true_kl=True,
        capo_kl_model="last_layer",
        max_steps=1,
    )
    trainer.train()
    assert calls[0] == 0
    assert any(metrics.KL_PREDICTED in h for h in trainer.state.log_history)


def test_accept_micro_batch_takes_a_given_support_as_its_own():
    """A given support gives the selection that computing it from the head gives; neither one: ValueError."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(B, T, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(30, 6, generator=g, dtype=torch.float64)
    ids, valid = torch.randint(0, 30, (B, T), generator=g), batch()[2]
    common = dict(support_size=K, temperature=TAU, step=capo.SGDStep(0.1), granularity="token",
                  thresholds=capo.Thresholds(fisher_max=1e-2))  # fmt: skip
    args = (hidden, ids, valid, torch.ones(B, T, dtype=torch.float64))
    given = support_from_hidden(hidden[valid], weight, ids[valid], K, TAU)
    a = capo.masking.accept_micro_batch(*args, weight=weight, **common)
    b = capo.masking.accept_micro_batch(*args, support=given, **common)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.shifts.m_H, b.shifts.m_H)
    with pytest.raises(ValueError, match="weight or a support"):
        capo.masking.accept_micro_batch(*args, **common)
