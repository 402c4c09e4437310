"""Race 2's per-token diagnostics and its random control matched to CAPO's rejections in kind.

Every race 2 evaluation run goes through :func:`diagnosed_trainer`: on each training micro-batch the
trainer's public mask seam (``CAPOTrainer.token_mask``) counts, per cell — π(a) decile × (A = 0, A ≠ 0) —
the valid tokens and the tokens the applied mask rejects, and sums the learning signal |A|(1 − π(a)) of the
valid and of the kept tokens. A CAPO arm applies CAPO's own mask (the seam returns None); the ``matched``
control applies its own mask: in each cell it rejects, uniformly at random from its own generator, the
share of valid tokens its CAPO twin rejected in that cell on the same seed and step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BUCKETS", "CELLS", "cell_counts", "cell_rates", "diagnosed_trainer", "matched_keep"]

BUCKETS = 10
"""π(a) buckets: deciles [0, 0.1), ..., [0.9, 1]."""
CELLS = 2 * BUCKETS
"""Cells: bucket b with A = 0 is cell b; with A ≠ 0, cell BUCKETS + b."""
MATCHED_STREAM = 0xC0DE
"""The spawn key of the matched control's generator (independent of sampling and evaluation)."""


def _cell(prob: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """Cell index of each token (``prob`` π(a), ``adv`` A)."""
    bucket = np.minimum((prob * BUCKETS).astype(np.int64), BUCKETS - 1)
    return bucket + BUCKETS * (adv != 0)


def cell_counts(
    valid: np.ndarray, keep: np.ndarray, prob: np.ndarray, adv: np.ndarray
) -> dict[str, list[float]]:
    """Per cell: valid and rejected token counts; the signal Σ|A|(1 − π(a)) of the valid and kept tokens."""
    cell = _cell(prob[valid], adv[valid])
    rejected = ~keep[valid]
    signal = np.abs(adv[valid]) * (1.0 - prob[valid])
    return {
        "valid": np.bincount(cell, minlength=CELLS).tolist(),
        "rejected": np.bincount(cell[rejected], minlength=CELLS).tolist(),
        "signal": [float(signal.sum()), float(signal[~rejected].sum())],
    }


def cell_rates(step: dict[str, list[float]]) -> list[float]:
    """Per cell, the share of valid tokens rejected on one step (0 where the cell is empty)."""
    valid, rejected = np.asarray(step["valid"]), np.asarray(step["rejected"])
    return (rejected / np.maximum(valid, 1)).tolist()


def matched_keep(
    valid: np.ndarray,
    prob: np.ndarray,
    adv: np.ndarray,
    rates: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Keep mask rejecting round(rate_c · n_c) of the n_c valid tokens of each cell c, uniformly."""
    keep = valid.copy()
    flat = np.flatnonzero(valid)
    cell = _cell(prob.reshape(-1)[flat], adv.reshape(-1)[flat])
    for c in range(CELLS):
        members = flat[cell == c]
        n = round(rates[c] * len(members))
        if n:
            keep.reshape(-1)[rng.choice(members, size=n, replace=False)] = False
    return keep


def diagnosed_trainer(twin_cells: Sequence[dict[str, Any]] | None, seed: int) -> type:
    """CAPOTrainer recording :func:`cell_counts` per step; with ``twin_cells``, the matched control."""
    import torch

    from capo.trainer import CAPOTrainer

    rng = np.random.default_rng([seed, MATCHED_STREAM])
    twin = None if twin_cells is None else [cell_rates(step) for step in twin_cells]

    class DiagnosedTrainer(CAPOTrainer):
        """Counts what the applied mask rejects, by π(a) decile and A = 0 / A ≠ 0."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.cells: dict[int, dict[str, list[float]]] = {}
            self.mask_calls = 0

        def token_mask(self, selection: Any, micro_batch: Any) -> torch.Tensor | None:
            self.mask_calls += 1
            valid = selection.valid.cpu().numpy().astype(bool)
            prob = selection.sampled_prob().double().cpu().numpy()
            adv = micro_batch.token_advantages.double().cpu().numpy()
            adv = np.broadcast_to(adv, valid.shape)
            step = int(self.state.global_step)
            keep, out = None, None
            if twin is not None:
                keep = matched_keep(valid, prob, adv, twin[min(step, len(twin) - 1)], rng)
                out = torch.from_numpy(keep).to(selection.valid.device)
            elif self.args.capo_enabled:
                keep = selection.keep.cpu().numpy().astype(bool)
            counts = cell_counts(valid, valid if keep is None else keep, prob, adv)
            if step in self.cells:  # a second micro-batch of the step: add up
                old = self.cells[step]
                counts = {
                    k: [a + b for a, b in zip(old[k], v, strict=True)] for k, v in counts.items()
                }
            self.cells[step] = counts
            return out

    return DiagnosedTrainer
