"""Tiny, deterministic CAPOTrainer set-ups for the trainer tests (no hub, no real generation).

A 2-layer Qwen2 model (hidden 32, byte vocabulary of the offline tiny tokenizer), a handful of text
prompts, a deterministic reward, and a generation stub: each completion is a pseudo-random function of
(prompt, position in its group, global step), so runs with different batch splits, gradient
accumulation or process counts see the same global batch.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl import GRPOTrainer

from capo.config import CAPOConfig
from capo.trainer import CAPOTrainer
from capo_app.tiny import build_tiny_tokenizer

PROMPTS = [f"{a}+{b}=" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 3), (4, 5), (6, 7)]]


def tokenizer() -> Any:
    return build_tiny_tokenizer(model_max_length=128)


def tiny_config(tied: bool = False) -> Qwen2Config:
    """The tests' 2-layer Qwen2 (hidden 32) over the tiny tokenizer; ``tied`` ties input and output embeddings."""
    tok = tokenizer()
    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config()).to(dtype)
    with torch.no_grad():  # larger output weights: sharper policies, shifts of a testable size
        model.lm_head.weight.mul_(20.0)
    return model


def dataset(n: int = 8) -> Dataset:
    return Dataset.from_dict({"prompt": (PROMPTS * (n // len(PROMPTS) + 1))[:n]})


def length_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """Deterministic reward in [0, 1] that varies within a group."""
    return [float(len(c) % 5) / 4.0 for c in completions]


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class FixedCompletions:
    """Generation stub: completion = f(prompt ids, position in its group, global step).

    With ``truncate_second_half_at_step = s``, at global step s the second half of the global batch
    (rank 1 of 2) gets full-length completions without EOS (all masked by mask_truncated_completions).
    """

    truncate_second_half_at_step: int | None = None

    def _generate_single_turn(  # type: ignore[no-untyped-def]
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        n = len(prompt_ids)
        rank = self.accelerator.process_index  # type: ignore[attr-defined]
        max_len = self.max_completion_length  # type: ignore[attr-defined]
        eos = self.eos_token_ids[0]  # type: ignore[attr-defined]
        step = self.state.global_step  # type: ignore[attr-defined]
        out = []
        for i, ids in enumerate(prompt_ids):
            position = (rank * n + i) % num_generations
            g = torch.Generator().manual_seed(_stable_seed(tuple(ids), position, step))
            length = int(torch.randint(2, max_len + 1, (1,), generator=g))
            tokens = torch.randint(3, 40, (length,), generator=g).tolist()
            world = self.accelerator.num_processes  # type: ignore[attr-defined]
            if step == self.truncate_second_half_at_step and rank * n + i >= n * world // 2:
                tokens = torch.randint(3, 40, (max_len,), generator=g).tolist()
            elif length < max_len or position % 2:  # some end with EOS, others are truncated
                tokens = [*tokens[: max_len - 1], eos]
            out.append(tokens)
        return out, None


class StubCAPOTrainer(FixedCompletions, CAPOTrainer):
    pass


class StubGRPOTrainer(FixedCompletions, GRPOTrainer):
    pass


def config(output_dir: str, **overrides: Any) -> CAPOConfig:
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        report_to=[],
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        capo_support_size=8,
    )
    kwargs.update(overrides)
    return CAPOConfig(**kwargs)


def trainer(
    output_dir: str,
    cls: type = StubCAPOTrainer,
    model: Any = None,
    n_prompts: int = 8,
    **overrides: Any,
) -> Any:
    args = config(output_dir, **overrides)
    return cls(
        model=model if model is not None else tiny_model(),
        reward_funcs=length_reward,
        args=args,
        train_dataset=dataset(n_prompts),
        processing_class=tokenizer(),
    )


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}
