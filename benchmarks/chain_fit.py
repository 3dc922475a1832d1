"""Chain fit: train the diffusion chain alone on an exact target, with no critic and no environment.

    python benchmarks/chain_fit.py --env-id UnequalModesBandit-v0 --alpha 0.2 --seeds 1 2 3

The target is pi*(a) proportional to exp(r(a) / alpha) of a one-step multimodal bandit (its reward
function is known exactly). The chain of diffsac.py (same kernels, same initialisation) is trained by
the pathwise gradient of

    E_q[ L(x_{0:K}) - beta * log pi*(a) ],     beta annealed linearly from --beta-start to 1,

the surrogate of method.md §2 with the exact soft Q in place of a learned critic (r / alpha = log pi*
up to a constant). At beta = 1 the loss is KL(pi || pi*) + E[G(x_0)] >= 0, where G(x_0) = KL(q(x_{1:K}|x_0)
|| p(x_{1:K}|x_0)) is the slack of the bound; it is 0 only for a chain that is exact. Because the slack
enters the loss, the minimiser over the marginal is pi ~ pi* exp(-G), not pi* (method.md §2): a mode
whose paths carry more slack is starved, however long the training.

Printed per seed: each mode's share of the samples (nearest mode) beside pi*'s, the bound
E[L - log pi*] (0 for a perfect chain; its sampling noise at --eval-samples is about 0.01), and the
slack per mode, E[L - log pi* | mode j] - log(share_j / weight_j), the part of the bound that the
chain pays on the paths ending at mode j beyond what its misplaced weight explains. With --out, a
Markdown table of these rows is written. Runs in a minute or two per seed on a CPU.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gymnasium as gym  # noqa: E402

import benchmarks.multimodal_envs  # noqa: E402,F401  (registers the benchmark ids)
from benchmarks.multimodal_envs import mode_shares, target_density_on_grid, target_mode_shares  # noqa: E402
from common.cli import ConfigError, run_cli  # noqa: E402
from diffsac import Agent  # noqa: E402

ONE_STEP_BANDITS = ["DoubleWellBandit-v0", "RingBandit-v0", "UnequalModesBandit-v0"]


@dataclass
class Args:
    env_id: str = "UnequalModesBandit-v0"
    """the target's bandit: one of DoubleWellBandit-v0, RingBandit-v0, UnequalModesBandit-v0"""
    alpha: float = 0.2
    """temperature of the target pi* ~ exp(r / alpha)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds to train"""
    num_diffusion_steps: int = 8
    """K, the number of diffusion steps"""
    hidden_dim: int = 128
    """width of the chain's mean network (diffsac.py's default)"""
    min_std: float = 0.01
    """floor of every sigma_k"""
    updates: int = 4000
    """gradient updates"""
    batch_size: int = 256
    """chains per update"""
    learning_rate: float = 3e-4
    """Adam learning rate (diffsac.py's --policy-lr)"""
    beta_start: float = 0.05
    """weight of log pi* at the first update; it rises linearly to 1"""
    anneal_fraction: float = 0.5
    """share of the updates over which beta rises to 1 (0: beta = 1 throughout)"""
    std: str = "learned"
    """sigma_k: "learned" (the scripts' choice), "beta" (fixed at its initial sqrt(beta_k)) or "posterior" (fixed at the
    forward posterior's sqrt(beta_k (1 - abar_{k-1}) / (1 - abar_k)), floored at --min-std)"""
    loss: str = "reverse-kl"
    """"reverse-kl": the pathwise surrogate above (what DiffSAC does); "log-variance": the variance over the batch of
    L - beta log pi* on paths drawn without gradient (the chain's noise scaled by --behaviour-noise-scale)"""
    behaviour_noise_scale: float = 1.0
    """for --loss log-variance: the kernels' noise times this when drawing the training paths (1: on-policy)"""
    eval_samples: int = 20000
    """samples drawn from the trained chain for the shares and the bound"""
    out: str = ""
    """Markdown file for the table (empty: print only)"""
    label: str = ""
    """name of this variant in the table (default: the flags that differ from the defaults)"""


