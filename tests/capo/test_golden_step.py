"""Refactoring fence: three short float64 CAPO trainings reproduce the recorded run on any CPU kind.

``tests/capo/data/golden_step.json`` holds one recording (:mod:`tests.capo._golden`): masks and integer counts
must match exactly, every float (logged metric, moment and weight norms) within ``GOLDEN_RTOL``.
Bit-for-bit equality is checked where it holds, on one machine: between two runs here (determinism), and
between two commits with ``python -m tests.capo._golden --against REV``.

Deliberate re-recordings: issue 28 (one recording for every CPU kind, from the code of issue 23 on an
AVX-512 machine; its masks and logs agree with the earlier AVX2 and AVX-512 recordings within the tolerance).
"""

from __future__ import annotations

import pytest

from tests.capo import _golden


@pytest.mark.parametrize("name", list(_golden.RUNS))
def test_run_matches_the_recording_on_any_cpu(tmp_path, name):
    """Masks and counts exactly, floats within GOLDEN_RTOL, whatever the CPU's kernels."""
    got = _golden.run(name, str(tmp_path))
    assert _golden.differences(got, _golden.recorded()[name]) == []


def test_a_run_is_bit_identical_when_repeated(tmp_path):
    """Two runs of one configuration in one process agree in every bit (masks, logs, moments, weights)."""
    first = _golden.run("capo_adam", str(tmp_path / "a"))
    second = _golden.run("capo_adam", str(tmp_path / "b"))
    assert first == second


def test_a_float_beyond_the_tolerance_is_reported():
    """The comparison can fail: one weight norm moved by 1e-3 relative, one mask digest changed."""
    want = _golden.recorded()["capo_budget"]
    got = {**want, "weights": dict(want["weights"]), "masks": [dict(m) for m in want["masks"]]}
    name = next(iter(got["weights"]))
    norm = float.fromhex(got["weights"][name]["l2"])
    got["weights"][name] = {**got["weights"][name], "l2": float.hex(norm * (1 + 1e-3))}
    got["masks"][0]["keep"] = "0" * 16
    assert _golden.differences(got, want) == ["masks", f"weights: {name}"]
