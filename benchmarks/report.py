"""Learning curves and a table of final returns from the TensorBoard logs of many runs.

    python -m benchmarks.report runs --out-dir docs --name comparison --last-episodes 10 \
        --reference docs/cleanrl_reference.csv

RUNS are run folders (runs/{env_id}__{exp_name}__{seed}__{time}) or folders holding them
(e.g. runs/). Runs are grouped by environment and exp_name (the algorithm); the seeds of a
group are summarised. Writes:
  OUT_DIR/NAME.png  one panel per environment, one line per algorithm: the mean over seeds of
                    each seed's --window-episode running mean of charts/episodic_return, with a
                    +- one standard deviation band, x = environment steps. A diffusion script and
                    its Gaussian baseline share a colour (the baseline dashed).
  OUT_DIR/NAME.md   one row per (environment, algorithm): seeds, environment steps reached,
                    final return = mean +- std over seeds (population std, ddof 0) of each seed's
                    mean over its last --last-episodes episodes, the per-seed values, and the
                    wall-clock time per run (first to last TensorBoard event of the run).
--reference CSV (columns env_id, algorithm, return, and optionally std, source) adds a
reference column to the table and dotted lines to the plot, e.g. CleanRL's published
1M-step returns.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import tyro

from benchmarks.logs import read_scalars
from benchmarks.plotting import algorithm_order, group_runs, plot_learning_curves
from common.cli import ConfigError, run_cli


def find_run_dirs(paths: list[str]) -> list[str]:
    """Run folders among ``paths``: a folder with event files is a run; otherwise its subfolders are searched."""
    run_dirs = []
    for path in paths:
        if not os.path.isdir(path):
            raise ConfigError(f"{path!r}: no such folder; allowed: run folders or folders holding them (e.g. runs/).")
        if glob.glob(os.path.join(path, "events.out.tfevents.*")):
            run_dirs.append(os.path.normpath(path))
            continue
        for child in sorted(os.listdir(path)):
            child_path = os.path.join(path, child)
            if glob.glob(os.path.join(child_path, "events.out.tfevents.*")) and len(child.split("__")) >= 4:
                run_dirs.append(os.path.normpath(child_path))
    return run_dirs


def wall_clock_seconds(run_dir: str) -> float:
    """Seconds the run's processes spent training: each TensorBoard file is written by one process (a resumed
    run adds a file), so this sums first-to-last event per file, leaving out the time between a stop and
    its resume (which may be a day)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    spans = []
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(path).Load() if event.HasField("summary")]
        if times:  # a file's own header event is left out: it has no scalar and its time is the file's opening
            spans.append(max(times) - min(times))
    return float(sum(spans)) if spans else float("nan")


@dataclass
class Summary:
    env_id: str
    algorithm: str
    seeds: list[str]
    final_returns: list[float]  # per seed: mean of its last N episodes
    last_steps: list[int]  # per seed: step of its last episode
    wall_clock: list[float]  # per seed, seconds

    @property
    def mean(self) -> float:
        return float(np.mean(self.final_returns))

    @property
    def std(self) -> float:
        return float(np.std(self.final_returns))


def summarise(run_dirs: list[str], last_episodes: int) -> list[Summary]:
    """One Summary per (env_id, exp_name), in table order (environment, then diffusion beside Gaussian)."""
    summaries = []
    for env_id, experiments in sorted(group_runs(run_dirs).items()):
        for exp_name, runs in sorted(experiments.items(), key=lambda item: algorithm_order(item[0])):
            seeds, finals, last_steps, clocks = [], [], [], []
            for run in sorted(runs):
                steps, returns = read_scalars(run, "charts/episodic_return")
                if len(returns) == 0:
                    continue
                seeds.append(os.path.basename(run).split("__")[2])
                finals.append(float(np.mean(returns[-last_episodes:])))
                last_steps.append(int(steps[-1]))
                clocks.append(wall_clock_seconds(run))
            if seeds:
                summaries.append(Summary(env_id, exp_name, seeds, finals, last_steps, clocks))
    return summaries