def validate(args: Args) -> None:
    if args.env_id not in ONE_STEP_BANDITS:
        raise ConfigError(
            f"--env-id {args.env_id}: not a one-step bandit with a known target; "
            f"allowed: {', '.join(ONE_STEP_BANDITS)}."
        )
    for flag, value in [
        ("--num-diffusion-steps", args.num_diffusion_steps),
        ("--updates", args.updates),
        ("--batch-size", args.batch_size),
        ("--hidden-dim", args.hidden_dim),
        ("--eval-samples", args.eval_samples),
    ]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value}).")
    for flag, value in [("--alpha", args.alpha), ("--learning-rate", args.learning_rate), ("--min-std", args.min_std)]:
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be a positive number (got {value}).")
    if args.loss not in ("reverse-kl", "log-variance"):
        raise ConfigError(f"--loss {args.loss!r}: allowed: reverse-kl, log-variance.")
    if not (math.isfinite(args.behaviour_noise_scale) and args.behaviour_noise_scale > 0):
        raise ConfigError(f"--behaviour-noise-scale must be a positive number (got {args.behaviour_noise_scale}).")
    if args.std not in ("learned", "beta", "posterior"):
        raise ConfigError(f"--std {args.std!r}: allowed: learned, beta, posterior.")
    if not 0 <= args.beta_start <= 1 or not 0 <= args.anneal_fraction <= 1:
        raise ConfigError("--beta-start and --anneal-fraction must be in [0, 1].")


def log_normaliser(reward_fn, action_dim: int, alpha: float) -> float:
    """log Z = log of the integral of exp(r / alpha) over [-1, 1]^d (midpoint rule)."""
    points = 20000 if action_dim == 1 else 800
    grid, density = target_density_on_grid(reward_fn, action_dim, alpha, points)
    log_peak = float(reward_fn(grid).max() / alpha)
    return log_peak + math.log(density.sum() * (2.0 / points) ** action_dim)


