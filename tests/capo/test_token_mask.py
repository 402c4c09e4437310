"""The public mask seam ``CAPOTrainer.token_mask``: what a subclass returns is the mask actually applied.

One hand-built float64 micro-batch (:mod:`tests.capo.test_trainer`): the gradient is that of the hand-masked
loss over the returned mask, the moments, ``capo/global_m_F`` and the rejection metrics count its tokens,
with ``capo_enabled=False`` too, and π(a) reaches the subclass from the selection (equal to the model's own
full softmax).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from capo.gradients import last_layer_gradient
from capo.moments import SparseAdamMoments
from tests.capo import _golden
from tests.capo import _trainer_helpers as H
from tests.capo.test_trainer import (
    K,
    assert_grad_close,
    hand_masked_loss,
    loss_and_grads,
    micro_batch,
    reference_logps_and_hidden,
)


class FirstTokens(H.StubCAPOTrainer):
    """Keeps the first two valid tokens of each completion; remembers what the seam was given."""

    seen: ClassVar[list] = []

    def token_mask(self, selection, micro_batch):
        self.seen.append((selection, micro_batch))
        return selection.valid & (torch.arange(selection.valid.shape[1]) < 2)


class CAPOsOwn(H.StubCAPOTrainer):
    def token_mask(self, selection, micro_batch):
        return selection.keep


def test_the_default_rule_returned_explicitly_is_bit_identical_to_none(tmp_path):
    """A subclass returning CAPO's own keep mask trains exactly like the default (the golden run's settings)."""
    runs = []
    for cls in (H.StubCAPOTrainer, CAPOsOwn):
        trainer = H.trainer(str(tmp_path / cls.__name__), cls=cls, **_golden.RUNS["capo_adam"])
        trainer.train()
        runs.append(H.params(trainer.model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_returned_mask_is_applied_to_gradient_moments_and_metrics(tmp_path):
    """capo_enabled=False + capo_track_shifts: the loss, moments and metrics follow the returned mask."""
    FirstTokens.seen = []
    trainer = H.trainer(
        str(tmp_path), cls=FirstTokens, capo_enabled=False, capo_track_shifts=True,
        capo_global_shift=True, temperature=0.7,
    )  # fmt: skip
    inputs = micro_batch(trainer.processing_class)
    _, grads, keep = loss_and_grads(trainer, inputs)
    sel, mb = FirstTokens.seen[-1]
    valid = inputs["completion_mask"].bool()
    expected_keep = valid & (torch.arange(K) < 2)
    assert torch.equal(keep, expected_keep)
    assert torch.equal(mb.completion_mask, valid) and mb.lr == trainer.args.learning_rate

    trainer.model.zero_grad()
    logps, _, logits = reference_logps_and_hidden(trainer.model, inputs, 0.7)
    hand = hand_masked_loss(logps, expected_keep, valid, inputs["advantages"], "grpo", K)
    hand.backward()
    for name, p in trainer.model.named_parameters():
        assert_grad_close(grads.get(name, torch.zeros_like(p)), p.grad, name)

    pi_a = torch.softmax(logits.double() / 0.7, -1).gather(-1, inputs["completion_ids"][..., None])
    torch.testing.assert_close(sel.sampled_prob()[valid], pi_a[..., 0][valid])

    before = SparseAdamMoments(trainer.capo_moments.vocab_size, 32, eps=trainer.args.adam_epsilon)
    applied = expected_keep[valid]
    ids, rows = last_layer_gradient(sel.batch, applied, reduction="sum")
    before.update(ids, rows / int(applied.sum()))
    trainer._capo_step_end()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert logged["capo/accepted_tokens"] == int(applied.sum())
    assert logged["capo/rejection_rate"] == 1 - int(applied.sum()) / int(valid.sum())
    assert logged["capo/rejection_rate_hessian"] <= logged["capo/rejection_rate"]
    mine, theirs = trainer.capo_moments.state_dict(), before.state_dict()
    assert torch.equal(mine["row_ids"], theirs["row_ids"])
    torch.testing.assert_close(mine["exp_avg"], theirs["exp_avg"], rtol=0, atol=0)
