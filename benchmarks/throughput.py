"""Throughput of a training script for several K, beside its ceilings, in one invocation.

    python benchmarks/throughput.py --script diffsac.py --env-id Hopper-v4 --ks 8 16 \
        --total-timesteps 6000 --extra="--learning-starts 5000"

Rows, all measured here, one after the other, one torch thread (OMP_NUM_THREADS=1):
- random actions: the same vector environment (common.envs.make_vector_env) stepped with random
  actions and no learning, the rate no script can beat;
- the script at each K: ``python SCRIPT --env-id ENV --num-diffusion-steps K --total-timesteps N``
  (rollouts and updates, as in training), the last SPS it prints and, where it prints them
  (off-policy and REPPO scripts), its gradient updates per second;
- its Gaussian twin (baselines/), same flags without K: what the diffusion costs; for the peers
  (peers/dpmd.py, peers/sdac.py) DiffSAC at its default K instead, the script they are compared with.

With --ceiling (the default) each run is repeated once in-process under
benchmarks/matmul_ceiling.py, which records the shape of every matrix product of the run and
times the same products alone: the table gives the achieved floating-point rate (the run's
products over its wall-clock), the rate of the same products run back to back, and the share of
the run they take. A share near 100% means the run is as fast as its arithmetic allows on this
machine; a low share means overhead (Python, small tensor operations, the environment). Run it on
an otherwise idle machine.
"""

from __future__ import annotations

import json
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

TWIN = {
    "diffppo.py": "baselines/ppo.py",
    "diffsac.py": "baselines/sac.py",
    "diffwpo.py": "baselines/wpo.py",
    "diffreppo.py": "baselines/reppo.py",
    "peers/dpmd.py": "diffsac.py",
    "peers/sdac.py": "diffsac.py",
}
THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@dataclass
class Args:
    script: str = "diffppo.py"
    """the training script to measure (diffppo.py, diffsac.py, diffwpo.py, diffreppo.py)"""
    env_id: str = "Hopper-v4"
    """the environment id"""
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    """the numbers of diffusion steps to measure"""
    total_timesteps: int = 10240
    """environment steps of each measured run"""
    num_envs: int | None = None
    """parallel environments (default: each script's own default, 1 for ours, 5 for the peers)"""
    random_steps: int = 20000
    """environment steps of the random-action ceiling"""
    extra: str = ""
    """extra flags for the script and its twin (e.g. "--learning-starts 5000")"""
    twin: bool = True
    """also measure the script's Gaussian twin from baselines/ (DiffSAC for the peers)"""
    twin_extra: str | None = None
    """extra flags for the twin instead of --extra (e.g. when --extra holds flags only the script has)"""
    ceiling: bool = True
    """also record every run's matrix products and time them alone (repeats each run in-process, slower)"""


def random_action_rate(env_id: str, num_envs: int, steps: int) -> float:
    envs = make_vector_env(env_id, num_envs, seed=0)
    envs.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(envs.action_space.sample())
    rate = (steps // num_envs) * num_envs / (time.perf_counter() - start)
    envs.close()
    return rate


def script_flags(args: Args, num_diffusion_steps: int | None, extra: str) -> list[str]:
    k_flags = [] if num_diffusion_steps is None else ["--num-diffusion-steps", str(num_diffusion_steps)]
    env_flags = [] if args.num_envs is None else ["--num-envs", str(args.num_envs)]
    return [
        "--env-id",
        args.env_id,
        *k_flags,
        "--total-timesteps",
        str(args.total_timesteps),
        *env_flags,
        "--exp-name",
        "throughput",
        *extra.split(),
    ]


def script_rate(script: str, flags: list[str]) -> tuple[float, float | None]:
    """(env steps/s of the whole run, gradient updates/s or None): the last ones the script prints."""
    print("running:", script, " ".join(flags), flush=True)
    output = subprocess.run(
        [sys.executable, script, *flags, "--eval-frequency", "0"],  # the training alone
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=THREAD_ENV,
    ).stdout
    rates = re.findall(r"SPS (\d+)", output)
    updates = re.findall(r"updates/s ([\d.]+)", output)
    return float(rates[-1]), (float(updates[-1]) if updates else None)


def matmul_profile(script: str, flags: list[str]) -> dict:
    """benchmarks/matmul_ceiling.py's JSON for the same run: its products' flops and their time alone."""
    output = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "matmul_ceiling.py"), script, *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=THREAD_ENV,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def ceiling_columns(profile: dict | None, run_seconds: float) -> str:
    if profile is None:
        return "- | - | -"
    achieved = profile["flops"] / run_seconds / 1e9
    alone = profile["flops"] / profile["matmul_seconds"] / 1e9
    return f"{achieved:.1f} | {alone:.1f} | {100 * profile['matmul_seconds'] / run_seconds:.0f}%"


def main() -> None:
    args = tyro.cli(Args)
    if args.script not in TWIN:
        raise SystemExit(f"--script {args.script}: allowed: {', '.join(TWIN)}")
    if not args.ks or min(args.ks) < 1:
        raise SystemExit(f"--ks {args.ks}: give one or more K >= 1")
    runs = [(f"{args.script} K={k}", args.script, script_flags(args, k, args.extra)) for k in args.ks]
    if args.twin:
        label = "(Gaussian twin)" if TWIN[args.script].startswith("baselines/") else "(default K)"
        twin_extra = args.extra if args.twin_extra is None else args.twin_extra
        runs.append((f"{TWIN[args.script]} {label}", TWIN[args.script], script_flags(args, None, twin_extra)))
    ceiling = random_action_rate(args.env_id, args.num_envs or 1, args.random_steps)
    rows = []
    for name, script, flags in runs:
        rate, updates = script_rate(script, flags)
        profile = matmul_profile(script, flags) if args.ceiling else None
        rows.append((name, rate, updates, profile))
    print(
        f"\n{args.env_id}, {args.num_envs or 'default'} env(s), {args.total_timesteps} steps per run, extra flags: "
        f"{args.extra or '-'}, torch threads 1"
    )
    print(
        "| run | env steps/s (whole run) | gradient updates/s | achieved GFLOP/s | same products alone, GFLOP/s "
        "| share of the run in products |\n|---|---|---|---|---|---|"
    )
    print(f"| random actions (ceiling) | {ceiling:.0f} | - | - | - | - |")
    for name, rate, updates, profile in rows:
        print(
            f"| {name} | {rate:.0f} | {updates if updates is not None else '-'} | "
            f"{ceiling_columns(profile, args.total_timesteps / rate)} |"
        )


if __name__ == "__main__":
    main()
