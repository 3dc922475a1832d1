"""A user's own environment package, as `--env-id user_envs:UserBandit-v0` imports it (tests only).

Importing the module registers the id, which is what gym.make("module:EnvId") relies on.
"""

import gymnasium as gym
import numpy as np


class UserBandit(gym.Env):
    """One-step bandit on [-1, 1]: reward -(a - 0.5)^2, so the best action is 0.5."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward = -float((np.asarray(action).reshape(-1)[0] - 0.5) ** 2)
        return np.zeros(1, np.float32), reward, True, False, {}


gym.register("UserBandit-v0", entry_point=UserBandit)


class FarBandit(UserBandit):
    """One-step contextual bandit: the observation s is -1 or 1, the reward -(a + 0.8 s)^2, so the best action -0.8 s
    is far from an untrained policy's 0 (return -0.64) and depends on the state (tests/test_learning.py)."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = float(self.np_random.choice([-1.0, 1.0]))
        return np.array([self.state], np.float32), {}

    def step(self, action):
        reward = -float((np.asarray(action).reshape(-1)[0] + 0.8 * self.state) ** 2)
        return np.zeros(1, np.float32), reward, True, False, {}


gym.register("FarBandit-v0", entry_point=FarBandit)


class UserImages(UserBandit):
    """The same bandit seen as an 8 x 8 RGB image: an observation space the scripts cannot use."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((8, 8, 3), np.uint8), {}


gym.register("UserImages-v0", entry_point=UserImages)


class EndlessWalk(UserBandit):
    """Never terminates and has no time limit: episodes end only where the caller cuts them."""

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


gym.register("EndlessWalk-v0", entry_point=EndlessWalk)
