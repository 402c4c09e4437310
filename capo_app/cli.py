"""The ``capo`` command line: ``capo --help`` lists the sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from capo import __version__
from capo_app.boundary import OneLineParser, guarded
from capo_app.evaluation.cli import add_parser as add_eval_parser
from capo_app.train import add_parser as add_train_parser


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level argument parser with one sub-parser per command."""
    parser = OneLineParser(
        prog="capo",
        description="Curvature-Aware Policy Optimization (arXiv 2510.00819) on TRL.",
    )
    parser.add_argument("--version", action="version", version=f"capo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Bad input is one ``capo: error:`` line and exit 2; anything else is a bug (see :mod:`capo_app.boundary`).
    """

    def run() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.handler(args))

    return guarded("capo", run)


if __name__ == "__main__":
    raise SystemExit(main())
