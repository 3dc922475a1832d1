"""Shared helpers: env construction, normalisation, checkpoints, evaluation."""
