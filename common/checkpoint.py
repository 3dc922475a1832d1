"""Checkpoint files: one dict (``torch.save``) with everything needed to evaluate or resume a run: ``script`` (the
module that defines ``Agent``), ``agent_kwargs``, ``agent``, ``obs_normalizer`` (frozen at evaluation), ``args``,
``global_step`` and what the script needs to resume. An off-policy run's replay buffer goes beside it."""

import os

import torch

from common.cli import ConfigError


def save_checkpoint(path: str, state: dict, buffer=None) -> None:
    """Write atomically: a crash while saving never leaves a truncated checkpoint. With a replay buffer, the pair is
    one that a kill -9 cannot split: the buffer's filled rows (tagged with the step) go in full to a pending file,
    then the checkpoint replaces the old one, then the buffer takes its place. Killed before the checkpoint moves,
    the old pair is untouched; killed after it, the pending file is the checkpoint's buffer (``load_replay_buffer``
    reads it)."""
    pending, moved = f"{path}.replay_buffer.pending", False
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if buffer is not None:
            rows = {name: getattr(buffer, name) for name in ["position", "size", "buffer_size"]}
            rows |= {name: getattr(buffer, name)[: buffer.size].cpu().clone() for name in fields(buffer)}
            torch.save({**rows, "global_step": state["global_step"]}, pending)
        torch.save(state, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
        moved = True  # from here on the pending file is the new checkpoint's buffer, not debris
        if buffer is not None:
            os.replace(pending, f"{path}.replay_buffer")
    except (OSError, RuntimeError) as error:  # a full disk, a folder without write permission: one line, no debris
        for debris in [f"{path}.tmp"] + [pending] * (not moved):
            if os.path.exists(debris):
                os.remove(debris)
        raise ConfigError(
            f"cannot write the checkpoint {path} ({error}); the previous one, if any, is intact."
        ) from None


FORMAT = 2  # the layout ``Run.save`` writes (2: with random streams and environment state); others are refused
TRAINING_SCRIPTS = "diffppo diffsac diffwpo diffreppo baselines.ppo baselines.sac baselines.wpo baselines.reppo".split()
TRAINING_SCRIPTS += ["peers.dpmd", "peers.sdac"]
FIELDS = {
    "args": dict,
    "run_name": str,
    "global_step": int,
    "agent_kwargs": dict,
    "agent": dict,
    "obs_normalizer": dict,
}


def load_checkpoint(path: str, flag: str = "--resume") -> dict:
    """Load a checkpoint on the CPU and check it as a whole: a missing or unreadable file, another format, a script
    that is not one of the training scripts or a missing field is a ConfigError naming ``flag``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path!r}: no such checkpoint file.")
    try:  # our own files: numpy arrays and plain dicts besides tensors
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConfigError(f"{flag} {path!r} is not a readable checkpoint ({type(error).__name__}: {error}).") from None
    if not isinstance(checkpoint, dict) or "format" not in checkpoint:
        raise ConfigError(f"{flag} {path!r} is not a checkpoint of these scripts (they write --save-model files).")
    if checkpoint["format"] != FORMAT:
        raise ConfigError(
            f"{flag} {path!r} has checkpoint format {checkpoint['format']!r}, this version reads {FORMAT}; use the "
            "version of the scripts that wrote it."
        )
    if checkpoint.get("script") not in TRAINING_SCRIPTS:
        raise ConfigError(f"{flag} {path!r} names the script {checkpoint.get('script')!r}, not a training script.")
    wrong = [name for name, kind in FIELDS.items() if not isinstance(checkpoint.get(name), kind)]
    if wrong:
        raise ConfigError(f"{flag} {path!r} lacks {', '.join(wrong)} (or holds the wrong kind of value there).")
    return checkpoint


def fields(buffer) -> list[str]:  # A replay buffer's storage tensors.
    return [name for name, value in vars(buffer).items() if isinstance(value, torch.Tensor)]


def load_replay_buffer(path: str, buffer, global_step: int) -> bool:
    """Fill ``buffer`` from the file beside the checkpoint of ``global_step``, or from its pending file where a kill
    fell between the two moves of a save; False, with a line, where neither belongs to that step."""
    for buffer_path in (f"{path}.replay_buffer", f"{path}.replay_buffer.pending"):
        try:
            state = torch.load(buffer_path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - missing, or a pending file cut short by a kill: no checkpoint's buffer
            continue
        if state["global_step"] == global_step and state["buffer_size"] == buffer.buffer_size:
            for name in fields(buffer):
                getattr(buffer, name)[: state["size"]] = state[name].to(getattr(buffer, name).device)
            buffer.position, buffer.size = state["position"], state["size"]
            return True
    print(f"no replay buffer of step {global_step} beside {path}: it refills before the updates resume")
    return False
