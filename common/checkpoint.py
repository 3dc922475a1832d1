"""Checkpoints: one file holding everything needed to evaluate or resume a run.

A checkpoint is a dict saved with ``torch.save``. Every script stores at least
``script`` (the module that defines ``Agent``), ``agent_kwargs`` (its constructor
arguments), ``agent`` (its state dict), ``obs_normalizer`` (frozen at evaluation),
``args`` and ``global_step``; scripts add their optimiser states for resuming.
"""

from __future__ import annotations

import os

import torch

from common.envs import ConfigError


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a crash while saving never leaves a truncated checkpoint behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str, flag: str = "--resume") -> dict:
    """Load a checkpoint on the CPU; a missing or unreadable file is a ConfigError naming ``flag``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path!r}: no such checkpoint file.")
    try:
        # Our own files: they hold numpy arrays and plain dicts besides tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConfigError(f"{flag} {path!r} is not a readable checkpoint ({type(error).__name__}: {error}).") from None
