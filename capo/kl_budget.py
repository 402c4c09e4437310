"""A KL budget on the step actually taken: an extension beyond the paper (docs/design.md §5).

CAPO decides per token from the step that token alone would cause; the optimizer then takes one step for the
whole accepted batch, whose size Adam normalises. This module bounds the step itself: before
``optimizer.step()`` (after gradient accumulation, clipping and the cross-rank reduction) it forms the
optimizer's prospective step Δ exactly from its state, predicts the mean KL(π_θ || π_θ+Δ) over the step's
valid completion tokens, and scales the step's learning rate by s = min(1, sqrt(δ / KL̂)) (``capo_kl_mode``
"cap"; "target": s = min(s_max, sqrt(δ / KL̂)), up as well as down) (the KL is
quadratic in the step to leading order, arXiv 2510.00819, eq 6). Both supported optimizers have Δ linear
in the learning rate (AdamW's decoupled decay included), so the scaled step is exactly s·Δ.

Two predictions (``capo_kl_model``):

- ``lookahead``: one no-grad forward of the step's completions with every parameter moved to θ + s·Δ,
  exact KL over the full vocabulary in [C, V] chunks (:func:`capo.true_kl.step_kl_sums`): the same
  quantity the true-KL diagnostic measures after the step, so at s = 1 the two agree to rounding. The
  full vocabulary (not the top-k support) because the budget is on the policy's KL, and its [C, V]
  logits cost no more than the LM head of that forward. Parameters are restored bit-exactly.
- ``last_layer``: ½ vᵀ F v with v = (ΔW[S] h + Δb[S]) / τ the change of the tempered logits over the
  top-k support S and F = diag(π) − ππᵀ the state Fisher (eq 6 with the Fisher of eq 9 in expectation
  over the action), ΔW the optimizer's prospective step of the output layer; no forward. It cannot see
  the backbone's share of the move.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from capo import metrics
from capo.hidden_capture import output_head
from capo.moments_sync import ReduceSum
from capo.optimizer_step import CAPOStep
from capo.shifts import fisher_quadratic
from capo.true_kl import step_kl_sums

__all__ = [
    "StepKLControl",
    "budget_scale",
    "last_layer_kl_sums",
    "parameters_moved",
    "prospective_params",
    "state_fisher_kl",
    "unsupported_reason",
]

SUPPORTED_OPTIMS = ("adamw_torch", "adamw_torch_fused", "sgd")
"""``TrainingArguments.optim`` values whose optimizer (torch Adam/AdamW, SGD) the prospective step knows."""


MODELED_FLAGS: dict[type, dict[str, Any]] = {
    torch.optim.Adam: {"amsgrad": None, "maximize": None, "decoupled_weight_decay": None,
                       "foreach": None, "fused": None, "capturable": False, "differentiable": False},
    torch.optim.AdamW: {"amsgrad": None, "maximize": None, "decoupled_weight_decay": None,
                        "foreach": None, "fused": None, "capturable": False, "differentiable": False},
    torch.optim.SGD: {"momentum": None, "dampening": None, "nesterov": None, "maximize": None,
                      "foreach": None, "fused": None, "differentiable": False},
}  # fmt: skip
"""Per optimizer class, the flags of a param group the prospective step models (None: every value, each
checked against ``torch.optim`` in ``tests/capo/test_kl_budget.py``; otherwise the one value accepted)."""
_NUMBERS = frozenset({"lr", "initial_lr", "betas", "eps", "weight_decay"})
"""Param-group entries that are numbers of the step (all modeled), not flags."""


def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper; ValueError if its step is not modeled."""
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer
        optimizer = optimizer.optimizer
    flags = MODELED_FLAGS.get(type(optimizer))
    if flags is None:
        raise ValueError(
            f"the KL budget forms the step of torch Adam/AdamW or SGD only, got {type(optimizer).__name__}"
        )
    for group in optimizer.param_groups:
        if any(isinstance(group.get(k), torch.Tensor) for k in ("lr", "eps", "weight_decay")):
            raise ValueError("the KL budget needs float hyper-parameters (lr, eps, weight_decay)")
        for key, value in group.items():
            if key == "params" or key in _NUMBERS:
                continue
            if key not in flags or (flags[key] is not None and value != flags[key]):
                raise ValueError(
                    f"the KL budget does not model {type(optimizer).__name__}({key}={value!r})"
                )
    return optimizer


