"""Environments: checked ids and spaces, seeded vector envs with same-step autoreset, episode statistics.

When an episode ends, ``step`` returns the next episode's first observation and puts the true last one in
``infos["final_obs"]`` (gymnasium's ``AutoresetMode.SAME_STEP``), so that time-limit cuts can be bootstrapped.
"""

from __future__ import annotations

import difflib
import importlib
import os

import gymnasium as gym
import numpy as np

from common.cli import ConfigError


def check_env_id(env_id: str) -> None:
    """ConfigError for an id gymnasium does not know, with close matches. ``module:EnvId`` imports module first
    (a user's package that registers its ids), as gym.make does."""
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"--env-id {module}:{env_id}: cannot import module {module!r} ({error}).") from None
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"--env-id {env_id!r} is not a registered gymnasium environment.{hint} Allowed: any gymnasium id with "
            "a bounded Box action space, e.g. Hopper-v4, Humanoid-v5, InvertedPendulum-v4, Pendulum-v1."
        )


def check_continuous_action_space(env_id: str, space: gym.Space) -> None:
    """ConfigError unless the action space is a 1-D Box with finite bounds (the policy squashes into them)."""
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"--env-id {env_id} has a {type(space).__name__} action space; allowed: a continuous Box.")
    if len(space.shape) != 1:
        raise ConfigError(f"--env-id {env_id} has a Box action space of shape {space.shape}; allowed: 1-D Box.")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ConfigError(f"--env-id {env_id} has unbounded actions; allowed: a Box with finite low and high.")


def check_rendering(env_id: str) -> None:
    """ConfigError, before any video folder exists, when --capture-video cannot render this environment."""
    try:
        env = gym.make(env_id, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        env.close()
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(
            f"--capture-video: rendering {env_id} needs a package that is not installed ({error}); install it "
            "(pip install -r requirements.txt installs pygame for classic control) or drop --capture-video."
        ) from None
    except Exception as error:  # noqa: BLE001 - e.g. no EGL for MuJoCo: one line instead of a traceback later
        raise ConfigError(
            f"--capture-video: {env_id} cannot render here ({type(error).__name__}: {error}); "
            "for MuJoCo without a GPU try MUJOCO_GL=osmesa, or drop --capture-video."
        ) from None
    if frame is None:
        raise ConfigError(f"--capture-video: {env_id} renders no rgb_array frames; drop --capture-video.")


def make_vector_env(env_id: str, num_envs: int, seed: int, capture_video=False, run_name="") -> gym.vector.VectorEnv:
    """Checked, seeded vector env with same-step autoreset and episode statistics; env 0 records video if asked."""
    if num_envs < 1:
        raise ConfigError(f"--num-envs must be at least 1 (got {num_envs}).")
    check_env_id(env_id)
    if capture_video:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless pygame (classic control)
        check_rendering(env_id)

    def make_env(index: int):
        if capture_video and index == 0:
            return lambda: gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array"), f"videos/{run_name}")
        return lambda: gym.make(env_id)

    try:
        make_envs = [make_env(index) for index in range(num_envs)]
        envs = gym.vector.SyncVectorEnv(make_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
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
    episode, mask = infos["episode"], infos["_episode"]
    return [(float(ret), int(length)) for ret, length in zip(episode["r"][mask], episode["l"][mask])]


def true_next_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The observation each env actually reached: ``final_obs`` where an episode ended."""
    if "final_obs" not in infos:
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(infos["_final_obs"]):
        real[i] = infos["final_obs"][i]
    return real
