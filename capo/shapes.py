"""The shape glossary: one meaning per letter, in every docstring, einsum and comment of this project.

Shapes are written as ``[B, T, k]``; einsum subscripts use the same letters (lower case). :data:`LETTERS`
holds the letters of the sparse LLM setting (``capo/``, the study); :data:`TABULAR_LETTERS` the paper's
letters for the exact tabular objects of ``reference/`` and ``toy_mdps/`` (and ``verification/``, which
joins the two), where a letter of both tables keeps the meaning it has there. ``tests/test_glossary.py``
checks that every shape written in a docstring uses these letters.

=====  ==========================================================================================
B      sequences (completions) in a batch or micro-batch
G      generations (completions) per prompt: one GRPO group
P      prompts in a batch (B = P * G)
T      completion tokens per sequence (padded length; TRL's ``logits_to_keep``)
L      positions of a whole sequence, prompt and completion (L > T)
N      flattened completion tokens (the valid tokens of a batch, N <= B * T)
M      a selection of M of the N tokens (or of the M flat rows of a toy evaluation)
k      support size: vocabulary ids kept per token (top-k at the policy temperature, plus the
       sampled id)
V      vocabulary size (rows of the output layer W)
H      hidden size (columns of W; the paper's d_i)
R      distinct vocabulary rows touched by a gradient (R <= min(V, N * k))
U      the union of the rows touched on all ranks (U >= R)
S      subsets of a partition (tokens, completions, groups or the whole batch)
C      a chunk of tokens processed at once (C <= N)
=====  ==========================================================================================

Tabular letters (``reference/``, ``toy_mdps/``): K actions (= V for a token MDP), d features (= H), S states
(there a subset is never meant), T horizon (= the completion length of a token MDP), and the state index s.
"""

from __future__ import annotations

__all__ = ["LETTERS", "TABULAR_LETTERS"]

LETTERS: dict[str, str] = {
    "B": "sequences (completions) in a batch or micro-batch",
    "G": "generations (completions) per prompt: one GRPO group",
    "P": "prompts in a batch (B = P * G)",
    "T": "completion tokens per sequence (TRL's logits_to_keep)",
    "L": "positions of a whole sequence, prompt and completion",
    "N": "flattened valid completion tokens",
    "M": "a selection of M of the N tokens",
    "k": "support size",
    "V": "vocabulary size (rows of W)",
    "H": "hidden size (columns of W)",
    "R": "distinct vocabulary rows touched by a gradient",
    "U": "the union of the rows touched on all ranks",
    "S": "subsets of a partition",
    "C": "a chunk of tokens processed at once",
}
"""The shape letters of the sparse LLM setting (``capo/``, the study)."""

TABULAR_LETTERS: dict[str, str] = {
    "K": "actions of a tabular or token MDP (= V)",
    "d": "features (= H)",
    "S": "states of a tabular MDP",
    "T": "horizon (= the completion length of a token MDP)",
    "P": "prompts (prefix trees)",
    "M": "flat (t, s) rows of an evaluation",
    "N": "samples or tokens",
}
"""The paper's letters for the exact tabular objects (``reference/``, ``toy_mdps/``)."""
