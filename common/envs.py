"""Environments: checked ids and spaces, seeded vector envs with same-step autoreset, episode statistics.

When an episode ends, ``step`` returns the next episode's first observation and puts the true last one in
``infos["final_obs"]`` (gymnasium's ``AutoresetMode.SAME_STEP``), so that time-limit cuts can be bootstrapped.
Normalisation is not a wrapper here: common/normalization.py keeps its statistics in checkpoints.
"""

from __future__ import annotations

import difflib
import importlib
import os
from typing import Callable

import gymnasium as gym
import numpy as np

from common.cli import ConfigError


def check_env_id(env_id: str) -> None:
    """Raise ConfigError for an id that gymnasium does not know, suggesting close matches.

    ``module:EnvId`` is accepted as gym.make accepts it: the module (a user's own environment
    package, which registers its ids when imported) is imported first, then EnvId is looked up.
    """
    # MuJoCo ids are registered by gymnasium itself; importing nothing else is needed.
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"--env-id {module}:{env_id}: cannot import module {module!r} ({error}); allowed: "
                "module:EnvId with an importable module that registers EnvId."
            ) from None
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"--env-id {env_id!r} is not a registered gymnasium environment.{hint} "
        "Allowed: any gymnasium id with a continuous (Box) action space, e.g. Hopper-v4, "
        "Humanoid-v5, InvertedPendulum-v4, Pendulum-v1."
    )


def check_continuous_action_space(env_id: str, action_space: gym.Space) -> None:
    """Raise ConfigError unless the action space is a 1-D Box with finite bounds.

    The diffusion policy squashes its sample with tanh into [low, high], so the
    bounds must be finite.
    """
    if not isinstance(action_space, gym.spaces.Box):
        raise ConfigError(
            f"--env-id {env_id} has a {type(action_space).__name__} action space; "
            "allowed: environments with a continuous (Box) action space, e.g. Hopper-v4, Pendulum-v1."
        )
    if len(action_space.shape) != 1:
        raise ConfigError(f"--env-id {env_id} has a Box action space of shape {action_space.shape}; allowed: 1-D Box.")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ConfigError(
            f"--env-id {env_id} has unbounded actions; allowed: a Box with finite low and high "
            "(the policy squashes its sample with tanh into the bounds)."
        )


def check_rendering(env_id: str) -> None:
    """ConfigError, before any video folder exists, when --capture-video cannot render this environment."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    try:
        env = gym.make(env_id, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        env.close()
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(
            f"--capture-video: rendering {env_id} needs a package that is not installed ({error}); "
            "install it (pip install -r requirements.txt installs pygame for classic control) "
            "or drop --capture-video."
        ) from None
    except Exception as error:  # noqa: BLE001 - e.g. no EGL for MuJoCo: one line instead of a traceback later
        raise ConfigError(
            f"--capture-video: {env_id} cannot render here ({type(error).__name__}: {error}); "
            "for MuJoCo without a GPU try MUJOCO_GL=osmesa, or drop --capture-video."
        ) from None
    if frame is None:
        raise ConfigError(f"--capture-video: {env_id} renders no rgb_array frames; drop --capture-video.")


def make_env(env_id: str, idx: int, capture_video: bool, run_name: str) -> Callable[[], gym.Env]:
    """A thunk that builds one environment (CleanRL style); env 0 records video if asked."""

    def thunk() -> gym.Env:
        if capture_video and idx == 0:
            os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless pygame (classic control)
            env = gym.make(env_id, render_mode="rgb_array")
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        else:
            env = gym.make(env_id)
        return env

    return thunk


def make_vector_env(
    env_id: str, num_envs: int, seed: int, capture_video: bool = False, run_name: str = ""
) -> gym.vector.SyncVectorEnv:
    """Checked, seeded vector env with same-step autoreset and episode statistics.

    Raises ConfigError for an unknown id, a non-continuous action space or num_envs < 1.
    """
    if num_envs < 1:
        raise ConfigError(f"--num-envs must be at least 1 (got {num_envs}).")
    check_env_id(env_id)
    if capture_video:
        check_rendering(env_id)
    try:
        envs = gym.vector.SyncVectorEnv(
            [make_env(env_id, i, capture_video, run_name) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(f"--env-id {env_id} needs a package that is not installed: {error}") from None
    check_continuous_action_space(env_id, envs.single_action_space)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    return envs


def finished_episodes(infos: dict) -> list[tuple[float, int]]:
    """(return, length) of every episode that ended in this vector step."""
    if "episode" not in infos:
        return []
    mask = infos["_episode"]
    return [(float(ret), int(length)) for ret, length in zip(infos["episode"]["r"][mask], infos["episode"]["l"][mask])]


def true_next_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The observation each env actually reached: ``final_obs`` where an episode ended."""
    if "final_obs" not in infos:
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(infos["_final_obs"]):
        real[i] = infos["final_obs"][i]
    return real
