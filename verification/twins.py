"""Three independent routes to g̃, m_H and m_F of a token batch: capo (sparse), reference (dense), autodiff.

- capo: :func:`capo.directional_shifts` and :func:`capo.last_layer_gradient` (sparse top-k, chunked).
- reference: :func:`reference.subset_shifts` / :func:`reference.sample_gradient` with full (V·H)² matrices.
- autodiff: torch.func on generating functions of W [V, H] at W = 0 with per-token logit offsets
  log π_i, so that π_W(·|s_i) = softmax(log π_i + W[S_i] h_i) equals π_i at W = 0:

  * g_b = ∇_W (1/n_b) Σ_{i∈b} A_i log π_W(a_i|s_i)                                   (eq 7)
  * φ_b(τ) = (1/n_b) Σ_{i∈b} A_i π_{τΔ_b}(a_i|s_i) / π_i(a_i) (the importance ratio), whose
    φ_b'(0) = ⟨g_b, Δ_b⟩ and φ_b''(0) = Δ_bᵀ H̃_b Δ_b (Lemma C.1, eq 8), so m_H = φ' + ½φ''  (eq 10)
  * ℓ_i(τ) = log π_{τΔ_b}(a_i|s_i) − log π_i(a_i), m_F = ½ (1/n_b) Σ ℓ_i'(0)²             (eqs 9, 57)

The Adam step of the autodiff route is the reference's dense Adam (:class:`reference.DenseAdamStep`), the one
dense Adam of the project; what autodiff checks independently is the derivatives, not the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import grad, jacfwd

import capo
import reference
from verification.batches import (
    AdamHistory,
    RawBatch,
    token_batch,
)


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
    V, H = raw.vocab, raw.hidden.shape[1]
    if step == "sgd":
        step_fn = lambda g: lr * g  # noqa: E731
    else:
        adam = reference.DenseAdamStep(lr, hist.dense_numpy())
        step_fn = lambda g: torch.from_numpy(adam.propose(g.numpy()))  # noqa: E731
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
