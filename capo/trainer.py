"""CAPOTrainer: TRL's GRPOTrainer with curvature-aware token masking (paper §5, Alg. 1; docs/design.md §2).

Built on TRL 1.16 (``trl>=1.16,<1.17``); no TRL code is copied. Overridden methods, narrowest first:

- ``_get_per_token_logps_and_entropies``: during the training forward only (the micro-batch scope
  ``_compute_loss`` opens), a forward hook on the backbone captures ``last_hidden_state`` of the one policy
  forward TRL already runs (its fused LM head returns no hidden states, see
  :mod:`capo.hidden_capture`) and the top-k support is folded from its own logit tiles
  (:mod:`capo.forward_support`: no second LM head); the shifts and acceptance mask follow under no_grad,
  :meth:`CAPOTrainer.token_mask` (the public seam) may replace the mask, the step
  (:class:`capo.optimizer_step.CAPOStep`) files the micro-batch, and the log-probabilities are returned as ``logp.detach() + c ⊙ (logp − logp.detach())``.
  Values are unchanged, gradients are exactly those of the masked loss (:mod:`capo.masking`). This
  is the one place where both the hidden states and the differentiable log-probabilities exist, so
  TRL's loss code (clipping, normalisation, KL, entropy bonus, metrics) is reused untouched.
- ``_compute_loss``: calls super inside a scope that hands the micro-batch inputs (advantages, masks,
  group ids) to the override above for this one call; counts completions.
- ``_generate_and_score_completions`` / ``_calculate_rewards``: add the global completion index and
  prompt-group id to the batch (kept in unison by TRL's shuffle and split), and, for
  ``capo_variant='reinforce'``, replace the advantages by the raw weighted reward (handed over by a scope
  around the one call).
- ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: ``capo_moments.pt`` and ``capo_state.json``.
- A ``TrainerCallback`` (every rank): right after ``optimizer.step`` the KL control (:mod:`capo.kl_budget`)
  measures the step's KL and moves the parameters along the step's own line to the budget; at the step's
  end (``on_step_end``) the step is finished
  (:meth:`capo.optimizer_step.CAPOStep.finish`: all-reduces, global shifts, moments update once) and its
  ``capo/*`` metrics are appended to TRL's metric stream; a fresh step begins.

Known limits: 'group' and 'batch' subsets are local to one micro-batch on one rank (the mask of a
micro-batch is needed before its backward); the advantage of a token in the curvature model is the
variant's advantage, not the importance-weighted one (exact for on-policy training, num_iterations=1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from capo import metrics
from capo.checkpoint import load_capo_state, save_capo_state
from capo.config import CAPOConfig
from capo.forward_support import ForwardSupport
from capo.hidden_capture import (
    capture_hidden,
    check_plain_output_layer,
    completion_hidden,
    output_layer,
)
from capo.kl_budget import StepKLControl, unsupported_reason
from capo.masking import MicroBatchSelection, accept_micro_batch, loss_coefficients
from capo.moments import SparseAdamMoments
from capo.optimizer_step import CAPOStep, MicroBatch, applied_mask
from capo.output_layer_check import check_output_layer_training
from capo.sharding import gathered_output_layer, output_layer_shape
from capo.steps import AdamStep, SGDStep, StepModel
from capo.support import Support

__all__ = ["CAPOTrainer"]


class _StepBoundary(TrainerCallback):
    """Runs the trainer's step-boundary hooks on every rank: before a step, after ``optimizer.step``, at its end."""

    def __init__(
        self, begin: Callable[[], None], after: Callable[[], None], end: Callable[[], None]
    ):
        self.begin, self.after, self.end = begin, after, end

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Before the step's first micro-batch: the KL control records the step's lrs."""
        self.begin()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The optimizer has stepped (under DeepSpeed, inside the last backward): the KL control runs."""
        self.after()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The step is over: finish the CAPO step."""
        self.end()


class _Scope:
    """A value one TRL call hands to the overrides it calls back: set and cleared by one ``with``."""

    def __init__(self) -> None:
        self.value: Any = None

    @contextmanager
    def holding(self, value: Any) -> Iterator[Any]:
        """``value`` is in scope for the block (and only there)."""
        self.value = value
        try:
            yield value
        finally:
            self.value = None

    def take(self) -> Any:
        """The value in scope (None outside one), consumed: only the first reader gets it."""
        value, self.value = self.value, None
        return value


CAPO_PAPER = {
    "title": "Stabilizing Policy Gradients for Sample-Efficient Reinforcement Learning in LLM Reasoning",
    "id": "2510.00819",
    "citation": (
        "@article{capo2025,\n"
        "    title  = {{Stabilizing Policy Gradients for Sample-Efficient Reinforcement Learning in LLM "
        "Reasoning}},\n"
        "    year   = 2025,\n"
        "    eprint = {arXiv:2510.00819},\n"
        "}"
    ),
}
"""The paper a CAPO run's model card cites (TRL's ``_paper`` convention)."""


class CAPOTrainer(GRPOTrainer):
    """GRPOTrainer with curvature-aware masking; configure with :class:`capo.CAPOConfig`.

    ``capo_enabled=False`` trains the plain baseline of ``capo_variant`` (GRPO, Dr.GRPO, REINFORCE).
    Attributes of interest: ``capo_moments`` (the tracked :class:`~capo.SparseAdamMoments`, None for
    the SGD step model or without CAPO), ``capo_completions_seen``, ``capo_step`` (the
    :class:`~capo.optimizer_step.CAPOStep` being filled), and ``capo_record`` (set it to a list to
    receive, per training micro-batch, the global completion indices, inputs, advantages, η and the
    [B, T] valid and applied keep masks; for tests and debugging). The public seam :meth:`token_mask`
    lets a subclass apply its own token mask (docs/design.md §2, "The mask seam").
    """

    args: CAPOConfig

    def __init__(
        self, model: Any, reward_funcs: Any, args: CAPOConfig | None = None, **kwargs: Any
    ):
        if args is None:
            name = model if isinstance(model, str) else model.name_or_path
            args = CAPOConfig(output_dir=f"{str(name).split('/')[-1]}-CAPO")
        if not isinstance(args, CAPOConfig):
            raise ValueError(f"args must be a CAPOConfig, got {type(args).__name__}")
        if (
            args.capo_enabled
        ):  # the model card and hub tags name CAPO (a baseline keeps TRL's GRPO card)
            self._name, self._paper = "CAPO", CAPO_PAPER
            self._tag_names = [*GRPOTrainer._tag_names, "capo"]
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        active, unwrapped = args.capo_curvature_model, self.accelerator.unwrap_model(self.model)
        self.capo_thresholds = args.thresholds
        self.capo_moments: SparseAdamMoments | None = None
        self.capo_completions_seen = 0
        self.capo_record: list[dict[str, torch.Tensor]] | None = None
        self._capo_forward, self._capo_rewards = _Scope(), _Scope()
        vocab, hidden, head_dtype = output_layer_shape(unwrapped)
        self._capo_shape = (
            vocab,
            hidden,
            torch.float64 if head_dtype == torch.float64 else torch.float32,
        )
        if active or args.capo_predicts_step_kl:
            check_plain_output_layer(unwrapped)
        head_budget = args.capo_kl_budget is not None and args.capo_kl_model == "last_layer"
        if active or head_budget:  # frozen / adapter head: ValueError; tied: a warning
            check_output_layer_training(unwrapped, args)
        if active and args.capo_support_size > vocab:
            raise ValueError(
                f"capo_support_size = {args.capo_support_size} exceeds the vocabulary size {vocab}"
            )
        if active and args.capo_step_model == "adam":
            self.capo_moments = SparseAdamMoments(
                vocab,
                hidden,
                betas=(args.adam_beta1, args.adam_beta2),
                eps=args.adam_epsilon,
                dtype=torch.bfloat16 if args.capo_moments_dtype == "bfloat16" else None,
                device=self.accelerator.device,
            )
        self._capo_kl = (
            None  # the KL control (docs/design.md §5): predicts, and may scale, the step
        )
        if args.capo_predicts_step_kl:
            self._capo_kl = StepKLControl(
                args.capo_kl_budget, args.capo_kl_model, args.capo_kl_backtracks,
                args.capo_support_size, self.temperature, self.accelerator.autocast,
                unsupported_reason(self, moves=args.capo_kl_budget is not None),
                args.capo_kl_max_scale if args.capo_kl_mode == "target" else 1.0,
            )  # fmt: skip
        self.capo_step = self._capo_new_step()
        supports = active or (args.capo_predicts_step_kl and args.capo_kl_model == "last_layer")
        self._capo_support = ForwardSupport(
            vocab, args.capo_support_size, self.temperature, self._capo_shape[2], supports
        )  # the support of each token, from the training forward's own logit tiles
        self.add_callback(
            _StepBoundary(self._capo_step_begin, self._capo_after_optimizer, self._capo_step_end)
        )

    def _capo_new_step(self) -> CAPOStep:
        vocab, hidden, dtype = self._capo_shape
        args = self.args
        return CAPOStep(
            vocab, hidden, dtype, self.accelerator.device,
            keep_hidden=args.capo_predicts_step_kl,
            keep_accepted=args.capo_curvature_model and args.capo_global_shift,
        )  # fmt: skip

    # ----------------------------------------------------------------------------- batch building
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards ([all ranks' completions, reward funcs]), handed to the batch scope if open."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._capo_rewards.value is not None:
            self._capo_rewards.value.append(rewards)
        return rewards

    def _generate_and_score_completions(self, inputs):
        """TRL's batch plus ``capo_completion_index`` / ``capo_group_ids``; REINFORCE: A = raw reward."""
        with self._capo_rewards.holding([]) as rewards:
            out = super()._generate_and_score_completions(inputs)
        n = out["completion_ids"].size(0)
        dev = out["completion_ids"].device
        start = self.accelerator.process_index * n
        index = torch.arange(start, start + n, device=dev)
        gens = self.num_generations if self._capo_training() else self.num_generations_eval
        gens = int(gens or 1)
        out["capo_completion_index"] = index
        out["capo_group_ids"] = torch.div(index, gens, rounding_mode="floor")
        if self.args.capo_variant == "reinforce" and rewards:
            per_func = rewards[-1]
            weights = self.reward_weights.to(per_func.device)
            reward = (per_func * weights[None]).nansum(dim=1)
            reward = torch.where(torch.isnan(per_func).all(dim=1), 0.0, reward)
            out["advantages"] = reward[start : start + n].to(out["advantages"])
        return out

    # ------------------------------------------------------------------------------ the forward
    def _compute_loss(self, model, inputs):
        """TRL's loss; in training, the micro-batch scope makes the log-prob override apply the mask."""
        training = self._capo_training() and torch.is_grad_enabled()
        capture = self.args.capo_curvature_model or self.args.capo_predicts_step_kl
        if training:
            self.capo_step.count_completions(inputs["completion_ids"].size(0))
        with self._capo_forward.holding(inputs if training and capture else None):
            return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
    ):
        """TRL's log-probs; in the training forward, with the CAPO mask applied to their gradient."""
        inputs = self._capo_forward.take()
        if inputs is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        valid = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            valid = valid & inputs["tool_mask"].bool()
        tiles = self._capo_support.capture(input_ids, attention_mask, logits_to_keep, valid)
        with capture_hidden(self.accelerator.unwrap_model(model)) as cap, tiles as folded:
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        hidden = completion_hidden(cap.hidden, logits_to_keep)
        support = self._capo_support.result(folded, logps)
        micro_batch = MicroBatch(
            input_ids[:, -int(logits_to_keep) :], valid, inputs["advantages"],
            inputs.get("capo_group_ids"), inputs.get("capo_completion_index"), self._capo_lr(),
            input_ids, attention_mask,
        )  # fmt: skip
        with gathered_output_layer(self.accelerator.unwrap_model(model)):  # ZeRO-3: whole lm_head
            keep = self._capo_micro_batch(model, hidden, micro_batch, support)
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
        self, model: Any, hidden: torch.Tensor, mb: MicroBatch, support: Support | None = None
    ) -> torch.Tensor | None:
        """Acceptance test, the seam, the step's record of one micro-batch; the keep mask or None.

        ``support``: the valid tokens' support from the forward (None: recomputed from ``hidden``).
        """
        args, head = self.args, output_layer(self.accelerator.unwrap_model(model))
        if not args.capo_curvature_model:
            self.capo_step.add(mb, head, hidden=hidden[mb.completion_mask], support=support)
            return None
        sel = accept_micro_batch(
            hidden,
            mb.completion_ids,
            mb.completion_mask,
            mb.token_advantages,
            weight=head[0],
            bias=head[1],
            support_size=args.capo_support_size,
            temperature=self.temperature,
            step=self._capo_step_model(mb.lr),
            thresholds=self.capo_thresholds,
            granularity=args.capo_granularity,
            group_ids=mb.group_ids,
            chunk_size=args.capo_chunk_size,
            support=support,
            kernel=args.capo_shift_kernel,
        )
        keep, applied, kept = applied_mask(sel, self.token_mask(sel, mb), args.capo_enabled)
        self.capo_step.add(mb, head, sel, applied, kept, chunk_size=args.capo_chunk_size)
        if self.capo_record is not None:
            self.capo_record.append(mb.record(sel.keep if keep is None else keep))
        return keep

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

    def _capo_step_begin(self) -> None:
        if self._capo_kl is not None:
            self._capo_kl.on_step_begin(self.optimizer)

    def _capo_after_optimizer(self) -> None:
        if self._capo_kl is not None:
            model = self.accelerator.unwrap_model(self.model)
            self._capo_kl.after_optimizer_step(
                self.capo_step, model, self.optimizer, self._capo_reduce
            )

    @torch.no_grad()
    def _capo_step_end(self) -> None:
        """After the optimizer step, on every rank: finish the step, log, begin the next one."""
        step, self.capo_step = self.capo_step, self._capo_new_step()
        args, reduce = self.args, self._capo_reduce
        totals = step.reduce_counts(reduce)  # one all-reduce for every count
        self.capo_completions_seen += int(totals["completions"])
        logged: dict[str, float] = {metrics.COMPLETIONS_SEEN: float(self.capo_completions_seen)}
        if args.capo_curvature_model:
            gather, lr = self.accelerator.gather, self._capo_lr()
            finished = step.finish(
                totals, reduce, gather, self._capo_step_model, self.capo_moments, lr,
                args.capo_global_shift, args.capo_chunk_size, args.capo_shift_kernel,
            )  # fmt: skip
            logged.update(finished)
        if self._capo_kl is not None:
            logged.update(self._capo_kl.pop_metrics())
        if args.capo_log_true_kl:
            model = self.accelerator.unwrap_model(self.model)
            autocast = self.accelerator.autocast
            measured = None if self._capo_kl is None else self._capo_kl.measured
            logged.update(
                step.true_kl(
                    model, self.temperature, autocast, reduce, gathered_output_layer, measured
                )
            )
        for name, value in logged.items():
            self._metrics["train"][name].append(value)

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
