"""The KL budget on the step actually taken (capo.kl_budget; an extension beyond the paper, design §5)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from capo import applied_step, metrics
from capo.kl_budget import (
    BUDGET_SLACK,
    MAX_LOOKAHEADS,
    StepKLControl,
    budget_scale,
    fitted_scale,
    unsupported_reason,
)
from capo.optimizer_step import CAPOStep
from tests.capo import _trainer_helpers as H
from tests.tolerances import EXACT_RTOL, FLOAT32_ATOL, FLOAT32_RTOL

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": dict(optim="adamw_torch", weight_decay=0.1),
    "sgd_momentum": dict(optim="sgd", optim_args="momentum=0.9", weight_decay=0.01),
}
KL_REL = 1e-9
"""Prediction vs measurement of the same KL: equal up to the rounding of θ + Δ (issue 13's bar)."""


def kl_history(trainer) -> list[dict[str, float]]:
    return [h for h in trainer.state.log_history if metrics.KL_SCALE in h]


def test_fitted_scale_lands_on_the_budget_of_a_power_law():
    """KL = c·sᵖ through two measured points: the fit's s gives KL = δ exactly for p in the fitted range and
    extrapolates with the clamped exponent outside it (2: the quadratic model; 0.5: strong saturation)."""
    delta = 1e-3
    for p, c in ((2.0, 0.09), (1.3, 0.05), (0.7, 0.02)):
        points = [(1.0, c), (0.2, c * 0.2**p)]
        s = fitted_scale(points, delta)
        assert c * s**p == pytest.approx(delta, rel=EXACT_RTOL)
    steep = [(1.0, 0.09), (0.2, 0.09 * 0.2**3.0)]  # p = 3 is clamped to 2: a smaller (safer) s
    assert fitted_scale(steep, delta) == pytest.approx(0.2 * (delta / (0.09 * 0.2**3.0)) ** 0.5)
    assert fitted_scale([(1.0, 0.09), (0.2, math.nan)], delta) == 0.0


def test_budget_scale_bounds_the_quadratic_model():
    """s²·KL̂ = δ when KL̂ > δ, s = 1 within the budget, no step for a non-finite prediction."""
    assert budget_scale(4e-3, 1e-3) ** 2 * 4e-3 == pytest.approx(1e-3, rel=EXACT_RTOL)
    assert budget_scale(1e-4, 1e-3) == 1.0
    assert budget_scale(math.inf, 1e-3) == budget_scale(math.nan, 1e-3) == 0.0


@pytest.mark.parametrize("ga", [1, 2])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_lookahead_predicts_the_measured_true_kl(tmp_path, optimizer, ga):
    """lookahead at s = 1 (no budget) == the true KL measured after the step, rel 1e-9."""
    tr = H.trainer(
        str(tmp_path),
        capo_enabled=False,  # GRPO: every token's gradient is applied, so the step is large
        capo_log_true_kl=True,
        per_device_train_batch_size=8 // ga,
        gradient_accumulation_steps=ga,
        max_steps=3,
        **OPTIMIZERS[optimizer],
    )
    tr.train()
    hist = kl_history(tr)
    assert len(hist) == 3
    for h in hist:
        assert h[metrics.KL_SCALE] == 1.0
        assert h[metrics.TRUE_KL] > 1e-6
        assert abs(h[metrics.KL_PREDICTED] - h[metrics.TRUE_KL]) <= KL_REL * h[metrics.TRUE_KL]
        assert 0.0 < h[metrics.TRUE_KL_HEAD]


def test_predicting_without_a_budget_changes_no_parameter(tmp_path):
    """Measuring the step's KL without a budget (a forward, no move) trains bit-identically."""
    runs = []
    for log in (False, True):
        tr = H.trainer(str(tmp_path / str(log)), capo_log_true_kl=log, max_steps=2)
        tr.train()
        runs.append(H.params(tr.model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_unsupported_setups_are_refused_in_one_line():
    """FSDP, fp16 loss scaling, low-precision parameters, other optimizers, and the DeepSpeed set-ups whose
    master weights or gradients the line cannot reach: one clear reason each."""
    ds = lambda **config: SimpleNamespace(  # noqa: E731
        scaler=None,
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)),
    )
    model = torch.nn.Linear(2, 2)
    build = lambda args, model: (torch.optim.AdamW, {"lr": 1e-3})  # noqa: E731
    base = dict(
        optimizer=None, accelerator=ds(zero_optimization={"stage": 2}), model=model,
        get_optimizer_cls_and_kwargs=build,
    )  # fmt: skip
    args = lambda optim="adamw_torch": SimpleNamespace(optim=optim, fp16=False)  # noqa: E731
    fake = lambda **kw: SimpleNamespace(**{**base, "args": args(), **kw})  # noqa: E731
    assert unsupported_reason(fake()) is None
    assert unsupported_reason(fake(is_deepspeed_enabled=True)) is None  # ZeRO-2/3 with torch AdamW
    assert "FSDP" in str(unsupported_reason(fake(is_fsdp_enabled=True)))
    assert "fp16" in str(unsupported_reason(fake(accelerator=SimpleNamespace(scaler=object()))))
    assert "bfloat16" in str(unsupported_reason(fake(model=torch.nn.Linear(2, 2).bfloat16())))
    bf16 = fake(model=torch.nn.Linear(2, 2).bfloat16())
    assert unsupported_reason(bf16, moves=False) is None  # measuring alone moves nothing
    assert "adafactor" in str(unsupported_reason(fake(args=args("adafactor"))))
    adagrad = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    assert "Adagrad" in str(unsupported_reason(fake(optimizer=adagrad)))
    offload = ds(zero_optimization={"stage": 3, "offload_param": {"device": "cpu"}})
    for kw, match in [
        (dict(accelerator=offload), "offload_param"),
        (dict(accelerator=ds(optimizer={"type": "AdamW"})), "'optimizer' section"),
        (dict(args=args("sgd")), "ZeRO frees the gradients"),
    ]:
        assert match in str(unsupported_reason(fake(is_deepspeed_enabled=True, **kw)))


def test_budget_with_an_unsupported_optimizer_fails_at_construction(tmp_path):
    """Refused before the optimizer exists: its class, and flags the step cannot model (from optim_args)."""
    with pytest.raises(ValueError, match="KL budget supports optim"):
        H.trainer(str(tmp_path), capo_kl_budget=1e-3, optim="adagrad")
    with pytest.raises(ValueError, match=r"SGD\(nesterov=True\)"):
        H.trainer(
            str(tmp_path), capo_kl_budget=1e-3, optim="sgd", optim_args="momentum=0.9,nesterov=true"
        )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(capo_kl_budget=0.0), "capo_kl_budget"),
        (dict(capo_kl_budget=float("nan")), "capo_kl_budget"),
        (dict(capo_kl_model="exact"), "capo_kl_model"),
        (dict(capo_kl_backtrack=True, capo_kl_model="last_layer"), "capo_kl_backtrack"),
    ],
)
def test_bad_budget_options_are_rejected(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        H.config(str(tmp_path), **overrides)


def test_last_layer_predicts_a_head_only_step_up_to_the_cubic_remainder(tmp_path):
    """Backbone frozen, support = whole vocabulary: ½vᵀFv == the measured KL + O(Δ³) (small SGD step)."""
    model = H.tiny_model()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    vocab = model.config.vocab_size
    tr = H.trainer(
        str(tmp_path),
        model=model,
        capo_enabled=False,
        capo_log_true_kl=True,
        capo_kl_model="last_layer",
        capo_support_size=vocab,
        optim="sgd",
        learning_rate=1e-2,
    )
    tr.train()
    for h in kl_history(tr):
        assert h[metrics.TRUE_KL_HEAD] == h[metrics.TRUE_KL] > 1e-9
        rel = abs(h[metrics.KL_PREDICTED] / h[metrics.TRUE_KL] - 1.0)
        assert rel <= 10.0 * math.sqrt(
            h[metrics.TRUE_KL]
        )  # relative remainder O(|Δz|) = O(sqrt KL)


def measured_kl_over_budget(tmp_path, name: str, delta: float, **overrides) -> list[dict]:
    tr = H.trainer(
        str(tmp_path / name),
        capo_enabled=False,
        capo_log_true_kl=True,
        max_steps=20,
        learning_rate=1e-3,  # aggressive: the unbudgeted true KL is 3-90 x delta per step
        optim="adamw_torch",
        **overrides,
    )
    tr.train()
    return kl_history(tr)


@pytest.mark.slow
def test_budget_holds_the_measured_kl_at_an_aggressive_lr(tmp_path):
    """lookahead budget δ, by default (backtracking on): measured KL <= BUDGET_SLACK·δ on every step, within
    MAX_LOOKAHEADS forwards; without the budget the same run exceeds δ on every step; without backtracking the
    sqrt rule alone gives s²·KL̂ = δ."""
    delta = 1e-3
    free = measured_kl_over_budget(tmp_path, "free", delta)
    assert all(h[metrics.TRUE_KL] > delta for h in free)
    budgeted = measured_kl_over_budget(tmp_path, "budget", delta, capo_kl_budget=delta)
    ratios = [h[metrics.TRUE_KL] / delta for h in budgeted]
    print(f"worst measured KL / budget: {max(ratios):.3f}")
    assert all(r <= BUDGET_SLACK for r in ratios)
    assert all(2 <= h[metrics.KL_LOOKAHEADS] <= MAX_LOOKAHEADS for h in budgeted)
    sqrt_rule = measured_kl_over_budget(
        tmp_path, "sqrt", delta, capo_kl_budget=delta, capo_kl_backtrack=False
    )
    for h in sqrt_rule:  # the quadratic rule: s² · KL̂ = δ whenever the step was scaled
        assert h[metrics.KL_SCALE] < 1.0 and h[metrics.KL_LOOKAHEADS] == 1
        assert h[metrics.KL_SCALE] ** 2 * h[metrics.KL_PREDICTED] == pytest.approx(delta)


BUDGETED: dict[str, Any] = dict(
    capo_enabled=False, capo_kl_budget=1e-3, optim="adamw_torch", learning_rate=1e-3, max_steps=3
)
"""A run whose every step is scaled (unbudgeted KL 3-90 x the budget)."""


def test_budget_is_invariant_to_the_gradient_accumulation_split(tmp_path):
    """GA 1 x 8 and GA 2 x 4 completions: the same scales and parameters (up to summation order, which
    Adam amplifies on near-zero gradients: measured 3e-9 relative; the backtracked scales, fitted through two
    measured KLs, amplify it to 2e-8)."""
    runs = []
    for ga in (1, 2):
        tr = H.trainer(
            str(tmp_path / str(ga)),
            per_device_train_batch_size=8 // ga,
            gradient_accumulation_steps=ga,
            **BUDGETED,
        )
        tr.train()
        runs.append(([h[metrics.KL_SCALE] for h in kl_history(tr)], H.params(tr.model)))
    (scales1, params1), (scales2, params2) = runs
    assert all(s < 1.0 for s in scales1)
    assert scales2 == pytest.approx(scales1, rel=1e-7)
    for name, p in params1.items():
        err = float((params2[name] - p).abs().max())
        assert err <= FLOAT32_RTOL * float(p.abs().max()) + FLOAT32_ATOL, name


def test_resume_reproduces_the_budgeted_steps(tmp_path):
    """Resuming from a checkpoint after a scaled step gives the same next scale and parameters."""
    common = dict(**BUDGETED, save_strategy="steps", save_steps=2)
    full = H.trainer(str(tmp_path / "full"), **common)
    full.train()
    resumed = H.trainer(str(tmp_path / "resumed"), **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    last, again = kl_history(full)[-1], kl_history(resumed)[-1]
    assert again["step"] == last["step"] == 3
    assert again[metrics.KL_SCALE] == pytest.approx(last[metrics.KL_SCALE], rel=EXACT_RTOL)
    assert again[metrics.KL_SCALE] < 1.0
    full_params, resumed_params = H.params(full.model), H.params(resumed.model)
    assert all(torch.equal(full_params[k], resumed_params[k]) for k in full_params)


def test_the_control_allocates_a_measuring_forward_and_chunks_never_a_parameter_copy(
    tmp_path, monkeypatch
):
    """Peak bytes of the budget's work per step (counted op by op): those of one measuring forward (the true-KL
    diagnostic's, counted the same way, made to run its own forward) plus a few move chunks, below what a copy
    of the parameters adds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from allocations import OpCounter

    monkeypatch.setattr(applied_step, "CHUNK", 1024)
    peaks: dict[str, int] = {"control": 0, "true_kl": 0}

    def counted(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with OpCounter() as counter, counter.phase(name) as phase:
                out = fn(*args, **kwargs)
            peaks[name] = max(peaks[name], phase.peak)
            return out

        return run

    monkeypatch.setattr(
        StepKLControl,
        "after_optimizer_step",
        counted("control", StepKLControl.after_optimizer_step),
    )
    true_kl = counted("true_kl", CAPOStep.true_kl)
    # the yardstick is the diagnostic's own forward, not the control's measurement it would reuse
    monkeypatch.setattr(CAPOStep, "true_kl", lambda *a, **kw: true_kl(*a[:6]))
    tr = H.trainer(str(tmp_path), capo_log_true_kl=True, **BUDGETED)
    tr.train()
    assert all(h[metrics.KL_SCALE] < 1.0 for h in kl_history(tr))
    param_bytes = sum(p.numel() * p.element_size() for p in tr.model.parameters())
    chunks = 4 * applied_step.CHUNK * 8  # a few float64 [CHUNK] temporaries
    assert peaks["control"] <= peaks["true_kl"] + chunks < peaks["true_kl"] + param_bytes


def test_the_true_kl_diagnostic_reuses_the_controls_last_measurement(tmp_path, monkeypatch):
    """One full-KL forward per step when the control's last act was a measurement at the final parameters:
    without a budget (the KL of the step) and with a backtracked budget whose check held."""
    import capo.kl_budget as kb
    import capo.optimizer_step as ops

    full_forwards = []

    def counting(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            full_forwards.append(kwargs.get("full", True))
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(kb, "step_kl_sums", counting(kb.step_kl_sums))
    monkeypatch.setattr(ops, "step_kl_sums", counting(ops.step_kl_sums))
    for budget in (None, 1e-3):
        full_forwards.clear()
        tr = H.trainer(
            str(tmp_path / str(budget)),
            capo_log_true_kl=True,
            **{**BUDGETED, "capo_kl_budget": budget},
        )
        tr.train()
        hist = kl_history(tr)
        assert all(h[metrics.KL_LOOKAHEADS] < MAX_LOOKAHEADS for h in hist)  # each ended measured
        assert sum(full_forwards) == sum(h[metrics.KL_LOOKAHEADS] for h in hist)
