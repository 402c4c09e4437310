"""How the output layer is trained, checked at CAPOTrainer construction (capo.output_layer_check).

Frozen head and adapter on the head: ValueError saying why and what to do; tied embeddings: one warning;
head trained in full (plain, or PEFT's modules_to_save copy): accepted silently.
"""

from __future__ import annotations

import warnings

import pytest
from peft import LoraConfig, get_peft_model

from capo.output_layer_check import check_output_layer_training, output_layer_training
from tests.capo import _trainer_helpers as H
from tests.capo._tied_model import tied_tiny_model

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def build(output_dir, model, peft_config=None, **overrides):
    return H.StubCAPOTrainer(
        model=model,
        reward_funcs=H.length_reward,
        args=H.config(str(output_dir), **overrides),
        train_dataset=H.dataset(8),
        processing_class=H.tokenizer(),
        peft_config=peft_config,
    )


@pytest.mark.parametrize(
    ("make", "trainable", "adapters", "tied"),
    [
        (lambda: H.tiny_model(), True, (), False),
        (lambda: get_peft_model(H.tiny_model(), LoraConfig(**LORA)), False, (), False),
        (
            lambda: get_peft_model(H.tiny_model(), LoraConfig(**LORA, modules_to_save=["lm_head"])),
            True,
            (),
            False,
        ),
        (
            lambda: get_peft_model(
                H.tiny_model(), LoraConfig(**{**LORA, "target_modules": ["q_proj", "lm_head"]})
            ),
            False,
            ("lora_A.default.weight", "lora_B.default.weight"),
            False,
        ),
        (lambda: tied_tiny_model(), True, (), True),
        # PEFT's trainable copy of a tied head is a separate matrix: the step model is exact again
        (
            lambda: get_peft_model(
                tied_tiny_model(), LoraConfig(**LORA, modules_to_save=["lm_head"])
            ),
            True,
            (),
            False,
        ),
        (
            lambda: get_peft_model(
                tied_tiny_model(),
                LoraConfig(**LORA, modules_to_save=["lm_head"], ensure_weight_tying=True),
            ),
            True,
            (),
            True,
        ),
    ],
    ids=[
        "plain",
        "lora",
        "lora+modules_to_save",
        "lora_on_lm_head",
        "tied",
        "tied+modules_to_save",
        "tied+modules_to_save+ensure_weight_tying",
    ],
)
def test_output_layer_training_tells_the_setups_apart(make, trainable, adapters, tied):
    info = output_layer_training(make())
    assert (info.weight_trainable, info.adapter_parameters, info.tied) == (
        trainable,
        adapters,
        tied,
    )


@pytest.mark.parametrize(
    "capo",
    [
        dict(),
        dict(capo_enabled=False, capo_track_shifts=True),
        dict(capo_enabled=False, capo_kl_budget=1e-3, capo_kl_model="last_layer"),
    ],
    ids=["masking", "tracking", "last_layer_budget"],
)
def test_frozen_head_with_a_head_model_raises_and_says_what_to_do(tmp_path, capo):
    """Masking, shift tracking and the last_layer KL budget all predict a head step that never happens."""
    with pytest.raises(ValueError, match=r"output layer is frozen.*modules_to_save=\['lm_head'\]"):
        build(tmp_path, H.tiny_model(), LoraConfig(**LORA), **capo)


def test_frozen_head_without_the_curvature_model_is_accepted(tmp_path):
    """The baselines (and the true-KL log) need no head model: LoRA alone trains."""
    trainer = build(
        tmp_path, H.tiny_model(), LoraConfig(**LORA), capo_enabled=False, capo_log_true_kl=True
    )
    assert trainer.capo_moments is None


def test_non_peft_frozen_head_raises(tmp_path):
    model = H.tiny_model()
    model.lm_head.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="output layer is frozen"):
        build(tmp_path, model)


def test_lora_on_the_head_is_refused_by_capo_and_by_trl(tmp_path):
    """Decision: refuse. CAPO's step model is a W-space Adam step; TRL's fused head reads
    lm_head.weight directly, so inside GRPOTrainer the adapter would not even be trained."""
    lora_head = LoraConfig(**{**LORA, "target_modules": ["q_proj", "lm_head"]})
    with pytest.raises(ValueError, match=r"adapter on the output layer.*modules_to_save"):
        check_output_layer_training(get_peft_model(H.tiny_model(), lora_head))
    with pytest.raises(ValueError, match="lm_head"):
        build(tmp_path, H.tiny_model(), lora_head)


def test_tied_embeddings_warn_once_and_modules_to_save_does_not_warn(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(tmp_path / "tied", tied_tiny_model())
    tied = [w for w in caught if "tied input/output embeddings" in str(w.message)]
    assert len(tied) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(tmp_path / "copy", tied_tiny_model(), LoraConfig(**LORA, modules_to_save=["lm_head"]))
    assert not [w for w in caught if "tied input/output embeddings" in str(w.message)]


def test_a_head_weight_that_is_not_a_parameter_is_refused():
    model = H.tiny_model()
    weight = model.lm_head.weight.detach().clone()
    del model.lm_head.weight
    model.lm_head.weight = weight  # a plain tensor, as a view into a flattened FSDP parameter
    with pytest.raises(ValueError, match="not a parameter of the model"):
        output_layer_training(model)
