import subprocess
import sys

import capo
from capo_app.cli import main


def test_version_is_the_package_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capo.__version__ in capsys.readouterr().out


def test_help_lists_the_program_name():
    out = subprocess.run(
        [sys.executable, "-m", "capo_app", "--help"], capture_output=True, text=True, check=True
    )
    assert "capo" in out.stdout