def read_references(path: str) -> dict[tuple[str, str], dict]:
    """{(env_id, algorithm): {"return": float, "std": float | None, "source": str}} from a CSV file."""
    references = {}
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = {"env_id", "algorithm", "return"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(
                f"--reference {path}: missing column(s) {', '.join(sorted(missing))}; "
                "required: env_id, algorithm, return; optional: std, source."
            )
        for row in reader:
            references[(row["env_id"], row["algorithm"])] = {
                "return": float(row["return"]),
                "std": float(row["std"]) if row.get("std") else None,
                "source": row.get("source") or "",
            }
    return references


def format_duration(seconds: list[float]) -> str:
    """Mean (+- std over seeds) in minutes, or in seconds below a minute."""
    values, unit = np.asarray(seconds), "s"
    if values.mean() >= 60:
        values, unit = values / 60, "min"
    return f"{values.mean():.1f} {unit}" if len(values) == 1 else f"{values.mean():.1f} +- {values.std():.1f} {unit}"


def markdown_table(summaries: list[Summary], last_episodes: int, references: dict | None = None) -> str:
    header = [
        "environment",
        "algorithm",
        "seeds",
        "env steps",
        f"return, last {last_episodes} episodes (mean +- std)",
        "per seed",
        "wall-clock per run",
    ]
    if references:
        header.append("reference")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        steps = min(summary.last_steps)
        row = [
            summary.env_id,
            summary.algorithm,
            str(len(summary.seeds)),
            f"{round(steps / 1000)}k" if steps >= 10000 else f"{steps / 1000:.3g}k" if steps >= 1000 else str(steps),
            f"{summary.mean:.1f} +- {summary.std:.1f}",
            ", ".join(f"{value:.0f}" for value in summary.final_returns),
            format_duration(summary.wall_clock),
        ]
        if references:
            reference = references.get((summary.env_id, summary.algorithm))
            if reference is None:
                row.append("")
            else:
                spread = f" +- {reference['std']:.1f}" if reference["std"] is not None else ""
                row.append(
                    f"{reference['return']:.1f}{spread}" + (f" ({reference['source']})" if reference["source"] else "")
                )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class ReportArgs:
    runs: tyro.conf.Positional[list[str]] = field(default_factory=lambda: ["runs"])
    """run folders, or folders holding them (default: runs/)"""
    out_dir: str = "."
    """where NAME.png and NAME.md are written"""
    name: str = "report"
    """file name (without extension) of the plot and the table"""
    last_episodes: int = 10
    """episodes at the end of each run averaged into its final return"""
    window: int = 10
    """episodes in the running mean of each seed's learning curve"""
    reference: str | None = None
    """CSV of reference returns (columns env_id, algorithm, return[, std, source])"""
    reference_lines: bool = True
    """draw the reference returns as dotted lines on the plot (--no-reference-lines: table only)"""
    env_ids: list[str] = field(default_factory=list)
    """only these environments (default: all found)"""
    algorithms: list[str] = field(default_factory=list)
    """only these exp_names (default: all found)"""


def main() -> None:
    args = tyro.cli(ReportArgs)
    if args.last_episodes < 1 or args.window < 1:
        raise ConfigError(f"--last-episodes and --window must be at least 1 (got {args.last_episodes}, {args.window}).")
    run_dirs = find_run_dirs(args.runs)
    try:
        groups = group_runs(run_dirs)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    run_dirs = [
        run
        for env_id, experiments in groups.items()
        if not args.env_ids or env_id in args.env_ids
        for exp_name, runs in experiments.items()
        if not args.algorithms or exp_name in args.algorithms
        for run in runs
    ]
    if not run_dirs:
        raise ConfigError(
            f"no run folders (runs/ENV__ALGORITHM__SEED__TIME with TensorBoard files) in {' '.join(args.runs)}"
            + (" matching --env-ids/--algorithms" if args.env_ids or args.algorithms else "")
            + "."
        )
    references = read_references(args.reference) if args.reference else None
    summaries = summarise(run_dirs, args.last_episodes)
    table = markdown_table(summaries, args.last_episodes, references)
    os.makedirs(args.out_dir, exist_ok=True)
    table_path = os.path.join(args.out_dir, f"{args.name}.md")
    with open(table_path, "w") as file:
        file.write(table)
    lines_by_env = defaultdict(list)
    for (env_id, algorithm), reference in (references or {}).items() if args.reference_lines else ():
        lines_by_env[env_id].append((f"{algorithm}: {reference['source'] or 'reference'}", reference["return"]))
    plot_learning_curves(
        run_dirs, os.path.join(args.out_dir, f"{args.name}.png"), args.window, band="std", references=lines_by_env
    )
    print(table, end="")
    print(f"wrote {table_path}")


if __name__ == "__main__":
    run_cli(main, "benchmarks.report")
