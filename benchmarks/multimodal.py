"""Train a script on a multimodal benchmark and compare its action distribution with pi*.

    python -m benchmarks.multimodal --script diffsac.py --env-id DoubleWellBandit-v0 --seeds 1 2 3 \
        --total-timesteps 6000 --alpha 0.2 --extra="--learning-starts 1000"

For each seed: trains ``SCRIPT --env-id E --seed S --total-timesteps N --alpha A --save-model``
with the temperature held fixed (``--no-autotune`` for the off-policy scripts,
``--no-norm-reward`` for the PPO scripts so that alpha acts on the raw reward), working
directory --workdir (logs in WORKDIR/runs and WORKDIR/benchmark_logs); then loads the
checkpoint, samples --samples actions from the stochastic policy (at the constant observation
of a bandit, at states visited by the policy itself in TurnLeftOrRight-v0) and measures:
  - the share of samples nearest to each mode of r (the maximisers; Euclidean), and whether
    every mode holds between 0.5 and 1.5 times pi*'s share of them (the share rule; 0.5/M to 1.5/M
    for M equal modes), and whether every share is within 0.05 of pi*'s (the mode-weight bar);
  - the share within a small radius of each mode (an eighth of the distance between modes) against
    pi*'s mass there; "covers every mode (strict)" adds to the share rule that every mode holds at
    least half of pi*'s mass in its ball (a broad bump between symmetric modes passes the share rule,
    not this one);
  - the total-variation distance between the histogram (--bins per axis on [-1, 1]^d) and
    pi*(a) proportional to exp(r(a) / alpha) integrated over the same bins, beside the
    "sampling floor": the TV of as many exact samples of pi* (what a perfect policy would get).
Writes OUT_DIR/{env_id}__{exp_name}.png (histograms beside the target), .md (one row per seed) and, for a
diffusion policy, __chain.png (the marginal of every x_k from the prior to x_0, one panel per seed);
exp_name is the script's name plus --exp-suffix. A seed whose run finished before (marker in
WORKDIR/benchmark_logs, same flags) is not trained again, only analysed: rerunning a command redoes
the measurements; --rerun-finished trains again. --analyse-only CHECKPOINT ... skips training.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import tyro

from benchmarks.grid import REPO_ROOT, Run, is_finished, run_one
from benchmarks.multimodal_envs import (
    MULTIMODAL_ENV_IDS,
    covers_every_mode,
    covers_every_mode_strictly,
    histogram,
    mass_near_modes,
    mode_radius,
    mode_shares,
    target_mass_near_modes,
    target_mode_shares,
    target_probabilities,
    total_variation,
    weights_match,
)
from common.cli import ConfigError, run_cli
from common.envs import check_env_id
from common.evaluation import load_agent


@dataclass
class Args:
    script: str = "diffsac.py"
    """training script, relative to the repository root"""
    env_id: str = "DoubleWellBandit-v0"
    """one of DoubleWellBandit-v0, RingBandit-v0, TurnLeftOrRight-v0, UnequalModesBandit-v0"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds to train"""
    total_timesteps: int = 10000
    """environment steps per run"""
    alpha: float = 0.2
    """temperature, fixed during training and used for the target pi* ~ exp(r / alpha)"""
    extra: str = ""
    """more flags for the script (note the =: --extra="--learning-starts 1000")"""
    workdir: str = "results/multimodal"
    """working directory of the training runs"""
    out_dir: str = "results/multimodal"
    """where the PNG and the Markdown rows go"""
    samples: int = 20000
    """actions sampled from each trained policy"""
    bins: int = 40
    """histogram bins per action dimension on [-1, 1]"""
    rerun_finished: bool = False
    """train again the seeds whose run already finished (by default they are only analysed again)"""
    exp_suffix: str = ""
    """appended to the run names (e.g. "-alpha0.5"), so variants of one script keep separate runs and files"""
    analyse_only: list[str] = field(default_factory=list)
    """checkpoints to analyse without training (their env id must be --env-id)"""


