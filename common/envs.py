"""Environments: checked ids and spaces, seeded vector envs with same-step autoreset, episode statistics.

When an episode ends, ``step`` returns the next episode's first observation and puts the true last one in
``infos["final_obs"]`` (gymnasium's ``AutoresetMode.SAME_STEP``), so that time-limit cuts can be bootstrapped.
"""

import copy
import difflib
import importlib
import importlib.util
import os
import pickle

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv

from common.cli import ConfigError


def check_env_id(env_id: str) -> None:
    """ConfigError for an id gymnasium does not know, with close matches. ``module:EnvId`` imports module first
    (a user's package that registers its ids), as gym.make does."""
    module, _, env_id = env_id.rpartition(":")
    try:
        importlib.import_module(module) if module else None
    except ImportError as error:
        raise ConfigError(f"--env-id {module}:{env_id}: cannot import module {module!r} ({error}).") from None
    if env_id not in gym.registry:
        close = ", ".join(difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6))
        raise ConfigError(
            f"--env-id {env_id!r} is not a registered gymnasium environment.{f' Did you mean: {close}?' * bool(close)}"
            " Allowed: any gymnasium id with a bounded Box action space, e.g. Hopper-v4, Humanoid-v5, Pendulum-v1."
        )


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    """ConfigError unless observations are a flat Box and actions a 1-D Box with finite bounds (the policy squashes
    into them)."""
    if not (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1):
        raise ConfigError(f"--env-id {env_id} has observations {observation_space}; allowed: a flat (1-D) Box.")
    if not isinstance(action_space, gym.spaces.Box):
        raise ConfigError(
            f"--env-id {env_id} has a {type(action_space).__name__} action space; allowed: a continuous Box."
        )
    if len(action_space.shape) != 1:
        raise ConfigError(f"--env-id {env_id} has a Box action space of shape {action_space.shape}; allowed: 1-D Box.")
    if not np.isfinite(np.concatenate([action_space.low, action_space.high])).all():
        raise ConfigError(f"--env-id {env_id} has unbounded actions; allowed: a Box with finite low and high.")


def make_vector_env(env_id: str, num_envs: int, seed: int, capture_video=False, run_name="") -> gym.vector.VectorEnv:
    """Checked, seeded vector env with same-step autoreset and episode statistics; env 0 records video if asked.
    One env made first checks the spaces and, for --capture-video, renders a frame, before any folder exists."""
    check_env_id(env_id)
    if capture_video and importlib.util.find_spec("moviepy") is None:  # RecordVideo writes its files with it
        raise ConfigError("--capture-video needs the moviepy package, which is not installed: pip install moviepy")
    if capture_video:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless pygame (classic control)
    what = f"--capture-video: rendering {env_id}" if capture_video else f"--env-id {env_id}"
    try:
        env = gym.make(env_id, **({"render_mode": "rgb_array"} if capture_video else {}))
        frame = env.reset(seed=0) and env.render() if capture_video else "no frame needed"
        env.close()
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(f"{what} needs a package that is not installed ({error}): pip install -r requirements.txt")
    except Exception as error:  # noqa: BLE001 - e.g. no EGL for MuJoCo: one line instead of a traceback later
        hint = "; MuJoCo without a GPU may need MUJOCO_GL=osmesa" if capture_video else ""
        raise ConfigError(f"{what} fails here ({type(error).__name__}: {error}){hint}.") from None
    if frame is None:
        raise ConfigError(f"--capture-video: {env_id} renders no rgb_array frames; drop --capture-video.")
    check_spaces(env_id, env.observation_space, env.action_space)

    def make_env(index: int):
        if capture_video and index == 0:
            return lambda: gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array"), f"videos/{run_name}")
        return lambda: gym.make(env_id)

    envs = gym.vector.SyncVectorEnv([make_env(i) for i in range(num_envs)], autoreset_mode="SameStep")
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
    real[infos["_final_obs"]] = np.stack(infos["final_obs"][infos["_final_obs"]])
    return real


def plain_attributes(layer) -> dict:
    """A layer's attributes that are numbers, flags or arrays (counters, simulator and statistics state), copied."""
    kinds = (int, float, bool, np.ndarray, np.generic, type(None))
    return {name: copy.deepcopy(value) for name, value in vars(layer).items() if isinstance(value, kinds)}


def environment_state(envs: gym.vector.VectorEnv) -> dict | None:
    """What continues a vector env of gymnasium MuJoCo or classic-control tasks exactly: every wrapper's counters
    (time limit, episode statistics, autoreset flags, last observations), each task's simulator state (MuJoCo: the
    whole MjData) and random generator, and the action space's generator; None for other tasks."""
    tasks = [env.unwrapped for env in envs.unwrapped.envs]
    if not all(isinstance(task, MujocoEnv) or ".classic_control." in type(task).__module__ for task in tasks):
        return None
    layers, layer = [], envs
    while layer is not envs.unwrapped:
        layers, layer = layers + [plain_attributes(layer)], layer.env
    state = dict(vector=[*layers, plain_attributes(envs.unwrapped)], tasks=[])
    state["action_space"] = envs.action_space.np_random.bit_generator.state
    for env in envs.unwrapped.envs:
        wrappers, layer = [], env
        while isinstance(layer, gym.Wrapper):
            wrappers, layer = wrappers + [plain_attributes(layer)], layer.env
        task = dict(wrappers=wrappers, attributes=plain_attributes(layer), random=layer.np_random.bit_generator.state)
        state["tasks"].append(task | ({"mj_data": pickle.dumps(layer.data)} if isinstance(layer, MujocoEnv) else {}))
    return state


def restore_environment_state(envs: gym.vector.VectorEnv, state: dict) -> np.ndarray:
    """Put ``environment_state``'s capture back into envs built with the same flags; returns the last observations."""
    layer = envs
    for attributes in state["vector"]:
        vars(layer).update(copy.deepcopy(attributes))
        layer = layer if layer is envs.unwrapped else layer.env
    envs.action_space.np_random.bit_generator.state = state["action_space"]
    for env, task in zip(envs.unwrapped.envs, state["tasks"]):
        layer = env
        for attributes in task["wrappers"]:
            vars(layer).update(copy.deepcopy(attributes))
            layer = layer.env
        layer.np_random.bit_generator.state = task["random"]  # before the attributes: a new generator sets a seed
        vars(layer).update(copy.deepcopy(task["attributes"]))
        if "mj_data" in task:
            mujoco.mj_copyData(layer.data, layer.model, pickle.loads(task["mj_data"]))
    return envs.unwrapped._observations.copy()  # SyncVectorEnv's last batched observations
