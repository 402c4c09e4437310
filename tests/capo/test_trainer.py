"""CAPOTrainer on one hand-built micro-batch (float64): the mask, its gradient, and the edge cases.

The expected values are computed independently here: the model's own full logits (output_hidden_states,
lm_head), :func:`capo.support_from_logits`, :func:`capo.directional_shifts`, :func:`capo.select`, and a
masked surrogate loss written out by hand (docs/design.md §2). Gradients are compared at float32 tolerance:
TRL's fused LM-head kernel computes log-probabilities in float32 even for a float64 model; masks and
shifts are compared exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch

import capo
from tests.capo import _trainer_helpers as H
from tests.tolerances import FLOAT32_ATOL, FLOAT32_RTOL

B, K, P = 8, 6, 4
LENGTHS = [6, 3, 6, 1, 4, 6, 2, 5]  # completions shorter than K are padded; 6 = truncated (no EOS)


def micro_batch(tok, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    completion_mask = (torch.arange(K)[None] < torch.tensor(LENGTHS)[:, None]).long()
    completion_ids = torch.randint(3, 40, (B, K), generator=g)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
    advantages = torch.randn(B, generator=g, dtype=torch.float64)
    advantages[3] = 0.0  # a zero-advantage completion (zero-std group)
    return {
        "prompt_ids": torch.randint(3, 40, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "capo_group_ids": torch.arange(B) // 4,
        "capo_completion_index": torch.arange(B),
    }


def loss_and_grads(trainer, inputs):
    model = trainer.model
    model.train()
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    trainer.capo_record = []
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, trainer.capo_record[-1]["keep"]


def reference_logps_and_hidden(model, inputs, temperature):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    logits = out.logits[:, -K - 1 : -1] / temperature  # the logits at p predict token p + 1
    logps = torch.log_softmax(logits, dim=-1).gather(-1, inputs["completion_ids"][..., None])
    return logps.squeeze(-1), out.hidden_states[-1][:, -K - 1 : -1], out.logits[:, -K - 1 : -1]


def assert_grad_close(got, expected, name):
    """Float32 round-off of TRL's kernel, relative to the tensor's scale (not element-wise)."""
    err = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= FLOAT32_RTOL * scale + FLOAT32_ATOL, (
        f"{name}: max error {err:.3e}, scale {scale:.3e}"
    )


def hand_masked_loss(logps, keep, valid, adv, variant, max_len):
    """docs/design.md §2 on-policy surrogate: −A·ratio, mean over accepted tokens per completion."""
    per_token = -adv[:, None] * torch.exp(logps - logps.detach())
    keep = keep.to(logps.dtype)
    if variant == "dr_grpo":
        return (per_token * keep).sum() / (logps.shape[0] * max_len)
    n_acc = keep.sum(dim=1)
    per_completion = (per_token * keep).sum(dim=1) / n_acc.clamp(min=1)
    return per_completion.mean()


THRESHOLDS = {"hessian_low": -0.05, "hessian_high": 0.05, "fisher_max": 1.3e-3}


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo"])
def test_gradient_equals_hand_masked_loss(tmp_path, variant):
    trainer = H.trainer(str(tmp_path), capo_variant=variant, temperature=0.7, **THRESHOLDS)
    inputs = micro_batch(trainer.processing_class)
    _, grads, keep = loss_and_grads(trainer, inputs)
    valid = inputs["completion_mask"].bool()
    assert keep[valid].any() and not keep[valid].all(), "thresholds must give a mixed mask"
    assert not (keep & ~valid).any()

    model = trainer.model
    model.zero_grad()
    logps, _, _ = reference_logps_and_hidden(model, inputs, 0.7)
    hand = hand_masked_loss(
        logps, keep, valid, inputs["advantages"], variant, trainer.max_completion_length
    )
    hand.backward()
    for name, p in model.named_parameters():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        got = grads.get(name, torch.zeros_like(p))
        assert_grad_close(got, expected, name)


@pytest.mark.parametrize(
    ("granularity", "step_model"), [("token", "adam"), ("completion", "sgd"), ("group", "adam")]
)
def test_trainer_shifts_equal_directional_shifts_on_independent_hidden_states(
    tmp_path, granularity, step_model
):
    """The off-by-one, the temperature and the advantages inside the trainer match eq 10 computed
    from the model's own output_hidden_states and full logits."""
    trainer = H.trainer(
        str(tmp_path), temperature=0.7, capo_granularity=granularity, capo_step_model=step_model
    )
    if trainer.capo_moments is not None:  # non-trivial moments: one earlier update
        g = torch.Generator().manual_seed(3)
        ids = torch.arange(0, 60, 2)
        trainer.capo_moments.update(
            ids, 1e-2 * torch.randn(30, 32, generator=g, dtype=torch.float64)
        )
    moments = copy.deepcopy(trainer.capo_moments)
    inputs = micro_batch(trainer.processing_class)

    with torch.no_grad():
        _, hidden, logits = reference_logps_and_hidden(trainer.model, inputs, 0.7)
    valid = inputs["completion_mask"].bool()
    sup = capo.support_from_logits(
        logits[valid], inputs["completion_ids"][valid], k=8, temperature=0.7
    )
    adv = inputs["advantages"][:, None].expand(B, K)[valid]
    batch = sup.token_batch(hidden[valid], adv)
    step = capo.AdamStep(1e-3, moments) if step_model == "adam" else capo.SGDStep(1e-3)
    rows = torch.arange(B)[:, None].expand(B, K)[valid]
    subsets = {"token": None, "completion": rows, "group": rows // 4}[granularity]
    if subsets is not None:
        subsets = torch.unique(subsets, return_inverse=True)[1]
    shifts = capo.directional_shifts(batch, step, subsets)
    # thresholds between the subsets' values, so that the mask is mixed
    thresholds = capo.Thresholds(fisher_max=float(shifts.m_F.median()) * (1 + 1e-9))
    expected = capo.select(shifts, thresholds)
    expected = expected if subsets is None else expected[subsets]
    assert expected.any() and not expected.all()

    trainer.capo_thresholds = thresholds
    _, _, keep = loss_and_grads(trainer, inputs)
    assert torch.equal(keep[valid], expected)
    assert not keep[~valid].any()


def test_all_rejected_gives_zero_gradient_and_no_nan(tmp_path):
    trainer = H.trainer(str(tmp_path), hessian_low=1e3, hessian_high=2e3, fisher_max=None)
    inputs = micro_batch(trainer.processing_class)
    loss, grads, keep = loss_and_grads(trainer, inputs)
    assert not keep.any()
    assert torch.isfinite(loss)
    assert all(bool((g == 0).all()) for g in grads.values())
    trainer._capo_step_end()
    metrics = trainer._metrics["train"]
    assert metrics["capo/rejection_rate"][-1] == 1.0
    assert metrics["capo/rejection_rate_hessian"][-1] == 1.0
    assert metrics["capo/rejection_rate_fisher"][-1] == 0.0
    assert metrics["capo/all_rejected_microbatches"][-1] == 1.0
    assert trainer.capo_moments.t == 1  # zero accepted gradient: moments decay, t still advances


def test_disabled_capo_leaves_gradient_unmasked(tmp_path):
    trainer = H.trainer(str(tmp_path), capo_enabled=False, fisher_max=1e-300)
    inputs = micro_batch(trainer.processing_class)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    got = {k: p.grad.clone() for k, p in trainer.model.named_parameters()}
    trainer.model.zero_grad()
    logps, _, _ = reference_logps_and_hidden(trainer.model, inputs, 1.0)
    valid = inputs["completion_mask"].bool()
    hand_masked_loss(logps, valid, valid, inputs["advantages"], "grpo", K).backward()
    for name, p in trainer.model.named_parameters():
        assert_grad_close(got[name], p.grad, name)


def test_nonfinite_advantage_is_rejected_and_counted(tmp_path):
    trainer = H.trainer(str(tmp_path), hessian_low=None, hessian_high=None, fisher_max=None)
    inputs = micro_batch(trainer.processing_class)
    inputs["advantages"][0] = float("nan")
    _, _, keep = loss_and_grads(trainer, inputs)
    assert not keep[0].any() and keep[1:][inputs["completion_mask"][1:].bool()].all()
    trainer._capo_step_end()
    assert trainer._metrics["train"]["capo/nonfinite_tokens"][-1] == LENGTHS[0]
