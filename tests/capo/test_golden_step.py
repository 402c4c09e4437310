"""Refactoring fence: three short float64 CAPO trainings reproduce the recorded run bit for bit.

Every mask (per micro-batch), every logged metric (``float.hex``), the Adam moments and the final weights
(SHA-256 of their bytes) equal ``tests/capo/data/golden_step.json``, recorded before the step object
(issue 20) from the code of that time by ``python -m tests.capo._golden``. Bit-exact floats depend on the
torch build: on another torch version the test is skipped, not loosened.

One deliberate change is allowed: the ``last_layer`` KL prediction (``capo/kl_predicted``, a logged number
that steers nothing without a budget) now takes ½vᵀFv in the cancellation-free form of
:func:`capo.shifts.fisher_quadratic` instead of Σπv² − (π·v)², so it agrees to float64 rounding only.
"""

from __future__ import annotations

import json

import pytest
import torch

from capo import metrics
from tests.capo import _golden
from tests.tolerances import EXACT_RTOL


@pytest.mark.parametrize("name", list(_golden.RUNS))
def test_run_is_bit_identical_to_the_recorded_one(tmp_path, name):
    golden = json.loads(_golden.GOLDEN.read_text())
    if golden["torch"] != torch.__version__:
        pytest.skip(f"golden recorded with torch {golden['torch']}, running {torch.__version__}")
    got = _golden.run(name, str(tmp_path))
    want = golden[name]
    assert got["masks"] == want["masks"]
    if _golden.RUNS[name].get("capo_kl_model") == "last_layer":
        for mine, theirs in zip(got["logs"], want["logs"], strict=True):
            if metrics.KL_PREDICTED in theirs:
                a, b = (float.fromhex(d.pop(metrics.KL_PREDICTED)) for d in (mine, theirs))
                assert a == pytest.approx(b, rel=EXACT_RTOL, abs=0.0)
    assert got["logs"] == want["logs"]
    assert got["moments"] == want["moments"]
    assert got["weights"] == want["weights"]
