"""PPO with a tanh-Gaussian policy: the fair Gaussian counterpart of diffppo.py.

    python baselines/ppo.py --env-id Hopper-v4      (or python -m baselines.ppo, from the repository root)

diffppo.py with the diffusion policy replaced by a tanh-Gaussian one and nothing else changed
(flags and defaults less --num-diffusion-steps and --chain-gae-lambda, normalisation, soft reward,
alpha tuning, time-limit bootstrap, logging, checkpoints, evaluation), so that a comparison differs
only in the policy class: DiffPPO's DA-MDP with K = 1 and the exact log pi in place of L (method.md §2).

Policy: pre-tanh x ~ N(mu(s), diag(sigma^2)), a = c + h * tanh(x) (c, h: centre and half-width
of the Box); mu is a tanh MLP whose last layer starts near 0, sigma = exp(log_std) is
state-independent, initialised to 1 and clamped to [--min-std, 1] like diffppo's sigma_k, so
the pre-tanh policy starts as N(0, I), exactly as the diffusion policy's initial chain.
    log pi(a|s) = log N(x; mu(s), sigma) - sum_i [log h_i + log(1 - tanh(x_i)^2)]
Rollouts store x and log N(x; mu, sigma); in the importance ratio the tanh term cancels.

What differs from CleanRL's ppo_continuous_action.py (all shared with diffppo.py):
- tanh squashing into the Box (CleanRL lets the env clip an unbounded Gaussian sample), so log pi
  is that of the executed action; sigma is clamped to [--min-std, 1].
- Soft reward -alpha * log pi(a|s) added to the normalised env reward at every step (--alpha,
  relative to that scale; 0: none; --autotune toward --target-entropy) instead of CleanRL's
  entropy bonus in the loss (ent_coef 0).
- Time-limit bootstrap: a truncated episode's last reward gets gamma * V(final obs) (CleanRL treats
  truncation as termination).
- Normalisation statistics are saved in the checkpoint, the observation ones frozen when it is
  evaluated (python -m common.evaluation CHECKPOINT).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

if __name__ == "__main__" and not __package__:  # run as a file (python baselines/ppo.py): make common/ importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from common.cli import at_least_one, in_unit_interval, positive, run_cli  # noqa: E402
from common.envs import true_next_observations  # noqa: E402
from common.normalization import ObservationNormalizer, RewardNormalizer  # noqa: E402
from common.runs import Run, RunArgs  # noqa: E402


@dataclass
class Args(RunArgs):
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    checkpoint_frequency: int = 100000
    """environment steps between checkpoints when --save-model is set"""
    env_id: str = "Hopper-v4"
    """the id of the environment (any gymnasium id with a bounded Box action space)"""
    total_timesteps: int = 1000000
    """total environment steps of the experiment"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_envs: int = 1
    """the number of parallel game environments"""
    num_steps: int = 2048
    """the number of environment steps per env per policy rollout"""
    anneal_lr: bool = True
    """toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 32
    """the number of minibatches; the batch num_envs*num_steps must split into them"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """the target KL divergence threshold (early stop of the update epochs)"""
    norm_reward: bool = True
    """scale env rewards by a running std of the discounted return (--no-norm-reward: alpha acts on raw rewards)"""
    alpha: float = 0.001
    """entropy temperature (initial value if --autotune); 0 gives PPO with a tanh-squashed Gaussian"""
    autotune: bool = False
    """automatic tuning of alpha toward --target-entropy"""
    target_entropy: float | None = None
    """target of the entropy estimate -E[log pi] for --autotune (default: -action_dim)"""
    alpha_lr: float = 1e-3
    """learning rate of log(alpha) when --autotune"""
    min_std: float = 0.01
    """floor of the policy's standard deviation sigma (pre-tanh)"""
    hidden_dim: int = 64
    """width of the two hidden layers of the mean and value networks"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *at_least_one("num_steps", "num_minibatches", "update_epochs", "hidden_dim"),
    (
        "num_envs * num_steps % num_minibatches == 0",
        "--num-minibatches {num_minibatches} does not divide the batch --num-envs * --num-steps = "
        "{num_envs * num_steps}; allowed: a divisor of {num_envs * num_steps}.",
    ),
    ("total_timesteps >= num_envs * num_steps", "--total-timesteps {total_timesteps} is less than one rollout."),
    ("alpha >= 0", "--alpha must be >= 0 (got {alpha})."),
    ("alpha > 0 or not autotune", "--autotune needs a positive initial --alpha (it tunes log(alpha))."),
    *in_unit_interval("gamma"),
    *in_unit_interval("gae_lambda", closed=True),
    *positive("learning_rate", "clip_coef", "min_std"),
    *positive("vf_coef", "max_grad_norm", "alpha_lr"),
    ("target_kl is None or target_kl > 0", "--target-kl must be positive (got {target_kl})."),
    ("target_entropy is None or -1e6 <= target_entropy <= 1e6", "--target-entropy must be in [-1e6, 1e6]."),
    ("min_std < 1", "--min-std must be below 1, the largest sigma (got {min_std})."),
]


LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(std^2)) summed over the last axis."""
    return (-0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI).sum(-1)


