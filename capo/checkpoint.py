"""The CAPO state inside a training checkpoint: the tracked sparse Adam moments and the counters."""

from __future__ import annotations

import json
import os
import warnings

import torch

from capo.moments import SparseAdamMoments

__all__ = ["MOMENTS_FILE", "STATE_FILE", "load_capo_state", "save_capo_state"]

MOMENTS_FILE = "capo_moments.pt"
"""Checkpoint file of the sparse Adam moments (``SparseAdamMoments.state_dict()``)."""
STATE_FILE = "capo_state.json"
"""Checkpoint file of the other CAPO counters."""


def save_capo_state(folder: str, moments: SparseAdamMoments | None, completions_seen: int) -> None:
    """Write ``capo_moments.pt`` (when the Adam step model is tracked) and ``capo_state.json`` into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    if moments is not None:
        torch.save(moments.state_dict(), os.path.join(folder, MOMENTS_FILE))
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump({"completions_seen": completions_seen}, f)


def load_capo_state(folder: str, moments: SparseAdamMoments | None) -> int | None:
    """Load the moments of ``folder`` into ``moments`` (in place); return its completions count.

    A checkpoint without ``capo_moments.pt`` while moments are tracked warns that they restart from zero.
    Returns None when the folder holds no ``capo_state.json``.
    """
    moments_path = os.path.join(folder, MOMENTS_FILE)
    if moments is not None:
        if os.path.exists(moments_path):
            moments.load_state_dict(torch.load(moments_path, map_location=moments.device))
        else:
            warnings.warn(
                f"{folder} has no {MOMENTS_FILE}: the CAPO moments restart from zero", stacklevel=3
            )
    state_path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(state_path):
        return None
    with open(state_path) as f:
        return int(json.load(f)["completions_seen"])
