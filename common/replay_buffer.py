"""The off-policy scripts' replay buffer (its file beside each checkpoint: common/checkpoint.py)."""

import torch

from common.checkpoint import fields
from common.envs import true_next_observations


class ReplayBuffer:
    """Transitions (s, x, r, s', terminated) in preallocated float32 tensors on the training device; x is the
    action, or a whole chain (x_shape (K+1, d)). s' is the state actually reached, also where a time limit cut
    the episode: only `terminated` stops bootstrapping."""

    def __init__(self, buffer_size: int, obs_dim: int, x_shape: tuple[int, ...], device: torch.device):
        x_shape = (x_shape,) if isinstance(x_shape, int) else tuple(x_shape)
        self.obs, self.next_obs = torch.zeros((2, buffer_size, obs_dim), device=device)
        self.actions = torch.zeros((buffer_size, *x_shape), device=device)
        self.rewards, self.terminations = torch.zeros((2, buffer_size), device=device)
        self.buffer_size, self.position, self.size, self.device = buffer_size, 0, 0, device

    def add(self, obs, next_obs, actions, rewards, terminations) -> None:
        rows = (self.position + torch.arange(len(obs), device=self.device)) % self.buffer_size
        for name, values in zip(fields(self), (obs, next_obs, actions, rewards, terminations)):
            getattr(self, name)[rows] = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        self.position = (self.position + len(obs)) % self.buffer_size
        self.size = min(self.size + len(obs), self.buffer_size)

    def sample(self, batch_size: int):  # (s, x, r, s', terminated) of batch_size rows drawn uniformly with replacement.
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[index], self.actions[index], self.rewards[index], self.next_obs[index], self.terminations[index]

    @staticmethod
    def bytes(buffer_size: int, obs_dim: int, x_values: int) -> int:  # Bytes of a full buffer: in memory and on disk.
        return 4 * buffer_size * (2 * obs_dim + x_values + 2)


def step_and_store(envs, obs, actions, buffer: ReplayBuffer, stored=None):
    """Step the envs with ``actions`` and store (s, x, r, s', terminated), x = ``stored`` (default: the actions).
    s' is the state actually reached (``final_obs`` where an episode ended, not the next episode's first), and a
    time-limit cut is not stored as a termination, so its target still bootstraps. Returns (next obs, infos)."""
    next_obs, rewards, terminations, truncations, infos = envs.step(actions)
    stored = actions if stored is None else stored
    buffer.add(obs, true_next_observations(next_obs, infos), stored, rewards, terminations)
    return next_obs, infos
