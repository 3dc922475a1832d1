"""Evaluate a saved policy with its observation-normalisation statistics frozen:

    python -m common.evaluation runs/Hopper-v4__diffppo__1__1700000000/diffppo.cleanrl_model --episodes 10

The checkpoint names the script whose ``Agent.act(normalized_obs, deterministic)`` gives actions in the env's bounds
(a diffusion policy's deterministic action starts the chain at x_K = 0 and follows the kernel means without noise).
"""

import importlib
import os
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

from common.checkpoint import load_checkpoint
from common.cli import ConfigError, at_least_one, check, run_cli
from common.envs import check_env_id, check_spaces
from common.normalization import ObservationNormalizer


def load_agent(checkpoint_path: str, device: torch.device | str = "cpu", flag: str = "checkpoint"):
    """(agent in eval mode, frozen ObservationNormalizer, checkpoint dict)."""
    checkpoint = load_checkpoint(checkpoint_path, flag=flag)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding common/ and the scripts
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        agent = importlib.import_module(checkpoint["script"]).Agent(**checkpoint["agent_kwargs"]).to(device)
        agent.load_state_dict(checkpoint["agent"])
        obs_normalizer = ObservationNormalizer(shape=checkpoint["obs_normalizer"]["mean"].shape)
        obs_normalizer.load_state_dict(checkpoint["obs_normalizer"])
    except (TypeError, RuntimeError, KeyError, AttributeError) as error:
        problem = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        raise ConfigError(
            f"{flag} {checkpoint_path!r}: its agent does not fit {checkpoint['script']}.Agent ({problem})."
        )
    return agent.eval(), obs_normalizer, checkpoint


EPISODE_STEP_CAP = 10_000  # the length of an evaluation episode where the environment sets no time limit


@torch.no_grad()
def evaluate(
    agent, obs_normalizer, env_id: str, episodes=10, seed=0, deterministic=True, device="cpu", space=None, stop=None
):
    """Undiscounted returns of ``episodes`` episodes (seeds seed, seed + 1, ...); the normaliser is only read.
    ``space``: the agent's obs_dim, action_dim, action_low and action_high, which the env's must equal. An episode
    ends at the environment's time limit, else after EPISODE_STEP_CAP steps; ``stop()`` true ends the evaluation."""
    check_env_id(env_id)
    env = gym.make(env_id)
    if env.spec is None or env.spec.max_episode_steps is None:
        env = gym.wrappers.TimeLimit(env, EPISODE_STEP_CAP)
    check_spaces(env_id, env.observation_space, env.action_space)
    found = dict(obs_dim=env.observation_space.shape[0], action_dim=env.action_space.shape[0])
    found.update(action_low=env.action_space.low.tolist(), action_high=env.action_space.high.tolist())
    for name, value in (space or {}).items():
        if name in found and found[name] != value:
            raise ConfigError(
                f"--env-id {env_id} has {name} {found[name]}; the checkpoint's policy was trained on {value}."
            )
    returns = []
    for episode in range(episodes):
        (obs, _), done, episode_return = env.reset(seed=seed + episode), False, 0.0
        while not done:
            if stop is not None and stop():
                return returns
            action = agent.act(torch.as_tensor(obs_normalizer(obs[None]), device=device), deterministic=deterministic)
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            episode_return, done = episode_return + float(reward), terminated or truncated
        returns.append(episode_return)
    env.close()
    return returns


@dataclass
class EvalArgs:
    checkpoint: tyro.conf.Positional[str]
    """path to a checkpoint written with --save-model"""
    episodes: int = 10
    """number of evaluation episodes"""
    seed: int = 0
    """seed of the first episode (episode i uses seed + i)"""
    stochastic: bool = False
    """sample the policy instead of following the noise-free mean chain"""
    env_id: str | None = None
    """evaluate on another env id than the one trained on (same spaces required)"""
    torch_threads: int | None = None
    """CPU threads for torch (default: the run's --torch-threads)"""


def main() -> None:
    args = tyro.cli(EvalArgs)
    threads = (
        "torch_threads is None or torch_threads >= 1",
        "--torch-threads must be at least 1 (got {torch_threads}).",
    )
    check(args, [*at_least_one("episodes"), threads, ("seed >= 0", "--seed must be >= 0 (got {seed}).")])
    agent, obs_normalizer, checkpoint = load_agent(args.checkpoint)
    torch.set_num_threads(args.torch_threads or checkpoint["args"].get("torch_threads", 1))
    env_id, space = args.env_id or checkpoint["args"]["env_id"], checkpoint["agent_kwargs"]
    returns = evaluate(agent, obs_normalizer, env_id, args.episodes, args.seed, not args.stochastic, space=space)
    mode = "stochastic" if args.stochastic else "deterministic"
    print(f"{env_id} ({mode}, {args.episodes} episodes): mean return {np.mean(returns):.2f} +- {np.std(returns):.2f}")


if __name__ == "__main__":
    run_cli(main, "common.evaluation")
