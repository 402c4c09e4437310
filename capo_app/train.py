"""``capo train``: parse a recipe and run it (:mod:`capo_app.run`), or validate it (:mod:`capo_app.dry_run`).

``capo train`` with no arguments trains the embedded default (CAPO on the warm-started tiny Qwen2 model and
the synthetic arithmetic task, CPU, a few minutes). ``capo train --config recipes/capo.yaml`` runs a paper
recipe (launch it with ``accelerate launch``, see ``recipes/README.md``); ``--dry-run`` validates a recipe on a
tiny stand-in model without downloading anything (:mod:`capo_app.dry_run`). Options: ``--method``, ``--max-steps``,
``--seed``, ``--output-dir``, and any ``ScriptArguments`` / ``CAPOConfig`` field as ``--field value``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from capo_app.checks import UsageError
from capo_app.launch import (
    end_process_group,
    exit_launched_process,
    launch_overrides,
    skip_unused_deepspeed_build,
)
from capo_app.preflight import preflight
from capo_app.recipe import (
    TINY_DEFAULTS,
    ScriptArguments,
    layered_defaults,
    parse_recipe,
    recipe_parser,
)
from capo_app.resume import ResumePoint, RunComplete, is_complete
from capo_app.run_folder import claim_output_dir

if TYPE_CHECKING:
    from capo.config import CAPOConfig

_USAGE = """usage: capo train [--config RECIPE.yaml] [--method METHOD] [--max-steps N] [--seed N]
                  [--output-dir DIR] [--dry-run] [--FIELD VALUE ...]

Train with CAPOTrainer. Without arguments: CAPO on the embedded tiny Qwen2 model and the synthetic
arithmetic task, on CPU, in a few minutes; the summary is printed and log.json + PNG plots are written
to --output-dir (default outputs/capo-tiny).

  --config RECIPE.yaml  TrlParser-style YAML recipe (ScriptArguments + CAPOConfig fields), e.g.
                        recipes/capo.yaml; the command line overrides it.
  --method METHOD       grpo | capo | dr_grpo | dr_capo | reinforce | reincapo (variant, masking,
                        and the paper's thresholds).
  --max-steps N         optimizer steps.
  --seed N              random seed.
  --output-dir DIR      where log.json, the plots and the final model go; a folder holding
                        another run is refused unless --overwrite_output_dir true (which removes
                        that run's files first).
  --dry-run             validate the recipe on a tiny stand-in model (no download) and report.
  --resume_from_checkpoint PATH|true
                        continue a run from its checkpoint (true: the last complete one in
                        --output-dir; save them with --save_strategy steps --save_steps N).
  --help-all            list every accepted field (ScriptArguments, CAPOConfig, GRPOConfig, ...).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``capo train`` on the ``capo`` sub-parsers and set its handler.

    The sub-parser takes the rest of the command line verbatim; :func:`capo_app.recipe.parse_recipe` (TrlParser over
    ``ScriptArguments`` and ``CAPOConfig``) parses it, so every config field is accepted as ``--field value``.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        The ``train`` sub-parser.
    """
    parser = subparsers.add_parser(
        "train",
        help="train with CAPOTrainer (no arguments: the tiny CPU demo)",
        add_help=False,
        prefix_chars="\x00",  # hand every option to TrlParser untouched
        usage=_USAGE,
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``capo train``: parse the remaining arguments and run."""
    return main(list(args.train_args))


def _wants_dry_run(argv: Sequence[str]) -> bool:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(
        "--dry-run", "--dry_run", dest="dry_run", nargs="?", const="true", default=None
    )
    known, _ = pre.parse_known_args(list(argv))
    if known.dry_run is not None:
        return str(known.dry_run).lower() in ("true", "1", "yes", "y")
    return bool(layered_defaults(argv)[0].get("dry_run", False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``capo train`` with the given arguments; returns the exit code.

    Raises:
        UsageError: On bad input (:func:`capo_app.cli.main` prints it as one line and exits 2).
    """
    argv = list(argv or [])
    # transformers 5 renames gradient_checkpointing; TRL 1.16 still sets it. Not the user's concern.
    warnings.filterwarnings(
        "ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning
    )
    if any(a in ("-h", "--help") for a in argv):
        print(_USAGE)
        return 0
    if "--help-all" in argv:
        recipe_parser().print_help()
        tiny = ", ".join(f"{k} {v}" for k, v in TINY_DEFAULTS.items())
        print(
            "\nThe defaults above are the dataclasses' (TRL's). Without --config, capo train starts from the "
            f"embedded tiny recipe instead, whatever the model: {tiny}; give a recipe (--config "
            "recipes/capo.yaml) or the options themselves for another model."
        )
        return 0
    try:
        if _wants_dry_run(argv):
            from capo_app.dry_run import dry_run  # TRL and transformers only when asked

            return dry_run(argv)
        skip_unused_deepspeed_build()  # before the training arguments start the process group
        script_args, config, _ = parse_recipe(argv, overrides=launch_overrides())
    except (ValueError, OSError, yaml.YAMLError) as error:  # the recipe or an option is invalid
        raise UsageError(_one_line(error)) from error
    try:
        resume = preflight(script_args, config)
    except RunComplete as done:
        print(done)
        return 0
    if resume is not None and is_complete(resume, int(config.max_steps)):
        print(
            f"capo train: the run in {config.output_dir} is complete ({resume.step} optimizer steps, "
            f"{resume.checkpoint}); nothing to train"
        )
        return 0
    claim_output_dir(
        str(config.output_dir),
        overwrite=script_args.overwrite_output_dir,
        resume=resume is not None,
    )
    try:
        train(script_args, config, resume)
    except BaseException:
        end_process_group()  # a failed launched process still leaves its group; the error goes on
        raise
    exit_launched_process()  # a launched gloo process ends here; otherwise (no group) this returns
    return 0


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def train(
    script_args: ScriptArguments, config: CAPOConfig, resume: ResumePoint | None = None
) -> dict[str, Any]:
    """Run one training (:func:`capo_app.run.train`), resumed from ``resume`` if given; returns its log."""
    from capo_app.run import train as run_training  # torch, TRL and datasets only when a run starts

    return run_training(script_args, config, resume)
