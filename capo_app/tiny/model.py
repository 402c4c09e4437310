"""A tiny Qwen2-architecture causal LM built from a config with a seeded random init (no hub access)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM


@dataclass(frozen=True)
class TinyModelConfig:
    """Size of the tiny model.

    Attributes:
        hidden_size: Width H (the last-layer hidden size CAPO's curvature model uses).
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention as in Qwen2).
        intermediate_size: MLP width.
        max_position_embeddings: Longest sequence.
        seed: Seed of the random initialisation.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    seed: int = 0

    def to_dict(self) -> dict[str, int]:
        """Return the fields as a JSON-serialisable dict."""
        return asdict(self)


def qwen2_config(tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig) -> Qwen2Config:
    """Return the ``Qwen2Config``: vocabulary = the tokenizer's, untied ``lm_head`` (a separate weight)."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def init_tiny_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig | None = None
) -> Qwen2ForCausalLM:
    """Build the tiny model with a random init from ``config.seed`` (the global torch RNG is left untouched).

    Args:
        tokenizer: Gives the vocabulary size and the pad/EOS ids.
        config: Model size; defaults to :class:`TinyModelConfig`.

    Returns:
        A float32 ``Qwen2ForCausalLM`` whose generation config stops at EOS and pads with the pad token.
    """
    config = config or TinyModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(qwen2_config(tokenizer, config))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model
