"""The shape glossary used in every docstring, einsum and comment of this project.

Shapes are written as ``[B, T, k]``; einsum subscripts use the same letters (lower case).

=====  ==========================================================================================
B      sequences (completions) in a batch or micro-batch
G      generations (completions) per prompt: one GRPO group
P      prompts in a batch (B = P * G)
T      completion tokens per sequence (padded length)
N      flattened completion tokens (the valid tokens of a batch, N <= B * T)
k      support size: vocabulary ids kept per token (top-k at the policy temperature, plus the
       sampled id)
V      vocabulary size (rows of the output layer W)
H      hidden size (columns of W; the paper's d_i)
R      distinct vocabulary rows touched by a gradient (R <= min(V, N * k))
S      subsets of a partition (tokens, completions, groups or the whole batch)
C      a chunk of tokens processed at once (C <= N)
=====  ==========================================================================================

In ``reference/`` and ``toy_mdps/`` the paper's letters are used for the exact tabular objects:
K actions (= V), d features (= H), and the state index s.
"""
