"""Theorem and bound checks of the paper on toy MDPs with exact quantities (App. A, B, E, K, L)."""
