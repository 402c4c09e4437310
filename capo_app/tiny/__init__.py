"""The embedded default: an offline tokenizer and a tiny Qwen2 model, warm-started and cached on disk."""

from __future__ import annotations

from capo_app.tiny.build import (
    MARKER_FILE,
    TinySetup,
    build_tiny_model,
    is_tiny_model_dir,
    load_tiny_model,
    read_tiny_info,
    shipped_tiny_dir,
    tiny_setup,
)
from capo_app.tiny.model import TinyModelConfig, init_tiny_model, qwen2_config
from capo_app.tiny.tokenizer import CHAT_TEMPLATE, build_tiny_tokenizer
from capo_app.tiny.warm_start import WarmStartConfig, WarmStartStats, accuracy, warm_start

__all__ = [
    "CHAT_TEMPLATE",
    "MARKER_FILE",
    "TinyModelConfig",
    "TinySetup",
    "WarmStartConfig",
    "WarmStartStats",
    "accuracy",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "init_tiny_model",
    "is_tiny_model_dir",
    "load_tiny_model",
    "qwen2_config",
    "read_tiny_info",
    "shipped_tiny_dir",
    "tiny_setup",
    "warm_start",
]
