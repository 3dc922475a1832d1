"""Learning check: train a script on several seeds and report when it reaches a return.

    python benchmarks/learning_check.py --script diffppo.py --env-id InvertedPendulum-v4 \
        --seeds 1 2 3 --total-timesteps 250000 --threshold 900 --workers 2

Runs ``python SCRIPT --env-id ENV --seed S --total-timesteps N [extra flags]`` for each
seed (``--workers`` at a time, logs in benchmark_logs/), then reads charts/episodic_return
from each run's TensorBoard file and prints, per seed: the first environment step at
which the mean of the last ``--window`` episodes reaches ``--threshold``, the final
last-window mean, and the wall-clock time. ``--report-only RUN_DIR ...`` skips training
and reports existing runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.logs import read_scalars, rolling_mean  # noqa: E402


@dataclass
class Args:
    script: str = "diffppo.py"
    """the training script to run (relative to the repository root)"""
    env_id: str = "InvertedPendulum-v4"
    """the environment id"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """the seeds to run"""
    total_timesteps: int = 250000
    """the environment-step budget of each run"""
    threshold: float = 900.0
    """the return to reach"""
    window: int = 10
    """number of recent episodes averaged"""
    workers: int = 2
    """runs at a time"""
    extra: str = ""
    """extra flags passed to the script, e.g. "--num-diffusion-steps 4" """
    report_only: list[str] = field(default_factory=list)
    """run folders to report without training"""


def report(run_dir: str, threshold: float, window: int) -> dict:
    steps, returns = read_scalars(run_dir, "charts/episodic_return")
    if len(returns) == 0:
        return {"run": run_dir, "episodes": 0, "first_step": None, "final": float("nan")}
    means = rolling_mean(returns, window)
    reached = np.flatnonzero(means >= threshold)
    return {
        "run": run_dir,
        "episodes": len(returns),
        "first_step": int(steps[reached[0]]) if len(reached) else None,
        "final": float(means[-1]),
        "last_step": int(steps[-1]),
    }


def train(args: Args, seed: int) -> tuple[str, float]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exp_name = f"{os.path.splitext(os.path.basename(args.script))[0]}_check"
    command = [
        sys.executable,
        args.script,
        "--env-id",
        args.env_id,
        "--seed",
        str(seed),
        "--total-timesteps",
        str(args.total_timesteps),
        "--exp-name",
        exp_name,
        *args.extra.split(),
    ]
    os.makedirs(os.path.join(root, "benchmark_logs"), exist_ok=True)
    log_path = os.path.join(root, "benchmark_logs", f"{args.env_id}__{exp_name}__{seed}.log")
    print("running:", " ".join(command), ">", log_path, flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        subprocess.run(
            command,
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    runs = sorted(
        d for d in os.listdir(os.path.join(root, "runs")) if d.startswith(f"{args.env_id}__{exp_name}__{seed}__")
    )
    return os.path.join(root, "runs", runs[-1]), time.time() - start


def main() -> None:
    args = tyro.cli(Args)
    if args.report_only:
        results = [(run, None) for run in args.report_only]
    else:
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda seed: train(args, seed), args.seeds))
    print(
        f"\n| run | episodes | first step with {args.window}-episode mean >= {args.threshold:g} "
        f"| final {args.window}-episode mean | wall-clock |"
    )
    print("|---|---|---|---|---|")
    for run_dir, seconds in results:
        row = report(run_dir, args.threshold, args.window)
        first = row["first_step"] if row["first_step"] is not None else "not reached"
        wall = f"{seconds / 60:.1f} min" if seconds else "-"
        print(f"| {os.path.basename(run_dir)} | {row['episodes']} | {first} | {row['final']:.1f} | {wall} |")


if __name__ == "__main__":
    main()
