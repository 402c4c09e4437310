"""The error boundary of every entry point: bad input is one ``<prog>: error:`` line and exit 2; a bug is loud.

``capo``, ``python -m verification`` and ``python -m reference`` parse with :class:`OneLineParser` and run
through :func:`guarded`. A :class:`~capo_app.checks.UsageError` (or an argparse error) prints one line on stderr
and exits 2. Any other exception is a bug in this project: its traceback is printed, then one line saying so,
and the exit code is 1 (never swallowed, never dressed up as a usage error). It imports nothing else of the
project, so the reference and the verification suite use it without loading the application.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn


class UsageError(ValueError):
    """Bad input from the user; the message is one line that says what is wrong and what to do."""


USAGE_EXIT = 2
BUG_EXIT = 1


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors (unknown option, wrong type, missing value) raise :class:`UsageError`.

    argparse would print its usage block and exit; the boundary prints one line instead (``--help`` still
    prints the usage).
    """

    def error(self, message: str) -> NoReturn:
        """Raise the parse error as one :class:`UsageError` line naming the command."""
        raise UsageError(message)


def guarded(prog: str, run: Callable[[], int]) -> int:
    """Run an entry point's body; returns its exit code, 2 for bad input, 1 for a bug.

    Args:
        prog: The command's name, the prefix of its one error line (``capo``).
        run: The entry point's body (parsing included), returning its exit code.
    """
    default_format = warnings.formatwarning

    def one_line(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        if issubclass(
            category, UserWarning
        ):  # what this project tells the user: one line, no source echo
            return f"{prog}: warning: {' '.join(str(message).split())}\n"
        return default_format(message, category, *args, **kwargs)

    warnings.formatwarning = one_line
    try:
        return int(run())
    except UsageError as error:
        text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{prog}: error: {text}", file=sys.stderr)
        return USAGE_EXIT
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        traceback.print_exc()
        print(
            f"{prog}: internal error: this is a bug in {prog}, not in your input; please report it "
            "with the traceback above",
            file=sys.stderr,
        )
        return BUG_EXIT
    finally:
        warnings.formatwarning = default_format
