"""Step-boundary aggregation across micro-batches and ranks: the accepted gradient, the global shifts.

Every function takes ``reduce_sum``, a callable that all-reduces (sums) a tensor over the ranks and
returns the result (``lambda t: accelerator.reduce(t, "sum")``; the identity on one process). Each
function issues the same collectives, in the same order and with the same shapes, on every rank,
whatever the rank holds (no valid token, nothing accepted): a rank never skips a collective.

Variable row sets across ranks (each rank's accepted tokens touch different vocabulary rows) are
summed with two all-reduces on a union: first a [V] indicator of the touched rows (cheap: V numbers),
whose nonzero entries give the same sorted union U on every rank, then the [|U|, H] rows scattered into
the union. This moves |U|·H numbers instead of V·H, and needs no padding or gather of ragged tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from capo.fused_shift import row_dots
from capo.shifts import policy_error, token_terms
from capo.steps import StepModel
from capo.tokens import TokenBatch

__all__ = ["ReduceSum", "allreduce_sparse_rows", "gather_values", "global_shifts", "merge_rows"]

ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def merge_rows(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    hidden_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum sparse row sets (row_ids [R_j], rows [R_j, H]) into sorted unique ids [R] and rows [R, H]."""
    if not parts:
        return (
            torch.empty(0, dtype=torch.int64, device=device),
            torch.zeros(0, hidden_size, dtype=dtype, device=device),
        )
    ids = torch.cat([p[0].to(device) for p in parts])
    uniq, inv = torch.unique(ids, sorted=True, return_inverse=True)
    out = torch.zeros(uniq.numel(), hidden_size, dtype=dtype, device=device)
    start = 0
    for part_ids, rows in parts:  # part by part: no concatenated [sum R_j, H] copy of the rows
        stop = start + part_ids.numel()
        out.index_add_(0, inv[start:stop], rows.to(device=device, dtype=dtype))
        start = stop
    return uniq, out


def allreduce_sparse_rows(
    row_ids: torch.Tensor,
    rows: torch.Tensor,
    vocab_size: int,
    reduce_sum: ReduceSum,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum sparse rows over ranks: local (ids [R] sorted unique, rows [R, H]) -> (union [U], [U, H]).

    Two collectives on every rank: a [V] indicator, then the [U, H] rows (module docstring).
    """
    dev = rows.device
    touched = torch.zeros(vocab_size, dtype=torch.float32, device=dev)
    touched[row_ids] = 1.0
    touched = reduce_sum(touched)
    union = torch.nonzero(touched > 0).squeeze(1)
    dense = torch.zeros(union.numel(), rows.shape[1], dtype=rows.dtype, device=dev)
    if row_ids.numel():
        dense[torch.searchsorted(union, row_ids)] = rows
    return union, reduce_sum(dense)


def _quadratic_terms(
    batch: TokenBatch, union: torch.Tensor, delta: torch.Tensor, chunk: int, kernel: str
) -> torch.Tensor:
    """[2]: Σ_i A_i[(u_iᵀv_i)² − v_iᵀF_iv_i] and Σ_i (u_iᵀv_i)² with v_i = Δ[S_i] h_i (eqs 58, 63)."""
    cdt = delta.dtype
    if not batch.num_tokens:
        return torch.zeros(2, dtype=cdt, device=delta.device)
    tokens = torch.arange(batch.num_tokens, device=delta.device)
    pos = torch.searchsorted(union, batch.support_ids)
    v = row_dots(delta, pos, batch.hidden, tokens, kernel, chunk)
    p = batch.support_probs.to(cdt)
    adv = batch.advantages.to(cdt)
    _, q_h, q_f = token_terms(policy_error(p, batch.action_index), p, v, adv)
    return torch.stack([q_h.sum(), q_f.sum()])


def global_shifts(
    step: StepModel,
    union: torch.Tensor,
    grad: torch.Tensor,
    tokens: Sequence[TokenBatch],
    n_total: int,
    reduce_sum: ReduceSum,
    chunk_size: int = 256,
    kernel: str = "auto",
) -> tuple[float, float]:
    """m_H, m_F (eq 10) of the step the whole accepted set proposes, all ranks' tokens as one subset.

    Args:
        step: the step model, read before the moments take this step's update.
        union: [U] sorted vocabulary ids of the global accepted gradient.
        grad: [U, H] the global accepted mean gradient g (identical on every rank).
        tokens: this rank's accepted tokens (all micro-batches of the step).
        n_total: the number of accepted tokens over all ranks.
        reduce_sum: the all-reduce (one collective of 2 numbers).
        chunk_size: tokens per chunk of [C, k, H] temporaries (plain path).
        kernel: the gathers' path, :data:`capo.fused_shift.KERNELS`.

    Returns:
        (m_H, m_F); NaN when no token was accepted anywhere.
    """
    delta = step.propose(union, grad)
    grad_dot = float((grad * delta).sum()) if union.numel() else 0.0
    q = torch.zeros(2, dtype=grad.dtype, device=grad.device)
    for batch in tokens:
        q += _quadratic_terms(batch, union, delta, max(1, chunk_size), kernel)
    q = reduce_sum(q)
    if n_total <= 0:
        return float("nan"), float("nan")
    return grad_dot + 0.5 * float(q[0]) / n_total, 0.5 * float(q[1]) / n_total


def gather_values(
    values: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """All ranks' 1-D ``values`` (ragged lengths), concatenated in rank order, on every rank.

    Pads to the longest rank with NaN (two gathers: the lengths, then the padded values) and drops
    the padding; NaN entries of ``values`` itself are dropped too.
    """
    values = values.reshape(-1).to(torch.float32)
    n = torch.tensor([values.numel()], dtype=torch.int64, device=values.device)
    longest = int(gather(n).max())
    padded = torch.full((max(longest, 1),), float("nan"), dtype=torch.float32, device=values.device)
    padded[: values.numel()] = values
    out = gather(padded)
    return out[~torch.isnan(out)]
