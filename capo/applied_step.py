"""The optimizer step just taken, as a line θ(s) in parameter space, and moves of the parameters along it.

For the optimizers the KL budget supports (torch Adam/AdamW, SGD; :data:`MODELED_FLAGS`) one step of a
parameter is θ_new = θ_old·(1 − lr·w) − lr·d, where the decay w and the direction d are known from the
optimizer's state after the step, elementwise:

- Adam/AdamW: d = (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + ε) with the moments and t already advanced (v the
  running maximum with amsgrad); w = weight_decay if decoupled (AdamW), else 0 (L2 decay is inside m and v);
- SGD with momentum: d = the momentum buffer, w = 0 (L2 decay is inside the buffer); without momentum d = g
  and w = weight_decay (g the gradient, negated with ``maximize``). Not Nesterov (:data:`MODELED_FLAGS`).

The optimizer's state does not depend on the lr, so the step it would have taken at lr·s is
θ(s) = θ_old·(1 − s·lr·w) − s·lr·d: the line through θ_old (s = 0) and θ_new (s = 1). A parameter at θ(s₁)
moves to θ(s₂) in place, θ_old = (θ(s₁) + s₁·lr·d) / (1 − s₁·lr·w), θ(s₂) = θ_old·(1 − s₂·lr·w) − s₂·lr·d, in
chunks of :data:`CHUNK` elements: no copy of the parameters, exact up to the rounding of the parameter's dtype
(float32 or float64; low-precision parameters are refused by the KL budget, which would round the move away).

Under DeepSpeed ZeRO the torch optimizer steps each rank's float32 master partition (its ``param_groups`` hold
the flat partitions); the move is made there and written back to the model's weights the way ZeRO's own step
ends (:func:`_write_back`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["MODELED_FLAGS", "SUPPORTED_OPTIMS", "AppliedStep", "inner_optimizer", "zero_optimizer"]

SUPPORTED_OPTIMS = ("adamw_torch", "adamw_torch_fused", "sgd")
"""``TrainingArguments.optim`` values whose optimizer (torch Adam/AdamW, SGD) the line knows."""

MODELED_FLAGS: dict[type, dict[str, Any]] = {
    torch.optim.Adam: {"amsgrad": None, "maximize": None, "decoupled_weight_decay": None,
                       "foreach": None, "fused": None, "capturable": False, "differentiable": False},
    torch.optim.AdamW: {"amsgrad": None, "maximize": None, "decoupled_weight_decay": None,
                        "foreach": None, "fused": None, "capturable": False, "differentiable": False},
    torch.optim.SGD: {"momentum": None, "dampening": None, "nesterov": False, "maximize": None,
                      "foreach": None, "fused": None, "differentiable": False},
}  # fmt: skip
"""Per optimizer class, the flags of a param group the line models (None: every value, each checked against
``torch.optim`` in ``tests/capo/test_applied_step.py``; otherwise the one value accepted). Not Nesterov: its
direction needs the step's gradient, which torch's foreach SGD (its default on CUDA) overwrites in place."""
_NUMBERS = frozenset({"lr", "initial_lr", "betas", "eps", "weight_decay"})
"""Param-group entries that are numbers of the step (all modeled), not flags."""
CHUNK = 1 << 24
"""Elements per piece of a move: its temporaries are a few [CHUNK] tensors whatever the model's size (64 MiB each in
float32), few enough pieces that a 7B ZeRO partition moves in ~100 rounds of kernels."""


def zero_optimizer(optimizer: Any) -> Any | None:
    """DeepSpeed's ZeRO optimizer inside accelerate's wrapper, or None without ZeRO."""
    while hasattr(optimizer, "optimizer"):
        if hasattr(optimizer, "single_partition_of_fp32_groups") or hasattr(
            optimizer, "fp32_partitioned_groups_flat"
        ):
            return optimizer
        optimizer = optimizer.optimizer
    return None


def inner_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's (and ZeRO's) wrapper; ValueError if its step is not modeled."""
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer, ZeRO's optimizer
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


