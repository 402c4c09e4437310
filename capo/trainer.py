"""CAPOTrainer: TRL's GRPOTrainer with curvature-aware token masking (paper §5, Alg. 1; docs/design.md §2).

Built on TRL 1.16 (``trl>=1.16,<1.17``); no TRL code is copied. Overridden methods, narrowest first:

- ``_get_per_token_logps_and_entropies``: during the training forward only (flagged by
  ``_compute_loss``), a forward hook on the backbone captures ``last_hidden_state`` of the one policy
  forward TRL already runs (its fused LM head returns no hidden states, see
  :mod:`capo.hidden_capture`); the support, shifts and acceptance mask are computed from it under
  no_grad, and the log-probabilities are returned as ``logp.detach() + c ⊙ (logp − logp.detach())``.
  Values are unchanged, gradients are exactly those of the masked loss (:mod:`capo.masking`). This
  is the one place where both the hidden states and the differentiable log-probabilities exist, so
  TRL's loss code (clipping, normalisation, KL, entropy bonus, metrics) is reused untouched.
- ``_compute_loss``: calls super; only stashes the micro-batch inputs (advantages, masks, group ids)
  for the override above and counts completions.
- ``_generate_and_score_completions`` / ``_calculate_rewards``: add the global completion index and
  prompt-group id to the batch (kept in unison by TRL's shuffle and split), and, for
  ``capo_variant='reinforce'``, replace the advantages by the raw weighted reward.
- ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: ``capo_moments.pt`` and ``capo_state.json``.
- A ``TrainerCallback.on_step_end`` (runs on every rank right after ``optimizer.step``): the step
  boundary. It all-reduces the statistics and the accepted gradient of the step's micro-batches
  (:mod:`capo.moments_sync`), computes the global shifts, updates the moments once (t += 1), measures
  the true KL if asked, and appends ``capo/*`` metrics to TRL's metric stream.

Known limits: 'group' and 'batch' subsets are local to one micro-batch on one rank (the mask of a
micro-batch is needed before its backward); the advantage of a token in the curvature model is the
variant's advantage, not the importance-weighted one (exact for on-policy training, num_iterations=1).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from capo import metrics
from capo.checkpoint import load_capo_state, save_capo_state
from capo.config import CAPOConfig
from capo.gradients import last_layer_gradient
from capo.hidden_capture import (
    capture_hidden,
    check_plain_output_layer,
    completion_hidden,
    output_layer,
)
from capo.kl_budget import StepKLControl
from capo.masking import MicroBatchSelection, accept_micro_batch, loss_coefficients
from capo.moments import SparseAdamMoments
from capo.moments_sync import allreduce_sparse_rows, gather_values, global_shifts, merge_rows
from capo.optimizer_step import MicroBatch, applied_mask
from capo.output_layer_check import check_output_layer_training
from capo.selection import Thresholds
from capo.sharding import gathered_output_layer, output_layer_shape
from capo.step_record import (
    COUNTS,
    DEVICE_COUNTS,
    HOST_COUNTS,
    StepRecord,
    record_micro_batch,
    shift_stats,
)
from capo.steps import AdamStep, SGDStep, StepModel
from capo.true_kl import step_kl_sums

__all__ = ["CAPOTrainer"]


class _StepEnd(TrainerCallback):
    """Calls :meth:`CAPOTrainer._capo_step_end` after every optimizer step, on every rank."""

    def __init__(self, trainer: CAPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The optimizer has stepped: close the CAPO step."""
        self.trainer._capo_step_end()