def _grad(p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
    if p.grad is None:
        raise ValueError("a parameter without a gradient has no prospective step")
    return -p.grad if group["maximize"] else p.grad


def _adam_param(p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], lr: float):
    """θ' of one parameter after torch Adam/AdamW's step (bias correction, weight decay, eps, amsgrad)."""
    beta1, beta2 = (float(b) for b in group["betas"])
    wd, eps = float(group["weight_decay"]), float(group["eps"])
    grad = _grad(p, group)
    new = p.detach().clone()
    if wd != 0.0:
        if group.get("decoupled_weight_decay", False):
            new.mul_(1 - lr * wd)
        else:
            grad = grad.add(p.detach(), alpha=wd)
    zeros = torch.zeros_like(new)
    m = state.get("exp_avg", zeros).lerp(grad, 1 - beta1)
    v = state.get("exp_avg_sq", zeros).mul(beta2).addcmul_(grad, grad, value=1 - beta2)
    if group["amsgrad"]:
        v = torch.maximum(state.get("max_exp_avg_sq", zeros), v)
    t = float(state["step"]) + 1 if "step" in state else 1.0
    denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
    return new.addcdiv_(m, denom, value=-lr / (1 - beta1**t))


def _sgd_param(p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], lr: float):
    """θ' of one parameter after torch SGD's step (weight decay, momentum, dampening, Nesterov)."""
    grad = _grad(p, group)
    if group["weight_decay"] != 0:
        grad = grad.add(p.detach(), alpha=group["weight_decay"])
    momentum = group["momentum"]
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = grad.clone()
        else:
            buf = buf.mul(momentum).add_(grad, alpha=1 - group["dampening"])
        grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
    return p.detach().add(grad, alpha=-lr)


@torch.no_grad()
def prospective_params(
    optimizer: Any, lr_scale: float = 1.0, only: Sequence[torch.Tensor] | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, θ') for each parameter the optimizer would move, with every lr scaled by ``lr_scale``.

    Computed from the optimizer's state and the current gradients exactly as its ``step()`` would (no
    state changes), one parameter at a time (lazily, to bound memory). ``only`` restricts to those tensors.
    """
    opt = inner_optimizer(optimizer)
    update = _adam_param if isinstance(opt, torch.optim.Adam) else _sgd_param
    wanted = None if only is None else {id(t) for t in only}
    for group in opt.param_groups:
        lr = float(group["lr"]) * lr_scale
        for p in group["params"]:
            if p.grad is not None and (wanted is None or id(p) in wanted):
                yield p, update(p, group, opt.state.get(p, {}), lr)


@contextmanager
def parameters_moved(moves: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Copy θ' into each parameter for the block; the old values are restored bit-exactly on exit."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p, new in moves:
                saved.append((p, p.detach().clone()))
                p.copy_(new)
        yield
    finally:
        with torch.no_grad():
            for p, old in saved:
                p.copy_(old)


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
    temperature, the sampled token included); ``head_step`` = (ΔW, Δb) is the optimizer's prospective
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


def unsupported_reason(trainer: Any) -> str | None:
    """Why the prospective step cannot be formed in this trainer's set-up, or None if it can."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return (
            "the KL budget does not support DeepSpeed (ZeRO partitions the gradients and optimizer "
            "state outside torch.optim, so the prospective step is not formed on each rank); use DDP"
        )
    if getattr(trainer, "is_fsdp_enabled", False):
        return "the KL budget does not support FSDP (sharded parameters); use DDP"
    if getattr(trainer.accelerator, "scaler", None) is not None:
        return (
            "the KL budget does not support fp16 loss scaling (scaled gradients); use bf16 or fp32"
        )
    if trainer.optimizer is not None:  # passed in by the user: check its class now
        try:
            inner_optimizer(trainer.optimizer)
        except ValueError as err:
            return str(err)
    elif trainer.args.optim not in SUPPORTED_OPTIMS:
        return (
            f"the KL budget supports optim in {list(SUPPORTED_OPTIMS)}, got {trainer.args.optim!r}"
        )
    return None


