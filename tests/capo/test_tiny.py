import os

import pytest
import torch
from transformers import AutoTokenizer

from capo_app.data import HARD, TINY_CHAT_PROMPT, make_arithmetic_dataset
from capo_app.tiny import (
    TinyModelConfig,
    TinySetup,
    build_tiny_model,
    build_tiny_tokenizer,
    init_tiny_model,
    is_tiny_model_dir,
    read_tiny_info,
)
from tests.capo._tiny_model import TEST_SETUP, warm_tiny_dir

SMALL = TinyModelConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
)


def _task_texts():
    ds = make_arithmetic_dataset(30, "train", HARD)
    return [p + s for p, s in zip(ds["prompt"], ds["solution"], strict=True)] + [
        "\\frac{1}{2} + x^2_{i}\t$\\sqrt{3}$\n\n",
        "unicode: é ∑ 😀",
    ]


def test_tokenizer_round_trips_task_text_one_token_per_ascii_character():
    tok = build_tiny_tokenizer()
    for text in _task_texts():
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok("Q: 12+3\nA: ")["input_ids"]) == len("Q: 12+3\nA: ")
    assert len(tok) == 3 + 256
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 2)
    assert tok.decode([5, tok.eos_token_id, 6], skip_special_tokens=True) == tok.decode([5, 6])


def test_tokenizer_saved_next_to_a_qwen2_config_reloads_offline_with_identical_ids(tmp_path):
    tok = build_tiny_tokenizer()
    init_tiny_model(tok, SMALL).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(
        tmp_path, local_files_only=True
    )  # transformers 5 picks Qwen2Tokenizer
    for text in [*_task_texts(), f"x{tok.eos_token}y{tok.pad_token}"]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id, len(loaded)) == (0, 2, len(tok))
    assert loaded.chat_template == tok.chat_template


def test_chat_template_renders_the_plain_prompt_text():
    tok = build_tiny_tokenizer()
    plain = make_arithmetic_dataset(3, "test")
    chat = make_arithmetic_dataset(3, "test", prompt_format=TINY_CHAT_PROMPT)
    for p, c in zip(plain["prompt"], chat["prompt"], strict=True):
        assert tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) == p


def test_model_forward_shape_untied_head_and_seeded_init():
    tok = build_tiny_tokenizer()
    state = torch.random.get_rng_state()
    model = init_tiny_model(tok, SMALL)
    assert torch.equal(state, torch.random.get_rng_state())  # init does not consume the global RNG
    ids = torch.randint(len(tok), (3, 7))
    assert model(input_ids=ids).logits.shape == (3, 7, len(tok))
    assert model.config.model_type == "qwen2" and not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    same = init_tiny_model(tok, SMALL)
    other = init_tiny_model(tok, TinyModelConfig(**{**SMALL.to_dict(), "seed": 1}))
    assert torch.equal(model.lm_head.weight, same.lm_head.weight)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


@pytest.mark.slow
def test_warm_start_raises_test_accuracy_above_the_random_init():
    info = read_tiny_info(warm_tiny_dir())
    # The random init never closes a box (0/200); 160 steps reach ~13% (the default 250-step setup ~45%).
    assert info["accuracy_before"] <= 0.01
    assert info["accuracy_after"] >= info["accuracy_before"] + 0.05
    assert info["warm_start_final_loss"] < 1.0  # from ln(259) = 5.6 at the uniform init


def test_cache_is_reused_for_the_same_setup_and_rebuilt_for_another(tmp_path):
    setup = TinySetup(model=SMALL, warm_start=None)
    model, _ = build_tiny_model(tmp_path, setup, progress=False)
    weights = tmp_path / "model.safetensors"
    stamp = os.stat(weights).st_mtime_ns
    again, _ = build_tiny_model(tmp_path, setup, progress=False)
    assert os.stat(weights).st_mtime_ns == stamp and is_tiny_model_dir(tmp_path)
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)
    other = TinySetup(model=TinyModelConfig(**{**SMALL.to_dict(), "seed": 5}), warm_start=None)
    rebuilt, _ = build_tiny_model(tmp_path, other, progress=False)
    assert read_tiny_info(tmp_path)["config_hash"] == other.config_hash() != setup.config_hash()
    assert not torch.equal(model.lm_head.weight, rebuilt.lm_head.weight)
    assert TEST_SETUP.config_hash() != setup.config_hash()
