"""Every benchmark script refuses an out-of-range argument with argparse's one-line usage error (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("run.py", ["--threads", "0"], "argument --threads: 0 is not a positive integer"),
        ("run.py", ["--only", "nonexistent"], "--only: unknown nonexistent"),
        ("fused.py", ["--reps", "-1"], "argument --reps: -1 is not a positive integer"),
        ("trainer_overhead.py", ["--steps", "0"], "argument --steps: 0 is not a positive integer"),
        ("kl_budget_holds.py", ["--steps", "-3"], "argument --steps: -3 is not a positive integer"),
        ("kl_budget.py", ["--skip", "-1"], "argument --skip: -1 is not a non-negative integer"),
        (
            "projection.py",
            ["--micro-batches", "x"],
            "argument --micro-batches: 'x' is not an integer",
        ),
    ],
)
def test_a_bad_argument_is_a_usage_error(script, args, message):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