def log_one_minus_tanh_squared(x: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x| (method.md §2)."""
    return 2.0 * (math.log(2.0) - x - nn.functional.softplus(-2.0 * x))


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden_dim: int, out_dim: int, last_layer_std: float) -> nn.Sequential:
    """in_dim -> hidden_dim -> hidden_dim -> out_dim with tanh activations (the networks of diffppo.py)."""
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden_dim)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden_dim, hidden_dim)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden_dim, out_dim), std=last_layer_std),
    )


class GaussianActor(nn.Module):
    """pi(x | s) = N(mu(s), diag(sigma^2)) over the pre-tanh action x; sigma is state-independent."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 64, min_std: float = 0.01):
        super().__init__()
        self.mean_net = mlp(obs_dim, hidden_dim, action_dim, last_layer_std=0.01)  # mu starts near 0
        # sigma = 1 at initialisation: the pre-tanh policy starts as N(0, I), like the diffusion chain.
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.log_std_min = math.log(min_std)

    @torch.no_grad()
    def clamp_log_std_(self) -> None:  # sigma in [min_std, 1] after an optimiser step (the forward pass clamps too)
        self.log_std.clamp_(self.log_std_min, 0.0)

    def std(self) -> torch.Tensor:  # [d], the same for every state
        return self.log_std.clamp(self.log_std_min, 0.0).exp()

    def log_prob(self, obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mu(s), sigma), the pre-tanh log-density (the importance ratio needs only this)."""
        return gaussian_log_prob(x, self.mean_net(obs), self.std())

    def sample(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-tanh x [B, d], log N(x; mu, sigma) [B]); deterministic: x = mu(s)."""
        mean, std = self.mean_net(obs), self.std()
        x = mean if deterministic else mean + std * torch.randn_like(mean)
        return x, gaussian_log_prob(x, mean, std)


class Agent(nn.Module):
    def __init__(self, obs_dim, action_dim, action_low, action_high, hidden_dim=64, min_std=0.01):
        super().__init__()
        self.actor = GaussianActor(obs_dim, action_dim, hidden_dim, min_std)
        self.critic = mlp(obs_dim, hidden_dim, 1, last_layer_std=1.0)  # diffppo's V(s, x_k, k) without x_k, k
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x)."""
        return self.action_center + self.action_half_width * torch.tanh(x)

    def squash_log_det(self, x: torch.Tensor) -> torch.Tensor:
        """sum_i log h_i + log(1 - tanh(x_i)^2), the log-Jacobian of a = c + h tanh(x)."""
        return (torch.log(self.action_half_width) + log_one_minus_tanh_squared(x)).sum(-1)

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.squash(self.actor.sample(obs, deterministic)[0])  # deterministic: c + h tanh(mu(s))


def gae(rewards, values, dones, next_value, gamma, gae_lambda):
    """CleanRL's GAE (diffppo's augmented_gae with K = 1). rewards, values, dones: [T, N], dones[t]: the episode
    ended at step t (same-step autoreset); next_value: [N], V after the rollout. Returns (advantages, returns)."""
    num_steps, advantages, last_advantage = rewards.shape[0], np.zeros_like(rewards), np.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        next_values = next_value if t == num_steps - 1 else values[t + 1]
        discount = gamma * (1.0 - dones[t])
        delta = rewards[t] + discount * next_values - values[t]
        last_advantage = delta + discount * gae_lambda * last_advantage
        advantages[t] = last_advantage
    return advantages, advantages + values


def step_with_bootstrap(envs, agent, x, soft_rewards, obs_normalizer, reward_normalizer, gamma):
    """Execute a = c + h tanh(x); return (next raw obs, rewards [N], done, infos): the soft reward plus
    the normalised environment reward, plus gamma * V(final obs) where a time limit cut the episode
    (truncated, not terminated): the cut is bootstrapped from the state reached, not a termination."""
    next_obs_raw, reward, terminated, truncated, infos = envs.step(agent.squash(x).cpu().numpy())
    done = np.logical_or(terminated, truncated)
    rewards = (soft_rewards + reward_normalizer(reward, done)).astype(np.float32)
    truncated_only = np.logical_and(truncated, np.logical_not(terminated))
    if truncated_only.any():
        final_obs = torch.as_tensor(obs_normalizer(true_next_observations(next_obs_raw, infos)), device=x.device)
        final_values = agent.value(final_obs).detach()
        rewards[truncated_only] += gamma * final_values.cpu().numpy()[truncated_only]
    return next_obs_raw, rewards, done, infos


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """log(alpha) (H_est - target): its gradient in log(alpha) is H_est - target, so descending it lowers alpha
    while the entropy estimate is above target."""
    return log_alpha * (entropy_estimate - target_entropy)


def main(argv: list[str] | None = None) -> None:
    run = Run(Args, "baselines.ppo", CHECKS, argv)
    args, envs, device = run.args, run.envs, run.device
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = run.iterations(batch_size)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent_kwargs = {
        "obs_dim": obs_dim,
        "action_dim": action_dim,
        "action_low": envs.single_action_space.low.tolist(),
        "action_high": envs.single_action_space.high.tolist(),
        "hidden_dim": args.hidden_dim,
        "min_std": args.min_std,
    }
    rollout_bytes = 4 * args.num_steps * args.num_envs * (obs_dim + action_dim + 8)  # the rollout's buffers
    (agent,) = run.build(lambda: [Agent(**agent_kwargs)], "--hidden-dim, --num-steps or --num-envs", rollout_bytes)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs_normalizer = ObservationNormalizer((obs_dim,))
    reward_normalizer = RewardNormalizer(args.num_envs, args.gamma, enabled=args.norm_reward)
    log_alpha = torch.tensor(
        math.log(args.alpha) if args.alpha > 0 else -math.inf, device=device, requires_grad=args.autotune
    )
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr) if args.autotune else None
    target_entropy = args.target_entropy if args.target_entropy is not None else -float(action_dim)
    checkpoint = run.restore(
        {
            "agent": agent,
            "optimizer": optimizer,
            "obs_normalizer": obs_normalizer,
            "reward_normalizer": reward_normalizer,
            "log_alpha": log_alpha,
            "alpha_optimizer": alpha_optimizer,
        },
        agent_kwargs=agent_kwargs,
    )
    global_step, iteration = checkpoint.get("global_step", 0), checkpoint.get("iteration", 0)
    alpha = log_alpha.exp().item()

    # Rollout storage: the pre-tanh sample x and its old log N(x; mu, sigma) for the importance ratio.
    obs_buffer = torch.zeros((args.num_steps, args.num_envs, obs_dim), device=device)
    x_buffer = torch.zeros((args.num_steps, args.num_envs, action_dim), device=device)
    log_prob_buffer, value_buffer, log_pi_buffer = (
        torch.zeros((args.num_steps, args.num_envs), device=device) for _ in range(3)
    )
    reward_buffer, done_buffer = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(2))

    next_obs_raw = run.reset_envs(obs_normalizer)
    next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)

    while iteration < num_iterations and run.stop is None:  # a signal stops within seconds (run.check_stop)
        run.keep(global_step, iteration=iteration)  # what a stop inside this iteration saves
        iteration += 1
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs_buffer[step] = next_obs
            with torch.inference_mode():
                x, log_prob = agent.actor.sample(next_obs)
                log_pi = log_prob - agent.squash_log_det(x)  # log pi(a|s) of the executed action
                values = agent.value(next_obs)
            x_buffer[step], log_prob_buffer[step], value_buffer[step], log_pi_buffer[step] = x, log_prob, values, log_pi
            next_obs_raw, rewards, done, infos = step_with_bootstrap(  # soft reward -alpha * log pi(a|s)
                envs, agent, x, (-alpha * log_pi).cpu().numpy(), obs_normalizer, reward_normalizer, args.gamma
            )
            reward_buffer[step], done_buffer[step] = rewards, done
            obs_normalizer.update(next_obs_raw)
            next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)
            run.episodes(infos, global_step)

        # GAE, bootstrapped with V(s_T).
        with torch.no_grad():
            next_value = agent.value(next_obs)
        advantages, returns = gae(
            reward_buffer,
            value_buffer.cpu().numpy(),
            done_buffer,
            next_value.cpu().numpy(),
            args.gamma,
            args.gae_lambda,
        )

        b_obs, b_x = obs_buffer.reshape(-1, obs_dim), x_buffer.reshape(-1, action_dim)
        b_log_prob, b_values = log_prob_buffer.reshape(-1), value_buffer.reshape(-1)
        b_advantages, b_returns = (torch.as_tensor(a, device=device).reshape(-1) for a in (advantages, returns))
        clipfracs = []
        for epoch in range(args.update_epochs):
            permutation = torch.randperm(batch_size, device=device)
            for start in range(0, batch_size, minibatch_size):
                run.check_stop(global_step)
                mb = permutation[start : start + minibatch_size]
                new_log_prob = agent.actor.log_prob(b_obs[mb], b_x[mb])
                log_importance_ratio = new_log_prob - b_log_prob[mb]  # the tanh term of log pi cancels
                ratio = log_importance_ratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-log_importance_ratio).mean()
                    approx_kl = ((ratio - 1) - log_importance_ratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_advantages = b_advantages[mb]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                new_value = agent.value(b_obs[mb])
                if args.clip_vloss:
                    v_loss_unclipped = (new_value - b_returns[mb]) ** 2
                    v_clipped = b_values[mb] + torch.clamp(new_value - b_values[mb], -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((new_value - b_returns[mb]) ** 2).mean()
                loss = pg_loss + args.vf_coef * v_loss
                run.check_finite("loss", loss, global_step, f" (iteration {iteration}, epoch {epoch})")
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                agent.actor.clamp_log_std_()
            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        # Entropy estimate H = -E[log pi(a|s)] over the rollout (exact log pi here: an unbiased estimate).
        entropy_estimate = -log_pi_buffer.mean()
        if args.autotune:
            temperature_loss = alpha_loss(log_alpha, entropy_estimate, target_entropy)
            alpha_optimizer.zero_grad()
            temperature_loss.backward()
            alpha_optimizer.step()
            alpha = log_alpha.exp().item()
            run.log(global_step, "losses", alpha_loss=temperature_loss)
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        run.log(global_step, "charts", learning_rate=optimizer.param_groups[0]["lr"], entropy_estimate=entropy_estimate)
        run.log(global_step, "charts", alpha=alpha)
        run.log(global_step, "losses", value_loss=v_loss, policy_loss=pg_loss, old_approx_kl=old_approx_kl)
        run.log(global_step, "losses", approx_kl=approx_kl, clipfrac=np.mean(clipfracs))
        run.log(global_step, "losses", explained_variance=explained_var)
        run.show(global_step, f"entropy estimate {entropy_estimate.item():7.2f} | alpha {alpha:.2e}")
        crossed = global_step // args.checkpoint_frequency > (global_step - batch_size) // args.checkpoint_frequency
        if args.save_model and (crossed or iteration == num_iterations):
            run.save(global_step, iteration=iteration)

    run.finish(global_step, iteration=iteration)


def cli(argv: list[str] | None = None) -> None:
    """Bad flags: one line on stderr ("baselines/ppo.py: error: ...") and exit 2; a diverged training: exit 1."""
    run_cli(lambda: main(argv), "baselines/ppo.py")


if __name__ == "__main__":
    cli()
