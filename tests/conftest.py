"""Shared pytest configuration: deterministic torch, float64 by default in exact tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    import torch

    torch.manual_seed(0)
