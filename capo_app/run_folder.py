"""What a ``capo train`` output folder holds, and how a new run claims one.

A run leaves its model and tokenizer, ``log.json``, the PNG plots, :data:`PROMPT_FILE` (how the model was prompted,
read back by ``capo eval``), TRL's checkpoints, and ``capo eval``'s default results folder :data:`EVAL_DIR`. A new
run into a folder that holds another one is refused unless asked to overwrite (the old run's artefacts are then
removed, other files are left alone) or to resume it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from capo_app.checks import UsageError

LOG_FILE = "log.json"
PROMPT_FILE = "capo_prompt.json"
EVAL_DIR = "capo_eval"
EVAL_RESULTS_FILE = "eval_results.json"
PLOT_FILES = ("accuracy_reward.png", "rejection_rate.png", "curvature.png", "true_kl.png")
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "training_args.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "adapter_config.json",
    "adapter_model.safetensors",
)
_RUN_MARKERS = (LOG_FILE, PROMPT_FILE, "model.safetensors", "model.safetensors.index.json")
_RUN_GLOBS = ("checkpoint-*", "model-*.safetensors", EVAL_DIR, "runs")


def run_artefacts(folder: str | os.PathLike[str]) -> list[Path]:
    """The files and folders of a run present in ``folder`` (empty when it holds none)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    names = (LOG_FILE, PROMPT_FILE, *PLOT_FILES, *MODEL_FILES)
    found = [root / name for name in names if (root / name).exists()]
    return found + sorted(p for pattern in _RUN_GLOBS for p in root.glob(pattern))


def holds_run(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a run: a log, a prompt file, model weights or a checkpoint."""
    root = Path(folder)
    return any((root / name).exists() for name in _RUN_MARKERS) or any(root.glob("checkpoint-*"))


def claim_output_dir(folder: str | os.PathLike[str], *, overwrite: bool, resume: bool) -> None:
    """Make ``folder`` ready for a new run: refuse one holding another run, or clean it when asked.

    Args:
        folder: The run's ``output_dir``.
        overwrite: Remove the other run's artefacts (``--overwrite_output_dir true``).
        resume: The run continues from a checkpoint in the folder (``--resume_from_checkpoint``): keep all.

    Raises:
        UsageError: When the folder holds another run and neither ``overwrite`` nor ``resume`` is set.
    """
    if resume or not holds_run(folder):
        return
    if not overwrite:
        raise UsageError(
            f"{folder} holds another run; pass --overwrite_output_dir true to replace it, --output-dir DIR "
            "for a new folder, or --resume_from_checkpoint to continue it"
        )
    for path in run_artefacts(folder):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