def fixed_temperature_flags(script: str, alpha: float) -> list[str]:
    """Flags that keep alpha at --alpha and make it act on the raw reward.

    The REPPO scripts also tune alpha and learn a categorical critic: they get --no-autotune and a value
    range for the raw returns of these tasks (down to -20: r(a) is very negative only far from every mode).
    The peers (DPMD, SDAC) scale rewards by --reward-scale and divide Q by alpha / alpha_0 with alpha_0 the
    initial alpha: with alpha fixed at alpha_0 and rewards scaled by 1/alpha, SDAC's softmax weights target
    pi* ~ exp(r / alpha) on a bandit (Q = scaled r), the target the other scripts are measured against.
    DPMD standardises Q, so no flag gives it that target (its mirror-descent step sharpens toward the
    maximisers of Q); it gets the same flags.
    """
    name = os.path.basename(script)
    if name in ("dpmd.py", "sdac.py"):
        return ["--no-autotune", "--reward-scale", repr(1.0 / alpha)]
    if "reppo" in name:
        return ["--no-norm-reward", "--no-autotune", "--v-min", "-20", "--v-max", "10", "--num-bins", "301"]
    return ["--no-norm-reward"] if name.endswith("ppo.py") else ["--no-autotune"]


def train(args: Args, seed: int) -> str:
    """Train one seed; returns the checkpoint path."""
    script = args.script if os.path.isabs(args.script) else os.path.join(REPO_ROOT, args.script)
    exp_name = os.path.splitext(os.path.basename(script))[0] + args.exp_suffix
    workdir = os.path.abspath(args.workdir)
    command = [
        sys.executable,
        script,
        "--env-id",
        f"benchmarks.multimodal_envs:{args.env_id}",
        "--seed",
        str(seed),
        "--exp-name",
        exp_name,
        "--total-timesteps",
        str(args.total_timesteps),
        "--alpha",
        str(args.alpha),
        "--save-model",
        "--eval-episodes",
        "1",
        *fixed_temperature_flags(script, args.alpha),
        *shlex.split(args.extra),
    ]
    key = f"{args.env_id}__{exp_name}__{seed}"
    log_dir = os.path.join(workdir, "benchmark_logs")
    run = Run(
        script,
        args.env_id,
        seed,
        exp_name,
        command,
        workdir,
        os.path.join(log_dir, f"{key}.log"),
        os.path.join(log_dir, f"{key}.done.json"),
        summary_path=None,
        rerun=args.rerun_finished,
    )  # the analysis below is its record
    if is_finished(run) and not args.rerun_finished:
        with open(run.marker_path) as file:
            marker = json.load(file)
        if shlex.split(marker["command"])[2:] != command[2:]:  # the flags, beyond the interpreter and the script path
            raise ConfigError(
                f"{key} finished before with other flags ({marker['command']}); "
                "name this variant with --exp-suffix, or train it again with --rerun-finished."
            )
        print(
            f"[done] {key}: trained before, analysing {marker['run_dir']} (--rerun-finished trains again)", flush=True
        )
        return os.path.join(workdir, marker["run_dir"], f"{exp_name}.cleanrl_model")
    print(f"[run] cd {shlex.quote(workdir)} && {shlex.join(command)} > {run.log_path}", flush=True)
    outcome = run_one(run)
    if outcome["returncode"] != 0:
        raise ConfigError(f"training failed (exit {outcome['returncode']}), see {run.log_path}")
    return os.path.join(workdir, outcome["run_dir"], f"{exp_name}.cleanrl_model")


