"""DPMD: Diffusion Policy Mirror Descent (Ma et al., arXiv 2502.00361), as its authors' code runs it, on this project's
harness. docs/method.md §6 gives the maths and every difference from that code.

    python peers/dpmd.py --env-id Hopper-v4      # or: python -m peers.dpmd --env-id Hopper-v4

A peer, not a DA-MDP method: the policy is a DDPM that predicts the noise, trained without any likelihood by
denoising score matching on its own samples a' at s', weighted by w = exp(clip((Q - mu) / sigma, -c, c) / alpha)
(mu, sigma running averages of Q's batch mean and std), so that it moves toward pi_old(a|s) exp(Q(s, a) / alpha).
The critics are twin Q with target networks and y = s_r r + gamma (1 - terminated) min_i Q_target_i(s', a'). It acts
with the best of N chains of an EMA copy of the policy plus Gaussian noise of std 0.1 alpha; alpha is tuned on that
noise's entropy. The defaults are the reference's (github.com/mahaitongdae/diffusion_policy_online_rl,
scripts/train_mujoco.py) except two costs a CPU cannot pay: T = 10 and N = 4 (the reference: 20 and 32).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

if __name__ == "__main__" and not __package__:  # run as a file (python peers/dpmd.py): make common/ importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import at_least_one, between, in_unit_interval, positive, run_cli  # noqa: E402
from common.normalization import ObservationNormalizer  # noqa: E402
from common.replay_buffer import ReplayBuffer, step_and_store  # noqa: E402
from common.runs import Run, RunArgs  # noqa: E402

SCRIPT_NAME = "peers/dpmd.py"


@dataclass
class Args(RunArgs):
    exp_name: str = "dpmd"
    """the name of this experiment"""
    checkpoint_frequency: int = 50000
    """environment steps between checkpoints when --save-model is set"""
    env_id: str = "Hopper-v4"
    """the id of the environment (any gymnasium id with a bounded Box action space)"""
    total_timesteps: int = 1000000
    """total environment steps of the experiment"""
    num_envs: int = 5
    """the number of parallel game environments (the reference's 5)"""
    updates_per_iteration: int = 1
    """gradient updates per vector step (the reference's 1: one update per 5 environment steps)"""
    buffer_size: int = 1000000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    learning_starts: int = 30000
    """environment steps of random actions before learning starts (the reference's)"""
    reward_scale: float = 0.2
    """rewards are multiplied by this in the critic target"""
    q_lr: float = 3e-4
    """the learning rate of the Q networks"""
    policy_lr: float = 3e-4
    """the initial learning rate of the noise-prediction network"""
    policy_lr_end: float = 3e-5
    """the policy learning rate after the linear decay"""
    policy_lr_decay_start: int = 25000
    """policy updates before the decay begins"""
    policy_lr_decay_steps: int = 50000
    """policy updates over which the learning rate decays linearly to --policy-lr-end"""
    policy_frequency: int = 2
    """updates between policy updates (the target networks are updated at the same ones)"""
    alpha: float = 5.0
    """initial temperature alpha"""
    autotune: bool = True
    """tune alpha toward the target entropy of the exploration noise (--no-autotune: alpha stays --alpha)"""
    alpha_lr: float = 7e-3
    """the learning rate of log alpha"""
    alpha_frequency: int = 250
    """updates between steps of log alpha (the reference's)"""
    ema_policy: bool = True
    """act (rollouts, evaluation, the saved policy) with an EMA copy of the policy, tau --tau, as the reference"""
    target_entropy_scale: float = 0.9
    """target entropy of the exploration noise = -target_entropy_scale * action_dim"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise = exploration_noise * alpha (normalised actions)"""

    num_diffusion_steps: int = 10
    """T, the number of denoising steps per action (the reference: 20)"""
    beta_schedule_scale: float = 0.8
    """betas = scale * linspace(1e-4, 0.999, T)"""
    num_particles: int = 4
    """N, candidate actions per state; the one with the highest min-Q is taken (the reference: 32)"""
    hidden_dim: int = 256
    """width of the hidden layers of the Q networks and of the noise-prediction network"""
    num_hidden_layers: int = 3
    """hidden layers of the Q networks and of the noise-prediction network"""
    q_clip: float = 3.0
    """DPMD: the standardised Q is clipped to [-q_clip, q_clip] before exp(. / alpha)"""
    q_stats_rate: float = 0.001
    """DPMD: rate of the running mean and std of Q that standardise it"""
    q_normalization: Literal["standardise", "reference"] = "standardise"
    """DPMD: (Q - mu) / sigma, the paper's, or Q - mu / sigma, what the reference's code computes"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *between("target_entropy_scale", -100, 100),  # target entropy = -scale x action_dim
    *at_least_one("updates_per_iteration", "batch_size", "buffer_size", "policy_frequency", "alpha_frequency"),
    *at_least_one("num_diffusion_steps", "num_particles", "hidden_dim", "num_hidden_layers", "policy_lr_decay_steps"),
    ("batch_size <= buffer_size", "--batch-size {batch_size} is larger than --buffer-size {buffer_size}."),
    ("learning_starts >= batch_size", "--learning-starts {learning_starts} is below --batch-size {batch_size}."),
    ("total_timesteps > learning_starts", "--total-timesteps {total_timesteps} must exceed --learning-starts."),
    *positive("alpha", "q_lr", "policy_lr", "policy_lr_end", "alpha_lr", "exploration_noise", "reward_scale"),
    *in_unit_interval("beta_schedule_scale", "gamma", "tau"),
    ("policy_lr_decay_start >= 0", "--policy-lr-decay-start must be >= 0 (got {policy_lr_decay_start})."),
    *positive("q_clip"),
    *in_unit_interval("q_stats_rate"),
]


# ----------------------------------------------------------------------------------------------
# The DDPM policy (epsilon prediction over the normalised action box [-1, 1]; docs/method.md §6)
# ----------------------------------------------------------------------------------------------
class Mish(nn.Module):
    """Mish(x) = x tanh(softplus(x)) = x n / (n + 2) with n = e^x (e^x + 2), the same function as nn.Mish
    (to 1e-6) in a few vectorised operations: torch's CPU mish kernel took over half of a critic target's
    time, this form a third of that. e^x is capped at e^20, where n / (n + 2)
    is 1 in float32. Without autograd (the chains that act and draw critic targets) it works in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exp_x = torch.exp(x.clamp(max=20.0))
        if torch.is_grad_enabled():
            n = exp_x * (exp_x + 2.0)
            return x * n / (n + 2.0)
        n = (exp_x + 2.0).mul_(exp_x)
        return n.div_(n + 2.0).mul_(x)


def mlp(input_dim: int, hidden_dim: int, num_hidden_layers: int, output_dim: int) -> nn.Sequential:
    layers, width = [], input_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(width, hidden_dim), Mish()]
        width = hidden_dim
    return nn.Sequential(*layers, nn.Linear(width, output_dim))


