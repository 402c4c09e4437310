"""Refactoring fence: three short float64 CAPO trainings reproduce the recorded run bit for bit.

Every mask (per micro-batch), every logged metric (``float.hex``), the Adam moments and the final weights
(SHA-256 of their bytes) equal ``tests/capo/data/golden_step.json``, recorded before the step object
(issue 20) from the code of that time by ``python -m tests.capo._golden``. Bit-exact floats depend on the
torch build: on another torch version the test is skipped, not loosened.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.capo import _golden


@pytest.mark.parametrize("name", list(_golden.RUNS))
def test_run_is_bit_identical_to_the_recorded_one(tmp_path, name):
    golden = json.loads(_golden.GOLDEN.read_text())
    if golden["torch"] != torch.__version__:
        pytest.skip(f"golden recorded with torch {golden['torch']}, running {torch.__version__}")
    got = _golden.run(name, str(tmp_path))
    want = golden[name]
    assert got["masks"] == want["masks"]
    assert got["logs"] == want["logs"]
    assert got["moments"] == want["moments"]
    assert got["weights"] == want["weights"]
