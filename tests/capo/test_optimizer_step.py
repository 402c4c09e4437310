"""The CAPO step object from plain tensors (no TRL, no model): what two micro-batches add, what finish makes.

The step's moments update, global shifts and counts equal those computed directly on the union of the
micro-batches' applied tokens (:func:`capo.last_layer_gradient`, :func:`capo.directional_shifts` with the
whole accepted set as one subset); and in a real training step each token's support is taken once, from the
policy forward's logit tiles (:mod:`capo.forward_support`).
"""

from __future__ import annotations

import pytest
import torch

import capo
import capo.support
from capo import metrics
from capo.forward_support import TileSupport
from capo.masking import accept_micro_batch
from capo.optimizer_step import CAPOStep, MicroBatch, applied_mask
from tests.capo import _golden
from tests.capo import _trainer_helpers as H
from tests.tolerances import EXACT_ATOL, EXACT_RTOL

B, T, H_, V, K = 3, 5, 4, 11, 4
LR = 1e-2


def micro_batch(seed: int, moments: capo.SparseAdamMoments, weight: torch.Tensor, fisher_max=None):
    """A random micro-batch: its MicroBatch and its acceptance test."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H_, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T), generator=g)
    valid = torch.rand(B, T, generator=g) < 0.8
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mb = MicroBatch(ids, valid, adv, None, None, LR)
    sel = accept_micro_batch(
        hidden, ids, valid, mb.token_advantages, weight=weight, bias=None, support_size=K,
        temperature=1.0, step=capo.AdamStep(LR, moments), thresholds=capo.Thresholds(fisher_max=fisher_max),
        granularity="token",
    )  # fmt: skip
    return mb, sel


def test_finish_equals_the_direct_computation_on_the_applied_tokens():
    weight = torch.randn(V, H_, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    moments = capo.SparseAdamMoments(V, H_)
    moments.update(torch.arange(0, V, 2), 0.1 * torch.ones(6, H_, dtype=torch.float64))
    step = CAPOStep(
        V, H_, torch.float64, torch.device("cpu"), keep_hidden=False, keep_accepted=True
    )
    applied_tokens = []
    n_valid = 0
    median = float(micro_batch(1, moments, weight)[1].shifts.m_F.median())  # a mixed mask
    for seed in (1, 2):
        mb, sel = micro_batch(seed, moments, weight, fisher_max=median)
        keep, applied, kept = applied_mask(sel, None, capo_enabled=True)
        assert keep is sel.keep and kept is None
        step.count_completions(B)
        step.add(mb, (weight, None), sel, applied, kept)
        applied_tokens.append(sel.batch.select_tokens(applied))
        n_valid += int(sel.valid.sum())
    tokens = capo.TokenBatch(
        *(torch.cat([getattr(b, f) for b in applied_tokens]) for f in
          ("hidden", "support_ids", "support_probs", "action_index", "advantages")),
    )  # fmt: skip
    n_acc = tokens.num_tokens
    assert 0 < n_acc < n_valid  # the bound rejects some tokens, not all
    expected_moments = capo.SparseAdamMoments(V, H_)
    expected_moments.load_state_dict(moments.state_dict())
    one_subset = torch.zeros(n_acc, dtype=torch.int64)
    expected = capo.directional_shifts(tokens, capo.AdamStep(LR, moments), one_subset)
    expected_moments.update(*capo.last_layer_gradient(tokens))

    totals = step.reduce_counts(lambda t: t)
    out = step.finish(
        totals, lambda t: t, lambda t: t, lambda lr: capo.AdamStep(lr, moments), moments, LR,
        global_shift=True, chunk_size=None,
    )  # fmt: skip
    assert totals["completions"] == 2 * B and totals["valid"] == n_valid
    assert out[metrics.ACCEPTED_TOKENS] == n_acc
    assert out[metrics.REJECTION_RATE] == (n_valid - n_acc) / n_valid
    close = dict(rel=EXACT_RTOL, abs=EXACT_ATOL)
    assert out[metrics.GLOBAL_M_H] == pytest.approx(float(expected.m_H[0]), **close)
    assert out[metrics.GLOBAL_M_F] == pytest.approx(float(expected.m_F[0]), **close)
    mine, theirs = moments.state_dict(), expected_moments.state_dict()
    assert torch.equal(mine["row_ids"], theirs["row_ids"]) and mine["t"] == theirs["t"]
    torch.testing.assert_close(mine["exp_avg"], theirs["exp_avg"], rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_each_token_support_is_computed_once_per_step(tmp_path, monkeypatch):
    """CAPO + last_layer KL prediction + true-KL + global shifts: the policy forward's supports cover the
    valid tokens once (support rows == valid tokens), and no support is recomputed from the logits."""
    rows, recomputed = [], []
    original, original_chunk = TileSupport.support, capo.support._chunk_support

    def counting(self, logps):
        support = original(self, logps)
        rows.append(support.support_ids.shape[0])
        return support

    def counting_chunk(logits, *args, **kwargs):
        recomputed.append(logits.shape[0])
        return original_chunk(logits, *args, **kwargs)

    monkeypatch.setattr(TileSupport, "support", counting)
    monkeypatch.setattr(capo.support, "_chunk_support", counting_chunk)
    trainer = H.trainer(str(tmp_path), **{**_golden.RUNS["capo_adam"], "max_steps": 1})
    trainer.capo_record = []
    trainer.train()
    valid_tokens = sum(int(r["valid"].sum()) for r in trainer.capo_record)
    assert valid_tokens > 0
    assert sum(rows) / valid_tokens == 1.0 and not recomputed
