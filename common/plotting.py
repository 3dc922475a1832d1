"""Learning curves from TensorBoard logs: one panel per environment, one line per experiment.

    python -m common.plotting runs/InvertedPendulum-v4__diffppo_check__* runs/Hopper-v4__diffppo_check__* \
        --out docs/diffppo_learning_curves.png

Run folders are named {env_id}__{exp_name}__{seed}__{time} (the scripts' convention); the
seeds of one (env_id, exp_name) are drawn as their mean with a min-max band, on a common
grid of environment steps (each seed's episodic returns smoothed over --window episodes).
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tyro

from common.logs import read_scalars, rolling_mean


def group_runs(run_dirs: list[str]) -> dict[str, dict[str, list[str]]]:
    """{env_id: {exp_name: [run_dir, ...]}} from folder names {env_id}__{exp_name}__{seed}__{time}."""
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in run_dirs:
        parts = os.path.basename(os.path.normpath(run_dir)).split("__")
        if len(parts) < 4:
            raise ValueError(f"{run_dir}: expected a run folder named env_id__exp_name__seed__time")
        groups[parts[0]][parts[1]].append(run_dir)
    return groups


def curve_on_grid(run_dir: str, grid: np.ndarray, window: int) -> np.ndarray:
    """Smoothed episodic return of one run at the grid steps (NaN before its first episode)."""
    steps, returns = read_scalars(run_dir, "charts/episodic_return")
    if len(returns) == 0:
        return np.full(len(grid), np.nan)
    smoothed = rolling_mean(returns, window)
    curve = np.interp(grid, steps, smoothed)
    curve[grid < steps[0]] = np.nan
    curve[grid > steps[-1]] = np.nan
    return curve


def plot_learning_curves(run_dirs: list[str], out: str, window: int = 10, points: int = 200) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups = group_runs(run_dirs)
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for axis, (env_id, experiments) in zip(axes[0], sorted(groups.items())):
        for exp_name, runs in sorted(experiments.items()):
            last_step = max(read_scalars(run, "charts/episodic_return")[0].max(initial=0) for run in runs)
            grid = np.linspace(0, last_step, points)
            curves = np.array([curve_on_grid(run, grid, window) for run in runs])
            with warnings.catch_warnings():  # columns before any seed's first episode are all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
            axis.plot(grid, mean, label=f"{exp_name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            axis.fill_between(grid, low, high, alpha=0.2)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value / 1000:g}k"))
        axis.set_title(env_id)
        axis.set_xlabel("environment steps")
        axis.set_ylabel(f"episodic return ({window}-episode mean)")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


@dataclass
class PlotArgs:
    runs: tyro.conf.Positional[list[str]]
    """run folders under runs/"""
    out: str = "learning_curves.png"
    """the PNG to write"""
    window: int = 10
    """episodes averaged in each seed's curve"""


if __name__ == "__main__":
    args = tyro.cli(PlotArgs)
    plot_learning_curves(args.runs, args.out, args.window)
