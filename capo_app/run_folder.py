"""What a ``capo train`` output folder holds, and how a new run claims one.

A run leaves its model and tokenizer, TRL's model card ``README.md``, ``log.json``, the PNG plots,
:data:`PROMPT_FILE` (how the model was prompted, read back by ``capo eval``), TRL's checkpoints, and ``capo
eval``'s default results folder :data:`EVAL_DIR`. Which files are the run's is recorded in the folder itself,
:data:`RUN_FILES` (written when the run claims the folder, at each checkpoint and at the end; ``capo eval`` adds
what it writes there): only those are ever removed. A new run into a folder that holds another run is refused
unless asked to overwrite (exactly the recorded files are then removed, and the folders they leave empty) or to
resume it; a folder holding a file a run would write that no run of ours wrote (a model, a ``README.md``, a
``log.json`` of someone else) is refused, overwrite or not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from capo_app.checks import UsageError, check_writable_dir

RUN_FILES = "capo_run_files.json"
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
    "README.md",
)
_RUN_GLOBS = ("checkpoint-*", "model-*.safetensors", EVAL_DIR, "runs")


def run_artefacts(folder: str | os.PathLike[str]) -> list[Path]:
    """The files and folders present in ``folder`` that a run writes (by name; empty when none)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    names = (
        LOG_FILE,
        PROMPT_FILE,
        *PLOT_FILES,
        *MODEL_FILES,
    )  # not RUN_FILES: a bare claim holds no run
    found = [root / name for name in names if (root / name).exists()]
    return found + sorted(p for pattern in _RUN_GLOBS for p in root.glob(pattern))


def _files_under(root: Path, paths: Iterable[Path]) -> set[str]:
    """Every file at or below ``paths``, relative to ``root`` (POSIX separators)."""
    out = set()
    for path in paths:
        found = path.rglob("*") if path.is_dir() else [path]
        out |= {p.relative_to(root).as_posix() for p in found if p.is_file()}
    return out


def _manifest(folder: str | os.PathLike[str]) -> dict[str, list[str]] | None:
    path = Path(folder) / RUN_FILES
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def record_run_files(folder: str | os.PathLike[str]) -> None:
    """Record as the run's every file in ``folder`` but those that were there when the run claimed it."""
    root = Path(folder)
    manifest = _manifest(root) or {
        "preexisting": sorted(_files_under(root, root.iterdir())),
        "files": [],
    }
    files = _files_under(root, root.iterdir()) - set(manifest["preexisting"]) - {RUN_FILES}
    manifest["files"] = sorted(files | set(manifest["files"]))
    (root / RUN_FILES).write_text(json.dumps(manifest, indent=1) + "\n")


def add_run_files(folder: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> None:
    """Add files written into a run's folder after the run (``capo eval``'s) to its record, if it has one."""
    root = Path(folder)
    manifest = _manifest(root)
    if manifest is None:
        return
    added = {Path(p).resolve().relative_to(root.resolve()).as_posix() for p in paths}
    manifest["files"] = sorted(set(manifest["files"]) | added)
    (root / RUN_FILES).write_text(json.dumps(manifest, indent=1) + "\n")


def _foreign(folder: str | os.PathLike[str]) -> list[str]:
    """Files a run would write that the folder's record does not list as a run's (all of them without one)."""
    root = Path(folder)
    manifest = _manifest(root)
    ours = set(manifest["files"]) if manifest else set()
    return sorted(_files_under(root, run_artefacts(root)) - ours - {RUN_FILES})


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
    """True when every file in ``folder`` that a run would write was written by a run of ours (recorded)."""
    return _manifest(folder) is not None and not _foreign(folder)


def check_claim(folder: str | os.PathLike[str], *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder that holds something unless the run resumes it or may overwrite it (a run of ours).

    Raises:
        UsageError: For a folder holding another run (without ``overwrite``), or files that no run of ours
            wrote (a foreign model, notes): those are never removed.
    """
    if resume or not holds_run(folder):
        return
    foreign = _foreign(folder) or sorted(p.name for p in Path(folder).iterdir())
    if not is_ours(folder):
        raise UsageError(
            f"{folder} holds files capo train did not write ({', '.join(foreign[:4])}, ...): a model or "
            "notes of someone else, which --overwrite_output_dir would not remove; use --output-dir DIR "
            "for a new folder"
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
    if (
        os.environ.get("RANK", "0") != "0"
    ):  # a launched run's other processes: rank 0 prepares the folder
        return
    root = Path(folder)
    manifest = _manifest(root)
    if not resume and manifest is not None:
        for name in manifest["files"]:
            (root / name).unlink(missing_ok=True)
        for name in sorted({str(Path(n).parent) for n in manifest["files"]}, key=len, reverse=True):
            _remove_empty(root, root / name)
        (root / RUN_FILES).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    record_run_files(root)


def _remove_empty(root: Path, folder: Path) -> None:
    """Remove ``folder`` and its parents up to ``root`` (excluded) while they are empty."""
    while (
        folder != root and root in folder.parents and folder.is_dir() and not any(folder.iterdir())
    ):
        folder.rmdir()
        folder = folder.parent


def claim_report_folder(
    folder: str | os.PathLike[str], patterns: Iterable[str], option: str
) -> None:
    """Claim ``folder`` for a report that writes files matching ``patterns`` (globs at its top level).

    The report replaces its own earlier files (recorded in :data:`RUN_FILES`); a matching file no report of
    ours wrote is refused in one line, never replaced. The caller records what it wrote with
    :func:`record_run_files` when it is done.

    Raises:
        UsageError: ``folder`` cannot be written, or holds a matching file of someone else.
    """
    check_writable_dir(folder, option)
    root = Path(folder)
    manifest = _manifest(root) if root.is_dir() else None
    ours = set(manifest["files"]) if manifest else set()
    found = {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern)}
    foreign = sorted(found - ours - {RUN_FILES})
    if foreign:
        raise UsageError(
            f"{option} {folder} holds {', '.join(foreign[:4])}, which this command did not write and would "
            "replace; choose another folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    record_run_files(root)