class StepKLControl:
    """Predicts the KL of each optimizer step before it is taken and, with a budget, scales its lr.

    The trainer calls :meth:`before_optimizer_step` on every rank after clipping and the cross-rank
    gradient reduction, with the step's :class:`~capo.optimizer_step.CAPOStep`, the optimizer and the
    all-reduce: KL̂ = the prediction of ``kl_model`` at s = 1, averaged over all ranks' valid tokens (the
    same s on every rank), s = :func:`budget_scale` (one optional lookahead backtracking check), every
    param group's lr multiplied by s. :meth:`after_optimizer_step` restores the scheduled lrs; the
    trainer logs :meth:`pop_metrics` at the step end.

    Args:
        budget: δ (``capo_kl_budget``), None to predict and log only.
        kl_model: "lookahead" or "last_layer" (``capo_kl_model``).
        backtrack: ``capo_kl_backtrack``.
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
        self._scheduled_lrs: list[Any] | None = None
        self._metrics: dict[str, float] = {}

    def before_optimizer_step(
        self, step: CAPOStep, model: Any, optimizer: Any, reduce: ReduceSum
    ) -> None:
        """Predict the step's KL and scale the lr to the budget (``model``: the unwrapped policy)."""
        if not self.enabled:
            return
        total, n = self.predict_sums(step, model, optimizer, reduce, 1.0)
        kl = total / n if n > 0 else float("nan")
        scale = 1.0 if self.budget is None or n == 0 else budget_scale(kl, self.budget, self.s_max)
        if self.budget is not None and self.backtrack and scale not in (0.0, 1.0):
            total, n = self.predict_sums(step, model, optimizer, reduce, scale)
            scale *= budget_scale(total / n, self.budget)
        self._metrics = {metrics.KL_PREDICTED: kl, metrics.KL_SCALE: scale}
        if scale != 1.0:
            groups = optimizer.param_groups
            self._scheduled_lrs = [g["lr"] for g in groups]
            for g in groups:
                g["lr"] = g["lr"] * scale

    def after_optimizer_step(self, optimizer: Any) -> None:
        """Restore the scheduled learning rates."""
        if self._scheduled_lrs is not None:
            for g, lr in zip(optimizer.param_groups, self._scheduled_lrs, strict=True):
                g["lr"] = lr
            self._scheduled_lrs = None

    def pop_metrics(self) -> dict[str, float]:
        """{KL_PREDICTED, KL_SCALE} of the step just taken ({} before the first step)."""
        out, self._metrics = self._metrics, {}
        return out

    @torch.no_grad()
    def predict_sums(
        self, step: CAPOStep, model: Any, optimizer: Any, reduce: ReduceSum, scale: float
    ) -> tuple[float, float]:
        """(Σ KL, number of tokens) over all ranks' valid tokens of the step θ -> θ + scale·Δ."""
        sums = torch.zeros(2, dtype=torch.float64, device=step.device)
        if step.head_before is not None and self.kl_model == "lookahead":
            with parameters_moved(prospective_params(optimizer, scale)):
                kl = step_kl_sums(
                    model,
                    step.kl_inputs(),
                    step.head_before,
                    self.temperature,
                    self.autocast,
                    head_only=False,
                )
            sums = kl[[0, 2]].to(step.device)
        elif step.head_before is not None:  # last_layer: exactly quadratic in the scale
            head_step = self._head_step(model, optimizer)
            supports = step.supports(self.support_size, self.temperature)
            sums = last_layer_kl_sums(supports, head_step, self.temperature).to(step.device)
            sums[0] *= scale**2
        total, n = reduce(sums).tolist()  # the one host sync of the prediction
        return total, n

    @staticmethod
    def _head_step(model: Any, optimizer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ΔW, Δb): the optimizer's prospective step of the output layer (zero where it has no grad)."""
        head = output_head(model)
        params = [t for t in (head.weight, getattr(head, "bias", None)) if t is not None]
        new = {id(p): v for p, v in prospective_params(optimizer, 1.0, params)}
        steps = [new[id(p)] - p.detach() if id(p) in new else torch.zeros_like(p) for p in params]
        return steps[0], steps[1] if len(steps) > 1 else None
