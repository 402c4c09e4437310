"""A KL budget on the step actually taken: an extension beyond the paper (docs/design.md §5).

CAPO decides per token from the step that token alone would cause; the optimizer then takes one step for the
whole accepted batch, whose size Adam normalises. This module bounds the step itself. Right after the
optimizer's step (under DeepSpeed the engine has already taken it inside ``backward``) the step is known as a
line θ(s) through the old (s = 0) and new (s = 1) parameters, recovered from the optimizer's own state
(:class:`capo.applied_step.AppliedStep`: no copy of the parameters; θ(s) is exactly the step the optimizer
takes at lr·s, its moments do not depend on the lr). The mean KL(π_θ(0) || π_θ(1)) over the step's valid
completion tokens is measured (or predicted), the parameters are moved to θ(s) with
s = min(1, sqrt(δ / KL)) (``capo_kl_mode`` "cap"; "target": s = min(s_max, sqrt(δ / KL)), up as well as
down; the KL is quadratic in the step to leading order, arXiv 2510.00819, eq 6), and, with backtracking (the
default for ``lookahead``), the KL at θ(s) is measured and s shrunk again until it is within
:data:`BUDGET_SLACK`·δ, for at most :data:`MAX_LOOKAHEADS` forwards per step.

Two models of the step's KL (``capo_kl_model``):

- ``lookahead``: one no-grad forward of the step's completions at the current parameters, exact KL over the
  full vocabulary in [C, V] chunks against the stored pre-step hidden states and output layer
  (:func:`capo.true_kl.step_kl_sums`): the same quantity the true-KL diagnostic measures after the step.
- ``last_layer``: ½ vᵀ F v with v = (ΔW[S] h + Δb[S]) / τ the change of the tempered logits over the
  top-k support S, ΔW = W(1) − W(0) the step of the output layer, and F = diag(π) − ππᵀ the state Fisher
  (eq 6 with the Fisher of eq 9 in expectation over the action); no forward, exactly quadratic in s. It
  cannot see the backbone's share of the move.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch

from capo import metrics
from capo.applied_step import SUPPORTED_OPTIMS, AppliedStep, inner_optimizer
from capo.hidden_capture import output_layer
from capo.moments_sync import ReduceSum
from capo.optimizer_step import CAPOStep
from capo.sharding import gathered_output_layer
from capo.shifts import fisher_quadratic
from capo.true_kl import step_kl_sums

__all__ = [
    "BUDGET_SLACK",
    "MAX_LOOKAHEADS",
    "StepKLControl",
    "budget_scale",
    "fitted_scale",
    "last_layer_kl_sums",
    "state_fisher_kl",
    "unsupported_reason",
]

BUDGET_SLACK = 1.1
"""A measured KL up to BUDGET_SLACK·δ holds the budget; above it, backtracking shrinks the step again."""
MAX_LOOKAHEADS = 4
"""The most ``lookahead`` forwards per step: the KL of the full step, then up to three backtracking checks.
If the last check is still over the budget, the step is shrunk once more by :func:`fitted_scale`, unmeasured."""


@torch.no_grad()
def state_fisher_kl(
    hidden: torch.Tensor,
    support_ids: torch.Tensor,
    support_probs: torch.Tensor,
    d_weight: torch.Tensor,
    d_bias: torch.Tensor | None,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> torch.Tensor:
    """[N] ½ vᵢᵀ Fᵢ vᵢ, vᵢ = (ΔW[Sᵢ] hᵢ + Δb[Sᵢ]) / τ (eq 6, the Fisher of eq 9).

    Fᵢ = diag(πᵢ) − πᵢπᵢᵀ is the state Fisher on the support (the expectation over the action of eq 9's
    (e_a − π)(e_a − π)ᵀ), so this is the quadratic model of KL(π_W || π_W+ΔW) at token i; vᵀFv is
    :func:`capo.shifts.fisher_quadratic` (no cancellation).

    Args:
        hidden: [N, H] hidden states.
        support_ids: [N, k] vocabulary ids of the support.
        support_probs: [N, k] support probabilities at the temperature (rows sum to 1).
        d_weight: [V, H] step of the output-layer weight.
        d_bias: [V] step of the output-layer bias, or None.
        temperature: the policy temperature τ.
        chunk_size: tokens per chunk (bounds the [C, k, H] gather).
    """
    cdt = support_probs.dtype
    out = torch.empty(hidden.shape[0], dtype=cdt, device=hidden.device)
    for c0 in range(0, hidden.shape[0], chunk_size):
        sl = slice(c0, c0 + chunk_size)
        ids = support_ids[sl]
        v = torch.einsum("nkh,nh->nk", d_weight[ids].to(cdt), hidden[sl].to(cdt))
        if d_bias is not None:
            v = v + d_bias[ids].to(cdt)
        v = v / temperature
        out[sl] = 0.5 * fisher_quadratic(support_probs[sl], v)
    return out


@torch.no_grad()
def last_layer_kl_sums(
    supports: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    head_step: tuple[torch.Tensor, torch.Tensor | None],
    temperature: float,
) -> torch.Tensor:
    """[2] float64 (Σ ½vᵀFv, number of tokens) over the valid tokens of the step's micro-batches.

    ``supports`` gives, per micro-batch, (hidden [N, H], support ids [N, k], support probs [N, k]) under
    the output layer before the step (:meth:`capo.optimizer_step.CAPOStep.supports`: the top-k at the
    temperature, the sampled token included); ``head_step`` = (ΔW, Δb) is the optimizer's
    step of that layer.
    """
    total = torch.zeros(2, dtype=torch.float64, device=head_step[0].device)
    for h, ids, probs in supports:
        kl = state_fisher_kl(h, ids, probs, *head_step, temperature)
        total[0] += kl.double().sum()
        total[1] += kl.numel()
    return total


def budget_scale(kl: float, budget: float, s_max: float = 1.0) -> float:
    """The lr factor s = min(s_max, sqrt(δ / KL̂)), so that s²·KL̂ <= δ; 0 (no step) for a non-finite KL̂.

    ``s_max = 1`` is the cap (the step only shrinks); ``s_max > 1`` the target mode (δ-driven steps).
    """
    if not math.isfinite(kl):
        return 0.0
    return s_max if kl * s_max**2 <= budget else math.sqrt(budget / kl)


FIT_EXPONENTS = (0.5, 2.0)
"""The range of the fitted exponent p of KL(s) ∝ sᵖ (2: the quadratic regime of eq 6)."""


def fitted_scale(points: list[tuple[float, float]], budget: float) -> float:
    """The s at which KL(s) = δ on the power law KL = c·sᵖ through the last two measured (s, KL) points.

    The sqrt rule assumes p = 2 from s = 1; a large step saturates (p < 2 between the measured points) and the
    rule then undershoots. Extrapolating down from the last point with the secant exponent, clamped to
    :data:`FIT_EXPONENTS`, is conservative when p rises towards 2 as s shrinks. 0 (no step) for a non-finite
    or non-positive KL.
    """
    (s_a, k_a), (s_b, k_b) = points[-2], points[-1]
    if not all(math.isfinite(x) and x > 0 for x in (k_a, k_b)):
        return 0.0
    p = math.log(k_a / k_b) / math.log(s_a / s_b)
    p = min(max(p, FIT_EXPONENTS[0]), FIT_EXPONENTS[1])
    return s_b * (budget / k_b) ** (1.0 / p)


def unsupported_reason(trainer: Any, moves: bool = True) -> str | None:
    """Why the step's KL cannot be measured, or (``moves``: with a budget) the step moved, in this set-up."""
    args = trainer.args
    if getattr(trainer, "is_fsdp_enabled", False):
        return "the KL budget does not support FSDP (sharded parameters); use DDP or DeepSpeed ZeRO"
    if getattr(trainer.accelerator, "scaler", None) is not None or (
        getattr(trainer, "is_deepspeed_enabled", False) and args.fp16
    ):
        return (
            "the KL budget does not support fp16 loss scaling (scaled gradients); use bf16 or fp32"
        )
    if getattr(trainer, "is_deepspeed_enabled", False):
        reason = _deepspeed_reason(trainer)
        if reason is not None:
            return reason
    elif moves and any(
        p.requires_grad and p.dtype not in (torch.float32, torch.float64)
        for p in trainer.model.parameters()
    ):
        return (
            "the KL budget moves the step in the parameters' own precision and bfloat16/float16 "
            "parameters would round the move away; load the model in float32 (bf16 autocast still "
            "applies) or use DeepSpeed (float32 master weights)"
        )
    if trainer.optimizer is None and args.optim not in SUPPORTED_OPTIMS:
        return f"the KL budget supports optim in {list(SUPPORTED_OPTIMS)}, got {args.optim!r}"
    try:  # the user's optimizer, or one built as the trainer will build it (its flags: optim_args)
        inner_optimizer(trainer.optimizer or _probe_optimizer(trainer))
    except ValueError as err:
        return str(err)
    return None


