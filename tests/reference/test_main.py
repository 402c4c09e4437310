"""``python -m reference`` prints the agreement table and exits 0."""

from __future__ import annotations

import subprocess
import sys

from reference.__main__ import main


def test_main_prints_a_table_and_returns_zero_when_all_agree(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "vs torch.func autodiff" in out
    assert "H̃ vs ∇²L" in out
    assert "DISAGREE" not in out
    assert out.rstrip().splitlines()[-1].startswith("OK:")


def test_module_entry_point_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "reference"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
