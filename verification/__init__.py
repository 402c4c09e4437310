"""Verification reports: capo vs reference vs torch.func autodiff, and toy-MDP theorem checks."""
