"""The golden CAPO runs: short float64 trainings whose every mask, moment, weight and metric is recorded.

``python -m tests.capo._golden`` (from the repo root) rewrites ``tests/capo/data/golden_step.json``; do that
only on purpose (a change of behaviour), never to make the golden test pass. Tensors are recorded as the
SHA-256 of their bytes, floats as ``float.hex`` (bit-exact); both depend on the torch build, which is
recorded alongside.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.capo import _trainer_helpers as H

GOLDEN = Path(__file__).parent / "data" / "golden_step.json"

THRESHOLDS = {"hessian_low": -0.05, "hessian_high": 0.05, "fisher_max": 1.3e-3}
RUNS: dict[str, dict[str, Any]] = {
    # CAPO with every step-end consumer on: global shifts, last-layer KL prediction, true-KL diagnostic.
    "capo_adam": dict(
        **THRESHOLDS,
        max_steps=3,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        capo_global_shift=True,
        capo_log_true_kl=True,
        capo_kl_model="last_layer",
    ),
    # Tracking only (baseline trained unmasked), completion subsets, SGD step model.
    "track_sgd": dict(
        **THRESHOLDS,
        capo_enabled=False,
        capo_track_shifts=True,
        capo_granularity="completion",
        capo_step_model="sgd",
        optim="sgd",
        capo_global_shift=True,
        max_steps=2,
    ),
    # CAPO with a lookahead KL budget that scales the step.
    "capo_budget": dict(
        **THRESHOLDS,
        max_steps=2,
        capo_kl_budget=1e-6,
        capo_kl_model="lookahead",
        capo_global_shift=False,
    ),
}


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def _num(x: Any) -> Any:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else float.hex(x)
    return x


def _timing(key: str) -> bool:
    return key.endswith(("runtime", "step_time")) or "per_second" in key


def run(name: str, output_dir: str) -> dict[str, Any]:
    """One golden run: per micro-batch masks, per-step logs, final moments and weights."""
    trainer = H.trainer(output_dir, **RUNS[name])
    trainer.capo_record = []
    trainer.train()
    masks = [
        {"keep": _digest(r["keep"]), "valid": _digest(r["valid"])} for r in trainer.capo_record
    ]
    logs = [
        {k: _num(v) for k, v in sorted(entry.items()) if not _timing(k)}
        for entry in trainer.state.log_history
    ]
    mom = trainer.capo_moments
    moments = None
    if mom is not None:
        state = mom.state_dict()
        moments = {k: _digest(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        moments = json.loads(json.dumps(moments))  # tuples as JSON lists
    weights = {k: _digest(p) for k, p in trainer.model.named_parameters()}
    return {"masks": masks, "logs": logs, "moments": moments, "weights": weights}


def record() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__}
    for name in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = run(name, tmp)
    return out


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
