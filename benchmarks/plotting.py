"""Learning curves from TensorBoard logs: one panel per environment, one line per experiment.

    python -m benchmarks.plotting runs/InvertedPendulum-v4__diffppo_check__* runs/Hopper-v4__diffppo_check__* \
        --out docs/diffppo_learning_curves.png

Run folders are named {env_id}__{exp_name}__{seed}__{time} (the scripts' convention); the
seeds of one (env_id, exp_name) are drawn as their mean with a min-max band, on a common
grid of environment steps up to the last episode of the shortest seed (each seed's episodic
returns smoothed over --window episodes).
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tyro

from benchmarks.logs import read_scalars, rolling_mean


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


def algorithm_order(exp_name: str) -> tuple[str, int, str]:
    """Sort key that puts each diffusion script beside its Gaussian baseline: diffppo, ppo, diffsac, sac, ..."""
    base = exp_name[len("diff") :] if exp_name.startswith("diff") else exp_name
    return base, 0 if exp_name.startswith("diff") else 1, exp_name


def plot_learning_curves(
    run_dirs: list[str],
    out: str,
    window: int = 10,
    points: int = 200,
    band: str = "minmax",
    references: dict[str, list[tuple[str, float]]] | None = None,
) -> None:
    """One panel per environment, one line per exp_name (mean over seeds) with a band: the
    seeds' min-max (band="minmax") or mean +- one standard deviation (band="std").

    A diffusion script and its Gaussian baseline (diffsac / sac) share a colour, the Gaussian
    one dashed. references: {env_id: [(label, return), ...]} drawn as dotted horizontal lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups = group_runs(run_dirs)
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    exp_names = sorted({name for experiments in groups.values() for name in experiments}, key=algorithm_order)
    bases = list(dict.fromkeys(algorithm_order(name)[0] for name in exp_names))
    colours = {name: f"C{bases.index(algorithm_order(name)[0]) % 10}" for name in exp_names}
    for axis, (env_id, experiments) in zip(axes[0], sorted(groups.items())):
        for exp_name, runs in sorted(experiments.items(), key=lambda item: algorithm_order(item[0])):
            # Up to the last episode of the shortest seed, so that every point averages all seeds.
            last_step = min(read_scalars(run, "charts/episodic_return")[0].max(initial=0) for run in runs)
            grid = np.linspace(0, last_step, points)
            curves = np.array([curve_on_grid(run, grid, window) for run in runs])
            with warnings.catch_warnings():  # columns before any seed's first episode are all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(curves, 0)
                if band == "std":
                    low, high = mean - np.nanstd(curves, 0), mean + np.nanstd(curves, 0)
                else:
                    low, high = np.nanmin(curves, 0), np.nanmax(curves, 0)
            gaussian = f"diff{exp_name}" in exp_names  # a Gaussian baseline drawn beside its diffusion script
            axis.plot(
                grid,
                mean,
                color=colours[exp_name],
                linestyle="--" if gaussian else "-",
                label=f"{exp_name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
            )
            axis.fill_between(grid, low, high, color=colours[exp_name], alpha=0.15)
        for label, value in (references or {}).get(env_id, []):
            axis.axhline(value, color="grey", linestyle=":", linewidth=1)
            axis.annotate(label, (0, value), xytext=(2, 2), textcoords="offset points", fontsize=7, color="grey")
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
