"""The step just taken as a line θ(s) (capo.applied_step): moving along it gives the step the optimizer takes
at lr·s, for every flag combination the KL budget accepts, without a copy of the parameters."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

from capo import applied_step
from capo.applied_step import AppliedStep, inner_optimizer
from tests.tolerances import EXACT_ATOL, EXACT_RTOL

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from allocations import OpCounter

IMPLEMENTATIONS = [{}, {"foreach": True}, {"fused": True}]
ADAM_CASES = [
    (cls, dict(amsgrad=ams, maximize=mx, weight_decay=wd, **extra, **impl))
    for cls, extra in [
        (torch.optim.Adam, {}),
        (torch.optim.Adam, {"decoupled_weight_decay": True}),
        (torch.optim.AdamW, {}),
    ]
    for ams, mx, wd, impl in itertools.product(
        (False, True), (False, True), (0.0, 0.3), IMPLEMENTATIONS
    )
]
SGD_CASES = [
    (
        torch.optim.SGD,
        dict(momentum=m, dampening=d, nesterov=n, maximize=mx, weight_decay=wd, **impl),
    )
    for m, d, n, mx, wd, impl in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (False,), (False, True), (0.0, 0.2), IMPLEMENTATIONS
    )
]
LR = 0.1


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=EXACT_RTOL, atol=EXACT_ATOL)


@pytest.mark.parametrize(
    ("cls", "flags"),
    ADAM_CASES + SGD_CASES,
    ids=lambda x: getattr(x, "__name__", None) or ",".join(f"{k}={v}" for k, v in x.items()),
)
def test_moving_to_s_gives_the_step_taken_at_lr_times_s(cls, flags, monkeypatch):
    """θ(0) = the parameters before the step, θ(1) = after it, θ(s) = torch's own step at lr·s (s < 1 and
    s > 1), over three steps (empty and filled state), in chunks of any size; a tensor without a gradient
    stays put."""
    monkeypatch.setattr(applied_step, "CHUNK", 7)  # pieces that cut the tensors anywhere
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64)) for _ in range(3)]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt, ref = cls(params, lr=LR, **flags), cls(twin, lr=LR, **flags)
    for s in (0.37, 2.5, 0.05):
        for p, q in zip(params[:2], twin[:2], strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        before = [p.detach().clone() for p in params]
        opt.step()
        after = [p.detach().clone() for p in params]
        line = AppliedStep(opt, [LR])
        line.move_to(0.0)
        _close(params, before)
        line.move_to(1.0)
        _close(params, after)
        line.move_to(s)
        ref.param_groups[0]["lr"] = LR * s
        ref.step()
        ref.param_groups[0]["lr"] = LR
        _close(params, twin)
        assert torch.equal(params[2].detach(), before[2])  # no gradient: not stepped, not moved


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ps: torch.optim.Adam(ps, capturable=True), "capturable"),
        (lambda ps: torch.optim.AdamW(ps, differentiable=True), "differentiable"),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, differentiable=True), "differentiable"),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "nesterov"),
        (lambda ps: type("MyAdam", (torch.optim.Adam,), {})(ps), "MyAdam"),
        (lambda ps: torch.optim.NAdam(ps), "NAdam"),
    ],
)
def test_flags_and_optimizers_the_line_does_not_model_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        inner_optimizer(make([torch.nn.Parameter(torch.zeros(2))]))


def test_a_move_allocates_a_few_chunks_not_a_copy_of_the_parameters(monkeypatch):
    """Peak bytes a move allocates (counted op by op): a few [CHUNK] temporaries, far below the parameters'
    own bytes, which copying them (the old lookahead's backup) allocates in full."""
    chunk = 1 << 10
    monkeypatch.setattr(applied_step, "CHUNK", chunk)
    params = [torch.nn.Parameter(torch.randn(256, 256)) for _ in range(4)]  # 1 MiB of float32
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    line = AppliedStep(opt, [LR])
    with OpCounter() as counter, counter.phase("move") as move:
        line.move_to(0.3)
    with OpCounter() as counter, counter.phase("copy") as copy:
        backup = [p.detach().clone() for p in params]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    assert copy.peak >= param_bytes and backup
    assert move.peak <= 4 * chunk * 4 < param_bytes // 16


def test_a_zero_optimizer_without_what_a_move_needs_is_refused_by_name():
    """A DeepSpeed whose ZeRO optimizer lacks the internals the move uses: one line naming them."""

    class FakeZero:
        def __init__(self, inner):
            self.optimizer, self.single_partition_of_fp32_groups = inner, []

    inner = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(
        ValueError, match=r"ZeRO-1/2 .*no update_lp_params; verified with DeepSpeed"
    ):
        AppliedStep(FakeZero(inner), [1e-3])
