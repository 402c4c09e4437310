"""The seven methods of the paper's stability comparison (§6, Figs. 1, 2, 4) and their two regimes.

The conservative regime is the reference GRPO; the aggressive regime "(A)" uses a learning rate
``LR_RATIO`` = 5× higher and a batch ``BATCH_RATIO`` = 12× smaller (paper Table 3: 3e-6 / 1152 vs
1.5e-5 / 96 completions per step), for every method including CAPO.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BATCH_RATIO", "LR_RATIO", "METHODS", "Method"]

LR_RATIO = 5.0
"""Aggressive learning rate / conservative learning rate (paper Table 3)."""

BATCH_RATIO = 12
"""Conservative batch / aggressive batch, in completions (paper Table 3)."""


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        key: Stable identifier (JSON keys, file names).
        label: Label as in the paper's figures.
        variant: Loss variant: "grpo", "dr_grpo" or "reinforce".
        aggressive: Aggressive regime (5× lr, 12× smaller batch) or the conservative one.
        capo: Whether curvature-aware token selection is on.
    """

    key: str
    label: str
    variant: str
    aggressive: bool
    capo: bool


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("grpo_conservative", "GRPO", "grpo", False, False),
        Method("grpo_a", "GRPO (A)", "grpo", True, False),
        Method("dr_grpo_a", "Dr.GRPO (A)", "dr_grpo", True, False),
        Method("reinforce_a", "REINFORCE (A)", "reinforce", True, False),
        Method("capo_a", "CAPO (A)", "grpo", True, True),
        Method("dr_capo_a", "Dr.CAPO (A)", "dr_grpo", True, True),
        Method("rein_capo_a", "ReinCAPO (A)", "reinforce", True, True),
    )
}
"""The seven methods, in the paper's order."""

CAPO_OF_VARIANT = {"grpo": "capo_a", "dr_grpo": "dr_capo_a", "reinforce": "rein_capo_a"}
"""The CAPO method that extends each loss variant."""

BASELINE_OF_VARIANT = {"grpo": "grpo_a", "dr_grpo": "dr_grpo_a", "reinforce": "reinforce_a"}
"""The aggressive baseline of each loss variant."""
