"""Three independent routes to g̃, m_H and m_F of a token batch: capo (sparse), reference (dense), autodiff.

- capo: :func:`capo.directional_shifts` and :func:`capo.last_layer_gradient` (sparse top-k, chunked).
- reference: :func:`reference.subset_shifts` / :func:`reference.sample_gradient` with full (V·H)² matrices.
- autodiff: torch.func on generating functions of W [V, H] at W = 0 with per-token logit offsets
  log π_i, so that π_W(·|s_i) = softmax(log π_i + W[S_i] h_i) equals π_i at W = 0:

  * g_b = ∇_W (1/n_b) Σ_{i∈b} A_i log π_W(a_i|s_i)                                   (eq 7)
  * φ_b(τ) = (1/n_b) Σ_{i∈b} A_i π_{τΔ_b}(a_i|s_i) / π_i(a_i) (the importance ratio), whose
    φ_b'(0) = ⟨g_b, Δ_b⟩ and φ_b''(0) = Δ_bᵀ H̃_b Δ_b (Lemma C.1, eq 8), so m_H = φ' + ½φ''  (eq 10)
  * ℓ_i(τ) = log π_{τΔ_b}(a_i|s_i) − log π_i(a_i), m_F = ½ (1/n_b) Σ ℓ_i'(0)²             (eqs 9, 57)

The Adam step of the autodiff route is written here once more (dense torch), independent of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import capo
import reference


@dataclass
class RawBatch:
    """A token batch as float64 tensors (the source of every dtype variant).

    Attributes:
        hidden: [N, H]. ids: [N, k] unique per row. probs: [N, k] rows sum to 1.
        action: [N] positions in [0, k). adv: [N]. vocab: V.
    """

    hidden: torch.Tensor
    ids: torch.Tensor
    probs: torch.Tensor
    action: torch.Tensor
    adv: torch.Tensor
    vocab: int

    @property
    def n(self) -> int:
        """N, the number of tokens."""
        return int(self.hidden.shape[0])


def random_batch(seed: int, N: int, k: int, H: int, V: int, scale: float = 3.0) -> RawBatch:
    """N tokens with random hidden states, random unique support ids, peaked softmax probabilities.

    Args:
        seed: Generator seed.
        N: Tokens.
        k: Support size.
        H: Hidden size.
        V: Vocabulary size.
        scale: Logit scale (larger = more peaked π).

    Returns:
        The batch.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(N, V, generator=g).argsort(dim=1)[:, :k]
    logits = scale * torch.randn(N, k, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    action = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return RawBatch(
        hidden=torch.randn(N, H, generator=g, dtype=torch.float64),
        ids=ids,
        probs=probs,
        action=action,
        adv=torch.randn(N, generator=g, dtype=torch.float64),
        vocab=V,
    )


def token_batch(
    raw: RawBatch, dtype: torch.dtype = torch.float64, validate: bool = True
) -> capo.TokenBatch:
    """The capo :class:`~capo.TokenBatch` of ``raw`` with float inputs cast to ``dtype``.

    ``validate=False`` skips the constructor's checks (as ``TokenBatch.select_tokens`` does): needed
    to feed bf16-rounded probabilities, upcast to float64, whose rows sum to one only within ~1e-3
    while float64 validation asks for 1e-6.
    """
    fields: dict[str, Any] = {
        "hidden": raw.hidden.to(dtype),
        "support_ids": raw.ids,
        "support_probs": raw.probs.to(dtype),
        "action_index": raw.action,
        "advantages": raw.adv.to(dtype),
        "vocab_size": raw.vocab,
    }
    if validate:
        return capo.TokenBatch(**fields)
    batch = object.__new__(capo.TokenBatch)
    for name, value in fields.items():
        object.__setattr__(batch, name, value)
    return batch


def rounded(raw: RawBatch, dtype: torch.dtype) -> RawBatch:
    """``raw`` with its float inputs rounded to ``dtype`` and stored back as float64."""
    return RawBatch(
        hidden=raw.hidden.to(dtype).double(),
        ids=raw.ids,
        probs=raw.probs.to(dtype).double(),
        action=raw.action,
        adv=raw.adv.to(dtype).double(),
        vocab=raw.vocab,
    )


def partitions(
    N: int, completion_len: int = 4, group_size: int = 2
) -> dict[str, torch.Tensor | None]:
    """Subset ids [N] per granularity: token (None), completion, group, batch."""
    blocks = torch.div(torch.arange(N), completion_len, rounding_mode="floor")
    return {
        "token": None,
        "completion": blocks,
        "group": torch.div(blocks, group_size, rounding_mode="floor"),
        "batch": torch.zeros(N, dtype=torch.int64),
    }


@dataclass
class AdamHistory:
    """A seeded sequence of sparse gradient updates replayed into every twin's moments.

    Attributes:
        updates: (row_ids [R] unique, rows [R, H] float64) per past optimizer step.
        V: Vocabulary. H: Hidden size. betas, eps: Adam hyper-parameters.
    """

    updates: list[tuple[torch.Tensor, torch.Tensor]]
    V: int
    H: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def random(cls, seed: int, V: int, H: int, steps: int, scale: float = 0.1) -> AdamHistory:
        """``steps`` updates, each on a random subset of rows (rows absent from a step decay)."""
        g = torch.Generator().manual_seed(10_000 + seed)
        ups = []
        for _ in range(steps):
            r = int(torch.randint(1, V + 1, (1,), generator=g))
            rows = torch.randperm(V, generator=g)[:r]
            ups.append((rows, scale * torch.randn(r, H, generator=g, dtype=torch.float64)))
        return cls(ups, V, H)

    def sparse(self, dtype: torch.dtype = torch.float64) -> capo.SparseAdamMoments:
        """Capo's sparse moments after the history (gradients rounded to ``dtype``)."""
        mom = capo.SparseAdamMoments(self.V, self.H, betas=self.betas, eps=self.eps, dtype=dtype)
        for rows, grads in self.updates:
            mom.update(rows, grads.to(dtype))
        return mom

    def dense_numpy(self, dtype: torch.dtype = torch.float64) -> reference.DenseAdamState:
        """The reference's dense moments after the history (gradients rounded to ``dtype``)."""
        st = reference.DenseAdamState(self.V, self.H, betas=self.betas, eps=self.eps)
        for rows, grads in self.updates:
            full = np.zeros((self.V, self.H))
            full[rows.numpy()] = grads.to(dtype).double().numpy()
            st.update(full)
        return st

    def dense_torch(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(m, v, t) of a plain dense torch Adam written here (the autodiff route's optimizer)."""
        m = torch.zeros(self.V, self.H, dtype=torch.float64)
        v = torch.zeros_like(m)
        b1, b2 = self.betas
        for rows, grads in self.updates:
            full = torch.zeros_like(m)
            full[rows] = grads
            m = b1 * m + (1 - b1) * full
            v = b2 * v + (1 - b2) * full * full
        return m, v, len(self.updates)


def _dense_adam(lr: float, hist: AdamHistory) -> Any:
    m, v, t = hist.dense_torch()
    b1, b2 = hist.betas

    def step(g: torch.Tensor) -> torch.Tensor:
        m1 = b1 * m + (1 - b1) * g
        v1 = b2 * v + (1 - b2) * g * g
        return lr * (m1 / (1 - b1 ** (t + 1))) / ((v1 / (1 - b2 ** (t + 1))).sqrt() + hist.eps)

    return step


@dataclass
class Shifts3:
    """m_H, m_F [S] and subset gradients g_b [S, V, H] (``grads`` is empty where not computed)."""

    m_H: np.ndarray
    m_F: np.ndarray
    grads: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _subset_list(subsets: torch.Tensor | None, n: int) -> list[torch.Tensor]:
    ids = torch.arange(n) if subsets is None else subsets
    return [torch.nonzero(ids == b).squeeze(1) for b in range(int(ids.max()) + 1)]


def capo_shifts(
    raw: RawBatch,
    subsets: torch.Tensor | None,
    step: str,
    lr: float,
    hist: AdamHistory,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
    with_grads: bool = False,
    validate: bool = True,
) -> Shifts3:
    """Capo's m_H, m_F (and optionally g̃_b as dense [S, V, H]) with inputs in ``dtype``."""
    batch = token_batch(raw, dtype, validate)
    model: capo.StepModel
    if step == "sgd":
        model = capo.SGDStep(lr=lr)
    else:
        mdt = torch.float64 if dtype == torch.float64 else torch.float32
        model = capo.AdamStep(lr=lr, moments=hist.sparse(mdt))
    out = capo.directional_shifts(batch, model, subsets, chunk_size=chunk_size)
    grads = np.zeros(0)
    if with_grads:
        parts = []
        for idx in _subset_list(subsets, raw.n):
            mask = torch.zeros(raw.n, dtype=torch.bool)
            mask[idx] = True
            rows, vals = capo.last_layer_gradient(batch, mask=mask)
            full = torch.zeros(raw.vocab, raw.hidden.shape[1], dtype=torch.float64)
            full[rows] = vals.double()
            parts.append(full.numpy())
        grads = np.stack(parts)
    return Shifts3(out.m_H.double().numpy(), out.m_F.double().numpy(), grads)


def reference_shifts(
    raw: RawBatch, subsets: torch.Tensor | None, step: str, lr: float, hist: AdamHistory
) -> Shifts3:
    """The dense reference's m_H, m_F and g̃_b (float64, full matrices)."""
    V = raw.vocab
    p = torch.zeros(raw.n, V, dtype=torch.float64).scatter_(1, raw.ids, raw.probs).numpy()
    acts = raw.ids.gather(1, raw.action[:, None]).squeeze(1).numpy()
    h, adv = raw.hidden.numpy(), raw.adv.numpy()
    model: reference.StepModel
    if step == "sgd":
        model = reference.DenseSGDStep(lr)
    else:
        model = reference.DenseAdamStep(lr, hist.dense_numpy())
    sub = None if subsets is None else subsets.numpy()
    m_h, m_f = reference.subset_shifts(h, p, acts, adv, model, sub)
    grads = np.stack(
        [
            reference.sample_gradient(h[i], p[i], acts[i], adv[i]).reshape(V, -1)
            for i in (idx.numpy() for idx in _subset_list(subsets, raw.n))
        ]
    )
    return Shifts3(m_h, m_f, grads)


def autodiff_shifts(
    raw: RawBatch, subsets: torch.Tensor | None, step: str, lr: float, hist: AdamHistory
) -> Shifts3:
    """torch.func derivatives of the generating functions (module docstring), float64."""
    from torch.func import grad, jacfwd

    V, H = raw.vocab, raw.hidden.shape[1]
    step_fn = (lambda g: lr * g) if step == "sgd" else _dense_adam(lr, hist)
    W0 = torch.zeros(V, H, dtype=torch.float64)
    m_h, m_f, grads = [], [], []
    for idx in _subset_list(subsets, raw.n):
        h, ids, a, adv = raw.hidden[idx], raw.ids[idx], raw.action[idx], raw.adv[idx]
        logp0 = raw.probs[idx].log()

        def logp(W: torch.Tensor, h=h, ids=ids, a=a, logp0=logp0) -> torch.Tensor:
            z = logp0 + torch.einsum("nkh,nh->nk", W[ids], h)
            return torch.log_softmax(z, dim=1).gather(1, a[:, None]).squeeze(1)

        base = logp(W0)
        g = grad(lambda W, adv=adv, logp=logp: (adv * logp(W)).mean())(W0)
        delta = step_fn(g)

        def phi(tau: torch.Tensor, adv=adv, logp=logp, delta=delta, base=base) -> torch.Tensor:
            return (adv * torch.exp(logp(tau * delta) - base)).mean()

        def ell(tau: torch.Tensor, logp=logp, delta=delta, base=base) -> torch.Tensor:
            return logp(tau * delta) - base

        tau0 = torch.zeros((), dtype=torch.float64)
        d1, d2 = grad(phi)(tau0), grad(grad(phi))(tau0)
        m_h.append(float(d1 + 0.5 * d2))
        m_f.append(float(0.5 * (jacfwd(ell)(tau0) ** 2).mean()))
        grads.append(g.numpy())
    return Shifts3(np.array(m_h), np.array(m_f), np.stack(grads))