def sinusoidal_embedding(t: torch.Tensor, dim: int = 16, theta: float = 10000.0) -> torch.Tensor:
    """[sin(t w_j), cos(t w_j)] / sqrt(dim) with w_j = theta^(-j / (dim/2)), j = 0..dim/2-1."""
    frequencies = theta ** -(torch.arange(dim // 2, device=t.device, dtype=torch.float32) / (dim // 2))
    angles = t.float()[:, None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1) / math.sqrt(dim)


class NoisePredictor(nn.Module):
    """eps_theta(s, x_t, t): an MLP on [s, x_t, embedding(t)], the embedding sinusoidal -> 32 -> Mish -> 16."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, num_hidden_layers: int, time_dim: int = 16):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 2 * time_dim), Mish(), nn.Linear(2 * time_dim, time_dim))
        self.net = mlp(obs_dim + action_dim + time_dim, hidden_dim, num_hidden_layers, action_dim)

    def forward(self, obs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, x_t, self.time_mlp(sinusoidal_embedding(t, self.time_dim))], dim=-1))


class DiffusionPolicy(nn.Module):
    """The DDPM: forward marginal q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0..T-1, and its
    reverse chain with the posterior q(x_{t-1} | x_t, x0_hat) around the predicted, clipped x0_hat."""

    def __init__(self, obs_dim, action_dim, num_diffusion_steps, beta_schedule_scale, hidden_dim, num_hidden_layers):
        super().__init__()
        self.num_diffusion_steps, self.action_dim = num_diffusion_steps, action_dim
        self.noise_predictor = NoisePredictor(obs_dim, action_dim, hidden_dim, num_hidden_layers)
        betas = beta_schedule_scale * torch.linspace(1e-4, 0.999, num_diffusion_steps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        for name, value in [
            ("betas", betas),
            ("alphas_cumprod", alphas_cumprod),
            ("posterior_std", posterior_variance.clamp(min=1e-20).sqrt()),
            ("posterior_mean_x0", betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)),
            ("posterior_mean_xt", (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)),
        ]:
            self.register_buffer(name, value.float())

    def q_sample(self, t: torch.Tensor, x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, t broadcast over the last axis."""
        abar = self.alphas_cumprod[t][..., None]
        return abar.sqrt() * x_0 + (1 - abar).sqrt() * noise

    def predict_x0(self, t: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The x_0 that q_sample would turn into x_t with this noise: (x_t - sqrt(1 - abar_t) noise) / sqrt(abar_t)."""
        abar = self.alphas_cumprod[t][..., None]
        return (x_t - (1 - abar).sqrt() * noise) / abar.sqrt()

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """One action in [-1, 1] per observation through the T reverse steps (x_T ~ N(0, 0.25 I), as the reference)."""
        x = 0.5 * torch.randn(obs.shape[0], self.action_dim, device=obs.device)
        for t in range(self.num_diffusion_steps - 1, -1, -1):
            steps = torch.full((obs.shape[0],), t, device=obs.device, dtype=torch.long)
            x0_hat = self.predict_x0(steps, x, self.noise_predictor(obs, x, steps)).clamp(-1.0, 1.0)
            x = self.posterior_mean_x0[t] * x0_hat + self.posterior_mean_xt[t] * x
            if t > 0:
                x = x + self.posterior_std[t] * torch.randn_like(x)
        return x.clamp(-1.0, 1.0)


class QNetwork(nn.Module):
    """Q(s, a) on normalised actions, Mish layers (the reference's)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, num_hidden_layers: int):
        super().__init__()
        self.net = mlp(obs_dim + action_dim, hidden_dim, num_hidden_layers, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


class Agent(nn.Module):
    """The policy, the two critics that pick the best of N candidates, and a = c + h x for x in [-1, 1]."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        action_low: list[float],
        action_high: list[float],
        num_diffusion_steps: int = 20,
        beta_schedule_scale: float = 0.8,
        num_particles: int = 32,
        hidden_dim: int = 256,
        num_hidden_layers: int = 3,
        ema_policy: bool = True,
    ):
        super().__init__()
        self.num_particles = num_particles
        self.policy = DiffusionPolicy(
            obs_dim, action_dim, num_diffusion_steps, beta_schedule_scale, hidden_dim, num_hidden_layers
        )
        self.qf1 = QNetwork(obs_dim, action_dim, hidden_dim, num_hidden_layers)
        self.qf2 = QNetwork(obs_dim, action_dim, hidden_dim, num_hidden_layers)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)
        self.register_buffer("exploration_std", torch.tensor(0.0))  # --exploration-noise * alpha, set by training
        if (
            ema_policy
        ):  # the reference acts with an EMA copy of the policy; critic targets and losses use the online one
            self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)

    @property
    def acting_policy(self) -> nn.Module:  # what rollouts, evaluation and the saved policy act with
        return getattr(self, "ema_policy", self.policy)

    def min_q(self, obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.min(self.qf1(obs, x), self.qf2(obs, x))

    def best_of_n(self, obs: torch.Tensor, policy: nn.Module | None = None) -> torch.Tensor:
        """x in [-1, 1]: of N chains per state of ``policy`` (default: the acting one), the highest min_i Q_i(s, x)."""
        batch, n = obs.shape[0], self.num_particles
        repeated_obs = obs.repeat_interleave(n, 0)
        candidates = (self.acting_policy if policy is None else policy).sample(repeated_obs)
        best = self.min_q(repeated_obs, candidates).view(batch, n).argmax(1)
        return candidates.view(batch, n, -1)[torch.arange(batch, device=obs.device), best]

    def explore(self, obs: torch.Tensor, policy: nn.Module | None = None) -> torch.Tensor:
        """An executed (normalised) action: best of N plus N(0, exploration_std^2) noise, clipped to [-1, 1]."""
        x = self.best_of_n(obs, policy)
        return (x + self.exploration_std * torch.randn_like(x)).clamp(-1.0, 1.0)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_half_width * x

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """deterministic: best of N without exploration noise (the chains stay random, as in the reference)."""
        return self.scale(self.best_of_n(obs) if deterministic else self.explore(obs))


def dpmd_weights(min_q, q_mean: float, q_std: float, alpha: float, q_clip: float, reference: bool = False):
    """w = exp(clip((Q - mu) / sigma, -c, c) / alpha): the mirror-descent step pi_new ~ pi_old exp(Q / alpha).
    reference: Q - mu / sigma in place of (Q - mu) / sigma, as the reference's code computes it."""
    normalized = min_q - q_mean / q_std if reference else (min_q - q_mean) / q_std
    return torch.exp(normalized.clamp(-q_clip, q_clip) / alpha)


def weighted_denoising_loss(policy, obs, actions, weights):
    """E[w ||eps_theta(s, x_t, t) - eps||^2] (mean over batch and action), x_t = q_sample(t, a, eps), t ~ U{0..T-1}."""
    t = torch.randint(0, policy.num_diffusion_steps, (obs.shape[0],), device=obs.device)
    noise = torch.randn_like(actions)
    predicted = policy.noise_predictor(obs, policy.q_sample(t, actions, noise), t)
    return (weights[:, None] * (predicted - noise) ** 2).mean()


def exploration_entropy(alpha: float, exploration_noise: float, action_dim: int) -> float:
    """Entropy of N(0, sigma^2 I_d), sigma = exploration_noise * alpha: what alpha's tuning drives to target."""
    return 0.5 * action_dim * math.log(2 * math.pi * math.e * (exploration_noise * alpha) ** 2)


def critic_target(rewards, terminations, next_min_q, reward_scale: float, gamma: float) -> torch.Tensor:
    """y = s_r r + gamma (1 - terminated) min_i Q_target_i(s', a'): no entropy term, as the reference."""
    return reward_scale * rewards + gamma * (1.0 - terminations) * next_min_q


def alpha_loss(log_alpha: torch.Tensor, entropy: float, target_entropy: float) -> torch.Tensor:
    """-log(alpha) (target - H), H the exploration noise's entropy: a step lowers alpha while H is above target."""
    return -log_alpha * (target_entropy - entropy)


def policy_learning_rate(args: Args, policy_updates: int) -> float:
    """--policy-lr, then linear to --policy-lr-end over --policy-lr-decay-steps from --policy-lr-decay-start."""
    progress = min(max(policy_updates - args.policy_lr_decay_start, 0) / args.policy_lr_decay_steps, 1.0)
    return args.policy_lr + (args.policy_lr_end - args.policy_lr) * progress


def main() -> None:
    run = Run(Args, "peers.dpmd", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    action_low, action_high = envs.single_action_space.low, envs.single_action_space.high
    action_center, action_half_width = (action_high + action_low) / 2, (action_high - action_low) / 2
    agent_kwargs = dict(**run.space, num_diffusion_steps=args.num_diffusion_steps, num_particles=args.num_particles)
    agent_kwargs.update(beta_schedule_scale=args.beta_schedule_scale, hidden_dim=args.hidden_dim)
    agent_kwargs.update(num_hidden_layers=args.num_hidden_layers, ema_policy=args.ema_policy)

    def networks():
        return [Agent(**agent_kwargs)] + [
            QNetwork(obs_dim, action_dim, args.hidden_dim, args.num_hidden_layers) for _ in range(2)
        ]

    buffer_bytes = ReplayBuffer.bytes(args.buffer_size, obs_dim, action_dim)
    flags = "--hidden-dim, --num-hidden-layers or --buffer-size"
    agent, qf1_target, qf2_target = run.build(networks, flags, buffer_bytes)
    qf1_target.load_state_dict(agent.qf1.state_dict())
    qf2_target.load_state_dict(agent.qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(agent.qf1.parameters()) + list(agent.qf2.parameters()), lr=args.q_lr)
    policy_optimizer = torch.optim.Adam(agent.policy.parameters(), lr=args.policy_lr)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    target_entropy = -args.target_entropy_scale * action_dim
    obs_normalizer = ObservationNormalizer.identity((obs_dim,))  # no normalisation, as the reference
    state = dict(
        agent=agent, qf1_target=qf1_target, qf2_target=qf2_target, q_optimizer=q_optimizer, log_alpha=log_alpha
    )
    state.update(policy_optimizer=policy_optimizer, alpha_optimizer=alpha_optimizer, obs_normalizer=obs_normalizer)
    replay_buffer = ReplayBuffer(args.buffer_size, obs_dim, (action_dim,), device)
    checkpoint = run.restore(state, replay_buffer, agent_kwargs=agent_kwargs)
    global_step, updates, policy_updates = (
        checkpoint.get(key, 0) for key in ("global_step", "updates", "policy_updates")
    )
    q_mean, q_std = checkpoint.get("q_mean", 0.0), checkpoint.get("q_std", 1.0)  # running Q statistics (reference's)
    alpha = log_alpha.exp().item()
    agent.exploration_std.fill_(args.exploration_noise * alpha)

    learning_starts = run.learning_starts(args.learning_starts)
    targets = [(agent.qf1, qf1_target), (agent.qf2, qf2_target)] + [
        (agent.policy, agent.acting_policy)
    ] * args.ema_policy

    session_updates, last_print, next_checkpoint = 0, global_step, global_step + args.checkpoint_frequency
    obs = run.reset_envs()

    while global_step < args.total_timesteps and run.stop is None:
        global_step += args.num_envs
        if global_step <= learning_starts and not run.refill_buffer:
            x = (envs.action_space.sample() - action_center) / action_half_width  # uniform, normalised
        else:
            with torch.inference_mode():
                x = agent.explore(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        next_obs, infos = step_and_store(envs, obs, action_center + action_half_width * x, replay_buffer, x)
        run.episodes(infos, global_step)
        obs = next_obs

        for _ in range(args.updates_per_iteration if global_step > learning_starts else 0):
            if session_updates == 0:
                update_start_time = time.time()
            updates, session_updates = updates + 1, session_updates + 1
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = replay_buffer.sample(args.batch_size)
            with torch.no_grad():
                # y = s_r r + gamma (1 - terminated) min_i Q_target_i(s', a'), a' drawn as an executed action.
                next_actions = agent.explore(b_next_obs, agent.policy)
                next_min_q = torch.min(qf1_target(b_next_obs, next_actions), qf2_target(b_next_obs, next_actions))
                target_q = critic_target(b_rewards, b_terminations, next_min_q, args.reward_scale, args.gamma)
            qf1_values, qf2_values = agent.qf1(b_obs, b_actions), agent.qf2(b_obs, b_actions)
            qf1_loss, qf2_loss = F.mse_loss(qf1_values, target_q), F.mse_loss(qf2_values, target_q)
            run.check_finite("critic loss", qf1_loss + qf2_loss, global_step)
            q_optimizer.zero_grad()
            (qf1_loss + qf2_loss).backward()
            q_optimizer.step()

            with torch.no_grad():
                min_q = agent.min_q(b_next_obs, next_actions)  # the critics just updated, as the reference
            if (updates - 1) % args.policy_frequency == 0:
                # DPMD's actor loss: E[w(s', a') ||eps_theta(s', x_t, t) - eps||^2] on the policy's own samples.
                reference = args.q_normalization == "reference"
                weights = dpmd_weights(min_q, q_mean, q_std, alpha, args.q_clip, reference)
                actor_loss = weighted_denoising_loss(agent.policy, b_next_obs, next_actions, weights)
                run.check_finite("actor loss", actor_loss, global_step)
                policy_updates += 1
                policy_optimizer.param_groups[0]["lr"] = policy_learning_rate(args, policy_updates - 1)
                policy_optimizer.zero_grad()
                actor_loss.backward()
                policy_optimizer.step()
                for network, target in targets:  # the target critics and the EMA policy
                    for param, target_param in zip(network.parameters(), target.parameters()):
                        target_param.data.lerp_(param.data, args.tau)
            q_mean += args.q_stats_rate * (min_q.mean().item() - q_mean)
            q_std += args.q_stats_rate * (min_q.std().item() - q_std)
            if args.autotune and (updates - 1) % args.alpha_frequency == 0:
                alpha_optimizer.zero_grad()
                alpha_loss(
                    log_alpha, exploration_entropy(alpha, args.exploration_noise, action_dim), target_entropy
                ).backward()
                alpha_optimizer.step()
                alpha = log_alpha.exp().item()
                agent.exploration_std.fill_(args.exploration_noise * alpha)

        if global_step - last_print >= 1000 or global_step >= args.total_timesteps:
            last_print = global_step
            updates_per_second = session_updates / (time.time() - update_start_time) if session_updates else 0.0
            entropy = exploration_entropy(alpha, args.exploration_noise, action_dim)
            text = f"exploration entropy {entropy:7.2f} | alpha {alpha:.2e} | updates/s {updates_per_second:.1f}"
            run.show(global_step, text, learning_starts)
            if session_updates:
                run.log(global_step, "charts", updates_per_second=updates_per_second, alpha=alpha)
                run.log(global_step, "charts", exploration_entropy=entropy, q_running_mean=q_mean, q_running_std=q_std)
                run.log(global_step, "charts", weights_max=weights.max(), weights_mean=weights.mean())
                run.log(global_step, "losses", qf1_values=qf1_values.mean(), qf1_loss=qf1_loss, qf2_loss=qf2_loss)
                run.log(global_step, "losses", qf_loss=(qf1_loss + qf2_loss).item() / 2, actor_loss=actor_loss)
        if args.save_model and global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_frequency
            run.save(
                global_step, replay_buffer, updates=updates, policy_updates=policy_updates, q_mean=q_mean, q_std=q_std
            )

    run.finish(global_step, replay_buffer, updates=updates, policy_updates=policy_updates, q_mean=q_mean, q_std=q_std)


if __name__ == "__main__":
    run_cli(main, SCRIPT_NAME)
