"""The report command: files exist, the JSON has the summary keys, the exit code follows must-hold rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verification import __main__ as cli
from verification import agreement, report
from verification.common import Check


def test_agreement_quick_writes_report_json_and_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m verification agreement --quick` writes report.md (summary first), JSON and PNGs."""
    monkeypatch.setattr(agreement, "GRID_QUICK", agreement.GRID_QUICK[:1])
    monkeypatch.setenv("CAPO_VERIFY_NO_PROGRESS", "1")
    assert cli.main(["agreement", "--out", str(tmp_path), "--quick"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md.index("| # | claim | equation | verdict | worst figure |") < md.index("## ")
    data = json.loads((tmp_path / "agreement.json").read_text())
    assert data["all_must_hold_pass"] is True
    assert {"summary", "checks", "grid", "dtypes", "truncation", "chunk_invariance"} <= set(data)
    assert set(data["summary"][0]) == {"claim", "equation", "verdict", "worst", "must_hold", "ok"}
    for png in ("agreement_errors.png", "topk_truncation.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_a_failing_must_hold_check_fails_the_report_but_a_failing_claim_does_not(
    tmp_path: Path,
) -> None:
    """Exit policy: only must-hold rows (our implementation, certain identities) decide."""
    claim = Check("paper claim", "eq 1", "fails", "x", must_hold=False, ok=False)
    assert report.write(tmp_path, "t", "T", [claim], [], {}, [], 0.0, True) is True
    bug = Check("our identity", "ours", "fails", "x", must_hold=True, ok=False)
    assert report.write(tmp_path, "t", "T", [claim, bug], [], {}, [], 0.0, True) is False
    assert "**NO**" in (tmp_path / "report.md").read_text()
