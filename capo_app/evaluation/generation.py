"""Sample completions for evaluation: batched HF ``generate`` (left padding) or a thin vLLM backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Prompt = str | list[dict[str, str]]


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]) -> list[str]:
    """Render prompts to text as TRL does: conversations through the chat template, strings unchanged.

    Args:
        tokenizer: The tokenizer (needs a chat template for conversational prompts).
        prompts: Strings or lists of chat messages.

    Returns:
        The prompt texts.
    """
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
        else:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            texts.append(str(text))
    return texts


@torch.no_grad()
def generate_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 512,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    description: str = "generating",
) -> list[list[str]]:
    """Generate ``n_samples`` completions per prompt with ``model.generate`` in left-padded batches.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer (a pad token is required; the EOS token ends a completion).
        prompts: Strings or chat conversations (rendered with the chat template, generation prompt added).
        max_new_tokens: Completion length limit.
        n_samples: Completions per prompt (must be 1 for greedy decoding, ``temperature == 0``).
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: Nucleus sampling mass.
        batch_size: Prompts per ``generate`` call.
        seed: Torch seed of the sampling stream (the global RNG state is restored afterwards).
        progress: Show a tqdm progress bar.
        description: Progress bar label.

    Returns:
        For each prompt, its ``n_samples`` completion texts (special tokens removed).
    """
    if temperature <= 0 and n_samples != 1:
        raise ValueError("greedy decoding (temperature 0) gives identical samples; use n_samples=1")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token for batched generation")
    texts = render_prompts(tokenizer, prompts)
    plain = all(isinstance(p, str) for p in prompts)
    sampling: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_return_sequences": n_samples}
    sampling["do_sample"] = temperature > 0
    if temperature > 0:
        sampling.update(temperature=temperature, top_p=top_p, top_k=0)
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    outputs: list[list[str]] = []
    try:  # sampling draws from its own stream: the caller's (training's) RNG state is left untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            batches = range(0, len(texts), batch_size)
            for start in tqdm(batches, desc=description, disable=not progress, leave=False):
                decoded = _generate_batch(
                    model, tokenizer, texts[start : start + batch_size], plain, sampling
                )
                outputs.extend(
                    decoded[i : i + n_samples] for i in range(0, len(decoded), n_samples)
                )
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    plain: bool,
    sampling: dict[str, Any],
) -> list[str]:
    """Generate for one left-padded batch; returns the completion texts, ``num_return_sequences`` per prompt."""
    device = next(model.parameters()).device
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=plain).to(
        device
    )
    generated = model.generate(  # type: ignore[operator]
        **encoded,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    new_tokens = generated[:, encoded["input_ids"].shape[1] :]
    return list(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))


def vllm_available() -> bool:
    """Return True iff the ``vllm`` package can be imported."""
    return importlib.util.find_spec("vllm") is not None


def generate_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 512,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    **llm_kwargs: Any,
) -> list[list[str]]:
    """Generate with vLLM (``pip install 'capo-rl[vllm]'``); same contract as :func:`generate_hf`.

    Not exercised in this repository's tests (no vLLM on the build machine).

    Args:
        model_path: A local folder or hub id vLLM can load.
        tokenizer: Used to render conversational prompts with the chat template.
        prompts: Strings or chat conversations.
        max_new_tokens: Completion length limit.
        n_samples: Completions per prompt.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: Nucleus sampling mass.
        seed: Sampling seed.
        **llm_kwargs: Passed to ``vllm.LLM`` (e.g. ``tensor_parallel_size``, ``gpu_memory_utilization``).

    Returns:
        For each prompt, its ``n_samples`` completion texts.

    Raises:
        ImportError: If vLLM is not installed.
    """
    if not vllm_available():
        raise ImportError(
            "the vllm backend needs the vllm package: pip install 'capo-rl[vllm]' (or use --backend hf)"
        )
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_path, seed=seed, **llm_kwargs)
    params = SamplingParams(
        n=n_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
    )
    results = llm.generate(render_prompts(tokenizer, prompts), params)
    return [[out.text for out in result.outputs] for result in results]
