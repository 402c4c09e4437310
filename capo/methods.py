"""The method registry: the six methods of the paper as one trainer's settings (paper §5-6, App. J).

One source of truth for each method's key, display label, loss variant, whether curvature-aware masking is on,
and the paper's thresholds. The CLI shortcuts (``capo train --method``), the recipes, the experiments and
:data:`PAPER_THRESHOLDS` all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capo.selection import Thresholds

__all__ = [
    "METHODS",
    "PAPER_THRESHOLDS",
    "PRESETS",
    "VARIANTS",
    "VARIANT_LOSSES",
    "Method",
    "method_of",
    "normalize_method",
]

VARIANT_LOSSES: dict[str, tuple[str, str]] = {
    "grpo": ("grpo", "group"),
    "dr_grpo": ("dr_grpo", "none"),
    "reinforce": ("grpo", "none"),
}
"""Loss variant (``CAPOConfig.capo_variant``) -> (TRL ``loss_type``, TRL ``scale_rewards``)."""

VARIANTS = tuple(VARIANT_LOSSES)
"""The loss variants (``CAPOConfig.capo_variant``)."""


@dataclass(frozen=True)
class Method:
    """One method of the paper.

    Attributes:
        key: Stable identifier (CLI, JSON keys, file names).
        label: Display name, as in the paper's figures.
        variant: Loss variant, one of :data:`VARIANTS`.
        masking: Whether curvature-aware token selection is on.
        thresholds: The paper's acceptance thresholds (eq 11; symmetric Hessian band), None without masking.
    """

    key: str
    label: str
    variant: str
    masking: bool
    thresholds: Thresholds | None = None

    def config_fields(self) -> dict[str, Any]:
        """The ``CAPOConfig`` fields this method sets: variant, masking switch and the paper's thresholds."""
        out: dict[str, Any] = {"capo_variant": self.variant, "capo_enabled": self.masking}
        return out if self.thresholds is None else {**out, **self.thresholds.as_dict()}


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("grpo", "GRPO", "grpo", False),
        Method("capo", "CAPO", "grpo", True, Thresholds(-1e-2, 1e-2, 1e-4)),
        Method("dr_grpo", "Dr.GRPO", "dr_grpo", False),
        Method("dr_capo", "Dr.CAPO", "dr_grpo", True, Thresholds(-5e-4, 5e-4, 1e-3)),
        Method("reinforce", "REINFORCE", "reinforce", False),
        Method("reincapo", "ReinCAPO", "reinforce", True, Thresholds(-1e-1, 1e-1, 1e-5)),
    )
}
"""The six methods, baseline then CAPO extension per variant."""

PRESETS: dict[str, dict[str, Any]] = {key: m.config_fields() for key, m in METHODS.items()}
"""The six methods as presets of one trainer: ``CAPOConfig`` fields by method key (``capo train --method``)."""

PAPER_THRESHOLDS: dict[str, Thresholds] = {
    m.key: m.thresholds for m in METHODS.values() if m.thresholds is not None
}
"""The paper's thresholds for CAPO, Dr.CAPO and ReinCAPO, keyed by method."""

_ALIASES = {"rein_capo": "reincapo", "drgrpo": "dr_grpo", "drcapo": "dr_capo"}


def normalize_method(name: str) -> str:
    """The registry key of ``name`` (case, ``-`` and ``.`` ignored: ``Dr.CAPO`` -> ``dr_capo``).

    Raises:
        ValueError: naming the choices when ``name`` is no method.
    """
    key = name.lower().replace("-", "_").replace(".", "_")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return key


def method_of(variant: str, masking: bool) -> Method:
    """The method a configuration effectively trains: its loss variant with masking on or off."""
    for method in METHODS.values():
        if method.variant == variant and method.masking == masking:
            return method
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
