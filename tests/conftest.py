"""Helpers for running the scripts as a user would: a subprocess from a scratch folder."""

import glob
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("PYTEST_XDIST_WORKER"):  # under pytest -n: one worker per core, so one torch thread per worker
    torch.set_num_threads(1)


def without_periodic_evaluation(args: list[str]) -> list[str]:
    """A training script's command with --eval-frequency 0 unless it names one: the periodic evaluations (5% of
    the budget each by default) would cost a short smoke run more than its training. Tests of them set it."""
    scripts = "diffsac diffppo diffwpo diffreppo sac ppo wpo reppo dpmd sdac".split()
    name = args[1].rpartition(".")[2] if args[:1] == ["-m"] else os.path.basename(args[0])[: -len(".py")]
    trains = name in scripts and not {"--resume", "--help"} & set(args)
    return [*args, "--eval-frequency", "0"] if trains and "--eval-frequency" not in " ".join(args) else args


def run_script(
    args: list[str], cwd: str, timeout: float = 300, isolated: bool = False, user_envs: bool = False
) -> subprocess.CompletedProcess:
    """Run ``python <args>`` with the repository importable (isolated: without it, as a user's own folder would;
    user_envs: tests/user_envs.py too); returns the finished process (text output). Training runs skip periodic
    evaluation unless the test asks."""
    args = without_periodic_evaluation(args)
    path = os.pathsep.join([REPO_ROOT, os.path.join(REPO_ROOT, "tests")]) if user_envs else REPO_ROOT
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if isolated:
        env.pop("PYTHONPATH")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def single_run_dir(cwd: str) -> str:
    runs = glob.glob(os.path.join(cwd, "runs", "*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT


class CountingEnv(gym.Env):
    """Observation = number of steps taken, reward 1; terminates at ``terminate_at`` if given."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, terminate_at=None):
        self.terminate_at, self.t = terminate_at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


# A time limit of 3 steps (truncation) and a termination at step 2, for the time-limit tests.
gym.register("tests/CountingTruncated-v0", entry_point=CountingEnv, max_episode_steps=3)
gym.register("tests/CountingTerminated-v0", entry_point=CountingEnv, kwargs={"terminate_at": 2}, max_episode_steps=100)
