"""Build (or reuse) the embedded default: the tiny model, its tokenizer, warm-started and cached on disk.

The cache is a ``save_pretrained`` folder plus ``capo_tiny.json`` holding a hash of everything that
determines the weights (model size, task, warm-start settings, format version). A folder with the same hash
is loaded with ``from_pretrained`` (the same code path as a real local checkpoint); otherwise the model is
rebuilt and the folder overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from capo_app.checks import UsageError
from capo_app.data.synthetic import EASY, PRESETS, ArithmeticTask, make_arithmetic_dataset
from capo_app.tiny.model import TinyModelConfig, init_tiny_model
from capo_app.tiny.tokenizer import build_tiny_tokenizer
from capo_app.tiny.warm_start import WarmStartConfig, accuracy, warm_start

MARKER_FILE = "capo_tiny.json"
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class TinySetup:
    """Everything that determines the cached tiny model.

    Attributes:
        model: Model size and init seed.
        task: The synthetic task the warm start trains on.
        warm_start: Warm-start settings, or None for the random init.
        num_train_problems: Training problems drawn for the warm start.
        num_eval_problems: Test problems used to report the accuracy after the warm start.
    """

    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    task: ArithmeticTask = EASY
    warm_start: WarmStartConfig | None = field(default_factory=WarmStartConfig)
    num_train_problems: int = 2000
    num_eval_problems: int = 200

    def to_dict(self) -> dict[str, Any]:
        """Return the setup as a JSON-serialisable dict."""
        return {
            "format_version": _FORMAT_VERSION,
            "model": self.model.to_dict(),
            "task": self.task.to_dict(),
            "warm_start": None if self.warm_start is None else self.warm_start.to_dict(),
            "num_train_problems": self.num_train_problems,
            "num_eval_problems": self.num_eval_problems,
        }

    def config_hash(self) -> str:
        """Return a short SHA-256 of :meth:`to_dict`."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def tiny_setup(task: str = "easy", warm_start_steps: int | None = None) -> TinySetup:
    """The :class:`TinySetup` of a run: a synthetic task preset (:data:`capo_app.data.PRESETS`), warm-start steps."""
    if task not in PRESETS:
        raise UsageError(f"synthetic_task must be one of {', '.join(PRESETS)}, got {task!r}")
    setup = TinySetup(task=PRESETS[task])
    if warm_start_steps is not None:
        setup = replace(setup, warm_start=replace(WarmStartConfig(), steps=warm_start_steps))
    return setup


def is_tiny_model_dir(path: str | os.PathLike[str]) -> bool:
    """Return True iff ``path`` is a folder written by :func:`build_tiny_model`."""
    return (Path(path) / MARKER_FILE).is_file()


def read_tiny_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the contents of the folder's ``capo_tiny.json`` (setup, hash, warm-start time and accuracy)."""
    return dict(json.loads((Path(path) / MARKER_FILE).read_text()))


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``folder`` so concurrent processes (e.g. two ranks) build it once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: The embedded default's warm-started model, shipped in the package (``shipped/README.md`` says how it was
#: made), so that every machine trains from the same bytes: a warm start on another CPU can differ in the last
#: bits, and those grow into other summary numbers.
SHIPPED_DIR = Path(__file__).parent / "shipped"


def shipped_tiny_dir(setup: TinySetup) -> Path | None:
    """The shipped folder of ``setup`` (the embedded default's), or None for any other setup (built and cached)."""
    folder = SHIPPED_DIR / f"tiny-{setup.config_hash()}"
    if not is_tiny_model_dir(folder):
        return None
    return folder if read_tiny_info(folder).get("config_hash") == setup.config_hash() else None


def load_tiny_model(
    path: str | os.PathLike[str],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a saved tiny model and tokenizer from a local folder (no network)."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def build_tiny_model(
    output_dir: str | os.PathLike[str],
    setup: TinySetup | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return the tiny model and tokenizer, reusing ``output_dir`` when it holds the same setup.

    Otherwise: build the tokenizer and a seeded random init, warm-start it on ``setup.num_train_problems``
    training problems, measure greedy accuracy on ``setup.num_eval_problems`` test problems (before and after),
    save both with ``save_pretrained`` and write ``capo_tiny.json`` last (a folder without it is never reused).
    Concurrent callers (several ranks) serialise on a lock file beside the folder, so it is built once.

    Args:
        output_dir: Cache folder.
        setup: What to build; defaults to :class:`TinySetup`.
        force: Rebuild even if the cache matches.
        progress: Show progress bars.

    Returns:
        ``(model, tokenizer)``, loaded from the folder in both cases.
    """
    setup = setup or TinySetup()
    folder = Path(output_dir)
    digest = setup.config_hash()
    with _build_lock(folder):
        if (
            force
            or not is_tiny_model_dir(folder)
            or read_tiny_info(folder).get("config_hash") != digest
        ):
            _build(folder, setup, digest, progress)
    return load_tiny_model(folder)


def _build(folder: Path, setup: TinySetup, digest: str, progress: bool) -> None:
    (folder / MARKER_FILE).unlink(missing_ok=True)
    tokenizer = build_tiny_tokenizer(model_max_length=setup.model.max_position_embeddings)
    model = init_tiny_model(tokenizer, setup.model)
    info: dict[str, Any] = {"config_hash": digest, "setup": setup.to_dict()}
    if setup.warm_start is not None and setup.warm_start.steps > 0:
        train = make_arithmetic_dataset(
            setup.num_train_problems, "train", setup.task, seed=setup.warm_start.seed
        )
        test = make_arithmetic_dataset(
            setup.num_eval_problems, "test", setup.task, seed=setup.warm_start.seed
        )
        info["accuracy_before"] = accuracy(model, tokenizer, test)
        stats = warm_start(model, tokenizer, train, setup.warm_start, progress=progress)
        info["accuracy_after"] = accuracy(model, tokenizer, test)
        info["warm_start_seconds"] = stats.seconds
        info["warm_start_final_loss"] = stats.final_loss
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n")
