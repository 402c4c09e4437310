"""CAPO: Curvature-Aware Policy Optimization (arXiv 2510.00819), sparse and scalable, in torch.

Shapes follow the glossary in :mod:`capo.shapes`. The public API is listed in ``__all__``; it is the
contract of ``DESIGN.md`` §3.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
