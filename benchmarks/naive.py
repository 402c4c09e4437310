"""The obvious ("naive") torch implementation of the CAPO step, the baseline of the benchmarks.

Written the way the authors' code and a first draft do it (docs/design.md §2 formulas, no tricks):

- per-token gradients g_i = A_i u_i ⊗ h_i materialised as one [N, k, H] tensor, and the steps Δ_i as
  another (plus the gathered Adam moments m[S_i], v[S_i], also [N, k, H]);
- the Fisher F_i = diag(π_i) − π_i π_iᵀ built as an [N, k, k] tensor;
- the batch gradient summed with a Python loop over vocabulary ids;
- the Adam moments as dense [V, H] tables updated with a Python loop over rows;
- the support from the full [N, V] logits.

It computes the same numbers as ``capo`` (checked by ``tests/benchmarks``) and is deliberately slow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import capo


@dataclass
class DenseAdam:
    """Dense Adam moments m, v [V, H] and step count t (the authors' representation)."""

    m: torch.Tensor
    v: torch.Tensor
    t: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def zeros(cls, vocab: int, hidden: int, dtype=torch.float32, **kw) -> DenseAdam:
        return cls(
            torch.zeros(vocab, hidden, dtype=dtype),
            torch.zeros(vocab, hidden, dtype=dtype),
            0,
            **kw,
        )

    @classmethod
    def from_sparse(cls, mom: capo.SparseAdamMoments) -> DenseAdam:
        m, v = mom.to_dense()
        return cls(m.clone(), v.clone(), mom.t, mom.betas, mom.eps)

    def update_loop(self, row_ids: torch.Tensor, row_grads: torch.Tensor) -> None:
        """One Adam moments step, dense decay of every row then a Python loop over touched rows."""
        b1, b2 = self.betas
        self.m.mul_(b1)
        self.v.mul_(b2)
        for r, i in enumerate(row_ids.tolist()):
            g = row_grads[r]
            self.m[i] += (1 - b1) * g
            self.v[i] += (1 - b2) * g * g
        self.t += 1


def policy_error(batch: capo.TokenBatch) -> torch.Tensor:
    """u = e_a − π, [N, k]."""
    u = -batch.support_probs.clone()
    u[torch.arange(batch.num_tokens), batch.action_index] += 1.0
    return u


def per_token_gradients(batch: capo.TokenBatch) -> torch.Tensor:
    """g_i = A_i u_i ⊗ h_i, materialised [N, k, H]."""
    u = policy_error(batch)
    return batch.advantages[:, None, None] * u[:, :, None] * batch.hidden[:, None, :]


def adam_step(g: torch.Tensor, ids: torch.Tensor, lr: float, mom: DenseAdam) -> torch.Tensor:
    """Δ for gradient rows g [..., H] on ids [...] with prospective moments (nothing mutated)."""
    b1, b2 = mom.betas
    t1 = mom.t + 1
    m = b1 * mom.m[ids] + (1 - b1) * g
    v = b2 * mom.v[ids] + (1 - b2) * g * g
    return lr * (m / (1 - b1**t1)) / (torch.sqrt(v / (1 - b2**t1)) + mom.eps)


def fisher(p: torch.Tensor) -> torch.Tensor:
    """F_i = diag(π_i) − π_i π_iᵀ, [N, k, k]."""
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def shifts_token(
    batch: capo.TokenBatch, lr: float, mom: DenseAdam | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_H, m_F) [N], every token its own subset; SGD if ``mom`` is None, else Adam."""
    g = per_token_gradients(batch)  # [N, k, H]
    delta = lr * g if mom is None else adam_step(g, batch.support_ids, lr, mom)  # [N, k, H]
    v = torch.einsum("nkh,nh->nk", delta, batch.hidden)
    u = policy_error(batch)
    F = fisher(batch.support_probs)  # [N, k, k]
    vfv = torch.einsum("nk,nkl,nl->n", v, F, v)
    uv = (u * v).sum(1)
    grad_dot = (g * delta).sum((1, 2))
    adv = batch.advantages
    return grad_dot + 0.5 * adv * (uv**2 - vfv), 0.5 * uv**2


def batch_gradient(
    batch: capo.TokenBatch, tokens: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient of ``tokens`` (all if None) as (row_ids [R] sorted, rows [R, H]); loop over ids."""
    if tokens is not None:
        batch = batch.select_tokens(tokens)
    n, hs = batch.num_tokens, batch.hidden_size
    g = per_token_gradients(batch).reshape(-1, hs) / max(n, 1)  # [N·k, H]
    flat_ids = batch.support_ids.reshape(-1)
    row_ids = torch.unique(flat_ids)
    rows = torch.zeros(row_ids.numel(), hs, dtype=g.dtype)
    for r, i in enumerate(row_ids.tolist()):
        rows[r] = g[flat_ids == i].sum(0)
    return row_ids, rows


def shifts_subsets(
    batch: capo.TokenBatch, lr: float, mom: DenseAdam | None, subsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_H, m_F) [S] for the partition ``subsets`` [N]: loop over subsets, then over ids."""
    S = int(subsets.max()) + 1
    m_h = torch.empty(S, dtype=batch.hidden.dtype)
    m_f = torch.empty_like(m_h)
    u_all = policy_error(batch)
    for s in range(S):
        tok = torch.nonzero(subsets == s).squeeze(1)
        row_ids, g = batch_gradient(batch, tok)
        delta = lr * g if mom is None else adam_step(g, row_ids, lr, mom)
        full = torch.zeros(int(batch.support_ids.max()) + 1, batch.hidden_size, dtype=g.dtype)
        full[row_ids] = delta
        h, ids, p, adv = (
            batch.hidden[tok],
            batch.support_ids[tok],
            batch.support_probs[tok],
            batch.advantages[tok],
        )
        v = torch.einsum("nkh,nh->nk", full[ids], h)
        u = u_all[tok]
        uv = (u * v).sum(1)
        vfv = torch.einsum("nk,nkl,nl->n", v, fisher(p), v)
        m_h[s] = (g * delta).sum() + 0.5 * (adv * (uv**2 - vfv)).mean()
        m_f[s] = 0.5 * (uv**2).mean()
    return m_h, m_f


def select(m_h: torch.Tensor, m_f: torch.Tensor, th: capo.Thresholds) -> torch.Tensor:
    """Eq 11 with a Python loop over subsets."""
    out = []
    for a, b in zip(m_h.tolist(), m_f.tolist(), strict=True):
        ok = a == a and b == b  # not NaN
        if th.hessian_low is not None:
            ok = ok and a > th.hessian_low
        if th.hessian_high is not None:
            ok = ok and a < th.hessian_high
        if th.fisher_max is not None:
            ok = ok and b < th.fisher_max
        out.append(ok)
    return torch.tensor(out, dtype=torch.bool)


def support(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    sampled: torch.Tensor,
    k: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [N, k], probs [N, k], action_index [N]) from the full [N, V] logits, softmax over V."""
    logits = hidden @ weight.T / temperature  # [N, V]
    probs_full = torch.softmax(logits, dim=1)  # [N, V]
    _, ids = torch.topk(logits, k, dim=1)
    absent = ~(ids == sampled[:, None]).any(1)  # the sampled id replaces the k-th if absent
    ids[absent, -1] = sampled[absent]
    p = probs_full.gather(1, ids)
    p = p / p.sum(1, keepdim=True)
    index = (ids == sampled[:, None]).to(torch.int64).argmax(1)
    return ids, p, index
