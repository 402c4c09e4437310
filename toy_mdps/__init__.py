"""Tiny finite MDPs with exact evaluation (V, Q, A, d_t, J) by dynamic programming."""
