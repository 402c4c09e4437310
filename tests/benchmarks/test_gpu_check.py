"""benchmarks/gpu_check.py --dry-run: the prepared GPU check runs end to end on the CPU at small shapes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_check

from tests.tolerances import FLOAT32_RTOL, FUSED_FLOAT32_RTOL


def _run(tmp_path: Path, *skip: str) -> dict:
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--skip", *skip]) == 0
    assert (tmp_path / "gpu_check.md").read_text().startswith("# gpu_check on")
    return json.loads((tmp_path / "gpu_check.json").read_text())


@pytest.mark.usefixtures("fused_kernels")
def test_dry_run_core_agrees_with_float64_and_times_the_step(tmp_path: Path) -> None:
    """float32 and bf16 (inputs rounded alike) agree with float64 within FLOAT32_RTOL; the step runs."""
    res = _run(tmp_path, "training")
    for dtype in ("float32", "bfloat16"):
        assert res["agreement"][dtype]["ok"], res["agreement"][dtype]
    steps = [v for k, v in res.items() if k.startswith("paper_step_U") and not k.endswith("_s")]
    assert len(steps) == 3
    for step in steps:
        assert "error" not in step, step
        assert step["peak_extra_bytes"] > 0 and step["rows_touched"] > 0
    fused = res["fused_shift"]
    assert "error" not in fused, fused.get("traceback")
    assert fused["fused_vs_plain"] <= FUSED_FLOAT32_RTOL
    assert max(fused[k]["max_rel_err_vs_float64"] for k in ("fused", "plain")) <= FLOAT32_RTOL


@pytest.mark.slow
def test_dry_run_trains_with_capo_on_and_off(tmp_path: Path) -> None:
    res = _run(tmp_path, "agreement", "paper_step")
    assert "error" not in res["training"], res["training"].get("traceback")
    assert math.isfinite(res["training"]["overhead_percent"])
    assert len(res["training"]["capo_on"]["step_s"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_the_full_check_refuses_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out
