"""Experiments over runs: Optuna tuning, the loss x metric study, sparse digits."""
