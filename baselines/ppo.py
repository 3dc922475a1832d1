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
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

if __name__ == "__main__" and not __package__:  # run as a file (python baselines/ppo.py): make common/ importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.checkpoint import save_checkpoint  # noqa: I001 (after the path fix above)
from common.envs import ConfigError, finished_episodes, make_vector_env, run_cli, true_next_observations
from common.evaluation import evaluate
from common.normalization import ObservationNormalizer, RewardNormalizer
from common.runs import (Progress, StopSignals, check_memory, count_parameters, open_writer, parse_args, run_paths,
                         whole_rollouts)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    torch_threads: int = 1
    """CPU threads for torch (1 is fastest for these small networks)"""
    capture_video: bool = False
    """whether to capture videos of the agent (see the `videos` folder)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (pip install wandb)"""
    wandb_project_name: str = "diffusion-maxent-rl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """save a checkpoint every --checkpoint-frequency iterations and at the end, then evaluate it"""
    checkpoint_frequency: int = 50
    """iterations between checkpoints when --save-model is set"""
    resume: str | None = None
    """path of a checkpoint to continue: its run, flags and folder (only --total-timesteps and the like may change)"""
    eval_episodes: int = 10
    """episodes of deterministic evaluation of the saved model at the end"""

    # Algorithm specific arguments
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
    """scale env rewards by a running std of the discounted return (--no-norm-reward: raw rewards, alpha then acts on them)"""

    # Gaussian policy and maximum entropy
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


def validate_args(args: Args) -> None:
    """One clear ConfigError per impossible flag, before any environment or network is built."""
    for flag, value in [("--num-envs", args.num_envs), ("--num-steps", args.num_steps), ("--num-minibatches", args.num_minibatches),
                        ("--update-epochs", args.update_epochs), ("--hidden-dim", args.hidden_dim),
                        ("--checkpoint-frequency", args.checkpoint_frequency), ("--torch-threads", args.torch_threads)]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value}).")
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches != 0:
        raise ConfigError(f"--num-minibatches {args.num_minibatches} does not divide the batch "
                          f"--num-envs * --num-steps = {batch}; allowed: a divisor of {batch}.")
    if args.total_timesteps < batch:
        raise ConfigError(f"--total-timesteps {args.total_timesteps} is less than one rollout (--num-envs * --num-steps = {batch}).")
    if args.alpha < 0:
        raise ConfigError(f"--alpha must be >= 0 (got {args.alpha}).")
    if args.autotune and args.alpha <= 0:
        raise ConfigError("--autotune needs a positive initial --alpha (it tunes log(alpha)).")
    if not 0 < args.gamma <= 1:
        raise ConfigError(f"--gamma must be in (0, 1] (got {args.gamma}).")
    if not 0 <= args.gae_lambda <= 1:
        raise ConfigError(f"--gae-lambda must be in [0, 1] (got {args.gae_lambda}).")
    for flag, value in [("--learning-rate", args.learning_rate), ("--clip-coef", args.clip_coef), ("--min-std", args.min_std)]:
        if value <= 0:
            raise ConfigError(f"{flag} must be positive (got {value}).")
    if args.min_std >= 1:
        raise ConfigError(f"--min-std must be below 1, the largest sigma (got {args.min_std}).")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


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
    return nn.Sequential(layer_init(nn.Linear(in_dim, hidden_dim)), nn.Tanh(),
                         layer_init(nn.Linear(hidden_dim, hidden_dim)), nn.Tanh(),
                         layer_init(nn.Linear(hidden_dim, out_dim), std=last_layer_std))


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
    def __init__(self, obs_dim: int, action_dim: int, action_low: list[float], action_high: list[float],
                 hidden_dim: int = 64, min_std: float = 0.01):
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


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, next_value: np.ndarray,
        gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
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


def step_with_bootstrap(envs, agent: Agent, x: torch.Tensor, soft_rewards: np.ndarray,
                        obs_normalizer: ObservationNormalizer, reward_normalizer: RewardNormalizer, gamma: float):
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


def main(argv: list[str] | None = None) -> None:
    args, checkpoint = parse_args(Args, "baselines.ppo", "baselines/ppo.py", argv)
    validate_args(args)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = whole_rollouts(args.total_timesteps, batch_size)
    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    envs = make_vector_env(args.env_id, args.num_envs, args.seed, args.capture_video, run_name)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent_kwargs = {"obs_dim": obs_dim, "action_dim": action_dim, "action_low": envs.single_action_space.low.tolist(),
                    "action_high": envs.single_action_space.high.tolist(), "hidden_dim": args.hidden_dim, "min_std": args.min_std}
    check_memory(count_parameters(lambda: [Agent(**agent_kwargs)]), 0, device, "--hidden-dim")
    agent = Agent(**agent_kwargs).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs_normalizer = ObservationNormalizer((obs_dim,))
    reward_normalizer = RewardNormalizer(args.num_envs, args.gamma, enabled=args.norm_reward)
    log_alpha = torch.tensor(math.log(args.alpha) if args.alpha > 0 else -math.inf, device=device, requires_grad=args.autotune)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr) if args.autotune else None
    target_entropy = args.target_entropy if args.target_entropy is not None else -float(action_dim)
    global_step, start_iteration = 0, 1
    if checkpoint:
        if checkpoint["agent_kwargs"] != agent_kwargs:
            raise ConfigError(f"--resume {args.resume}: the checkpoint's env or network ({checkpoint['agent_kwargs']}) "
                              "differs from the flags given; allowed: the same --env-id, --hidden-dim, --min-std.")
        for key, state_owner in [("agent", agent), ("optimizer", optimizer), ("obs_normalizer", obs_normalizer),
                                 ("reward_normalizer", reward_normalizer)]:
            state_owner.load_state_dict(checkpoint[key])
        with torch.no_grad():
            log_alpha.fill_(checkpoint["log_alpha"])
        if alpha_optimizer and checkpoint.get("alpha_optimizer"):
            alpha_optimizer.load_state_dict(checkpoint["alpha_optimizer"])
        global_step, start_iteration = checkpoint["global_step"], checkpoint["iteration"] + 1
        print(f"resumed {run_name} at step {global_step} (iteration {checkpoint['iteration']})")
    alpha = log_alpha.exp().item()
    run_dir, model_path = run_paths(args, run_name)
    writer = open_writer(run_dir, args, checkpoint)
    stop = StopSignals()

    def checkpoint_state(iteration: int) -> dict:
        # "script" is the module common.evaluation imports to rebuild the Agent.
        return {"script": "baselines.ppo", "args": asdict(args), "agent_kwargs": agent_kwargs, "run_name": run_name,
                "agent": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "obs_normalizer": obs_normalizer.state_dict(), "reward_normalizer": reward_normalizer.state_dict(),
                "log_alpha": log_alpha.item(), "alpha_optimizer": alpha_optimizer.state_dict() if alpha_optimizer else None,
                "global_step": global_step, "iteration": iteration}

    # Rollout storage: the pre-tanh sample x and its old log N(x; mu, sigma) for the importance ratio.
    obs_buffer = torch.zeros((args.num_steps, args.num_envs, obs_dim), device=device)
    x_buffer = torch.zeros((args.num_steps, args.num_envs, action_dim), device=device)
    log_prob_buffer, value_buffer, log_pi_buffer = (torch.zeros((args.num_steps, args.num_envs), device=device) for _ in range(3))
    reward_buffer, done_buffer = (np.zeros((args.num_steps, args.num_envs), dtype=np.float32) for _ in range(2))

    start_time, start_step = time.time(), global_step
    progress = Progress(args.total_timesteps, global_step)
    recent_returns = deque(maxlen=10)
    next_obs_raw, _ = envs.reset(seed=args.seed)
    obs_normalizer.update(next_obs_raw)
    next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)

    for iteration in range(start_iteration, num_iterations + 1):
        if stop.requested:  # SIGINT / SIGTERM: stop between iterations, with a checkpoint of the last whole one
            envs.close()
            if args.save_model:
                save_checkpoint(model_path, checkpoint_state(iteration - 1))
            writer.close()
            stop.exit("baselines/ppo.py", global_step, model_path if args.save_model else None)
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
                envs, agent, x, (-alpha * log_pi).cpu().numpy(), obs_normalizer, reward_normalizer, args.gamma)
            reward_buffer[step], done_buffer[step] = rewards, done
            obs_normalizer.update(next_obs_raw)
            next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)
            for episode_return, episode_length in finished_episodes(infos):
                recent_returns.append(episode_return)
                writer.add_scalar("charts/episodic_return", episode_return, global_step)
                writer.add_scalar("charts/episodic_length", episode_length, global_step)

        # GAE, bootstrapped with V(s_T).
        with torch.no_grad():
            next_value = agent.value(next_obs)
        advantages, returns = gae(reward_buffer, value_buffer.cpu().numpy(), done_buffer,
                                  next_value.cpu().numpy(), args.gamma, args.gae_lambda)

        b_obs, b_x = obs_buffer.reshape(-1, obs_dim), x_buffer.reshape(-1, action_dim)
        b_log_prob, b_values = log_prob_buffer.reshape(-1), value_buffer.reshape(-1)
        b_advantages, b_returns = (torch.as_tensor(a, device=device).reshape(-1) for a in (advantages, returns))
        clipfracs = []
        for epoch in range(args.update_epochs):
            permutation = torch.randperm(batch_size, device=device)
            for start in range(0, batch_size, minibatch_size):
                mb = permutation[start:start + minibatch_size]
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
                pg_loss = torch.max(-mb_advantages * ratio,
                                    -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
                new_value = agent.value(b_obs[mb])
                if args.clip_vloss:
                    v_loss_unclipped = (new_value - b_returns[mb]) ** 2
                    v_clipped = b_values[mb] + torch.clamp(new_value - b_values[mb], -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((new_value - b_returns[mb]) ** 2).mean()
                loss = pg_loss + args.vf_coef * v_loss
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {global_step} (iteration {iteration}, epoch {epoch}): "
                        f"policy loss {pg_loss.item()}, value loss {v_loss.item()}. "
                        + (f"Last checkpoint: {model_path}" if args.save_model else "Use --save-model to keep checkpoints."))
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
            # d alpha_loss / d log(alpha) = H - target: alpha falls when the entropy is above target.
            alpha_loss = log_alpha * (entropy_estimate - target_entropy)
            alpha_optimizer.zero_grad()
            alpha_loss.backward()
            alpha_optimizer.step()
            alpha = log_alpha.exp().item()
            writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        sps = int((global_step - start_step) / (time.time() - start_time))
        for tag, value in [("charts/learning_rate", optimizer.param_groups[0]["lr"]),
                           ("charts/entropy_estimate", entropy_estimate.item()), ("charts/alpha", alpha),
                           ("losses/value_loss", v_loss.item()), ("losses/policy_loss", pg_loss.item()),
                           ("losses/old_approx_kl", old_approx_kl.item()), ("losses/approx_kl", approx_kl.item()),
                           ("losses/clipfrac", np.mean(clipfracs)), ("losses/explained_variance", explained_var),
                           ("charts/SPS", sps)]:
            writer.add_scalar(tag, value, global_step)
        recent = f"{np.mean(recent_returns):9.1f}" if recent_returns else "      n/a"
        progress.show(global_step, f"step {global_step:>9d}/{args.total_timesteps} | return (last {len(recent_returns)} episodes) {recent} "
              f"| entropy estimate {entropy_estimate.item():7.2f} | alpha {alpha:.2e} | SPS {sps}")
        if args.save_model and (iteration % args.checkpoint_frequency == 0 or iteration == num_iterations):
            save_checkpoint(model_path, checkpoint_state(iteration))

    progress.close(run_dir)
    envs.close()
    if stop.requested:  # during the last iteration, whose checkpoint is written: skip the evaluation
        writer.close()
        stop.exit("baselines/ppo.py", global_step, model_path if args.save_model else None)
    if args.save_model:
        print(f"model saved to {model_path}")
        returns = evaluate(agent, obs_normalizer, args.env_id, args.eval_episodes, seed=args.seed, device=device)
        for index, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, index)
        print(f"evaluation ({args.eval_episodes} deterministic episodes): mean return {np.mean(returns):.2f}")
    writer.close()


def cli(argv: list[str] | None = None) -> None:
    """Bad flags: one line on stderr ("baselines/ppo.py: error: ...") and exit 2; a diverged training: exit 1."""
    try:
        run_cli(lambda: main(argv), "baselines/ppo.py")
    except TrainingDiverged as error:
        print(f"baselines/ppo.py: training diverged: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
