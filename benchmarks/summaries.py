"""Small per-run summaries that outlive the event files, and tables rebuilt from them.

    python benchmarks/summaries.py write runs/Hopper-v4__diffreppo_check__* --script diffreppo.py
    python benchmarks/summaries.py table results/summaries/Hopper-v4__*_check__*.json --steps 100000 300000

``write`` reads each run folder's TensorBoard files and writes results/summaries/RUN.json:
the run's flags (as logged), the --window-episode running mean of charts/episodic_return at
every multiple of --every environment steps (the last value at or before that step), the final
window mean, the first step where it reaches each --thresholds value, the mean of the
deterministic evaluation episodes of the last evaluation, the mean of every evaluation at its step and of the
last three, episodes, wall-clock
(first to last event) and the package versions of this machine. ``table`` prints a markdown
table from such files: one row per run, the window mean at --steps, grouped by environment and
experiment (or the summary's "label", where one was added by hand), with the mean over seeds.
The summaries are committed; the event files are not.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.logs import read_scalars, rolling_mean, wall_clock_seconds  # noqa: E402

SUMMARY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "summaries")


@dataclass
class Write:
    """Write one summary per run folder."""

    runs: tyro.conf.Positional[list[str]]
    """run folders runs/{env_id}__{exp_name}__{seed}__{time}"""
    script: str = ""
    """the script that made the runs (recorded with the flags)"""
    every: int = 50000
    """environment steps between the recorded running means"""
    window: int = 10
    """episodes in the running mean"""
    thresholds: list[float] = field(default_factory=list)
    """returns whose first crossing is recorded"""
    out_dir: str = SUMMARY_DIR
    """where the JSON files go"""


@dataclass
class Table:
    """Print a markdown table from summary files."""

    summaries: tyro.conf.Positional[list[str]]
    """summary JSON files"""
    steps: list[int] = field(default_factory=lambda: [100000, 200000, 300000])
    """environment steps whose running mean is shown"""


def logged_flags(run_dir: str) -> dict[str, str]:
    """The |param|value| table the scripts log as TensorBoard text 'hyperparameters'."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        accumulator = EventAccumulator(path, size_guidance={"tensors": 0})
        accumulator.Reload()
        if "hyperparameters/text_summary" in accumulator.Tags()["tensors"]:
            text = accumulator.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
            rows = [line.strip("|").split("|", 1) for line in text.splitlines()[2:]]
            return {key: value for key, value in rows}
    return {}


def summarise_run(run_dir: str, script: str, every: int, window: int, thresholds: list[float]) -> dict:
    steps, returns = read_scalars(run_dir, "charts/episodic_return")
    means = rolling_mean(returns, window) if len(returns) else np.array([])
    env_id, exp_name, seed = os.path.basename(os.path.normpath(run_dir)).split("__")[:3]
    at = {}
    for step in range(every, int(steps[-1]) + every if len(steps) else every, every):
        index = np.searchsorted(steps, step, side="right") - 1
        at[str(step)] = round(float(means[index]), 1) if index >= 0 else None
    eval_steps, eval_returns = read_scalars(run_dir, "eval/episodic_return")  # episodes of each evaluation, at its step
    evaluations = {int(step): float(np.mean(eval_returns[eval_steps == step])) for step in np.unique(eval_steps)}
    last = eval_returns[eval_steps == eval_steps[-1]] if len(eval_steps) else np.array([])
    stochastic_steps, stochastic_returns = read_scalars(run_dir, "eval/stochastic_episodic_return")
    stochastic = {
        int(step): float(np.mean(stochastic_returns[stochastic_steps == step])) for step in np.unique(stochastic_steps)
    }
    stochastic_last = stochastic_returns[stochastic_steps == stochastic_steps[-1]] if len(stochastic_steps) else []
    first = {}
    for threshold in thresholds:
        reached = np.flatnonzero(means >= threshold)
        first[f"{threshold:g}"] = int(steps[reached[0]]) if len(reached) else None
    return {
        "run": os.path.basename(os.path.normpath(run_dir)),
        "env_id": env_id,
        "exp_name": exp_name,
        "seed": int(seed),
        "script": script,
        "flags": logged_flags(run_dir),
        "window": window,
        "running_mean_at": at,
        "final_running_mean": round(float(means[-1]), 1) if len(means) else None,
        "first_step_reaching": first,
        "deterministic_eval_mean": round(float(np.mean(last)), 1) if len(last) else None,
        "deterministic_eval_episodes": int(len(last)),
        "evaluation_at": {str(step): round(mean, 1) for step, mean in evaluations.items()},
        "last_three_evaluations_mean": round(float(np.mean(list(evaluations.values())[-3:])), 1)
        if evaluations
        else None,
        "stochastic_eval_mean": round(float(np.mean(stochastic_last)), 1) if len(stochastic_last) else None,
        "stochastic_evaluation_at": {str(step): round(mean, 1) for step, mean in stochastic.items()},
        "episodes": int(len(returns)),
        "last_step": int(steps[-1]) if len(steps) else 0,
        "wall_clock_s": round(wall_clock_seconds(run_dir), 1),
        "evaluation_s": round(float(read_scalars(run_dir, "eval/seconds")[1].sum()), 1),
        "versions": {
            **{name: version(name) for name in ("torch", "numpy", "gymnasium", "mujoco")},
            "project": project_commit(),
        },
        "machine": {"processor": processor(), "cores": os.cpu_count()},
    }


def processor() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def project_commit() -> str | None:
    """The repository's commit (with "+changes" when the work tree differs from it), or None outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


def table(paths: list[str], show_steps: list[int]) -> str:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in paths:
        with open(path) as file:
            summary = json.load(file)
        groups[(summary["env_id"], summary.get("label", summary["exp_name"]))].append(summary)
    header = (
        "| environment | experiment | seed | "
        + " | ".join(f"{s:,}" for s in show_steps)
        + " | final | deterministic eval | wall-clock |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for (env_id, exp_name), runs in sorted(groups.items()):
        columns = defaultdict(list)
        for run in sorted(runs, key=lambda r: r["seed"]):
            values = [run["running_mean_at"].get(str(s)) for s in show_steps] + [
                run["final_running_mean"],
                run.get("deterministic_eval_mean"),
            ]
            for index, value in enumerate(values):
                columns[index].append(value)
            cells = " | ".join("–" if v is None else f"{v:.1f}" for v in values)
            lines.append(f"| {env_id} | {exp_name} | {run['seed']} | {cells} | {run['wall_clock_s'] / 60:.1f} min |")
        means = [np.mean(v) if None not in v else None for v in columns.values()]
        cells = " | ".join("–" if v is None else f"**{v:.1f}**" for v in means)
        lines.append(f"| {env_id} | {exp_name} | mean | {cells} | |")
    return "\n".join(lines)


def main() -> None:
    command = tyro.extras.subcommand_cli_from_dict({"write": Write, "table": Table})
    if isinstance(command, Write):
        os.makedirs(command.out_dir, exist_ok=True)
        for run_dir in command.runs:
            summary = summarise_run(run_dir, command.script, command.every, command.window, command.thresholds)
            path = os.path.join(command.out_dir, summary["run"] + ".json")
            with open(path, "w") as file:
                json.dump(summary, file, indent=1)
            print(f"wrote {path}: final {summary['final_running_mean']}")
    else:
        print(table(command.summaries, command.steps))


if __name__ == "__main__":
    main()
