"""``python -m verification ... --out DIR`` follows the run-folder rule: it replaces its own earlier report,
never a file of someone else, and refuses an unwritable folder in one line before computing anything."""

from __future__ import annotations

from verification.__main__ import main


def test_a_report_of_someone_else_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / "report.md").write_text("mine")
    assert main(["agreement", "--quick", "--out", str(tmp_path)]) == 2
    assert "holds report.md, which this command did not write" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "mine"


def test_its_own_report_is_replaced(tmp_path):
    out = tmp_path / "out"
    assert main(["agreement", "--quick", "--out", str(out)]) == 0
    assert main(["agreement", "--quick", "--out", str(out)]) == 0


def test_an_unwritable_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["agreement", "--quick", "--out", str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
