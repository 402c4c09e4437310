"""One warm-started tiny model per test session, shared by test_tiny and test_evaluation (built in 8-15 s on one CPU thread)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from capo_app.tiny import TinyModelConfig, TinySetup, WarmStartConfig, build_tiny_model

TEST_SETUP = TinySetup(
    model=TinyModelConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2),
    warm_start=WarmStartConfig(steps=160, batch_size=32, learning_rate=1e-2),
    num_train_problems=2000,
    num_eval_problems=200,
)


@functools.lru_cache(maxsize=1)
def warm_tiny_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="capo-tiny-test-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build_tiny_model(folder, TEST_SETUP, progress=False)
    return folder
