"""One optimizer step of CAPO on one rank: what its micro-batches add, and what the step end makes of it.

:class:`CAPOStep` owns the step's state. Per training micro-batch, :meth:`CAPOStep.add` takes the
:class:`MicroBatch` (TRL's inputs), the hidden states of its valid tokens, the acceptance test's
:class:`~capo.masking.MicroBatchSelection` and the mask actually applied (:func:`applied_mask`); it
counts, keeps the token shifts, sums the applied last-layer gradient rows into one running part
(O(R·H) memory whatever the number of micro-batches) and files the tokens in the step's one token store
(:class:`StepTokens`). After the optimizer step, :meth:`CAPOStep.finish` all-reduces the counts and the
gradient, computes the global shifts, updates the moments once (t += 1) and returns the ``capo/*``
metrics; :meth:`CAPOStep.true_kl` measures the step's KL. Everything that needs the step's tokens (global
shifts, the ``last_layer`` KL prediction, the true-KL diagnostic) reads the store, so each token's support
is computed once per step. Collectives: the same calls, shapes and order on every rank
(:mod:`capo.moments_sync`). Shapes follow :mod:`capo.shapes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from capo import metrics
from capo.gradients import last_layer_gradient
from capo.masking import MicroBatchSelection
from capo.moments import SparseAdamMoments
from capo.moments_sync import (
    ReduceSum,
    allreduce_sparse_rows,
    gather_values,
    global_shifts,
    merge_rows,
)
from capo.step_record import COUNTS, DEVICE_COUNTS, HOST_COUNTS, shift_stats
from capo.steps import StepModel
from capo.support import Support, support_from_hidden
from capo.tokens import TokenBatch
from capo.true_kl import KLInput, step_kl_sums

__all__ = ["CAPOStep", "MicroBatch", "StepTokens", "applied_mask"]

Head = tuple[torch.Tensor, torch.Tensor | None]
"""(W [V, H], b [V] or None) of the output layer."""


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """The TRL inputs of one training micro-batch, as :meth:`capo.CAPOTrainer.token_mask` receives them.

    Attributes:
        completion_ids: [B, T] int64 sampled token ids.
        completion_mask: [B, T] bool, TRL's completion mask (with its tool mask, if any): the tokens that
            enter the loss at all (``MicroBatchSelection.valid``).
        advantages: [B] or [B, T] float, the advantages as TRL's batch holds them (the variant's).
        group_ids: [B] int64 prompt-group id of each completion, or None.
        completion_index: [B] int64 global index of each completion in the step's batch, or None.
        lr: η, the learning rate the scheduler gives the current optimizer step.
        input_ids: [B, L] prompt and completion ids of the policy forward (None outside the trainer).
        attention_mask: [B, L] its attention mask (None outside the trainer).
    """

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    group_ids: torch.Tensor | None
    completion_index: torch.Tensor | None
    lr: float
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @property
    def token_advantages(self) -> torch.Tensor:
        """[B, T] the advantage of each token (a [B] advantage broadcast over the completion)."""
        adv = self.advantages
        return adv[:, None].expand(self.completion_mask.shape) if adv.dim() == 1 else adv

    def record(self, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """This micro-batch as one entry of ``CAPOTrainer.capo_record`` (on the CPU; tests, debugging).

        Keys: completion_index, input_ids, attention_mask, advantages [B, T], lr, valid and keep [B, T].
        """
        tensors = {
            "completion_index": self.completion_index,
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "advantages": self.token_advantages,
        }
        out = {name: t.detach().cpu() for name, t in tensors.items() if t is not None}
        return {
            **out,
            "lr": torch.tensor(self.lr),
            "valid": self.completion_mask.cpu(),
            "keep": keep.cpu(),
        }


def applied_mask(
    selection: MicroBatchSelection, mask: torch.Tensor | None, capo_enabled: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """What a micro-batch applies, from the mask :meth:`capo.CAPOTrainer.token_mask` returned.

    Args:
        selection: the micro-batch's acceptance test.
        mask: [B, T] bool keep mask of the seam, or None for CAPO's rule (no mask when not ``capo_enabled``).
        capo_enabled: whether CAPO's rule masks the loss.

    Returns:
        (keep [B, T] for the loss coefficients or None for no masking, applied [N] the finite tokens whose
        gradient enters the moments and the global shifts, kept [N] the tokens the rejection metrics count
        as kept or None for CAPO's keep mask).
    """
    if mask is None:
        if capo_enabled:
            return selection.keep, selection.keep_flat, None
        return None, selection.shifts.token_finite, None
    valid = selection.valid
    if mask.shape != valid.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"token_mask must return a bool [B, T] = {list(valid.shape)} tensor or None, "
            f"got {mask.dtype} {list(mask.shape)}"
        )
    keep = mask.to(valid.device) & valid
    kept = keep[valid]
    return keep, kept & selection.shifts.token_finite, kept


@dataclass(eq=False)
class StepTokens:
    """One micro-batch in the step's token store.

    Attributes:
        micro_batch: its TRL inputs (``input_ids`` / ``attention_mask`` for the re-forwards of the KL).
        hidden: [N, H] hidden states of its valid tokens, before the step (None if no KL is predicted).
        support: (support ids [N, k], support probs [N, k]) of those tokens under the head before the
            step: the acceptance test's, or computed once by :meth:`CAPOStep.supports`; None until needed.
        accepted: the applied tokens (their own copy: the global shifts), None without global shifts.
    """

    micro_batch: MicroBatch
    hidden: torch.Tensor | None
    support: tuple[torch.Tensor, torch.Tensor] | None
    accepted: TokenBatch | None

    def kl_input(self) -> KLInput:
        """What :func:`capo.true_kl.step_kl_sums` re-runs for this micro-batch."""
        mb = self.micro_batch
        assert (
            mb.input_ids is not None and mb.attention_mask is not None and self.hidden is not None
        )
        keep_k = int(mb.completion_ids.shape[1])
        return (mb.input_ids, mb.attention_mask, keep_k, mb.completion_mask, self.hidden)


class CAPOStep:
    """The state of one optimizer step on this rank (module docstring); a fresh one per step.

    Args:
        vocab_size: V of the output layer.
        hidden_size: H.
        dtype: accumulation dtype of the gradient rows (float64 for a float64 head, else float32).
        device: the rank's device (counts and collectives).
        keep_hidden: store the valid tokens' hidden states and the head before the step (KL prediction
            or the true-KL diagnostic).
        keep_accepted: store a copy of the applied tokens (global shifts).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
        keep_hidden: bool,
        keep_accepted: bool,
    ) -> None:
        self.vocab_size, self.hidden_size, self.dtype, self.device = (
            vocab_size, hidden_size, dtype, device,
        )  # fmt: skip
        self.keep_hidden, self.keep_accepted = keep_hidden, keep_accepted
        self.counts: dict[str, float] = dict.fromkeys(HOST_COUNTS, 0.0)
        self.device_counts: torch.Tensor | None = None  # [len(DEVICE_COUNTS)] float64 running sums
        self.lr: float | None = None
        self.grad_part: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # (row ids [R], sums [R, H])
        )
        self.m_h: list[torch.Tensor] = []
        self.m_f: list[torch.Tensor] = []
        self.store: list[StepTokens] = []
        self.head_before: Head | None = None

    # ------------------------------------------------------------------------- per micro-batch
    def count_completions(self, n: int) -> None:
        """A training forward of ``n`` completions ran (counted whether or not CAPO is active)."""
        self.counts["completions"] += float(n)

    @torch.no_grad()
    def add(
        self,
        micro_batch: MicroBatch,
        head: Head,
        selection: MicroBatchSelection | None = None,
        applied: torch.Tensor | None = None,
        kept: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        chunk_size: int | None = None,
        support: Support | None = None,
    ) -> None:
        """File one micro-batch (module docstring).

        Args:
            micro_batch: its TRL inputs.
            head: (W, b) of the output layer (copied once per step when ``keep_hidden``).
            selection: the acceptance test, None when the curvature model did not run.
            applied: [N] bool, the tokens whose gradient the step applies (with ``selection``).
            kept: [N] bool, the tokens the rejection metrics count as kept (None: CAPO's keep mask).
            hidden: [N, H] hidden states of the valid tokens, needed only without ``selection`` (which
                holds them).
            chunk_size: tokens per chunk of the gradient rows.
            support: the valid tokens' support without ``selection`` (the forward's), or None.
        """
        if self.keep_hidden and self.head_before is None:
            w, b = head
            self.head_before = (w.clone(), None if b is None else b.clone())
        accepted = None
        kept_support = None if support is None else (support.support_ids, support.support_probs)
        if selection is not None:
            assert applied is not None
            batch = selection.batch
            self._count(selection, applied, kept)
            self.lr = micro_batch.lr
            part = last_layer_gradient(batch, applied, reduction="sum", chunk_size=chunk_size)
            parts = [part] if self.grad_part is None else [self.grad_part, part]
            self.grad_part = merge_rows(parts, self.hidden_size, self.dtype, self.device)
            if self.keep_accepted:
                accepted = batch.select_tokens(applied)
            hidden, kept_support = batch.hidden, (batch.support_ids, batch.support_probs)
        if not self.keep_hidden:
            hidden = kept_support = None
        if hidden is not None or accepted is not None:
            self.store.append(StepTokens(micro_batch, hidden, kept_support, accepted))

    def _count(
        self, sel: MicroBatchSelection, applied: torch.Tensor, kept: torch.Tensor | None
    ) -> None:
        """Count one acceptance test (no host sync) in :data:`DEVICE_COUNTS` order; keep its shifts."""
        finite = sel.shifts.token_finite
        kept = sel.keep_flat if kept is None else kept
        self.counts["valid"] += float(finite.numel())
        all_rejected = ~kept.any() if finite.numel() else torch.zeros_like(finite[:1].any())
        fail_h, fail_f = sel.fail_hessian & ~kept, sel.fail_fisher & ~kept
        parts = (applied, ~kept, fail_h, fail_f, ~finite, all_rejected)
        micro = torch.stack([x.sum().double() for x in parts])
        self.device_counts = micro if self.device_counts is None else self.device_counts + micro
        ok = sel.shifts.valid
        self.m_h.append(sel.shifts.m_H[ok].float())
        self.m_f.append(sel.shifts.m_F[ok].float())

    # ------------------------------------------------------------------------- the token store
    @property
    def recorded(self) -> bool:
        """Whether a micro-batch's hidden states were stored (something to predict or measure)."""
        return self.head_before is not None

    def kl_inputs(self) -> list[KLInput]:
        """The stored micro-batches, as the KL re-forwards take them."""
        return [entry.kl_input() for entry in self.store if entry.hidden is not None]

    def supports(
        self, support_size: int, temperature: float
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(hidden [N, H], support ids [N, k], probs [N, k]) of each stored micro-batch, head before the step.

        The acceptance test's or the policy forward's support (:mod:`capo.forward_support`); otherwise
        computed here, once per step (cached).
        """
        assert self.head_before is not None
        weight, bias = self.head_before
        for entry in self.store:
            if entry.hidden is None:
                continue
            if entry.support is None:
                mb = entry.micro_batch
                sampled = mb.completion_ids[mb.completion_mask]
                k = min(support_size, weight.shape[0])
                sup = support_from_hidden(entry.hidden, weight, sampled, k, temperature, bias)
                entry.support = (sup.support_ids, sup.support_probs)
            yield entry.hidden, *entry.support

    # ------------------------------------------------------------------------- the step end
    @torch.no_grad()
    def reduce_counts(self, reduce: ReduceSum) -> dict[str, float]:
        """All ranks' counts (:data:`COUNTS`), in one all-reduce."""
        dev = self.device
        host = torch.tensor([self.counts[k] for k in HOST_COUNTS], dtype=torch.float64, device=dev)
        on_device = self.device_counts
        if on_device is None:
            on_device = torch.zeros(len(DEVICE_COUNTS), dtype=torch.float64, device=dev)
        counts = torch.cat([host, on_device.to(dev)])
        return dict(zip(COUNTS, reduce(counts).tolist(), strict=True))

    @torch.no_grad()
    def finish(
        self,
        totals: dict[str, float],
        reduce: ReduceSum,
        gather: Callable[[torch.Tensor], torch.Tensor],
        step_model: Callable[[float], StepModel],
        moments: SparseAdamMoments | None,
        lr: float,
        global_shift: bool,
        chunk_size: int | None,
        kernel: str = "auto",
    ) -> dict[str, float]:
        """Global accepted gradient -> global shifts, the moments update; the step's ``capo/*`` metrics.

        Args:
            totals: :meth:`reduce_counts`.
            reduce: the all-reduce (sum) over ranks.
            gather: the all-gather over ranks.
            step_model: the step model at a learning rate (reads the moments before their update).
            moments: the tracked moments (None for the SGD step model).
            lr: η of the step when no micro-batch recorded one.
            global_shift: compute ``capo/global_m_H`` / ``capo/global_m_F``.
            chunk_size: tokens per chunk of the global shifts (None: 256).
            kernel: how the global shifts' gathers run (:data:`capo.fused_shift.KERNELS`).
        """
        valid = max(totals["valid"], 1.0)
        out = {
            metrics.REJECTION_RATE: totals["rejected"] / valid,
            metrics.REJECTION_RATE_HESSIAN: totals["rej_hessian"] / valid,
            metrics.REJECTION_RATE_FISHER: totals["rej_fisher"] / valid,
            metrics.NONFINITE_TOKENS: totals["nonfinite"],
            metrics.ACCEPTED_TOKENS: totals["applied"],
        }
        parts = [] if self.grad_part is None else [self.grad_part]
        ids, rows = merge_rows(parts, self.hidden_size, self.dtype, self.device)
        self.grad_part = None  # free each buffer once used: the step end's memory peak is here
        union, grad_sum = allreduce_sparse_rows(ids, rows, self.vocab_size, reduce)
        del ids, rows, parts
        n_acc = round(totals["applied"])
        grad = grad_sum.div_(max(n_acc, 1))
        lr = self.lr if self.lr is not None else lr
        if global_shift:
            accepted = [e.accepted for e in self.store if e.accepted is not None]
            chunk = chunk_size or 256
            m_h, m_f = global_shifts(
                step_model(lr), union, grad, accepted, n_acc, reduce, chunk, kernel
            )
            out[metrics.GLOBAL_M_H], out[metrics.GLOBAL_M_F] = m_h, m_f
        if moments is not None:
            moments.update(union, grad)
        empty = torch.empty(0, device=self.device)
        m_h_all = gather_values(torch.cat(self.m_h) if self.m_h else empty, gather)
        m_f_all = gather_values(torch.cat(self.m_f) if self.m_f else empty, gather)
        out.update(shift_stats(metrics.M_H, m_h_all))
        out.update(shift_stats(metrics.M_F, m_f_all))
        out[metrics.ALL_REJECTED_MICROBATCHES] = totals["all_rejected"]
        return out

    @torch.no_grad()
    def true_kl(
        self,
        model: Any,
        temperature: float,
        autocast: Callable[[], AbstractContextManager[Any]],
        reduce: ReduceSum,
        gathered: Callable[[Any], AbstractContextManager[Any]],
        measured: tuple[float, float] | None = None,
    ) -> dict[str, float]:
        """Measured mean KL(π_before || π_after) of the step (all ranks) and its head-only part.

        ``model`` is the unwrapped policy after the step; ``gathered(model)`` makes its output layer
        whole for the block (:func:`capo.sharding.gathered_output_layer`). ``measured``: the all-ranks
        (Σ KL, tokens) already measured at these parameters (the KL control's last lookahead), so the
        backbone forward is not run again; only the head-only part is computed.
        """
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self.head_before is not None:
            with gathered(model):
                kl = step_kl_sums(
                    model, self.kl_inputs(), self.head_before, temperature, autocast,
                    full=measured is None,
                )  # fmt: skip
            total = kl.to(self.device)
        kl_sum, head, n = reduce(total).tolist()
        if measured is not None:
            kl_sum, n = measured
        n = n or math.nan  # no token on any rank: nan
        return {metrics.TRUE_KL: kl_sum / n, metrics.TRUE_KL_HEAD: head / n}
