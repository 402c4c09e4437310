"""The golden CAPO runs: short float64 trainings whose every mask, moment, weight and metric is recorded.

``python -m tests.capo._golden [RUN ...]`` (from the repo root) records the named runs (all by default) for this
machine's platform in ``tests/capo/data/golden_step.json``; do that only on purpose (a change of behaviour, or
a platform recorded from the code before a change), never to make the golden test pass. Tensors are recorded as
the SHA-256 of their bytes, floats as ``float.hex`` (bit-exact). Both depend on the platform (:func:`platform`):
the torch build and the CPU kernels torch dispatches to (the same code gives other bits with AVX2 than with
AVX512 kernels), so the recordings are kept per platform.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
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


def platform() -> str:
    """The key of this machine's recordings: the torch build and its CPU kernel capability."""
    return f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def recorded() -> dict[str, dict[str, Any]]:
    """The runs recorded for this platform ({} if none)."""
    return json.loads(GOLDEN.read_text())["platforms"].get(platform(), {})


def record(names: list[str]) -> None:
    """Run ``names`` and store their records as this platform's."""
    golden = json.loads(GOLDEN.read_text())
    runs = golden["platforms"].setdefault(platform(), {})
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            runs[name] = run(name, tmp)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    record(sys.argv[1:] or list(RUNS))
    print(f"wrote {GOLDEN} for {platform()}")
