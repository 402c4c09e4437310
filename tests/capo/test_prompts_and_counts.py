"""What a run keeps and counts: without --max_prompt_length, prompts that do not fit the model's context beside
the completion cap are dropped with a line saying how many (a cap that leaves no room is one usage error);
completions generated are counted apart from completions trained on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from datasets import Dataset

from capo_app.checks import UsageError
from capo_app.run import completions_generated, usable_prompts
from capo_app.tiny import build_tiny_tokenizer

MODEL = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))
ARGS = SimpleNamespace(max_prompt_length=None, dataset_name="d.jsonl", dataset_train_split="train")


def _prompts(*lengths):
    return Dataset.from_dict({"prompt": ["x" * n for n in lengths]})


def test_prompts_longer_than_the_context_less_the_completion_cap_are_dropped(capsys):
    kept = usable_prompts(
        _prompts(10, 24, 25, 500),
        build_tiny_tokenizer(),
        ARGS,
        SimpleNamespace(max_completion_length=40),
        MODEL,
    )
    assert len(kept) == 2  # byte-level tokenizer: one token per character, 64 - 40 = 24 left
    assert "dropped 2 of 4 prompts longer than 24 tokens" in capsys.readouterr().out


def test_a_completion_cap_that_fills_the_context_is_refused():
    with pytest.raises(UsageError, match="max_completion_length 64 leaves no room for a prompt"):
        usable_prompts(
            _prompts(1),
            build_tiny_tokenizer(),
            ARGS,
            SimpleNamespace(max_completion_length=64),
            MODEL,
        )


def test_no_prompt_left_names_the_limit():
    with pytest.raises(UsageError, match="all 1 prompts are longer than 24 tokens"):
        usable_prompts(
            _prompts(30),
            build_tiny_tokenizer(),
            ARGS,
            SimpleNamespace(max_completion_length=40),
            MODEL,
        )


@pytest.mark.parametrize(
    ("num_iterations", "steps_per_generation", "generated"),
    [(1, 1, 192), (2, 1, 128), (1, 2, 256)],  # 3 steps of 64: trained on 192 in every case
)
def test_generated_completions_count_the_generations(
    num_iterations, steps_per_generation, generated
):
    """Several iterations per generation generate fewer than are trained on; a generation spanning two steps,
    generated ahead, more."""
    config = SimpleNamespace(
        per_device_train_batch_size=64, gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation, num_iterations=num_iterations,
    )  # fmt: skip
    assert completions_generated(config, 1, 3) == generated
