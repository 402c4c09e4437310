"""The true policy shift of one optimizer step: exact full-vocabulary KL(π_before || π_after) per token.

π_before comes from the hidden states captured during the step's own training forward and a copy of
the output layer taken before the optimizer step; π_after from one extra no-grad forward of the same
inputs after the step (paper App. L, Fig. 9 analogue, here exact instead of Monte Carlo). Logits are
formed in [C, V] token chunks, never [N, V].
"""

from __future__ import annotations

import torch

__all__ = ["full_vocab_kl"]


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