def _probe_optimizer(trainer: Any) -> torch.optim.Optimizer:
    """An optimizer of the class and flags the trainer will create, over one dummy parameter."""
    cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    kwargs = {k: v for k, v in kwargs.items() if k != "params"}
    return cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def _deepspeed_reason(trainer: Any) -> str | None:
    """Why the budget cannot run under this DeepSpeed configuration, or None."""
    config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
    zero = config.get("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        if str((zero.get(key) or {}).get("device", "none")).lower() not in ("none", "null"):
            return f"the KL budget does not support DeepSpeed {key} (the master weights move to another device)"
    if "optimizer" in config:
        return (
            "the KL budget needs the trainer's torch AdamW under DeepSpeed, not an optimizer from the "
            "DeepSpeed config; remove its 'optimizer' section"
        )
    if trainer.args.optim not in ("adamw_torch", "adamw_torch_fused"):
        return (
            "the KL budget under DeepSpeed supports optim adamw_torch/adamw_torch_fused (ZeRO frees the "
            f"gradients SGD's step direction needs), got {trainer.args.optim!r}"
        )
    return None


class StepKLControl:
    """Measures (or predicts) the KL of each optimizer step right after it and, with a budget, moves it to θ(s).

    The trainer calls :meth:`on_step_begin` before the step's first micro-batch (the lrs the step will use)
    and :meth:`after_optimizer_step` on every rank once the optimizer has stepped, with the step's
    :class:`~capo.optimizer_step.CAPOStep`, the optimizer and the all-reduce: KL̂ = the KL of the full step
    (``kl_model``), averaged over all ranks' valid tokens (the same s on every rank), s = :func:`budget_scale`,
    then, with backtracking, measured checks and :func:`fitted_scale` shrinks. The optimizer's state and lrs are
    never touched: only the parameters move, along the step's own line. The trainer logs :meth:`pop_metrics`.

    Args:
        budget: δ (``capo_kl_budget``), None to measure and log only.
        kl_model: "lookahead" or "last_layer" (``capo_kl_model``).
        backtrack: Whether a scaled ``lookahead`` step is checked and shrunk again (``capo_kl_backtrack``).
        support_size: k of the ``last_layer`` model.
        temperature: the policy temperature τ.
        autocast: context manager factory of the training forward (the lookahead forward uses it).
        unsupported: :func:`unsupported_reason` of the set-up; with a budget it is an error, without
            one the prediction is not logged (a warning).
        s_max: The largest lr factor: 1 for ``capo_kl_mode`` "cap", ``capo_kl_max_scale`` for "target".
    """

    def __init__(
        self,
        budget: float | None,
        kl_model: str,
        backtrack: bool,
        support_size: int,
        temperature: float,
        autocast: Callable[[], AbstractContextManager[Any]],
        unsupported: str | None = None,
        s_max: float = 1.0,
    ) -> None:
        self.budget, self.kl_model, self.backtrack = budget, kl_model, backtrack
        self.support_size, self.temperature, self.autocast = support_size, temperature, autocast
        self.s_max = s_max  # 1: the cap (capo_kl_mode "cap"); > 1: δ-driven steps ("target")
        self.enabled = True
        if unsupported is not None and budget is not None:
            raise ValueError(unsupported)
        if unsupported is not None:
            warnings.warn(f"{metrics.KL_PREDICTED} is not logged: {unsupported}", stacklevel=3)
            self.enabled = False
        self._lrs: list[float] = []
        self._metrics: dict[str, float] = {}
        self.measured: tuple[float, float] | None = None

    def on_step_begin(self, optimizer: Any) -> None:
        """Record the lrs the coming step uses (under DeepSpeed an engine-owned scheduler advances inside it)."""
        if self.enabled and self.budget is not None:
            self._lrs = [float(g["lr"]) for g in inner_optimizer(optimizer).param_groups]

    def after_optimizer_step(
        self, step: CAPOStep, model: Any, optimizer: Any, reduce: ReduceSum
    ) -> None:
        """Measure the step's KL and move the parameters to the budget's θ(s) (``model``: the unwrapped policy).

        Afterwards :attr:`measured` is the (Σ KL, tokens) of the parameters as they stand when the last thing the
        control did was a ``lookahead`` measurement (None otherwise): the true-KL diagnostic reuses it.
        """
        self.measured = None
        if not self.enabled:
            return
        total, n = self._kl_sums(step, model, reduce)
        kl = total / n if n > 0 else float("nan")
        lookaheads = int(self.kl_model == "lookahead")
        if lookaheads:
            self.measured = (total, n)
        scale = 1.0
        if self.budget is not None and n > 0:
            scale, lookaheads = self._hold(step, model, optimizer, reduce, kl, lookaheads)
        self._metrics = {
            metrics.KL_PREDICTED: kl,
            metrics.KL_SCALE: scale,
            metrics.KL_LOOKAHEADS: float(lookaheads),
        }

    def _hold(
        self,
        step: CAPOStep,
        model: Any,
        optimizer: Any,
        reduce: ReduceSum,
        kl: float,
        lookaheads: int,
    ) -> tuple[float, int]:
        """Move the step to s = budget_scale(KL̂), then backtrack; returns (s, lookahead forwards taken)."""
        assert self.budget is not None
        line = AppliedStep(optimizer, self._lrs)
        scale = budget_scale(kl, self.budget, self.s_max)
        points = [(1.0, kl)]
        while scale != line.s:
            line.move_to(scale)
            self.measured = None
            if not self.backtrack or scale == 0.0 or lookaheads == MAX_LOOKAHEADS:
                break
            total, n = self._kl_sums(step, model, reduce)
            lookaheads += 1
            self.measured = (total, n)
            points.append((scale, total / n))
            if total / n <= BUDGET_SLACK * self.budget:
                break
            scale = fitted_scale(points, self.budget)
        return scale, lookaheads

    def pop_metrics(self) -> dict[str, float]:
        """{KL_PREDICTED, KL_SCALE, KL_LOOKAHEADS} of the step just taken ({} before the first step)."""
        out, self._metrics = self._metrics, {}
        return out

    @torch.no_grad()
    def _kl_sums(self, step: CAPOStep, model: Any, reduce: ReduceSum) -> tuple[float, float]:
        """(Σ KL, number of tokens) over all ranks' valid tokens, at the current parameters.

        ``last_layer`` reads the output layer's step W(1) − W(0): call it before any move.
        """
        sums = torch.zeros(2, dtype=torch.float64, device=step.device)
        if step.head_before is not None:
            with gathered_output_layer(model):
                if self.kl_model == "lookahead":
                    kl = step_kl_sums(
                        model, step.kl_inputs(), step.head_before, self.temperature,
                        self.autocast, head_only=False,
                    )  # fmt: skip
                    sums = kl[[0, 2]].to(step.device)
                else:  # last_layer: exactly quadratic in the scale
                    w, b = output_layer(model)
                    w0, b0 = step.head_before
                    head_step = (
                        w.detach() - w0,
                        None if b is None or b0 is None else b.detach() - b0,
                    )
                    supports = step.supports(self.support_size, self.temperature)
                    sums = last_layer_kl_sums(supports, head_step, self.temperature)
        total, n = reduce(sums.to(step.device)).tolist()  # the one host sync of a measurement
        return total, n
