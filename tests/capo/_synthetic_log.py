"""A synthetic ``capo train`` log (closed-form curves) for the report and plot tests."""

from __future__ import annotations

import math


def synthetic_log_history(steps: int = 20, per_step: int = 32) -> list[dict]:
    """TRL-style ``log_history``: one dict per step plus TRL's end-of-training entry."""
    history = []
    for step in range(1, steps + 1):
        lr_zero = step == 1
        history.append(
            {
                "step": step,
                "epoch": step / steps,
                "loss": 0.0,
                "reward": 0.3 + 0.02 * step,
                "learning_rate": 0.0 if lr_zero else 1e-4,
                "capo/completions_seen": float(step * per_step),
                "capo/rejection_rate": 0.0 if lr_zero else 0.1 / step,
                "capo/rejection_rate_hessian": 0.0 if lr_zero else 0.06 / step,
                "capo/rejection_rate_fisher": 0.0 if lr_zero else 0.08 / step,
                "capo/global_m_H": 0.0 if lr_zero else (-1) ** step * 1e-4 / step,
                "capo/global_m_F": 0.0 if lr_zero else 1e-6 / step,
                "capo/m_H/mean": 0.0 if lr_zero else 1e-3 / step,
                "capo/m_H/p50": 0.0 if lr_zero else 1e-5,
                "capo/m_H/p99": 0.0 if lr_zero else 5e-2 / step,
                "capo/m_H/max": 0.0 if lr_zero else 1e-1 / step,
                "capo/m_F/mean": 0.0 if lr_zero else 1e-5 / step,
                "capo/m_F/p50": 0.0 if lr_zero else 1e-10,
                "capo/m_F/p99": 0.0 if lr_zero else 1e-3 / step,
                "capo/m_F/max": 0.0 if lr_zero else 2e-3 / step,
                "capo/true_kl": 0.0 if lr_zero else 1e-3 * math.exp(-step / 5),
            }
        )
    history.append({"step": steps, "train_runtime": 12.5, "train_loss": 0.0, "epoch": 1.0})
    return history


TEST_ACCURACY = [
    {"step": 0, "completions": 0, "accuracy": 0.40},
    {"step": 10, "completions": 320, "accuracy": 0.45},
    {"step": 20, "completions": 640, "accuracy": 0.50},
]