def _pieces(p: torch.Tensor, tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """[p piece, *tensor pieces] over matching [CHUNK] slices of the flattened tensors."""
    flat = [p.detach().view(-1), *(t.detach().view(-1) for t in tensors)]
    for a in range(0, flat[0].numel(), CHUNK):
        yield [t[a : a + CHUNK] for t in flat]


class AppliedStep:
    """The step the optimizer has just applied, as the line θ(s); the parameters start at s = 1.

    Args:
        optimizer: The trainer's optimizer (accelerate's wrapper; ZeRO's inside it under DeepSpeed), after
            its step and before ``zero_grad``.
        lrs: The learning rate each param group stepped with (recorded before the step: under DeepSpeed a
            scheduler the engine owns has already advanced).
    """

    def __init__(self, optimizer: Any, lrs: Sequence[float]) -> None:
        self.optimizer = inner_optimizer(optimizer)
        self.zero: Any = zero_optimizer(optimizer)  # None without ZeRO
        self.stage3 = self.zero is not None and hasattr(self.zero, "fp32_partitioned_groups_flat")
        if self.zero is not None:
            _check_zero(self.zero, "ZeRO-3" if self.stage3 else "ZeRO-1/2")
        self.lrs = [float(lr) for lr in lrs]
        if len(self.lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"{len(self.lrs)} learning rates for {len(self.optimizer.param_groups)} param groups"
            )
        self.s = 1.0

    def _stepped(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(param group index, tensor) of each tensor the step moved (under ZeRO: this rank's master partitions)."""
        # ZeRO-3's sub-group partitions are lent to their param group only during its step.
        if self.stage3:
            zero = self.zero
            for i, flat in enumerate(zero.fp32_partitioned_groups_flat):
                yield zero.sub_group_to_group_id[i], flat
            return
        for i, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                if self.zero is not None or p.grad is not None:  # torch skips a gradless tensor
                    yield i, p

    @torch.no_grad()
    def move_to(self, s: float) -> None:
        """Move every stepped parameter from θ(self.s) to θ(s) (and write it back under ZeRO)."""
        if s == self.s:
            return
        if self.stage3:
            self.zero._partition_all_parameters()  # no gathered copy outlives the move
        adam = isinstance(self.optimizer, torch.optim.Adam)
        for i, p in self._stepped():
            group, lr, state = self.optimizer.param_groups[i], self.lrs[i], self.optimizer.state[p]
            if adam:
                self._move_adam(p, group, state, lr, s)
            else:
                self._move_sgd(p, group, state, lr, s)
        self.s = s
        if self.zero is not None:
            _write_back(self.zero, self.stage3)

    def _move_adam(self, p: torch.Tensor, group: dict, state: dict, lr: float, s: float) -> None:
        beta1, beta2 = (float(b) for b in group["betas"])
        t = float(state["step"])
        bc1, bc2_sqrt = 1 - beta1**t, (1 - beta2**t) ** 0.5
        decoupled = group.get("decoupled_weight_decay", False)
        w = float(group["weight_decay"]) if decoupled else 0.0
        v_key = "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"
        for theta, m, v in _pieces(p, [state["exp_avg"], state[v_key]]):
            d = (v.sqrt() / bc2_sqrt).add_(float(group["eps"]))
            d = torch.div(m, d).div_(bc1)
            _move(theta, d.to(theta.dtype), lr, w, self.s, s)

    def _move_sgd(self, p: torch.Tensor, group: dict, state: dict, lr: float, s: float) -> None:
        if float(group["momentum"]) != 0:  # the buffer is the direction; L2 decay is inside it
            for theta, buf in _pieces(p, [state["momentum_buffer"]]):
                _move(theta, buf.to(theta.dtype), lr, 0.0, self.s, s)
            return
        if p.grad is None:  # ZeRO frees it: SGD is refused there (kl_budget.unsupported_reason)
            raise ValueError(
                "SGD without momentum: the step's direction is its gradient, which is gone"
            )
        sign = -1.0 if group["maximize"] else 1.0
        for theta, g in _pieces(p, [p.grad]):
            _move(theta, g.to(theta.dtype) * sign, lr, float(group["weight_decay"]), self.s, s)


def _move(theta: torch.Tensor, d: torch.Tensor, lr: float, w: float, s1: float, s2: float) -> None:
    """θ(s1) -> θ(s2) in place on the line θ(s) = θ_old·(1 − s·lr·w) − s·lr·d."""
    if w == 0.0:
        theta.add_(d, alpha=(s1 - s2) * lr)
        return
    theta.add_(d, alpha=s1 * lr).div_(1 - s1 * lr * w).mul_(1 - s2 * lr * w).add_(d, alpha=-s2 * lr)


ZERO_INTERNALS = {
    "ZeRO-1/2": ("single_partition_of_fp32_groups", "update_lp_params"),
    "ZeRO-3": ("fp32_partitioned_groups_flat", "sub_group_to_group_id", "fp16_groups",
               "persistent_parameters", "_reassign_or_swap_out_partitioned_parameters",
               "_partition_all_parameters", "invalidate_secondary_tensor"),
}  # fmt: skip
"""What the move reads and calls of ZeRO's optimizer (verified with DeepSpeed 0.19.8)."""


def _check_zero(zero: Any, stage: str) -> None:
    """ValueError naming what is missing if this DeepSpeed's ZeRO optimizer lacks what a move needs."""
    missing = [name for name in ZERO_INTERNALS[stage] if not hasattr(zero, name)]
    if missing:
        raise ValueError(
            f"the KL budget cannot move this DeepSpeed's {stage} master weights ({type(zero).__name__} "
            f"has no {', '.join(missing)}; verified with DeepSpeed 0.19.8)"
        )


def _write_back(zero: Any, stage3: bool) -> None:
    """Copy each rank's moved master partition into the model's weights, as the end of ZeRO's ``step`` does.

    ZeRO-1/2 (``DeepSpeedZeroOptimizer``): its ``update_lp_params`` copies the float32 partition into the
    rank's slice of the bit16 weights and all-gathers them. ZeRO-3 (``DeepSpeedZeroOptimizer_Stage3``): copy each
    sub-group's float32 partition into its partitioned weights (``_reassign_or_swap_out_partitioned_parameters``),
    re-gather the persistent (never partitioned) parameters and drop the stale secondary copies, as its
    ``_post_step`` does. A collective: every rank calls it at the same point.
    """
    if not stage3:
        zero.update_lp_params()
        return
    for i in range(len(zero.fp16_groups)):
        zero._reassign_or_swap_out_partitioned_parameters(i)
    if len(zero.persistent_parameters) > 0:
        zero.persistent_parameters[0].all_gather(zero.persistent_parameters)
    zero.invalidate_secondary_tensor()
