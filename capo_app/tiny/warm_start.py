"""Supervised warm start of the tiny model on worked solutions, and its greedy accuracy on a split.

A plain torch loop (faster on CPU than ``SFTTrainer`` for a model this size): each step draws a batch of
(prompt, solution) pairs, and the next-token loss is taken on the solution and the final EOS only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import datasets
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from capo_app.evaluation.generation import generate_hf, render_prompts
from capo_app.rewards import score_answer


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm-start settings.

    Attributes:
        steps: Optimizer steps.
        batch_size: Examples per step.
        learning_rate: Peak AdamW learning rate (linear warm-up over 10% of the steps, cosine decay to 10%).
        weight_decay: AdamW weight decay.
        seed: Seed of the batch order.
    """

    steps: int = 250
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict[str, int | float]:
        """Return the fields as a JSON-serialisable dict."""
        return asdict(self)


@dataclass
class WarmStartStats:
    """What the warm start did.

    Attributes:
        steps: Optimizer steps taken.
        seconds: Wall time.
        final_loss: Mean loss of the last 10% of the steps.
        losses: Loss of every step.
    """

    steps: int
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)


def _examples(
    tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset
) -> list[tuple[list[int], list[int]]]:
    prompts = render_prompts(tokenizer, list(dataset["prompt"]))
    conversational = not isinstance(dataset[0]["prompt"], str)
    prompt_ids = tokenizer(prompts, add_special_tokens=not conversational)["input_ids"]
    solution_ids = tokenizer(list(dataset["solution"]), add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    return [(list(p), list(s) + eos) for p, s in zip(prompt_ids, solution_ids, strict=True)]


def _batch(
    examples: list[tuple[list[int], list[int]]], indices: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [examples[i] for i in indices]
    length = max(len(p) + len(s) for p, s in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (prompt, solution) in enumerate(rows):
        ids = prompt + solution
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt) : len(ids)] = torch.tensor(solution)
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def _optimizer(
    model: PreTrainedModel, config: WarmStartConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warm-up over 10% of the steps, then a cosine decay to 10% of the peak."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.98),
        weight_decay=config.weight_decay,
    )
    warmup = max(1, config.steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, config.steps - warmup)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress_))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    config: WarmStartConfig | None = None,
    progress: bool = True,
) -> WarmStartStats:
    """Train ``model`` in place on the dataset's ``solution`` completions (loss on solution tokens + EOS).

    Args:
        model: The causal LM to train.
        tokenizer: Its tokenizer (renders conversational prompts with its chat template).
        dataset: Columns ``prompt`` and ``solution`` (e.g. :func:`capo_app.data.make_arithmetic_dataset`).
        config: Steps, batch size, learning rate, seed.
        progress: Show a tqdm progress bar.

    Returns:
        Timing and loss statistics.
    """
    config = config or WarmStartConfig()
    if config.steps <= 0:
        return WarmStartStats(steps=0, seconds=0.0, final_loss=math.nan)
    examples = _examples(tokenizer, dataset)
    pad_id = int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    optimizer, scheduler = _optimizer(model, config)
    was_training = model.training
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for _ in tqdm(range(config.steps), desc="warm start", disable=not progress, leave=False):
        indices = torch.randint(len(examples), (config.batch_size,), generator=generator).tolist()
        input_ids, mask, labels = (t.to(device) for t in _batch(examples, indices, pad_id))
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    model.train(was_training)
    tail = losses[-max(1, len(losses) // 10) :]
    return WarmStartStats(
        steps=config.steps, seconds=seconds, final_loss=sum(tail) / len(tail), losses=losses
    )


def accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Return the fraction of ``dataset`` answered correctly (math-verify on the last box), one sample each.

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        dataset: Columns ``prompt`` and ``answer``.
        max_new_tokens: Completion length limit.
        temperature: 0 for greedy decoding.
        batch_size: Prompts per generate call.
        seed: Sampling seed.
        progress: Show a progress bar.

    Returns:
        Accuracy in [0, 1] over the rows whose gold parses.
    """
    completions = generate_hf(
        model, tokenizer, list(dataset["prompt"]), max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=batch_size, seed=seed, progress=progress, description="accuracy",
    )  # fmt: skip
    scores = [
        score_answer(c[0], str(a)) for c, a in zip(completions, dataset["answer"], strict=True)
    ]
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else math.nan
