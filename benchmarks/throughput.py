"""Throughput: environment steps per second of a training script for several K, beside the ceiling.

    python benchmarks/throughput.py --script diffppo.py --env-id Hopper-v4 --ks 1 4 8

For each K it runs ``python SCRIPT --env-id ENV --num-diffusion-steps K --total-timesteps N``
(rollouts and updates, as in training) and reads the SPS the script prints last, and for
off-policy scripts the gradient updates per second after --learning-starts. The
ceiling steps the same vector environment (common.envs.make_vector_env) with random
actions and no learning. Run it on an otherwise idle machine; OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from common.envs import make_vector_env  # noqa: E402


@dataclass
class Args:
    script: str = "diffppo.py"
    """the training script to measure"""
    env_id: str = "Hopper-v4"
    """the environment id"""
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    """the numbers of diffusion steps to measure"""
    total_timesteps: int = 10240
    """environment steps of each measured run"""
    num_envs: int = 1
    """parallel environments"""
    random_steps: int = 20000
    """environment steps of the random-action ceiling"""
    extra: str = ""
    """extra flags for the script"""


def random_action_rate(env_id: str, num_envs: int, steps: int) -> float:
    envs = make_vector_env(env_id, num_envs, seed=0)
    envs.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(envs.action_space.sample())
    rate = (steps // num_envs) * num_envs / (time.perf_counter() - start)
    envs.close()
    return rate


def script_rate(args: Args, num_diffusion_steps: int) -> tuple[float, float | None]:
    command = [sys.executable, args.script, "--env-id", args.env_id, "--num-diffusion-steps", str(num_diffusion_steps),
               "--total-timesteps", str(args.total_timesteps), "--num-envs", str(args.num_envs), *args.extra.split()]
    print("running:", " ".join(command[1:]), flush=True)
    output = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    rates = re.findall(r"SPS (\d+)", output)
    updates = re.findall(r"updates/s ([\d.]+)", output)  # off-policy scripts: one update per env step
    return float(rates[-1]), (float(updates[-1]) if updates else None)


def main() -> None:
    args = tyro.cli(Args)
    ceiling = random_action_rate(args.env_id, args.num_envs, args.random_steps)
    rows = [(f"{args.script} K={k}", script_rate(args, k)) for k in args.ks]
    print(f"\n{args.env_id}, {args.num_envs} env(s), {args.total_timesteps} steps per run, torch threads 1")
    print("| what | env steps/s (whole run) | gradient updates/s |\n|---|---|---|")
    print(f"| random actions (ceiling) | {ceiling:.0f} | - |")
    for name, (rate, updates) in rows:
        print(f"| {name} | {rate:.0f} | {updates if updates is not None else '-'} |")


if __name__ == "__main__":
    main()
