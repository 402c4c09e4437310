"""Top-k truncation error against the full-vocabulary last-layer model, and chunk-size invariance.

Truncation: the same sampled tokens (hidden states, sampled ids, advantages) are fed to capo twice:
with the full vocabulary as support (k = V, the paper's exact last-layer model) and with the top-k
support of :func:`capo.support_from_logits` (π renormalised over it, the sampled id forced in). The
relative error of m_H, m_F (token level and whole batch) is reported as a function of k, on random
peaked logits and on a toy token MDP with exact advantages.

Chunk-size invariance: :func:`capo.directional_shifts`, :func:`capo.last_layer_gradient` and the
support extraction give the same result for every chunk size (the chunking is only a memory bound).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import capo
from reference.tolerances import EXACT_RTOL
from toy_mdps import LinearSoftmaxPolicy, evaluate, random_features, sample_tokens, token_mdp
from verification import batches, twins
from verification.common import HOLDS, Check, conditional, fmt, progress, rel_error

TRUNCATION_TOL = 1e-2
"""A truncated model is called accurate at k when every relative error is below this."""


def _shifts(batch: capo.TokenBatch, step: capo.StepModel) -> dict[str, np.ndarray]:
    tok = capo.directional_shifts(batch, step)
    glob = capo.directional_shifts(batch, step, torch.zeros(batch.num_tokens, dtype=torch.int64))
    return {
        "token_m_H": tok.m_H.numpy(),
        "token_m_F": tok.m_F.numpy(),
        "batch_m_H": glob.m_H.numpy(),
        "batch_m_F": glob.m_F.numpy(),
    }


def _truncation_curve(
    logits: torch.Tensor,
    sampled: torch.Tensor,
    hidden: torch.Tensor,
    adv: torch.Tensor,
    ks: list[int],
    label: str,
    seed: int,
) -> list[dict[str, Any]]:
    """Relative errors of the top-k model vs the full-vocabulary one, per k and step model."""
    N, V = logits.shape
    H = hidden.shape[1]
    hist = batches.AdamHistory.random(seed, V, H, steps=3)
    full_ids = torch.arange(V).expand(N, V).contiguous()
    full = capo.TokenBatch(hidden, full_ids, torch.softmax(logits, 1), sampled, adv, vocab_size=V)
    probs = torch.softmax(logits, dim=1)
    top1 = probs.max(dim=1).values
    out = []
    for step_name in ("sgd", "adam"):

        def model(name: str = step_name) -> capo.StepModel:
            if name == "sgd":
                return capo.SGDStep(lr=0.3)
            return capo.AdamStep(lr=0.01, moments=hist.sparse(torch.float64))

        ref = _shifts(full, model())
        for k in ks:
            sup = capo.support_from_logits(logits, sampled, k)
            got = _shifts(sup.token_batch(hidden, adv), model())
            tail = 1.0 - probs.topk(k, dim=1).values.sum(dim=1)
            rec: dict[str, Any] = {
                "source": label,
                "step": step_name,
                "k": k,
                "V": V,
                "mean_tail_mass": float(tail.mean()),
                "median_top1_prob": float(top1.median()),
            }
            for key in ref:
                rec[key] = rel_error(got[key], ref[key])
            rec["max_err"] = max(rec[key] for key in ref)
            out.append(rec)
    return out


def random_logits_curve(quick: bool) -> list[dict[str, Any]]:
    """Truncation on random peaked logits: per-token scale U(3, 10) × N(0, 1) logits over V ids."""
    N, V, H = (64, 256, 16) if quick else (256, 1024, 32)
    g = torch.Generator().manual_seed(7)
    scale = 3.0 + 7.0 * torch.rand(N, 1, generator=g, dtype=torch.float64)
    logits = scale * torch.randn(N, V, generator=g, dtype=torch.float64)
    sampled = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k < V] + [V]
    return _truncation_curve(logits, sampled, hidden, adv, ks, "random peaked logits", seed=7)


def token_mdp_curve(quick: bool) -> list[dict[str, Any]]:
    """Truncation on a toy token MDP (K = 16, T = 2): sampled tokens with their exact advantages."""
    tm = token_mdp(16, 2, reward="random", n_prompts=2, seed=3)
    d = 12
    feats = random_features(tm.mdp.n_states, d, seed=4)
    W = 3.0 * np.random.default_rng(5).standard_normal((16, d))
    pol = LinearSoftmaxPolicy(feats, W)
    probs = pol.probs()
    ev = evaluate(tm.mdp, probs, "finite")
    n_traj = 40 if quick else 200
    toks = sample_tokens(tm.mdp, probs, ev, n_traj, np.random.default_rng(6), features=feats)
    logits = torch.from_numpy(pol.logits()[toks.states])
    return _truncation_curve(
        logits,
        torch.from_numpy(toks.actions),
        torch.from_numpy(toks.features),
        torch.from_numpy(toks.weighted_advantages),
        [1, 2, 3, 4, 6, 8, 12, 16],
        "token MDP K=16 T=2",
        seed=8,
    )


def truncation_checks(records: list[dict[str, Any]]) -> list[Check]:
    """One row per source: the smallest k at which every error is below :data:`TRUNCATION_TOL`."""
    checks = []
    for source in dict.fromkeys(r["source"] for r in records):
        rs = [r for r in records if r["source"] == source]
        ks = sorted({r["k"] for r in rs})
        worst: dict[int, float] = {
            k: max(float(r["max_err"]) for r in rs if r["k"] == k) for k in ks
        }
        good = [k for k in ks if all(worst[j] <= TRUNCATION_TOL for j in ks if j >= k)]
        k_star = min(good) if good else None
        V = int(rs[0]["V"])
        exact = worst[V] <= EXACT_RTOL
        checks.append(
            Check(
                claim=f"top-k support approximates the full-vocabulary model ({source})",
                equation="§4.1 (sparsity)",
                verdict=conditional(f"for k ≥ {k_star} (errors ≤ {TRUNCATION_TOL:g})")
                if k_star is not None and k_star > 1
                else (HOLDS if k_star == 1 else "fails"),
                worst=(
                    f"median top-1 prob {rs[0]['median_top1_prob']:.2f}; tail mass at k*: "
                    f"{fmt(next((r['mean_tail_mass'] for r in rs if r['k'] == k_star), float('nan')))}; "
                    f"k=1: {fmt(worst[ks[0]])}; k={ks[len(ks) // 2]}: {fmt(worst[ks[len(ks) // 2]])}; "
                    f"k=V: {fmt(worst[V])}"
                ),
                must_hold=False,
                ok=k_star is not None and exact,
                details={"worst_by_k": worst, "k_star": k_star},
            )
        )
    return checks


def chunk_invariance(quick: bool) -> tuple[list[dict[str, Any]], list[Check]]:
    """Max relative change of the shifts, gradients and supports over chunk sizes (float64)."""
    points = [{"N": 48, "k": 8, "H": 8, "V": 32, "seed": 2}]
    if not quick:
        points.append({"N": 192, "k": 16, "H": 32, "V": 300, "seed": 4})
    chunks = [1, 2, 5, 17, 1000]
    rows = []
    for p in progress(points, "chunk sizes"):
        raw = batches.random_batch(p["seed"], p["N"], p["k"], p["H"], p["V"])
        hist = batches.AdamHistory.random(p["seed"], p["V"], p["H"], steps=3)
        for step in ("sgd", "adam"):
            for gran, sub in batches.partitions(p["N"]).items():
                base = twins.capo_shifts(raw, sub, step, 0.1, hist)
                err = 0.0
                for c in chunks:
                    got = twins.capo_shifts(raw, sub, step, 0.1, hist, chunk_size=c)
                    err = max(err, rel_error(got.m_H, base.m_H), rel_error(got.m_F, base.m_F))
                rows.append({"what": f"shifts {step} {gran}", "N": p["N"], "max_rel": err})
        batch = batches.token_batch(raw)
        _, g0 = capo.last_layer_gradient(batch)
        gerr = max(rel_error(capo.last_layer_gradient(batch, chunk_size=c)[1], g0) for c in chunks)
        rows.append({"what": "last_layer_gradient", "N": p["N"], "max_rel": gerr})
        g = torch.Generator().manual_seed(p["seed"])
        weight = torch.randn(p["V"], p["H"], generator=g, dtype=torch.float64)
        sampled = torch.randint(0, p["V"], (p["N"],), generator=g)
        s0 = capo.support_from_hidden(raw.hidden, weight, sampled, p["k"], temperature=0.9)
        ids_equal, perr = True, 0.0
        for c in chunks:
            s = capo.support_from_hidden(raw.hidden, weight, sampled, p["k"], 0.9, chunk_size=c)
            sl = capo.support_from_logits(raw.hidden @ weight.T, sampled, p["k"], 0.9, chunk_size=c)
            for other in (s, sl):
                ids_equal &= bool(torch.equal(other.support_ids, s0.support_ids))
                ids_equal &= bool(torch.equal(other.action_index, s0.action_index))
                perr = max(perr, rel_error(other.support_probs, s0.support_probs))
        rows.append(
            {"what": "support ids/probs", "N": p["N"], "max_rel": perr, "ids_equal": ids_equal}
        )
    worst = max(r["max_rel"] for r in rows)
    ids_ok = all(r.get("ids_equal", True) for r in rows)
    ok = worst <= EXACT_RTOL and ids_ok
    check = Check(
        claim=f"chunk-size invariance (chunks {chunks} and default): shifts, gradient, top-k support",
        equation="ours (docs/design.md §1 memory bound)",
        verdict=HOLDS if ok else "fails",
        worst=f"max rel change {fmt(worst)}; support ids identical: {ids_ok}",
        must_hold=True,
        ok=ok,
    )
    return rows, [check]
