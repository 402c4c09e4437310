"""Capture the final hidden states of a causal LM's backbone during TRL's fused-LM-head forward.

TRL 1.16 scores completions with ``model(..., labels=..., fused_lm_head=True)``: the patched forward runs
the backbone (``model.base_model``), then projects ``last_hidden_state`` through the output layer in
tiles without ever calling ``lm_head`` and returns no hidden states. A forward hook on the backbone
sees ``last_hidden_state`` (after the final norm, i.e. exactly the input of the output layer), so the
policy is run once per micro-batch and CAPO still gets h.

Off-by-one: ``last_hidden_state[:, p]`` produces the logits of the token at position p + 1. For the
last T = ``logits_to_keep`` positions (the completion), the hidden states are
``last_hidden_state[:, -T - 1 : -1]`` (:func:`completion_hidden`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "HiddenCapture",
    "backbone_of",
    "capture_hidden",
    "causal_lm_of",
    "check_plain_output_layer",
    "completion_hidden",
    "output_head",
    "output_layer",
]

_SCALE_ATTRS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def causal_lm_of(model: nn.Module) -> Any:
    """The causal LM inside a (PEFT-) wrapped model: the module whose forward TRL patched."""
    inner: Any = model
    get_base = getattr(inner, "get_base_model", None)
    if callable(get_base):  # PEFT: the fused head was added to the inner model before wrapping
        inner = get_base()
    return inner


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone TRL's fused forward calls (``base_model``, e.g. ``Qwen2Model``)."""
    lm: Any = causal_lm_of(model)
    backbone = getattr(lm, "base_model", None)
    if not isinstance(backbone, nn.Module) or backbone is lm:
        raise ValueError(
            f"cannot find the backbone of {type(lm).__name__}: CAPO needs a causal LM whose "
            "`base_model` returns `last_hidden_state`"
        )
    return backbone


def output_head(model: nn.Module) -> Any:
    """The output layer (``lm_head``) of a (PEFT-wrapped) causal LM: the one accessor of the project.

    Raises:
        ValueError: if the model has no output embeddings with a weight.
    """
    head: Any = causal_lm_of(model).get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError("CAPO needs a model with output embeddings (an lm_head with a weight)")
    return head


def output_layer(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, H], bias [V] or None) of the output layer, detached.

    Raises:
        ValueError: if the model has no output embeddings or their weight is sharded away (ZeRO-3
            outside :func:`capo.sharding.gathered_output_layer`).
    """
    head = output_head(model)
    weight = head.weight.detach()
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(
            f"the output-layer weight has shape {list(weight.shape)}; CAPO needs the full [V, H] weight on "
            "every rank (under DeepSpeed ZeRO-3 CAPOTrainer gathers it, capo.sharding; FSDP sharding of "
            "lm_head is not supported)"
        )
    bias = getattr(head, "bias", None)
    return weight, None if bias is None else bias.detach()


def check_plain_output_layer(model: nn.Module) -> None:
    """Raise ValueError if the logits are not ``h Wᵀ (+ b)`` (logit scaling or soft-capping)."""
    config: Any = causal_lm_of(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "final_logit_softcapping", None) is not None:
        raise ValueError("CAPO's last-layer model does not support final_logit_softcapping")
    for name in _SCALE_ATTRS:
        value = getattr(text, name, None)
        if value is not None and float(value) != 1.0:
            raise ValueError(f"CAPO's last-layer model does not support {name}={value}")


class HiddenCapture:
    """Collects the backbone's ``last_hidden_state`` (detached) of each forward while registered."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook: store ``output.last_hidden_state`` (or ``output[0]``), detached."""
        del module, args
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            hidden = output[0]
        self.parts.append(hidden.detach())

    @property
    def hidden(self) -> torch.Tensor:
        """[B, L, H]: the captured hidden states of all chunks of the forward, in batch order."""
        if not self.parts:
            raise RuntimeError("the backbone forward hook captured nothing")
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts, dim=0)


@contextmanager
def capture_hidden(model: nn.Module) -> Iterator[HiddenCapture]:
    """Register a :class:`HiddenCapture` on the backbone of ``model`` for the duration of the block."""
    cap = HiddenCapture()
    handle = backbone_of(model).register_forward_hook(cap)
    try:
        yield cap
    finally:
        handle.remove()


def completion_hidden(hidden: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
    """[B, T, H] hidden states that produced the logits of the last T tokens of [B, L, H] ``hidden``.

    The hidden state at position p predicts token p + 1, so completion token j (position L − T + j)
    is predicted by position L − T − 1 + j.
    """
    k = int(logits_to_keep)
    if not 1 <= k < hidden.shape[1]:
        raise ValueError(f"logits_to_keep must lie in [1, L) with L = {hidden.shape[1]}, got {k}")
    return hidden[:, -k - 1 : -1]
