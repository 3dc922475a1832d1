"""The off-policy scripts' replay buffer, and its file beside each checkpoint so that --resume continues learning."""

from __future__ import annotations

import os

import torch

from common.checkpoint import save_checkpoint
from common.envs import true_next_observations


class ReplayBuffer:
    """Transitions (s, x, r, s', terminated) in preallocated float32 tensors on the training device; x is the
    action, or a whole chain (x_shape (K+1, d)). s' is the state actually reached, also where a time limit cut
    the episode: only `terminated` stops bootstrapping."""

    def __init__(self, buffer_size: int, obs_dim: int, x_shape: tuple[int, ...], device: torch.device):
        self.obs = torch.zeros((buffer_size, obs_dim), device=device)
        self.next_obs = torch.zeros((buffer_size, obs_dim), device=device)
        x_shape = (x_shape,) if isinstance(x_shape, int) else tuple(x_shape)
        self.actions = torch.zeros((buffer_size, *x_shape), device=device)
        self.rewards = torch.zeros(buffer_size, device=device)
        self.terminations = torch.zeros(buffer_size, device=device)
        self.buffer_size, self.position, self.size, self.device = buffer_size, 0, 0, device

    def add(self, obs, next_obs, actions, rewards, terminations) -> None:
        rows = (self.position + torch.arange(len(obs), device=self.device)) % self.buffer_size
        for name, values in zip(fields(self), (obs, next_obs, actions, rewards, terminations)):
            getattr(self, name)[rows] = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        self.position = (self.position + len(obs)) % self.buffer_size
        self.size = min(self.size + len(obs), self.buffer_size)

    def sample(self, batch_size: int):
        """(s, x, r, s', terminated) of batch_size rows drawn uniformly with replacement."""
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[index], self.actions[index], self.rewards[index], self.next_obs[index], self.terminations[index]

    @staticmethod
    def bytes(buffer_size: int, obs_dim: int, x_values: int) -> int:
        """Bytes of a full buffer: in memory and on disk."""
        return 4 * buffer_size * (2 * obs_dim + x_values + 2)


def step_and_store(envs, obs, actions, buffer: ReplayBuffer, stored=None):
    """Step the envs with ``actions`` and store (s, x, r, s', terminated), x = ``stored`` (default: the actions).
    s' is the state actually reached (``final_obs`` where an episode ended, not the next episode's first), and a
    time-limit cut is not stored as a termination, so its target still bootstraps. Returns (next obs, infos)."""
    next_obs, rewards, terminations, truncations, infos = envs.step(actions)
    stored = actions if stored is None else stored
    buffer.add(obs, true_next_observations(next_obs, infos), stored, rewards, terminations)
    return next_obs, infos


def fields(buffer) -> list[str]:
    """The buffer's storage tensors."""
    return [name for name, value in vars(buffer).items() if isinstance(value, torch.Tensor)]


def replay_buffer_path(model_path: str) -> str:
    return f"{model_path}.replay_buffer"


def save_with_replay_buffer(model_path: str, state: dict, buffer: ReplayBuffer, global_step: int) -> None:
    """Write the checkpoint and the buffer's filled rows as one pair that a kill -9 cannot split: the buffer (tagged
    with its step) goes in full to a pending file, then the checkpoint replaces the old one atomically, then the
    buffer takes its place. Killed before the checkpoint moves, the old pair is untouched; killed after it, the
    pending file is the checkpoint's buffer, which ``load_replay_buffer`` reads."""
    rows = dict(global_step=global_step, position=buffer.position, size=buffer.size, buffer_size=buffer.buffer_size)
    rows.update({name: getattr(buffer, name)[: buffer.size].cpu().clone() for name in fields(buffer)})
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    pending = f"{replay_buffer_path(model_path)}.pending"
    torch.save(rows, pending)
    save_checkpoint(model_path, state)
    os.replace(pending, replay_buffer_path(model_path))


def replay_buffer_state(model_path: str, global_step: int) -> dict | None:
    """The saved buffer that belongs to the checkpoint at ``global_step``, or None when there is none."""
    found = None
    for path in (replay_buffer_path(model_path), f"{replay_buffer_path(model_path)}.pending"):
        if not os.path.isfile(path):
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a pending file cut short by a kill belongs to no checkpoint
            continue
        if state["global_step"] == global_step:
            return state
        found = found or state
    if found is not None:
        print(f"the replay buffer beside {model_path} belongs to step {found['global_step']}, not {global_step}")
    return None


def load_replay_buffer(model_path: str, buffer: ReplayBuffer, global_step: int) -> bool:
    """Fill ``buffer`` from the file beside the checkpoint; False (with a line) if missing or of another step."""
    state = replay_buffer_state(model_path, global_step)
    if state is None or state["buffer_size"] != buffer.buffer_size:
        print(f"no replay buffer of step {global_step} beside {model_path}: it refills before updates resume")
        return False
    for name in fields(buffer):
        getattr(buffer, name)[: state["size"]] = state[name].to(getattr(buffer, name).device)
    buffer.position, buffer.size = state["position"], state["size"]
    return True
