"""The arms of the mechanism study and the token-masking rules they share (toy and tiny-LLM regimes).

An arm is one training configuration: an optimizer (Adam, or SGD: does masking help when the step is not
normalised?), a learning rate relative to the regime's aggressive one, a batch relative to the aggressive
batch, and a masking rule:

- ``none``: the plain GRPO (A) loss (``capo.methods.METHODS["grpo"]``);
- ``capo``: the acceptance test of eq 11 with fixed thresholds: the paper's (``METHODS["capo"]``,
  unchanged) or thresholds at a percentile of GRPO (A)'s token m_F (and |m_H| with the band on);
- ``random``: a uniformly random token mask at the per-step rejection rate a ``capo`` arm realised on the
  same seed (the control: does the *selection* matter, or only the amount?);
- ``group``: GRPO (A) with the gradient of one token group removed, a group being sign(A) × π_a bucket
  (which tokens drive the crash?).

A ``kl_budget`` arm (masking ``none``) instead shrinks the whole step until its KL fits a budget: the
sibling trust region, which controls the step's size rather than its direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from capo.methods import METHODS
from capo.selection import Thresholds

__all__ = [
    "BUCKET_EDGES",
    "GROUPS",
    "QUIET_RUN",
    "Arm",
    "group_index",
    "group_keep",
    "random_keep",
    "rejection_by_group",
]

QUIET_RUN: dict[str, object] = {
    "eval_every": 0,
    "logging_steps": 1,
    "plots": False,
    "disable_tqdm": True,
    "save_strategy": "no",
    "report_to": [],
}
"""``capo train`` settings every experiment run shares: a step record per step, no plots, bars, checkpoints,
trackers or in-run evaluation (the experiment evaluates itself)."""


BASELINE = METHODS["grpo"]
"""The baseline method of every arm (loss variant ``grpo``)."""
PAPER = METHODS["capo"]
"""The paper's method: its thresholds are one arm, exactly as specified."""

BUCKET_EDGES = (0.1, 0.5)
"""π_a buckets: [0, 0.1), [0.1, 0.5), [0.5, 1]."""
GROUPS = tuple(f"A{s}, pi_a {b}" for s in ("+", "-") for b in ("<0.1", "0.1-0.5", ">=0.5"))
"""Token groups sign(A) × π_a bucket, in :func:`group_index` order (tokens with A = 0 are in none)."""


@dataclass(frozen=True)
class Arm:
    """One arm of the study.

    Attributes:
        name: Unique key (JSON, file names), e.g. ``adam/capo_p95_band``.
        optimizer: "adam" or "sgd" (the optimizer and the curvature model's step model).
        masking: "none", "capo", "random" or "group".
        lr_scale: Learning rate / the regime's aggressive lr of this optimizer.
        batch_ratio: Completions per step / the aggressive batch (12 for conservative GRPO).
        thresholds: Fixed thresholds of a ``capo`` arm (the paper's), None when set by ``percentile``.
        percentile: A ``capo`` arm's thresholds at this percentile of GRPO (A)'s token shifts.
        band: With ``percentile``: also the symmetric m_H band at the same percentile of |m_H|.
        control_of: A ``random`` arm copies the per-step rejection rate of this ``capo`` arm.
        group: A ``group`` arm removes the tokens of ``GROUPS[group]``.
        kl_budget: Scale each step so that its exact (lookahead) KL is at most this (the trust region of
            ``CAPOConfig.capo_kl_budget``, an extension beyond the paper); None: no budget.
    """

    name: str
    optimizer: str = "adam"
    masking: str = "none"
    lr_scale: float = 1.0
    batch_ratio: int = 1
    thresholds: Thresholds | None = None
    percentile: float | None = None
    band: bool = False
    control_of: str | None = None
    group: int | None = None
    kl_budget: float | None = None

    @property
    def label(self) -> str:
        """A display label built from the registry's labels."""
        opt = "SGD" if self.optimizer == "sgd" else "Adam"
        if self.masking == "capo" and self.percentile is None:
            return f"{PAPER.label} (A), paper's thresholds [{opt}]"
        if self.masking == "capo":
            band = " + m_H band" if self.band else ""
            return f"{PAPER.label} (A), m_F p{self.percentile:g}{band} [{opt}]"
        if self.masking == "random":
            return f"random mask at the rate of {self.control_of} [{opt}]"
        if self.masking == "group" and self.group is not None:
            return f"{BASELINE.label} (A) without {GROUPS[self.group]} [{opt}]"
        if self.kl_budget is not None:
            return f"{BASELINE.label} (A), KL budget {self.kl_budget:g} per step [{opt}]"
        if self.batch_ratio > 1:
            return f"{BASELINE.label} (conservative) [{opt}]"
        lr = "" if self.lr_scale == 1.0 else f" lr x{self.lr_scale:g}"
        return f"{BASELINE.label} (A){lr} [{opt}]"

    @property
    def variant(self) -> str:
        """The loss variant (from the method registry)."""
        return PAPER.variant if self.masking == "capo" else BASELINE.variant


def group_index(adv: NDArray[np.float64], pi_a: NDArray[np.float64]) -> NDArray[np.int64]:
    """Index into :data:`GROUPS` of each token (−1 where A = 0), same shape as ``adv``."""
    bucket = np.searchsorted(np.asarray(BUCKET_EDGES), pi_a, side="right")
    index = np.where(adv > 0, bucket, 3 + bucket)
    return np.where(adv == 0, -1, index).astype(np.int64)


def group_keep(
    valid: NDArray[np.bool_], adv: NDArray[np.float64], pi_a: NDArray[np.float64], group: int
) -> NDArray[np.bool_]:
    """Keep every valid token except those of ``GROUPS[group]``."""
    return valid & (group_index(adv, pi_a) != group)


def random_keep(
    valid: NDArray[np.bool_],
    rate: float,
    rng: np.random.Generator,
    eligible: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """Reject round(rate · n_valid) tokens drawn uniformly without replacement among ``eligible``.

    ``eligible`` (default: the valid tokens) is the subset a rule may reject; at most all of it is rejected.
    """
    keep = valid.copy()
    where = np.flatnonzero((valid if eligible is None else eligible).ravel())
    n = min(round(min(max(rate, 0.0), 1.0) * int(valid.sum())), where.size)
    keep.ravel()[rng.choice(where, size=n, replace=False)] = False
    return keep


def rejection_by_group(
    valid: NDArray[np.bool_],
    keep: NDArray[np.bool_],
    adv: NDArray[np.float64],
    pi_a: NDArray[np.float64],
) -> tuple[list[int], list[int]]:
    """(rejected, total) valid-token counts per group of :data:`GROUPS`."""
    index = group_index(adv, pi_a)[valid]
    rejected = ~keep[valid]
    total = np.bincount(index[index >= 0], minlength=len(GROUPS))
    rej = np.bincount(index[(index >= 0) & rejected], minlength=len(GROUPS))
    return [int(x) for x in rej], [int(x) for x in total]
