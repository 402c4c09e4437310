"""The embedded default trains from the shipped warm-started tiny model: the same bytes on every machine."""

from __future__ import annotations

import hashlib

from capo_app.recipe import ScriptArguments
from capo_app.run import load_policy
from capo_app.tiny import shipped_tiny_dir, tiny_setup

SHIPPED_SHA256 = "9eb22ac46d3c18c4140aa4a98214869b239efa88c42ac2b7b9825ab1d362d477"
"""sha256 of the shipped model.safetensors (capo_app/tiny/shipped/README.md: how it was made)."""


def test_the_default_setup_resolves_to_the_shipped_folder_and_its_bytes():
    folder = shipped_tiny_dir(tiny_setup("easy"))
    assert folder is not None and folder.name == f"tiny-{tiny_setup('easy').config_hash()}"
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == SHIPPED_SHA256
    assert (
        shipped_tiny_dir(tiny_setup("easy", warm_start_steps=3)) is None
    )  # other setups are built


def test_capo_train_loads_the_shipped_model_without_touching_the_cache(tmp_path):
    from capo.config import CAPOConfig

    script_args = ScriptArguments(tiny_cache_dir=str(tmp_path / "cache"))
    config = CAPOConfig(output_dir=str(tmp_path / "out"), bf16=False, capo_support_size=16)
    model, tokenizer = load_policy(script_args, config)
    assert model.config.vocab_size >= len(tokenizer) == 259
    assert not (tmp_path / "cache").exists()
