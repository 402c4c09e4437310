"""The sparse last-layer gradient of a set of tokens (paper eq 7), e.g. to update the Adam moments.

g = (1/n) Σ_i A_i u_i ⊗ h_i over the selected finite tokens, scattered by vocabulary id (rows of equal
id add up) and returned as the touched rows only: row_ids [R] (sorted, unique) and rows [R, H].
"""

from __future__ import annotations

import torch

from capo.shifts import default_chunk_size, policy_error
from capo.tokens import TokenBatch

__all__ = ["last_layer_gradient"]


@torch.no_grad()
def last_layer_gradient(
    batch: TokenBatch,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last-layer gradient rows of the tokens selected by ``mask`` (eq 7, one sample per token).

    Args:
        batch: the tokens.
        mask: optional [N] bool, the tokens to include (e.g. the accepted ones); non-finite tokens
            are always left out.
        reduction: "mean" (divide by the number of included tokens) or "sum" (for an all-reduce
            across ranks followed by a division by the global count).
        chunk_size: tokens per chunk; the [C, k, H] block of one chunk is the only large temporary.

    Returns:
        (row_ids [R] int64 sorted unique, rows [R, H]) in the accumulation dtype; R = 0 when no token
        is included. Ready for :meth:`capo.SparseAdamMoments.update`.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    n, k, hs = batch.num_tokens, batch.support_size, batch.hidden_size
    keep = batch.finite_tokens()
    if mask is not None:
        if mask.shape != (n,) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool [N] = [{n}] tensor, got {mask.dtype} {list(mask.shape)}"
            )
        keep = keep & mask.to(keep.device)
    tok = torch.nonzero(keep).squeeze(1)
    cdt, dev = batch.dtype, batch.hidden.device
    chunk = int(chunk_size) if chunk_size is not None else default_chunk_size(k, hs, cdt, dev)
    ids = batch.support_ids[tok]
    row_ids, inv = torch.unique(ids, sorted=True, return_inverse=True)
    p = batch.support_probs[tok].to(cdt)
    coef = policy_error(p, batch.action_index[tok])  # g_i = A_i u_i ⊗ h_i
    coef *= batch.advantages[tok].to(cdt)[:, None]
    if reduction == "mean" and tok.numel():
        coef /= tok.numel()
    rows = torch.zeros(row_ids.numel(), hs, dtype=cdt, device=dev)
    n_tok = tok.numel()
    # One [C, k, H] buffer reused by every chunk (fresh blocks would be page-faulted in each time).
    buf = torch.empty(min(chunk, n_tok) * k * hs, dtype=cdt, device=dev)
    for c0 in range(0, n_tok, chunk):
        sl = slice(c0, c0 + chunk)
        h = torch.index_select(batch.hidden, 0, tok[sl]).to(cdt)
        blk = buf[: h.shape[0] * k * hs].view(h.shape[0], k, hs)
        torch.mul(coef[sl][:, :, None], h[:, None, :], out=blk)
        rows.index_add_(0, inv[sl].reshape(-1), blk.view(-1, hs))
    return row_ids, rows
