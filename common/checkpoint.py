"""Checkpoint files: one dict (``torch.save``) with everything needed to evaluate or resume a run.

Every checkpoint holds ``script`` (the module that defines ``Agent``), ``agent_kwargs``, ``agent``,
``obs_normalizer`` (frozen at evaluation), ``args`` and ``global_step``, plus what the script needs to
resume. The off-policy scripts write their replay buffer beside it (common/replay_buffer.py).
"""

from __future__ import annotations

import os

import torch

from common.cli import ConfigError


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a crash while saving never leaves a truncated checkpoint behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(state, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path: str, flag: str = "--resume") -> dict:
    """Load a checkpoint on the CPU; a missing or unreadable file is a ConfigError naming ``flag``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path!r}: no such checkpoint file.")
    try:  # our own files: numpy arrays and plain dicts besides tensors
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConfigError(f"{flag} {path!r} is not a readable checkpoint ({type(error).__name__}: {error}).") from None
