"""Observation and reward normalisation as in gymnasium's NormalizeObservation / NormalizeReward (CleanRL's PPO),
as plain objects whose statistics travel in checkpoints, stay frozen at evaluation and work with same-step autoreset.
"""

from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Running mean and variance over a batch axis (parallel algorithm of Chan et al.)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = np.array(state["mean"]), np.array(state["var"]), float(state["count"])


class ObservationNormalizer:
    """(obs - mean) / sqrt(var + eps), clipped to [-clip, clip]; statistics updated only by ``update``."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, epsilon: float = 1e-8):
        self.rms = RunningMeanStd(shape)
        self.clip, self.epsilon = clip, epsilon

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> "ObservationNormalizer":
        """A normaliser that returns observations unchanged (for scripts that do not normalise)."""
        normalizer = cls(shape, clip=np.inf, epsilon=0.0)
        normalizer.rms.count = 0.0
        return normalizer

    def update(self, obs: np.ndarray) -> None:
        self.rms.update(obs)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        normalized = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(normalized, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {**self.rms.state_dict(), "clip": self.clip, "epsilon": self.epsilon}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state)
        self.clip, self.epsilon = state["clip"], state["epsilon"]


class RewardNormalizer:
    """Scale rewards by the std of a running discounted return (as gymnasium's NormalizeReward), then clip.

    The discounted return of an env restarts after its episode ends.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8, enabled: bool = True):
        self.rms = RunningMeanStd(())
        self.discounted_return = np.zeros(num_envs)
        self.gamma, self.clip, self.epsilon, self.enabled = gamma, clip, epsilon, enabled

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.enabled:  # raw rewards (--no-norm-reward)
            return np.asarray(reward, dtype=np.float32)
        self.discounted_return = self.discounted_return * self.gamma + reward
        self.rms.update(self.discounted_return)
        self.discounted_return[done] = 0.0
        return np.clip(reward / np.sqrt(self.rms.var + self.epsilon), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {**self.rms.state_dict(), "discounted_return": self.discounted_return.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state)
        if len(state["discounted_return"]) == len(self.discounted_return):
            self.discounted_return = np.array(state["discounted_return"])