def fit(args: Args, seed: int, env) -> dict:
    torch.manual_seed(seed)
    action_dim = env.action_space.shape[0]
    agent = Agent(
        1, action_dim, [-1.0] * action_dim, [1.0] * action_dim, args.num_diffusion_steps, args.hidden_dim, args.min_std
    )
    if args.std != "learned":
        betas = agent.actor.betas.double()
        variance = betas
        if args.std == "posterior":
            alpha_bar = torch.cumprod(1 - betas, 0)
            alpha_bar_previous = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
            variance = betas * (1 - alpha_bar_previous) / (1 - alpha_bar)
        log_std = (0.5 * variance.clamp(min=args.min_std**2).log()).float()[:, None].expand_as(agent.actor.log_std)
        with torch.no_grad():
            agent.actor.log_std.copy_(log_std)
        agent.actor.log_std.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in agent.actor.parameters() if p.requires_grad], lr=args.learning_rate)
    log_z = log_normaliser(env.reward, action_dim, args.alpha)

    def log_target(actions: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(env.reward(actions.detach().double().numpy()), dtype=torch.float32) / args.alpha - log_z

    def reward_gradient_loss(actions: torch.Tensor) -> torch.Tensor:
        """A surrogate whose action gradient is that of log pi*(a) = r(a) / alpha - log Z (by finite differences)."""
        eps = 1e-4
        base = actions.detach().double().numpy()
        gradient = np.zeros_like(base)
        for i in range(action_dim):
            step = np.zeros_like(base)
            step[:, i] = eps
            gradient[:, i] = (env.reward(base + step) - env.reward(base - step)) / (2 * eps) / args.alpha
        return (actions * torch.as_tensor(gradient, dtype=torch.float32)).sum(-1)

    def log_variance_loss(beta: float) -> torch.Tensor:
        """Var over the batch of L(x_{0:K}) - beta log pi*(a) for paths drawn without gradient (the log-variance
        divergence; on-policy its gradient is the score-function gradient of the reverse KL, batch mean as baseline)."""
        actor, K = agent.actor, args.num_diffusion_steps
        with torch.no_grad():
            x, chain = torch.randn(args.batch_size, action_dim), []
            chain.append(x)
            for k in range(K, 0, -1):
                mean, std = actor.kernel(obs, x, torch.full((args.batch_size,), k))
                x = mean + args.behaviour_noise_scale * std * torch.randn_like(x)
                chain.append(x)
            chain = torch.stack(chain, 1)
        step_k = actor.step_k.repeat(args.batch_size)
        x_k, x_previous = chain[:, :-1].reshape(-1, action_dim), chain[:, 1:].reshape(-1, action_dim)
        step_log_q = actor.log_prob(obs.repeat_interleave(K, 0), x_k, step_k, x_previous).view(args.batch_size, K)
        step_log_ratio, log_prior, squash_log_det = actor.path_log_ratio_terms(
            chain, step_log_q, agent.action_half_width
        )
        path_log_ratio = log_prior + step_log_ratio.sum(1) - squash_log_det
        w = path_log_ratio - beta * log_target(agent.squash(chain[:, -1]))
        return ((w - w.mean()) ** 2).mean()

    obs = torch.zeros(args.batch_size, 1)
    anneal_updates = args.anneal_fraction * args.updates
    started = time.time()
    for update in range(args.updates):
        beta = (
            1.0 if anneal_updates == 0 else min(1.0, args.beta_start + (1 - args.beta_start) * update / anneal_updates)
        )
        if args.loss == "log-variance":
            loss = log_variance_loss(beta)
        else:
            actions, path_log_ratio, _ = agent.sample(obs)
            loss = (path_log_ratio - beta * reward_gradient_loss(actions)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        agent.actor.clamp_log_std_()
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at update {update}")

    with torch.no_grad():
        actions, path_log_ratio, _ = agent.sample(torch.zeros(args.eval_samples, 1))
        gap = (path_log_ratio - log_target(actions)).numpy().astype(np.float64)
    modes = env.modes()
    actions = actions.numpy().astype(np.float64)
    shares, weights = mode_shares(actions, modes), target_mode_shares(env.reward, modes, args.alpha)
    nearest = np.linalg.norm(actions[:, None, :] - modes[None], axis=-1).argmin(1)
    slack = np.array(
        [
            gap[nearest == j].mean() - math.log(shares[j] / weights[j]) if shares[j] > 0 else np.nan
            for j in range(len(modes))
        ]
    )
    sigma = agent.actor.log_std.clamp(agent.actor.log_std_min, 0.0).exp().mean(-1).flip(0)  # k = K..1
    return {
        "shares": shares,
        "weights": weights,
        "bound": float(gap.mean()),
        "slack": slack,
        "seconds": time.time() - started,
        "sigma": sigma.tolist(),
    }


def main() -> None:
    args = tyro.cli(Args)
    validate(args)
    torch.set_num_threads(1)
    env = gym.make(args.env_id).unwrapped
    defaults = Args()
    label = (
        args.label
        or ", ".join(
            f"--{name.replace('_', '-')} {value}"
            for name, value in vars(args).items()
            if name not in ("seeds", "out", "label", "env_id", "alpha", "eval_samples")
            and value != getattr(defaults, name)
        )
        or "defaults"
    )
    rows = []
    for seed in args.seeds:
        result = fit(args, seed, env)
        shares = " / ".join(f"{share:.2f}" for share in result["shares"])
        weights = " / ".join(f"{weight:.2f}" for weight in result["weights"])
        slack = " / ".join(f"{value:.2f}" for value in result["slack"])
        worst = float(np.max(np.abs(result["shares"] - result["weights"])))
        rows.append(
            f"| {args.env_id} | {label} | {seed} | {shares} | {weights} | {worst:.2f} | {result['bound']:.3f} "
            f"| {slack} | {result['seconds']:.0f} |"
        )
        print(rows[-1], flush=True)
        print("  sigma_k, k = K..1: " + " ".join(f"{value:.3f}" for value in result["sigma"]), flush=True)
    header = (
        "| target | variant | seed | share per mode | pi*'s share | largest share error | bound E[L - log pi*] "
        "| slack per mode (nats) | seconds |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as file:
            file.write("\n".join(rows) + "\n")
        print(f"appended {len(rows)} rows to {args.out} (header: {header.splitlines()[0]})")


if __name__ == "__main__":
    run_cli(main, "benchmarks/chain_fit.py")
