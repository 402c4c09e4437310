"""The golden CAPO runs: short float64 trainings whose every mask, metric, moment and weight is recorded.

Two fences, neither tied to the CPU kind a recording was made on:

- **Across machines** (``tests/capo/data/golden_step.json``, one recording): what is exact everywhere is
  compared exactly (each micro-batch's keep and valid masks as SHA-256 of their bytes, integer counts, the
  moments' integer tables); every float (each logged metric, each moment and weight tensor's L1 and L2 norms)
  to ``GOLDEN_RTOL`` (:mod:`reference.tolerances`). CPUs round differently (AVX2, AVX-512 and the scalar kernels give other last bits,
  which three training steps amplify), never by more.
- **Bit for bit, on one machine**: ``python -m tests.capo._golden --against REV`` runs every golden run on
  this tree and on commit REV (a temporary git worktree) and compares every bit (full tensor digests): the
  refactoring fence. The test suite checks the same bits between two runs of one process (determinism).

``python -m tests.capo._golden --record [RUN ...]`` re-records the JSON; do that only on purpose (a
deliberate change of behaviour, said in the commit), never to make the golden test pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
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


def _summary(t: torch.Tensor) -> Any:
    """An integer tensor's digest (exact everywhere); a float tensor's L1 and L2 norms (float.hex; a signed
    sum would cancel, and its relative rounding with it)."""
    if not t.is_floating_point():
        return _digest(t)
    t = t.detach().double()
    return {"l1": float.hex(float(t.abs().sum())), "l2": float.hex(float(t.norm()))}


def _timing(key: str) -> bool:
    return key.endswith(("runtime", "step_time")) or "per_second" in key


def run(name: str, output_dir: str) -> dict[str, Any]:
    """One golden run: masks, per-step logs, moments and weights (summaries), and every tensor's ``bits``."""
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
    tensors = {f"weights.{k}": p for k, p in trainer.model.named_parameters()}
    moments = None
    if trainer.capo_moments is not None:
        state = trainer.capo_moments.state_dict()
        tensors.update({f"moments.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
        moments = {k: _summary(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        moments = json.loads(json.dumps(moments))  # tuples as JSON lists
    weights = {k: _summary(p) for k, p in trainer.model.named_parameters()}
    bits = {k: _digest(v) for k, v in tensors.items()}
    return {"masks": masks, "logs": logs, "moments": moments, "weights": weights, "bits": bits}


def _is_float(v: Any) -> bool:
    return isinstance(v, str) and v.lstrip("-").startswith("0x")


def _differs(a: Any, b: Any) -> bool:
    """Floats (``float.hex``) beyond GOLDEN_RTOL; anything else (digests, ints, NaN) not equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in b)
    if _is_float(a) and _is_float(b):
        from tests.tolerances import EXACT_ATOL, GOLDEN_RTOL  # here: --bits runs on older trees too

        x, y = float.fromhex(a), float.fromhex(b)
        return not abs(x - y) <= EXACT_ATOL + GOLDEN_RTOL * abs(y)
    return bool(a != b)


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Where a run departs from the recording: masks and integers exactly, floats beyond GOLDEN_RTOL."""
    out = []
    if got["masks"] != want["masks"]:
        out.append("masks")
    if len(got["logs"]) != len(want["logs"]):
        out.append(f"{len(got['logs'])} log entries, recorded {len(want['logs'])}")
    for step, (mine, theirs) in enumerate(zip(got["logs"], want["logs"], strict=False)):
        if mine.keys() != theirs.keys():
            out.append(f"log {step}: keys {sorted(mine.keys() ^ theirs.keys())}")
        out += [f"log {step}: {k}" for k in theirs if k in mine and _differs(mine[k], theirs[k])]
    for part in ("moments", "weights"):
        mine, theirs = got[part] or {}, want[part] or {}
        if mine.keys() != theirs.keys():
            out.append(f"{part}: keys")
        out += [f"{part}: {k}" for k in theirs if k in mine and _differs(mine[k], theirs[k])]
    return out


def platform() -> str:
    """The machine a run is on: the torch build and its CPU kernel capability."""
    return f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def recorded() -> dict[str, dict[str, Any]]:
    """The recorded runs."""
    return dict(json.loads(GOLDEN.read_text())["runs"])


def record(names: list[str]) -> None:
    """Run ``names`` and store their records (without the machine-bound ``bits``)."""
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"runs": {}}
    golden["recorded_on"] = platform()
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            rec = run(name, tmp)
        rec.pop("bits")
        golden["runs"][name] = rec
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


def against(rev: str, names: list[str]) -> int:
    """Every bit of ``names`` on this tree against commit ``rev`` on this machine (0: identical)."""
    root = Path(__file__).resolve().parents[2]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev], check=True
        )
        try:
            for name in names:
                mine = _bits_in(root, name)
                theirs = _bits_in(tree, name)
                same = mine == theirs
                failed += not same
                print(f"{name}: {'bit-identical' if same else 'DIFFERS'}")
                if not same:
                    keys = [k for k in mine if mine[k] != theirs.get(k)]
                    print("  differs in: " + ", ".join(keys[:12]))
        finally:
            subprocess.run(
                ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=True
            )
    return 1 if failed else 0


def _bits_in(tree: Path, name: str) -> dict[str, Any]:
    """One run of this file's ``RUNS[name]`` in a subprocess on ``tree``'s code: masks, logs, every bit."""
    out = subprocess.run(
        [sys.executable, __file__, "--bits", name], cwd=tree, capture_output=True, text=True,
        check=True, env={**os.environ, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    """``--record [RUN ...]`` or ``--against REV [RUN ...]`` (module docstring)."""
    if argv[:1] == ["--record"]:
        record(argv[1:] or list(RUNS))
        print(f"wrote {GOLDEN} on {platform()}")
        return 0
    if argv[:1] == ["--bits"] and len(argv) == 2:
        with tempfile.TemporaryDirectory() as tmp:
            rec = run(argv[1], tmp)
        print(json.dumps({"masks": rec["masks"], "logs": rec["logs"], **rec["bits"]}))
        return 0
    if argv[:1] == ["--against"] and len(argv) >= 2:
        return against(argv[1], argv[2:] or list(RUNS))
    print("usage: python -m tests.capo._golden --record [RUN ...] | --against REV [RUN ...]")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