class CAPOTrainer(GRPOTrainer):
    """GRPOTrainer with curvature-aware masking; configure with :class:`capo.CAPOConfig`.

    ``capo_enabled=False`` trains the plain baseline of ``capo_variant`` (GRPO, Dr.GRPO, REINFORCE).
    Attributes of interest: ``capo_moments`` (the tracked :class:`~capo.SparseAdamMoments`, None for
    the SGD step model or without CAPO), ``capo_completions_seen``, and ``capo_record`` (set it to a
    list to receive, per training micro-batch, the global completion indices, inputs, advantages, η and
    the [B, K] valid and keep masks; for tests and debugging). The public seam :meth:`token_mask`
    lets a subclass apply its own token mask (docs/design.md §2, "The mask seam").
    """

    args: CAPOConfig

    def __init__(
        self, model: Any, reward_funcs: Any, args: CAPOConfig | None = None, **kwargs: Any
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = CAPOConfig(output_dir=f"{str(name).split('/')[-1]}-CAPO")
        if not isinstance(args, CAPOConfig):
            raise ValueError(f"args must be a CAPOConfig, got {type(args).__name__}")
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self._capo_active = args.capo_enabled or args.capo_track_shifts
        self._capo_capture = self._capo_active or args.capo_predicts_step_kl
        self.capo_thresholds = Thresholds(args.hessian_low, args.hessian_high, args.fisher_max)
        self.capo_moments: SparseAdamMoments | None = None
        self.capo_completions_seen = 0
        self.capo_record: list[dict[str, torch.Tensor]] | None = None
        self._capo_pending: dict[str, Any] | None = None
        self._capo_acc = StepRecord()
        self._capo_rewards_per_func: torch.Tensor | None = None
        vocab, hidden, head_dtype = output_layer_shape(self.accelerator.unwrap_model(self.model))
        self._capo_vocab, self._capo_hidden = vocab, hidden
        self._capo_dtype = torch.float64 if head_dtype == torch.float64 else torch.float32
        if self._capo_capture:
            check_plain_output_layer(self.accelerator.unwrap_model(self.model))
        head_budget = args.capo_kl_budget is not None and args.capo_kl_model == "last_layer"
        if self._capo_active or head_budget:  # frozen / adapter head: ValueError; tied: a warning
            check_output_layer_training(self.accelerator.unwrap_model(self.model), args)
        if self._capo_active and args.capo_support_size > self._capo_vocab:
            raise ValueError(
                f"capo_support_size = {args.capo_support_size} exceeds the vocabulary size "
                f"{self._capo_vocab}"
            )
        if self._capo_active and args.capo_step_model == "adam":
            self.capo_moments = SparseAdamMoments(
                self._capo_vocab,
                self._capo_hidden,
                betas=(args.adam_beta1, args.adam_beta2),
                eps=args.adam_epsilon,
                dtype=torch.bfloat16 if args.capo_moments_dtype == "bfloat16" else None,
                device=self.accelerator.device,
            )
        self.add_callback(_StepEnd(self))
        self._capo_kl = StepKLControl(self) if args.capo_predicts_step_kl else None
        if self._capo_kl is not None:  # KL budget (docs/design.md §5): scales the step's lr
            self.add_callback(self._capo_kl)

    # ----------------------------------------------------------------------------- batch building
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards ([all ranks' completions, reward funcs]); kept for the REINFORCE advantages."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._capo_rewards_per_func = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):
        """TRL's batch plus ``capo_completion_index`` / ``capo_group_ids``; REINFORCE: A = raw reward."""
        out = super()._generate_and_score_completions(inputs)
        n = out["completion_ids"].size(0)
        dev = out["completion_ids"].device
        start = self.accelerator.process_index * n
        index = torch.arange(start, start + n, device=dev)
        gens = self.num_generations if self._capo_training() else self.num_generations_eval
        gens = int(gens or 1)
        out["capo_completion_index"] = index
        out["capo_group_ids"] = torch.div(index, gens, rounding_mode="floor")
        if self.args.capo_variant == "reinforce" and self._capo_rewards_per_func is not None:
            per_func = self._capo_rewards_per_func
            weights = self.reward_weights.to(per_func.device)
            reward = (per_func * weights[None]).nansum(dim=1)
            reward = torch.where(torch.isnan(per_func).all(dim=1), 0.0, reward)
            out["advantages"] = reward[start : start + n].to(out["advantages"])
        self._capo_rewards_per_func = None
        return out

    # ------------------------------------------------------------------------------ the forward
    def _compute_loss(self, model, inputs):
        """TRL's loss; flags the training forward so the log-prob override applies the CAPO mask."""
        training = self._capo_training() and torch.is_grad_enabled()
        if training:
            self._capo_acc.counts["completions"] += float(inputs["completion_ids"].size(0))
            if self._capo_capture:
                self._capo_pending = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._capo_pending = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
    ):
        """TRL's log-probs; in the training forward, with the CAPO mask applied to their gradient."""
        inputs, self._capo_pending = self._capo_pending, None
        if inputs is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        with capture_hidden(self.accelerator.unwrap_model(model)) as cap:
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        hidden = completion_hidden(cap.hidden, logits_to_keep)
        with gathered_output_layer(self.accelerator.unwrap_model(model)):  # ZeRO-3: whole lm_head
            keep, valid = self._capo_micro_batch(
                model, hidden, input_ids, attention_mask, logits_to_keep, inputs
            )
        if keep is not None:
            per_completion_mean = self.args.capo_variant != "dr_grpo"
            c = loss_coefficients(keep, valid, per_completion_mean, logps.dtype)
            detached = logps.detach()
            logps = detached + c * (logps - detached)
        return logps, entropies, aux

    def _capo_training(self) -> bool:
        return bool(self.model is not None and self.model.training)

    def _capo_lr(self) -> float:
        """η: the learning rate the scheduler gives the current optimizer step."""
        if self.lr_scheduler is not None:
            return float(self.lr_scheduler.get_last_lr()[0])
        return float(self.args.learning_rate)

    def _capo_step_model(self, lr: float) -> StepModel:
        if self.capo_moments is not None:
            return AdamStep(lr=lr, moments=self.capo_moments)
        return SGDStep(lr=lr)

    @torch.no_grad()
    def _capo_micro_batch(
        self,
        model: Any,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        inputs: dict[str, Any],
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Acceptance test of one micro-batch; returns (keep [B, K] or None if not masking, valid)."""
        args, acc = self.args, self._capo_acc
        valid = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            valid = valid & inputs["tool_mask"].bool()
        weight, bias = output_layer(self.accelerator.unwrap_model(model))
        if args.capo_predicts_step_kl:
            if acc.head_before is None:
                acc.head_before = (weight.clone(), None if bias is None else bias.clone())
            acc.kl_inputs.append(
                (input_ids, attention_mask, int(logits_to_keep), valid, hidden[valid])
            )
        if not self._capo_active:
            return None, valid
        lr = self._capo_lr()
        acc.lr = lr
        adv = inputs["advantages"]
        adv = adv[:, None].expand(valid.shape) if adv.dim() == 1 else adv
        completion_ids = input_ids[:, -int(logits_to_keep) :]
        sel = accept_micro_batch(
            hidden,
            completion_ids,
            valid,
            adv,
            weight=weight,
            bias=bias,
            support_size=args.capo_support_size,
            temperature=self.temperature,
            step=self._capo_step_model(lr),
            thresholds=self.capo_thresholds,
            granularity=args.capo_granularity,
            group_ids=inputs.get("capo_group_ids"),
            chunk_size=args.capo_chunk_size,
        )
        micro_batch = MicroBatch(
            completion_ids, valid, inputs["advantages"], inputs.get("capo_group_ids"),
            inputs.get("capo_completion_index"), lr,
        )  # fmt: skip
        mask = self.token_mask(sel, micro_batch)
        keep, applied_flat, kept_flat = applied_mask(sel, mask, args.capo_enabled)
        acc.add_selection(sel, applied_flat, kept_flat)
        part = last_layer_gradient(
            sel.batch, applied_flat, reduction="sum", chunk_size=args.capo_chunk_size
        )  # summed into one running part: O(U·H) memory whatever the number of micro-batches
        dev = self.accelerator.device
        acc.grad_parts = [
            merge_rows([*acc.grad_parts, part], self._capo_hidden, self._capo_dtype, dev)
        ]
        if args.capo_global_shift:
            acc.accepted.append(sel.batch.select_tokens(applied_flat))
        if self.capo_record is not None:
            tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "advantages": adv}
            applied = sel.keep if keep is None else keep
            record_micro_batch(self.capo_record, inputs, tensors, lr, valid, applied)
        return keep, valid

    def token_mask(
        self, selection: MicroBatchSelection, micro_batch: MicroBatch
    ) -> torch.Tensor | None:
        """The seam: the [B, T] bool keep mask of one training micro-batch, or None for CAPO's own rule.

        Called once per training micro-batch under no_grad, after the acceptance test and before the
        gradient is accumulated, whenever the curvature model runs (``capo_enabled`` or
        ``capo_track_shifts``); override it to apply another rule. ``selection``: the acceptance test's
        :class:`~capo.masking.MicroBatchSelection` (valid and CAPO's keep masks, shifts, tokens with their
        support; ``selection.sampled_prob()`` is each token's π(a), no new softmax). ``micro_batch``: the
        :class:`~capo.optimizer_step.MicroBatch` of TRL inputs (advantages, masks, group ids, completion
        index, η). A returned mask (within the valid tokens) is the mask applied: the loss coefficients,
        the moments update's gradient rows, ``capo/global_m_*`` and the rejection metrics follow it, with
        or without ``capo_enabled``. None: CAPO's keep mask; with ``capo_enabled=False`` no mask (every
        finite token tracked, CAPO's would-be rejection logged).
        """
        return None

    # ------------------------------------------------------------------------- step boundary
    def _capo_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return t
        return self.accelerator.reduce(t, reduction="sum")

    @torch.no_grad()
    def _capo_step_end(self) -> None:
        """After the optimizer step, on every rank: reduce, update the moments, log (module doc)."""
        acc, self._capo_acc = self._capo_acc, StepRecord()
        dev = self.accelerator.device
        host = torch.tensor([acc.counts[k] for k in HOST_COUNTS], dtype=torch.float64, device=dev)
        on_device = acc.device_counts
        if on_device is None:
            on_device = torch.zeros(len(DEVICE_COUNTS), dtype=torch.float64, device=dev)
        counts = torch.cat([host, on_device.to(dev)])  # one all-reduce for every count
        totals = dict(zip(COUNTS, self._capo_reduce(counts).tolist(), strict=True))
        all_rejected = totals["all_rejected"]
        self.capo_completions_seen += int(totals["completions"])
        logged: dict[str, float] = {metrics.COMPLETIONS_SEEN: float(self.capo_completions_seen)}
        if self._capo_active:
            logged.update(self._capo_update(acc, totals, dev))
            logged[metrics.ALL_REJECTED_MICROBATCHES] = all_rejected
        if self._capo_kl is not None:
            logged.update(self._capo_kl.pop_metrics())
        if self.args.capo_log_true_kl:
            logged.update(self._capo_true_kl(acc, dev))
        for name, value in logged.items():
            self._metrics["train"][name].append(value)

    def _capo_update(
        self, acc: StepRecord, totals: dict[str, float], dev: torch.device
    ) -> dict[str, float]:
        """Global accepted gradient -> global shifts, moments update; the step's shift statistics."""
        valid = max(totals["valid"], 1.0)
        out = {
            metrics.REJECTION_RATE: totals["rejected"] / valid,
            metrics.REJECTION_RATE_HESSIAN: totals["rej_hessian"] / valid,
            metrics.REJECTION_RATE_FISHER: totals["rej_fisher"] / valid,
            metrics.NONFINITE_TOKENS: totals["nonfinite"],
            metrics.ACCEPTED_TOKENS: totals["applied"],
        }
        ids, rows = merge_rows(acc.grad_parts, self._capo_hidden, self._capo_dtype, dev)
        acc.grad_parts.clear()  # free each buffer once used: the step end's memory peak is here
        union, grad_sum = allreduce_sparse_rows(ids, rows, self._capo_vocab, self._capo_reduce)
        del ids, rows
        n_acc = round(totals["applied"])
        grad = grad_sum.div_(max(n_acc, 1))
        lr = acc.lr if acc.lr is not None else self._capo_lr()
        chunk = self.args.capo_chunk_size or 256
        if self.args.capo_global_shift:
            step = self._capo_step_model(lr)
            m_h, m_f = global_shifts(
                step, union, grad, acc.accepted, n_acc, self._capo_reduce, chunk
            )
            out[metrics.GLOBAL_M_H], out[metrics.GLOBAL_M_F] = m_h, m_f
        if self.capo_moments is not None:
            self.capo_moments.update(union, grad)
        gather = self.accelerator.gather
        empty = torch.empty(0, device=dev)
        m_h_all = gather_values(torch.cat(acc.m_h) if acc.m_h else empty, gather)
        m_f_all = gather_values(torch.cat(acc.m_f) if acc.m_f else empty, gather)
        out.update(shift_stats(metrics.M_H, m_h_all))
        out.update(shift_stats(metrics.M_F, m_f_all))
        return out

    def _capo_true_kl(self, acc: StepRecord, dev: torch.device) -> dict[str, float]:
        """Measured mean KL(π_before || π_after) of the step (all ranks) and its head-only part."""
        total = torch.zeros(3, dtype=torch.float64, device=dev)
        if acc.head_before is not None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            autocast, tau = self.accelerator.autocast, self.temperature
            with gathered_output_layer(unwrapped):
                total = step_kl_sums(unwrapped, acc.kl_inputs, acc.head_before, tau, autocast)
            total = total.to(dev)
        kl, head, n = self._capo_reduce(total).tolist()
        n = n or math.nan  # no token on any rank: nan
        return {metrics.TRUE_KL: kl / n, metrics.TRUE_KL_HEAD: head / n}

    # ------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        """The CAPO state (:mod:`capo.checkpoint`), then TRL's checkpoint: its last file completes it."""
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            save_capo_state(
                os.path.join(self._get_output_dir(trial=trial), folder),
                self.capo_moments,
                self.capo_completions_seen,
            )
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """TRL's resume plus the CAPO moments and counters of the checkpoint."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            seen = load_capo_state(checkpoint, self.capo_moments)
            self.capo_completions_seen = self.capo_completions_seen if seen is None else seen
