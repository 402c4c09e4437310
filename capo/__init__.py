"""CAPO: Curvature-Aware Policy Optimization (arXiv 2510.00819), sparse and scalable, in torch.

Shapes follow the glossary in :mod:`capo.shapes`. The public API is listed in ``__all__``; it is the
contract of ``docs/design.md`` §3.
"""

from __future__ import annotations

from capo.gradients import last_layer_gradient
from capo.methods import PAPER_THRESHOLDS
from capo.moments import SparseAdamMoments
from capo.selection import Thresholds, select
from capo.shifts import Shifts, directional_shifts
from capo.steps import AdamStep, SGDStep, StepModel
from capo.support import Support, support_from_hidden, support_from_logits
from capo.tokens import TokenBatch

__version__ = "0.1.0"

_LAZY = {"CAPOConfig": "capo.config", "CAPOTrainer": "capo.trainer"}
"""Public names imported on first use, so ``import capo`` does not import trl or transformers."""


def __getattr__(name: str) -> object:
    """Import the TRL integration (:class:`CAPOConfig`, :class:`CAPOTrainer`) lazily."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'capo' has no attribute {name!r}")


__all__ = [
    "PAPER_THRESHOLDS",
    "AdamStep",
    "CAPOConfig",
    "CAPOTrainer",
    "SGDStep",
    "Shifts",
    "SparseAdamMoments",
    "StepModel",
    "Support",
    "Thresholds",
    "TokenBatch",
    "__version__",
    "directional_shifts",
    "last_layer_gradient",
    "select",
    "support_from_hidden",
    "support_from_logits",
]
