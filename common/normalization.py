"""Observation and reward normalisation as in gymnasium's NormalizeObservation / NormalizeReward (CleanRL's PPO),
as plain objects whose statistics travel in checkpoints, stay frozen at evaluation and work with same-step autoreset.
"""

import copy

import numpy as np


class RunningMeanStd:
    """Running mean and variance over a batch axis (parallel algorithm of Chan et al.)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), epsilon

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict:
        return copy.deepcopy(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(copy.deepcopy(state))


class ObservationNormalizer(RunningMeanStd):
    """(obs - mean) / sqrt(var + eps), clipped to [-clip, clip]; the statistics change only in ``update``."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__(shape)
        self.clip, self.epsilon = clip, epsilon

    @classmethod
    def identity(cls, shape: tuple[int, ...]):  # for the scripts that do not normalise
        return cls(shape, clip=np.inf, epsilon=0.0)  # mean 0, variance 1, never updated

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((obs - self.mean) / np.sqrt(self.var + self.epsilon), -self.clip, self.clip).astype(np.float32)


class RewardNormalizer(RunningMeanStd):
    """Scale rewards by the std of a running discounted return (gymnasium's NormalizeReward), then clip; an env's
    return restarts when its episode ends. enabled=False (--no-norm-reward) passes the raw rewards."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8, enabled: bool = True):
        super().__init__(())
        self.discounted_return, self.gamma, self.clip, self.epsilon = np.zeros(num_envs), gamma, clip, epsilon
        self.enabled = enabled

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(reward, dtype=np.float32)
        self.discounted_return = self.discounted_return * self.gamma + reward
        self.update(self.discounted_return)
        self.discounted_return[done] = 0.0
        return np.clip(reward / np.sqrt(self.var + self.epsilon), -self.clip, self.clip).astype(np.float32)
