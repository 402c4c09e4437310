"""A tiny Qwen2 with tied input/output embeddings, and its untied twin (same weights, two matrices)."""

from __future__ import annotations

import torch
from transformers import Qwen2ForCausalLM

from tests.capo import _trainer_helpers as H


def tied_tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    """float64, default initialisation (std 0.02), ``lm_head.weight is model.embed_tokens.weight``."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(H.tiny_config(tied=True)).to(torch.float64)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def untied_twin(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    """The same function as the tied ``model``, with the output matrix a separate copy."""
    twin = Qwen2ForCausalLM(H.tiny_config(tied=False)).to(torch.float64)
    twin.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        twin.lm_head.weight.copy_(model.model.embed_tokens.weight)
    return twin


def train_only_the_output_matrix(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    """Freeze every parameter but ``lm_head.weight`` (the shared matrix, in a tied model)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
    return model