@torch.no_grad()
def sample_actions(checkpoint: str, env_id: str, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(actions [samples, d] of the stochastic policy, 10 per state at states the policy visits; and for a
    diffusion policy its chains [samples, K+1, d] in time order, chain[:, 0] = x_K, chain[:, K] = x_0; else None)."""
    agent, obs_normalizer, _ = load_agent(checkpoint)
    env = gym.make(env_id)
    torch.manual_seed(seed)  # the visited states too, so that re-measuring a checkpoint gives the same numbers
    states, episode = [], 0
    while len(states) < max(1, samples // 10):
        obs, _ = env.reset(seed=seed + episode)
        done, episode = False, episode + 1
        while not done:
            states.append(obs)
            action = agent.act(torch.as_tensor(obs_normalizer(obs[None])), deterministic=False)[0].numpy()
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    states = np.repeat(np.asarray(states, np.float32), 10, axis=0)[:samples]
    env.close()
    torch.manual_seed(seed)
    actor = getattr(agent, "actor", None)
    if actor is not None and hasattr(actor, "sample_chain"):
        chains = torch.cat(
            [actor.sample_chain(torch.as_tensor(obs_normalizer(chunk)))[0] for chunk in np.array_split(states, 10)]
        )
        actions = agent.squash(chains[:, -1])
        return actions.numpy().astype(np.float64), chains.numpy().astype(np.float64)
    actions = [agent.act(torch.as_tensor(obs_normalizer(chunk))).numpy() for chunk in np.array_split(states, 10)]
    return np.concatenate(actions).astype(np.float64), None


def plot_chain(
    chains: list[tuple[str, np.ndarray]], modes: np.ndarray, title: str, out: str, extent: float = 2.5
) -> None:
    """The marginal of every x_k of the chain, from the prior x_K (top) to x_0 (bottom), in pre-tanh space.

    1-D actions: one density-over-k image per seed, dashed lines at atanh of each mode. 2-D actions: one
    row of 2-D histograms (x_K ... x_0) per seed, crosses at atanh of each mode.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latent_modes = np.arctanh(np.clip(modes, -0.999, 0.999))
    num_steps = chains[0][1].shape[1]  # K + 1
    edges = np.linspace(-extent, extent, 81)
    coarse = edges[::2]  # 40 x 40 bins for the 2-D panels: a readable picture in a small file
    if chains[0][1].shape[2] == 1:
        figure, axes = plt.subplots(1, len(chains), figsize=(max(3.6 * len(chains), 7.0), 3.4), squeeze=False)
        for axis, (label, chain) in zip(axes[0], chains):
            density = np.stack([np.histogram(chain[:, j, 0], bins=edges, density=True)[0] for j in range(num_steps)])
            axis.imshow(
                density,
                aspect="auto",
                cmap="magma",
                extent=(-extent, extent, -0.5, num_steps - 0.5),
                origin="upper",
                vmax=np.quantile(density, 0.995),
            )
            axis.set_yticks(range(num_steps))
            axis.set_yticklabels([f"x_{j}" for j in range(num_steps)], fontsize=7)  # row j from the top is x_{K-j}
            for mode in latent_modes[:, 0]:
                axis.axvline(mode, color="cyan", linestyle="--", linewidth=0.8)
            axis.set_xlabel("pre-tanh value (dashed: atanh of each mode)", fontsize=7)
            axis.set_title(label, fontsize=8)
    else:
        figure, axes = plt.subplots(len(chains), num_steps, figsize=(1.6 * num_steps, 1.7 * len(chains)), squeeze=False)
        for row, (label, chain) in enumerate(chains):
            for j in range(num_steps):
                axis = axes[row, j]
                counts, _, _ = np.histogram2d(chain[:, j, 0], chain[:, j, 1], bins=[coarse, coarse])
                axis.imshow(counts.T, origin="lower", extent=(-extent, extent, -extent, extent), cmap="magma")
                axis.plot(latent_modes[:, 0], latent_modes[:, 1], "c+", markersize=5)
                axis.set_xticks([])
                axis.set_yticks([])
                if row == 0:
                    axis.set_title(f"x_{num_steps - 1 - j}", fontsize=8)
            axes[row, 0].set_ylabel(label, fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def analyse(actions: np.ndarray, env_id: str, alpha: float, bins: int, rng: np.random.Generator) -> dict:
    env = gym.make(env_id).unwrapped
    modes, action_dim = env.modes(), actions.shape[1]
    target = target_probabilities(env.reward, action_dim, alpha, bins)
    # A perfect policy's histogram: as many exact samples of pi* (bin drawn from the target, uniform within it).
    flat = rng.choice(target.size, size=len(actions), p=target.ravel())
    width = 2.0 / bins
    exact = (
        np.stack(np.unravel_index(flat, target.shape), axis=1) * width
        - 1.0
        + rng.uniform(0, width, (len(actions), action_dim))
    )
    shares, target_shares = mode_shares(actions, modes), target_mode_shares(env.reward, modes, alpha)
    radius = mode_radius(modes)
    mass_near, target_mass_near = (
        mass_near_modes(actions, modes, radius),
        target_mass_near_modes(env.reward, modes, alpha, radius),
    )
    return {
        "modes": modes,
        "shares": shares,
        "target_shares": target_shares,
        "covers": covers_every_mode(shares, target_shares),
        "mass_near": mass_near,
        "target_mass_near": target_mass_near,
        "radius": radius,
        "covers_strictly": covers_every_mode_strictly(shares, mass_near, target_mass_near, target_shares),
        "weights_match": weights_match(shares, target_shares),
        "tv": total_variation(histogram(actions, bins), target),
        "tv_floor": total_variation(histogram(exact, bins), target),
        "target": target,
    }


def plot(results: list[tuple[str, np.ndarray, dict]], env_id: str, title: str, bins: int, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    action_dim = results[0][1].shape[1]
    target = results[0][2]["target"]
    if action_dim == 1:
        figure, axis = plt.subplots(figsize=(6, 3.4))
        edges = np.linspace(-1, 1, bins + 1)
        axis.stairs(target / (2.0 / bins), edges, color="black", linewidth=2, label="target pi* ~ exp(r/alpha)")
        for label, actions, result in results:
            axis.hist(
                actions[:, 0],
                bins=edges,
                density=True,
                histtype="step",
                linewidth=1.2,
                label=f"{label}: TV {result['tv']:.2f}",
            )
        axis.set_xlabel("action")
        axis.set_ylabel("density")
        axis.legend(fontsize=7)
        axis.set_title(title, fontsize=9)
    else:
        figure, axes = plt.subplots(1, len(results) + 1, figsize=(3 * (len(results) + 1), 3.2))
        panels = [("target pi*", target)] + [
            (f"{label}\nTV {result['tv']:.2f}", histogram(actions, bins)) for label, actions, result in results
        ]
        for axis, (label, probabilities) in zip(axes, panels):
            axis.imshow(probabilities.T, origin="lower", extent=(-1, 1, -1, 1), cmap="viridis")
            axis.set_title(label, fontsize=8)
            axis.set_xticks([-1, 0, 1])
            axis.set_yticks([-1, 0, 1])
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    args = tyro.cli(Args)
    check_env_id(args.env_id)
    if args.env_id not in MULTIMODAL_ENV_IDS:
        raise ConfigError(
            f"--env-id {args.env_id}: not a multimodal benchmark; allowed: {', '.join(MULTIMODAL_ENV_IDS)}."
        )
    if "/" in args.exp_suffix or "__" in args.exp_suffix:
        raise ConfigError(
            f"--exp-suffix {args.exp_suffix!r}: may not contain '/' or '__' (run names are split on '__')."
        )
    if args.alpha <= 0 or args.samples < 10 or args.bins < 2:
        raise ConfigError("--alpha must be positive, --samples at least 10 and --bins at least 2.")
    checkpoints = args.analyse_only or [train(args, seed) for seed in args.seeds]
    exp_name = os.path.basename(checkpoints[0]).replace(".cleanrl_model", "")
    rng = np.random.default_rng(0)
    results, rows, chains = [], [], []
    for checkpoint in checkpoints:
        seed = os.path.basename(os.path.dirname(checkpoint)).split("__")[2] if "__" in checkpoint else "?"
        actions, chain = sample_actions(checkpoint, args.env_id, args.samples)
        result = analyse(actions, args.env_id, args.alpha, args.bins, rng)
        results.append((f"seed {seed}", actions, result))
        if chain is not None:
            chains.append((f"seed {seed}", chain))
        shares = ", ".join(f"{share:.2f}" for share in result["shares"])
        shares += " (pi*: " + ", ".join(f"{share:.2f}" for share in result["target_shares"]) + ")"
        mass_near = ", ".join(f"{mass:.2f}" for mass in result["mass_near"])
        target = result["target_mass_near"]
        target = (
            f"{target[0]:.2f} each"
            if np.allclose(target, target[0], atol=5e-3)
            else ", ".join(f"{m:.2f}" for m in target)
        )
        rows.append(
            f"| {args.env_id} | {exp_name} | {seed} | {shares} | {'yes' if result['covers'] else 'no'} "
            f"| {mass_near} (pi*: {target}) "
            f"| {'yes' if result['covers_strictly'] else 'no'} | {'yes' if result['weights_match'] else 'no'} "
            f"| {result['tv']:.3f} | {result['tv_floor']:.3f} |"
        )
    radius = results[0][2]["radius"]
    header = (
        "| environment | algorithm | seed | share of samples nearest each mode | covers every mode (share rule) "
        f"| share within {radius:.2f} of each mode | covers every mode (strict) | weights within 0.05 of pi* "
        "| TV to pi* | TV floor (exact samples) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(rows) + "\n"
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"{args.env_id}__{exp_name}")
    with open(stem + ".md", "w") as file:
        file.write(table)
    title = f"{exp_name} on {args.env_id}, alpha {args.alpha}, {args.samples} samples per seed"
    plot(results, args.env_id, title, args.bins, stem + ".png")
    written = f"{stem}.png and {stem}.md"
    if chains:
        plot_chain(
            chains,
            results[0][2]["modes"],
            f"{exp_name} on {args.env_id}: marginal of x_k from the prior x_K to x_0 (pre-tanh)",
            stem + "__chain.png",
        )
        written = f"{stem}.png, {stem}__chain.png and {stem}.md"
    print(table, end="")
    print(f"wrote {written}")


if __name__ == "__main__":
    run_cli(main, "benchmarks.multimodal")
