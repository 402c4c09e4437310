r"""An offline byte-level tokenizer (``tokenizers`` package) wrapped as a ``PreTrainedTokenizerFast``.

Vocabulary: three special tokens (pad, unk, end-of-text = EOS) then the 256 bytes, one token each and no
merges, so any text round-trips and the synthetic task (ASCII) is one token per character. The pipeline is
exactly Qwen2's (NFC normaliser, Qwen2's split regex + byte-level pre-tokenizer, BPE model, byte-level decoder):
transformers 5 loads every tokenizer saved next to a ``qwen2`` config as ``Qwen2Tokenizer``, which rebuilds
that pipeline from the vocabulary, so ``AutoTokenizer.from_pretrained`` gives the same ids as this object.

The chat template renders ``system`` as ``content\n``, ``user`` as ``Q: content\n``, ``assistant`` as
``A: content<|endoftext|>`` and the generation prompt as ``A: ``, so a one-message conversation gives the
same text as the synthetic task's plain prompt. No BOS token is added.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, EOS_TOKEN)

# Qwen2's pre-tokenisation regex (transformers' Qwen2Tokenizer), so a reload as Qwen2Tokenizer is identical.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Q: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'A: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """Return the 256 byte-level symbols (GPT-2's byte-to-unicode table), ordered by byte value."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


def build_tiny_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer (no files, no network).

    Args:
        model_max_length: Longest sequence the tokenizer reports as supported.

    Returns:
        A fast tokenizer with pad, unk and EOS tokens and a chat template; ``save_pretrained`` then
        ``AutoTokenizer.from_pretrained`` round-trips it (ids, special tokens and template).
    """
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *byte_symbols()))}
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[],
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=EOS_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="right",
    )
