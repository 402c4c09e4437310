"""The true policy shift of one optimizer step: exact full-vocabulary KL(π_before || π_after) per token.

π_before comes from the hidden states captured during the step's own training forward and a copy of
the output layer taken before the optimizer step; π_after from one extra no-grad forward of the same
inputs after the step (paper App. L, Fig. 9 analogue, here exact instead of Monte Carlo). Logits are
formed in [C, V] token chunks, never [N, V]. :func:`step_kl_sums` re-runs one step's micro-batches and also
gives the head-only part (old hidden states, new output layer), the share the last-layer model can see; the KL
budget (:mod:`capo.kl_budget`) uses it at the parameters the step has moved to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from capo.hidden_capture import backbone_of, completion_hidden, output_layer

__all__ = ["KLInput", "full_vocab_kl", "step_kl_sums"]

KLInput = tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]
"""One micro-batch to re-run: (input_ids, attention_mask, logits_to_keep, valid [B, T], h_before [N, H])."""


@torch.no_grad()
def full_vocab_kl(
    hidden_before: torch.Tensor,
    weight_before: torch.Tensor,
    bias_before: torch.Tensor | None,
    hidden_after: torch.Tensor,
    weight_after: torch.Tensor,
    bias_after: torch.Tensor | None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """[N] KL(softmax(z_before / τ) || softmax(z_after / τ)) with z = h Wᵀ (+ b), in token chunks.

    Args:
        hidden_before: [N, H] hidden states before the step.
        weight_before: [V, H] output-layer weight before the step.
        bias_before: [V] output-layer bias before the step, or None.
        hidden_after: [N, H] hidden states after the step.
        weight_after: [V, H] output-layer weight after the step.
        bias_after: [V] output-layer bias after the step, or None.
        temperature: the policy temperature τ.
        chunk_size: tokens per chunk.

    Returns:
        [N] KL per token, float32 (float64 for float64 inputs).
    """
    if hidden_before.shape != hidden_after.shape:
        raise ValueError(
            f"hidden_before {list(hidden_before.shape)} and hidden_after "
            f"{list(hidden_after.shape)} must match"
        )
    cdt = (
        torch.float64
        if torch.float64 in (hidden_before.dtype, weight_before.dtype)
        else torch.float32
    )
    n = hidden_before.shape[0]
    out = torch.empty(n, dtype=cdt, device=hidden_before.device)

    def log_probs(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        z = h.to(w.dtype) @ w.T
        if b is not None:
            z = z + b.to(w.dtype)
        return torch.log_softmax(z.to(cdt) / temperature, dim=1)

    for c0 in range(0, n, max(1, int(chunk_size))):
        sl = slice(c0, c0 + max(1, int(chunk_size)))
        lp_b = log_probs(hidden_before[sl], weight_before, bias_before)
        lp_a = log_probs(hidden_after[sl].to(hidden_before.device), weight_after, bias_after)
        out[sl] = (lp_b.exp() * (lp_b - lp_a)).sum(dim=1)
    return out


@torch.no_grad()
def step_kl_sums(
    model: nn.Module,
    kl_inputs: Sequence[KLInput],
    head_before: tuple[torch.Tensor, torch.Tensor | None],
    temperature: float,
    autocast: Callable[[], AbstractContextManager[Any]],
    head_only: bool = True,
    full: bool = True,
) -> torch.Tensor:
    """[3] float64 (Σ KL, Σ head-only KL, number of tokens) of π_before -> the policy ``model`` holds now.

    π_before is the stored hidden states through ``head_before``; the current policy is one no-grad
    forward of the backbone of ``model`` on each micro-batch through its current output layer. The
    head-only KL keeps the stored hidden states and swaps only the output layer (0 when not ``head_only``).

    Args:
        model: the (unwrapped) causal LM at the parameters after the step.
        kl_inputs: the step's micro-batches (:data:`KLInput`).
        head_before: (W [V, H], b [V] or None) of the output layer before the step.
        temperature: the policy temperature τ.
        autocast: context manager factory the training forward runs under (mixed precision).
        head_only: also compute the head-only KL.
        full: compute the full KL (one backbone forward per micro-batch); False: only the head-only part
            and the token count (0 in the KL's slot), when the full KL at these parameters is already known.
    """
    backbone = backbone_of(model)
    w_after, b_after = output_layer(model)
    total = torch.zeros(3, dtype=torch.float64, device=w_after.device)
    for input_ids, attention_mask, keep_k, valid, h_before in kl_inputs:
        total[2] += h_before.shape[0]
        if full:
            with autocast():
                out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            h_after = completion_hidden(out.last_hidden_state, keep_k)[valid]
            kl = full_vocab_kl(h_before, *head_before, h_after, w_after, b_after, temperature)
            total[0] += kl.double().sum()
        if head_only:
            head = full_vocab_kl(h_before, *head_before, h_before, w_after, b_after, temperature)
            total[1] += head.double().sum()
    return total
