"""CAPO with LoRA (PEFT) and ``modules_to_save=["lm_head"]``: the trained head copy is the head CAPO models.

The hidden states are captured through the adapter-wrapped backbone; the masks equal the independent
:func:`capo.directional_shifts` on the PEFT model's own ``output_hidden_states`` and logits (as the
full-model test of ``test_trainer``), training updates the head copy and the LoRA weights only, and a
resume from a PEFT checkpoint restores the tracked moments.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig

import capo
from capo.checkpoint import MOMENTS_FILE
from tests.capo import _trainer_helpers as H
from tests.capo.test_trainer import B, K, loss_and_grads, micro_batch, reference_logps_and_hidden
from tests.capo.test_trainer_training import MIXED

LORA_WITH_HEAD = dict(
    r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    target_modules=["q_proj", "v_proj", "down_proj"],
    modules_to_save=["lm_head"],
    init_lora_weights=False,  # random A and B: the adapter changes the hidden states from the start
)


def peft_trainer(output_dir, **overrides):
    torch.manual_seed(0)  # the same LoRA initialisation in every trainer
    return H.StubCAPOTrainer(
        model=H.tiny_model(),
        reward_funcs=H.length_reward,
        args=H.config(str(output_dir), **overrides),
        train_dataset=H.dataset(8),
        processing_class=H.tokenizer(),
        peft_config=LoraConfig(**LORA_WITH_HEAD),
    )


def test_peft_masks_equal_directional_shifts_on_the_models_own_hidden_states(tmp_path):
    trainer = peft_trainer(tmp_path, temperature=0.7)
    g = torch.Generator().manual_seed(3)  # non-trivial moments: one earlier update
    trainer.capo_moments.update(
        torch.arange(0, 60, 2), 1e-2 * torch.randn(30, 32, generator=g, dtype=torch.float64)
    )
    moments = copy.deepcopy(trainer.capo_moments)
    inputs = micro_batch(trainer.processing_class)
    with torch.no_grad():
        _, hidden, logits = reference_logps_and_hidden(trainer.model, inputs, 0.7)
        plain = H.tiny_model()(
            input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        ).logits[:, -K - 1 : -1]
    assert (plain - logits).abs().max() > 1e-3, "the adapter must change the logits"

    valid = inputs["completion_mask"].bool()
    sup = capo.support_from_logits(
        logits[valid], inputs["completion_ids"][valid], k=8, temperature=0.7
    )
    batch = sup.token_batch(hidden[valid], inputs["advantages"][:, None].expand(B, K)[valid])
    shifts = capo.directional_shifts(batch, capo.AdamStep(1e-3, moments))
    thresholds = capo.Thresholds(fisher_max=float(shifts.m_F.median()) * (1 + 1e-9))
    expected = capo.select(shifts, thresholds)
    assert expected.any() and not expected.all()

    trainer.capo_thresholds = thresholds
    _, grads, keep = loss_and_grads(trainer, inputs)
    assert torch.equal(keep[valid], expected)
    assert not keep[~valid].any()
    head_grads = [n for n in grads if "lm_head" in n]
    assert head_grads == ["base_model.model.lm_head.modules_to_save.default.weight"]


def test_peft_trains_the_head_copy_and_resume_restores_the_moments(tmp_path):
    common = dict(optim="sgd", max_steps=3, save_strategy="steps", save_steps=2, **MIXED)
    full = peft_trainer(tmp_path / "full", **common)
    before = H.params(full.model)
    full.capo_record = []
    full.train()
    after = H.params(full.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert "base_model.model.lm_head.modules_to_save.default.weight" in changed
    assert any("lora_" in n for n in changed)
    assert all("lora_" in n or "modules_to_save" in n for n in changed)
    assert full.capo_moments.t == 3
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / MOMENTS_FILE).exists()

    resumed = peft_trainer(tmp_path / "resumed", **common)
    resumed.capo_record = []
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.capo_moments.t == 3
    assert torch.equal(resumed.capo_record[0]["keep"], full.capo_record[-1]["keep"])
    for x, y in zip(resumed.capo_moments.to_dense(), full.capo_moments.to_dense(), strict=True):
        assert float((x - y).abs().max()) <= 1e-6 * float(x.abs().max())
