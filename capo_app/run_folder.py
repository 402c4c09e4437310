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
PLOT_FILES = (
    "accuracy_reward.png",
    "rejection_rate.png",
    "curvature.png",
    "true_kl.png",
    "kl_scale.png",
)
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


#: Weights and adapters in the formats a folder may hold (a run of ours writes safetensors only).
_FOREIGN_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin",
                    "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "*.gguf")  # fmt: skip


def holds_run(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds anything a run would write or overwrite.

    Any weights format counts (safetensors, ``pytorch_model.bin``, adapters), as do configs, tokenizer files,
    logs, plots, checkpoints and evaluations.
    """
    root = Path(folder)
    return bool(run_artefacts(folder)) or any(
        any(root.glob(pattern)) for pattern in _FOREIGN_WEIGHTS
    )


def is_ours(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` was written by ``capo train`` (its log or its prompt file is there)."""
    return any((Path(folder) / name).exists() for name in (LOG_FILE, PROMPT_FILE))


def check_claim(folder: str | os.PathLike[str], *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder that holds something unless the run resumes it or may overwrite it (a run of ours).

    Raises:
        UsageError: For a folder holding another run (without ``overwrite``), or files that no run of ours
            wrote (a foreign model, notes): those are never removed.
    """
    if resume or not holds_run(folder):
        return
    if not is_ours(folder):
        names = sorted(p.name for p in Path(folder).iterdir())[:4]
        raise UsageError(
            f"{folder} holds files capo train did not write ({', '.join(names)}, ...): a model or notes "
            "of someone else, which --overwrite_output_dir would not remove; use --output-dir DIR for a "
            "new folder"
        )
    if not overwrite:
        raise UsageError(
            f"{folder} holds another run; pass --overwrite_output_dir true to replace it, --output-dir DIR "
            "for a new folder, or --resume_from_checkpoint to continue it"
        )


def claim_output_dir(folder: str | os.PathLike[str], *, overwrite: bool, resume: bool) -> None:
    """Make ``folder`` ready for a new run (:func:`check_claim`), removing the earlier run of ours if asked.

    Args:
        folder: The run's ``output_dir``.
        overwrite: Remove the other run's artefacts (``--overwrite_output_dir true``).
        resume: The run continues from a checkpoint in the folder (``--resume_from_checkpoint``): keep all.

    Raises:
        UsageError: See :func:`check_claim`.
    """
    check_claim(folder, overwrite=overwrite, resume=resume)
    if resume or not holds_run(folder):
        return
    for path in run_artefacts(folder):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
