"""DiffSAC: soft actor-critic whose Gaussian actor is a K-step diffusion policy.

Sanokowski, Patil, Knoll, arXiv 2512.02019 (DiffSAC). The maths is written out in
docs/method.md; "method.md §n" below names its sections.

    python diffsac.py --env-id Hopper-v4 --num-diffusion-steps 8

Everything is CleanRL's SAC (twin critics Q(s, a) with target networks, delayed actor
updates, temperature auto-tuning) except the actor: the action is sampled through the K
reverse kernels of the diffusion policy (method.md §1) with the reparameterisation
x_{k-1} = mean(s, x_k, k) + sigma_k * eps_k through all K steps, and log pi(a|s) is
replaced by the path log-ratio L(s, x_{0:K}) (method.md §2) in the critic target
    y = r + gamma * (1 - terminated) * (min_i Q_target_i(s', a') - alpha * L(s', x'_{0:K}))
and in the actor loss E[alpha * L - min_i Q_i(s, a)]. The temperature is tuned so that
the entropy estimate H_est = -E[L] (a lower bound on the policy entropy) tracks
-target_entropy_scale * action_dim.

Choices the design leaves open, made here:
- The diffusion actor is the one of diffppo.py (copied; the maths tests run on both copies):
  at initialisation it is the exact reverse process of x_0 ~ N(0, I). Here its mean network
  uses ReLU and 128 units (the critics keep CleanRL's 256): it runs K times per action, and
  at 256 units K=8 would cost 1.6x the gradient-update time (37 vs 59 updates/s on Pendulum).
- Observations are not normalised (as in CleanRL's SAC); checkpoints hold an identity
  normaliser so that common.evaluation treats every script alike.
- Episodes cut by a time limit store their true final observation and are bootstrapped;
  only terminations stop the bootstrap.
- --actor-loss log-variance (not the paper's): a mass-covering actor loss, the variance over
  several chains per state of alpha * L - min Q on widened paths (method.md §2). It gives the modes
  of a multimodal pi* their weights where the surrogate starves one (docs/multimodal.md).
- The replay buffer is saved beside each checkpoint (its filled rows: 108 MB for Hopper and 3.1 GB
  for Humanoid at 1M transitions), so that --resume continues learning where the run stopped.
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
import torch.nn as nn
import torch.nn.functional as F

from common.envs import ConfigError, finished_episodes, make_vector_env, run_cli, true_next_observations
from common.evaluation import evaluate
from common.normalization import ObservationNormalizer
from common.runs import (Progress, StopSignals, check_memory, count_parameters, open_writer, parse_args,
                         replay_buffer_bytes, resume_replay_buffer, run_paths, save_with_replay_buffer)


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
    """CPU threads for torch"""
    capture_video: bool = False
    """whether to capture videos of the agent (see the `videos` folder)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (pip install wandb)"""
    wandb_project_name: str = "diffusion-maxent-rl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """save a checkpoint and the replay buffer (filled rows; Hopper 108 MB, Humanoid 3.1 GB at 1M) every --checkpoint-frequency steps and at the end, then evaluate"""
    checkpoint_frequency: int = 50000
    """environment steps between checkpoints when --save-model is set"""
    resume: str | None = None
    """path of a checkpoint to continue: its run, flags, folder and replay buffer (only --total-timesteps and the like may change)"""
    eval_episodes: int = 10
    """episodes of deterministic evaluation of the saved model at the end"""

    # Algorithm specific arguments
    env_id: str = "Hopper-v4"
    """the id of the environment (any gymnasium id with a bounded Box action space)"""
    total_timesteps: int = 1000000
    """total environment steps of the experiment"""
    num_envs: int = 1
    """the number of parallel game environments"""
    buffer_size: int = 1000000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    learning_starts: int = 5000
    """environment steps of random actions before learning starts"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """the frequency of training policy (delayed; this many actor updates each time)"""
    target_network_frequency: int = 1
    """the frequency of updates for the target networks"""
    alpha: float = 0.2
    """entropy regularization coefficient (initial value if --autotune)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""
    alpha_start: float | None = None
    """with --no-autotune: start hotter, at this alpha, and cool to --alpha (the weight 1/alpha on Q rises linearly)"""
    alpha_anneal_fraction: float = 0.5
    """share of the gradient updates over which --alpha-start cools to --alpha"""
    target_entropy_scale: float = 1.0
    """target entropy = -target_entropy_scale * action_dim, applied to H_est = -E[L]"""

    # Diffusion policy
    num_diffusion_steps: int = 8
    """K, the number of diffusion (denoising) steps per action"""
    min_std: float = 0.01
    """floor of every reverse-kernel standard deviation sigma_k"""
    hidden_dim: int = 256
    """width of the two hidden layers of the Q networks"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the actor's mean network (run K times per action)"""
    actor_loss: str = "reverse-kl"
    """"reverse-kl": E[alpha L - min Q], pathwise (the paper's); "log-variance": mass-covering variant (method.md §2)"""
    chains_per_state: int = 8
    """with --actor-loss log-variance: chains drawn at each replayed state (the variance is taken over them)"""
    behaviour_noise_scale: float = 1.5
    """with --actor-loss log-variance: kernel noise x this when drawing its training paths (1: the chain's own paths)"""


def validate_args(args: Args) -> None:
    """One clear ConfigError per impossible flag, before any environment or network is built."""
    if args.num_diffusion_steps < 1:
        raise ConfigError(f"--num-diffusion-steps must be at least 1 (got {args.num_diffusion_steps}).")
    for flag, value in [("--num-envs", args.num_envs), ("--batch-size", args.batch_size),
                        ("--buffer-size", args.buffer_size), ("--policy-frequency", args.policy_frequency),
                        ("--target-network-frequency", args.target_network_frequency),
                        ("--hidden-dim", args.hidden_dim), ("--actor-hidden-dim", args.actor_hidden_dim),
                        ("--checkpoint-frequency", args.checkpoint_frequency),
                        ("--torch-threads", args.torch_threads)]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value}).")
    if args.batch_size > args.buffer_size:
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
                          "allowed: --batch-size <= --buffer-size.")
    if args.learning_starts < args.batch_size:
        raise ConfigError(f"--learning-starts {args.learning_starts} is below --batch-size {args.batch_size}; "
                          "allowed: --learning-starts >= --batch-size (the first batch must exist).")
    if args.total_timesteps <= args.learning_starts:
        raise ConfigError(f"--total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts}.")
    if args.alpha < 0 or ((args.autotune or args.actor_loss == "log-variance") and args.alpha <= 0):
        raise ConfigError(f"--alpha must be >= 0, and > 0 with --autotune or --actor-loss log-variance (got {args.alpha}).")
    if args.alpha_start is not None:
        if args.autotune:
            raise ConfigError("--alpha-start anneals a fixed temperature; add --no-autotune (or drop --alpha-start).")
        if not (math.isfinite(args.alpha_start) and args.alpha_start > args.alpha > 0):
            raise ConfigError(f"--alpha-start must be a number above --alpha > 0 (got {args.alpha_start} and {args.alpha}).")
    if not 0 < args.alpha_anneal_fraction <= 1:
        raise ConfigError(f"--alpha-anneal-fraction must be in (0, 1] (got {args.alpha_anneal_fraction}).")
    if not 0 < args.gamma <= 1:
        raise ConfigError(f"--gamma must be in (0, 1] (got {args.gamma}).")
    if not 0 < args.tau <= 1:
        raise ConfigError(f"--tau must be in (0, 1] (got {args.tau}).")
    for flag, value in [("--policy-lr", args.policy_lr), ("--q-lr", args.q_lr), ("--min-std", args.min_std)]:
        if value <= 0:
            raise ConfigError(f"{flag} must be positive (got {value}).")
    if args.min_std >= 1:
        raise ConfigError(f"--min-std must be below 1, the largest sigma_k (got {args.min_std}).")
    if args.actor_loss not in ("reverse-kl", "log-variance"):
        raise ConfigError(f"--actor-loss {args.actor_loss!r}: allowed: reverse-kl, log-variance.")
    if args.chains_per_state < 2:
        raise ConfigError(f"--chains-per-state must be at least 2, a variance needs two chains (got {args.chains_per_state}).")
    if not (math.isfinite(args.behaviour_noise_scale) and args.behaviour_noise_scale > 0):
        raise ConfigError(f"--behaviour-noise-scale must be a positive number (got {args.behaviour_noise_scale}).")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------
# Diffusion policy maths (method.md §1, §2)
# ----------------------------------------------------------------------------------------------
LOG_2PI = math.log(2 * math.pi)


def cosine_beta_schedule(num_diffusion_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_k, k = 1..K (index k-1), from alpha_bar(t) = cos^2(((t/K + s)/(1 + s)) pi/2) (Nichol & Dhariwal 2021)."""
    t = torch.arange(num_diffusion_steps + 1, dtype=torch.float64) / num_diffusion_steps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta).float()


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


class DiffusionActor(nn.Module):
    """K Gaussian reverse kernels q(x_{k-1} | x_k, s, k) = N(mean, diag(sigma_k^2)) (method.md §1).

    Chains are stored in time order: chain[:, j] = x_{K-j}, so chain[:, 0] = x_K and
    chain[:, K] = x_0; step j goes from x_k to x_{k-1} with k = K - j.
    """

    def __init__(self, obs_dim: int, action_dim: int, num_diffusion_steps: int, hidden_dim: int = 64,
                 min_std: float = 0.01, time_embedding_dim: int = 16, activation: str = "tanh"):
        super().__init__()
        self.num_diffusion_steps, self.action_dim = num_diffusion_steps, action_dim
        Activation = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.activation = {"tanh": torch.tanh, "relu": torch.relu}[activation]  # the same, as a function
        betas = cosine_beta_schedule(num_diffusion_steps)
        self.register_buffer("betas", betas)  # beta_k at index k-1
        self.register_buffer("sqrt_alphas", torch.sqrt(1 - betas))
        self.register_buffer("step_k", torch.arange(num_diffusion_steps, 0, -1))  # k of step j = K - j
        self.time_embedding = nn.Embedding(num_diffusion_steps + 1, time_embedding_dim)
        self.mean_net = nn.Sequential(
            layer_init(nn.Linear(obs_dim + action_dim + time_embedding_dim, hidden_dim)), Activation(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)), Activation(),
            layer_init(nn.Linear(hidden_dim, action_dim), std=0.01),
        )
        # sigma_k^2 = beta_k at initialisation: the exact reverse process of x_0 ~ N(0, I).
        self.log_std = nn.Parameter(0.5 * torch.log(betas)[:, None].repeat(1, action_dim))
        self.log_std_min = math.log(min_std)

    def clamp_log_std_(self) -> None:
        """Keep sigma_k in [min_std, 1] after an optimiser step (the forward pass clamps too)."""
        with torch.no_grad():
            self.log_std.clamp_(self.log_std_min, 0.0)

    def kernel(self, obs: torch.Tensor, x_k: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(x_{k-1} | x_k, s, k); k is a LongTensor of diffusion indices in 1..K."""
        features = torch.cat([obs, x_k, self.time_embedding(k)], dim=-1)
        mean = self.sqrt_alphas[k - 1, None] * x_k + self.mean_net(features)
        std = self.log_std[k - 1].clamp(self.log_std_min, 0.0).exp()
        return mean, std

    def log_prob(self, obs: torch.Tensor, x_k: torch.Tensor, k: torch.Tensor, x_previous: torch.Tensor) -> torch.Tensor:
        """log q(x_{k-1} | x_k, s, k) for a batch of augmented samples (any mix of k)."""
        mean, std = self.kernel(obs, x_k, k)
        return gaussian_log_prob(x_previous, mean, std)

    def forward_log_prob(self, x_k: torch.Tensor, x_previous: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """log p(x_k | x_{k-1}) = log N(x_k; sqrt(alpha_k) x_{k-1}, beta_k I), the fixed noising kernel."""
        return gaussian_log_prob(x_k, self.sqrt_alphas[k - 1, None] * x_previous, self.betas[k - 1, None].sqrt())

    def sample_chain(self, obs: torch.Tensor, deterministic: bool = False,
                     noise_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(chain [B, K+1, d] in time order, log q of each step [B, K] in time order).

        deterministic: x_K = 0 and every step takes the kernel mean (no noise).
        noise_scale: x_{k-1} = mean + noise_scale * sigma_k * eps (widened paths; log q stays the kernels').
        The mean network's first layer is split so that its observation part is computed
        once per chain rather than once per step (same numbers as ``kernel``, faster).
        """
        batch, K = obs.shape[0], self.num_diffusion_steps
        first, second, last = self.mean_net[0], self.mean_net[2], self.mean_net[4]
        obs_dim = obs.shape[1]
        obs_part = nn.functional.linear(obs, first.weight[:, :obs_dim], first.bias)  # [B, H], shared by all steps
        x_weight, time_weight = first.weight[:, obs_dim:obs_dim + self.action_dim], first.weight[:, obs_dim + self.action_dim:]
        time_part = self.time_embedding.weight @ time_weight.T  # [K+1, H], row k
        log_std = self.log_std.clamp(self.log_std_min, 0.0)  # [K, d], row k-1
        std = noise_scale * log_std.exp()  # the widened paths' step size; log q below keeps the kernels' own sigma
        noise_shape = (K + 1, batch, self.action_dim)
        noise = obs.new_zeros(noise_shape) if deterministic else torch.randn(noise_shape, device=obs.device, dtype=obs.dtype)
        # What does not depend on x is computed for every step at once, outside the loop, and the layers are
        # called as functions: the same numbers as ``kernel`` with far fewer tensor operations per step.
        step_bias = (obs_part[None] + time_part[:, None]).unbind(0)  # row k: obs_part + time_part[k], [B, H]
        step_noise = (std.flip(0)[:, None] * noise[1:]).unbind(0)  # row j-1: sigma_k eps_j, k = K - j + 1
        activation, sqrt_alphas = self.activation, self.sqrt_alphas.tolist()
        x, chain = noise[0], [noise[0]]
        for j, k in enumerate(range(K, 0, -1), start=1):
            hidden = activation(step_bias[k] + nn.functional.linear(x, x_weight))
            hidden = activation(nn.functional.linear(hidden, second.weight, second.bias))
            x = sqrt_alphas[k - 1] * x + nn.functional.linear(hidden, last.weight, last.bias) + step_noise[j - 1]
            chain.append(x)
        # log q(x_{k-1}|x_k) with x_{k-1} = mean + sigma_k * noise_scale * noise: only the noise enters the quadratic term.
        step_log_std = log_std.flip(0).sum(-1)  # [K], time order
        step_log_q = (-0.5 * (noise_scale * noise[1:]) ** 2).sum(-1).T - step_log_std - 0.5 * LOG_2PI * self.action_dim
        return torch.stack(chain, dim=1), step_log_q

    def path_log_ratio_terms(self, chain: torch.Tensor, step_log_q: torch.Tensor, action_half_width: torch.Tensor):
        """The three parts of L(s, x_{0:K}) (method.md §2), per sample:

        step_log_ratio [B, K] (time order): l_k = log q(x_{k-1}|x_k,s) - log p(x_k|x_{k-1});
        log_prior [B]: log N(x_K; 0, I);
        squash_log_det [B]: sum_i log h_i + log(1 - tanh(x_{0,i})^2), the log-Jacobian of a = c + h tanh(x_0).
        L = log_prior + step_log_ratio.sum(1) - squash_log_det.
        """
        step_k = self.step_k.expand(chain.shape[0], -1)
        step_log_ratio = step_log_q - self.forward_log_prob(chain[:, :-1], chain[:, 1:], step_k)
        log_prior = gaussian_log_prob(chain[:, 0], torch.zeros_like(chain[:, 0]), torch.ones_like(chain[:, 0]))
        squash_log_det = (torch.log(action_half_width) + log_one_minus_tanh_squared(chain[:, -1])).sum(-1)
        return step_log_ratio, log_prior, squash_log_det




class SoftQNetwork(nn.Module):
    """Q(s, a), as CleanRL's SAC."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + action_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.cat([obs, action], dim=1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x).squeeze(-1)


class Agent(nn.Module):
    """The diffusion actor (ReLU, as CleanRL's SAC networks) and the squashing a = c + h tanh(x_0)."""

    def __init__(self, obs_dim: int, action_dim: int, action_low: list[float], action_high: list[float],
                 num_diffusion_steps: int, hidden_dim: int = 256, min_std: float = 0.01, activation: str = "relu"):
        super().__init__()
        self.actor = DiffusionActor(obs_dim, action_dim, num_diffusion_steps, hidden_dim, min_std, activation=activation)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x_0: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x_0)."""
        return self.action_center + self.action_half_width * torch.tanh(x_0)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, path log-ratio L [B], chain) with the action reparameterised through all K steps."""
        chain, step_log_q = self.actor.sample_chain(obs)
        step_log_ratio, log_prior, squash_log_det = self.actor.path_log_ratio_terms(chain, step_log_q, self.action_half_width)
        return self.squash(chain[:, -1]), log_prior + step_log_ratio.sum(1) - squash_log_det, chain

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        chain, _ = self.actor.sample_chain(obs, deterministic)
        return self.squash(chain[:, -1])


class ReplayBuffer:
    """Transitions (s, a, r, s', terminated) in preallocated tensors on the training device.

    s' is the observation the environment actually reached, also when the episode was cut
    by a time limit; only `terminated` (not truncation) stops bootstrapping.
    """

    def __init__(self, buffer_size: int, obs_dim: int, action_dim: int, device: torch.device):
        self.obs = torch.zeros((buffer_size, obs_dim), device=device)
        self.next_obs = torch.zeros((buffer_size, obs_dim), device=device)
        self.actions = torch.zeros((buffer_size, action_dim), device=device)
        self.rewards = torch.zeros(buffer_size, device=device)
        self.terminations = torch.zeros(buffer_size, device=device)
        self.buffer_size, self.position, self.size, self.device = buffer_size, 0, 0, device

    def add(self, obs, next_obs, actions, rewards, terminations) -> None:
        """Store one row per environment: one copy per field, whatever the number of envs."""
        rows = (self.position + torch.arange(len(obs), device=self.device)) % self.buffer_size
        for storage, values in ((self.obs, obs), (self.next_obs, next_obs), (self.actions, actions),
                               (self.rewards, rewards), (self.terminations, terminations)):
            storage[rows] = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        self.position = (self.position + len(obs)) % self.buffer_size
        self.size = min(self.size + len(obs), self.buffer_size)

    def sample(self, batch_size: int):
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[index], self.actions[index], self.rewards[index], self.next_obs[index], self.terminations[index]


def step_and_store(envs, obs: np.ndarray, actions: np.ndarray, replay_buffer: ReplayBuffer):
    """Step the envs and store (s, a, r, s', terminated) with s' the state actually reached.

    When an episode ends the envs return the next episode's first observation; the replay
    buffer gets the true final observation instead, and a truncation (time limit) is not
    stored as a termination, so its target still bootstraps from Q(s', a').
    """
    next_obs, rewards, terminations, truncations, infos = envs.step(actions)
    replay_buffer.add(obs, true_next_observations(next_obs, infos), actions, rewards, terminations)
    return next_obs, infos


def soft_bellman_target(rewards: torch.Tensor, terminations: torch.Tensor, next_min_q: torch.Tensor,
                        next_path_log_ratio: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """y = r + gamma (1 - terminated) (min_i Q_target_i(s', a') - alpha L(s', x'_{0:K})), L in place of log pi."""
    return rewards + gamma * (1.0 - terminations) * (next_min_q - alpha * next_path_log_ratio)


def actor_loss_and_entropy(agent: Agent, qf1: SoftQNetwork, qf2: SoftQNetwork, obs: torch.Tensor, alpha: float):
    """(E[alpha L - min_i Q_i(s, a)], H_est = -E[L] detached): the paper's surrogate (method.md §2)."""
    actions, path_log_ratio, _ = agent.sample(obs)
    # The critics only pass gradients through to the action: building the graph with their
    # parameters frozen skips the weight gradients that the actor optimiser would not use.
    qf1.requires_grad_(False)
    qf2.requires_grad_(False)
    min_q = torch.min(qf1(obs, actions), qf2(obs, actions))
    qf1.requires_grad_(True)
    qf2.requires_grad_(True)
    return (alpha * path_log_ratio - min_q).mean(), -path_log_ratio.detach().mean()


def log_variance_actor_loss(agent: Agent, qf1: SoftQNetwork, qf2: SoftQNetwork, obs: torch.Tensor, alpha: float,
                            chains_per_state: int, noise_scale: float):
    """(Var_m[alpha L - min_i Q_i(s, a)] / (2 alpha), H_est): the log-variance divergence (method.md §2).

    M = chains_per_state paths are drawn at each state without gradient, from the chain with its noise
    multiplied by noise_scale; L of those fixed paths is then re-evaluated with gradient, and the variance
    is taken over the M paths of one state (log Z(s) differs between states). On the chain's own paths
    (noise_scale 1) the gradient equals the score-function gradient of E[alpha L - Q] with the per-state
    mean as baseline; on wider paths the objective covers pi*'s mass instead of seeking one mode.
    """
    actor, K, action_dim = agent.actor, agent.actor.num_diffusion_steps, agent.actor.action_dim
    obs = obs.repeat_interleave(chains_per_state, 0)
    with torch.no_grad():
        chain, _ = actor.sample_chain(obs, noise_scale=noise_scale)
        actions = agent.squash(chain[:, -1])
        min_q = torch.min(qf1(obs, actions), qf2(obs, actions))
        _, own_path_log_ratio, _ = agent.sample(obs[::chains_per_state])  # H_est on the chain's own paths
    step_log_q = actor.log_prob(obs.repeat_interleave(K, 0), chain[:, :-1].reshape(-1, action_dim),
                                actor.step_k.repeat(len(obs)), chain[:, 1:].reshape(-1, action_dim)).view(-1, K)
    step_log_ratio, log_prior, squash_log_det = actor.path_log_ratio_terms(chain, step_log_q, agent.action_half_width)
    path_log_ratio = log_prior + step_log_ratio.sum(1) - squash_log_det
    objective = (alpha * path_log_ratio - min_q).view(-1, chains_per_state)
    return objective.var(dim=1, unbiased=False).mean() / (2 * alpha), -own_path_log_ratio.mean()


def annealed_alpha(alpha: float, alpha_start: float, progress: float) -> float:
    """Temperature at `progress` in [0, 1] of the annealing: 1/alpha_t rises linearly from 1/alpha_start to 1/alpha."""
    weight = alpha / alpha_start + (1.0 - alpha / alpha_start) * min(max(progress, 0.0), 1.0)
    return alpha / weight


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """alpha (H_est - target): descending it lowers alpha when the entropy estimate is above target, raises it below."""
    return log_alpha.exp() * (entropy_estimate - target_entropy)


def main() -> None:
    args, checkpoint = parse_args(Args, "diffsac", "diffsac.py")
    validate_args(args)
    run_name = checkpoint["run_name"] if checkpoint else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    envs = make_vector_env(args.env_id, args.num_envs, args.seed, args.capture_video, run_name)
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent_kwargs = dict(obs_dim=obs_dim, action_dim=action_dim,
                        action_low=envs.single_action_space.low.tolist(),
                        action_high=envs.single_action_space.high.tolist(),
                        num_diffusion_steps=args.num_diffusion_steps, hidden_dim=args.actor_hidden_dim, min_std=args.min_std)
    check_memory(count_parameters(lambda: [Agent(**agent_kwargs)] + [SoftQNetwork(obs_dim, action_dim, args.hidden_dim)] * 4),
                 replay_buffer_bytes(args.buffer_size, obs_dim, action_dim), device,
                 "--hidden-dim, --actor-hidden-dim or --buffer-size")
    agent = Agent(**agent_kwargs).to(device)
    qf1, qf2 = SoftQNetwork(obs_dim, action_dim, args.hidden_dim).to(device), SoftQNetwork(obs_dim, action_dim, args.hidden_dim).to(device)
    qf1_target, qf2_target = SoftQNetwork(obs_dim, action_dim, args.hidden_dim).to(device), SoftQNetwork(obs_dim, action_dim, args.hidden_dim).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(agent.parameters(), lr=args.policy_lr)
    target_entropy = -args.target_entropy_scale * action_dim
    log_alpha = torch.tensor(math.log(args.alpha) if args.alpha > 0 else -math.inf, device=device, requires_grad=args.autotune)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr) if args.autotune else None
    # SAC does not normalise observations; an identity normaliser keeps checkpoints uniform.
    obs_normalizer = ObservationNormalizer.identity((obs_dim,))
    global_step, learning_starts = 0, args.learning_starts
    networks = {"qf1": qf1, "qf2": qf2, "qf1_target": qf1_target, "qf2_target": qf2_target,
                "q_optimizer": q_optimizer, "actor_optimizer": actor_optimizer}
    if checkpoint:
        if checkpoint["agent_kwargs"] != agent_kwargs:
            raise ConfigError(f"--resume {args.resume}: the checkpoint's env or network ({checkpoint['agent_kwargs']}) "
                              "differs from the flags given; allowed: the same --env-id, --num-diffusion-steps, --actor-hidden-dim, --min-std.")
        agent.load_state_dict(checkpoint["agent"])
        for name, module in networks.items():
            module.load_state_dict(checkpoint[name])
        with torch.no_grad():
            log_alpha.fill_(checkpoint["log_alpha"])
        if alpha_optimizer and checkpoint.get("alpha_optimizer"):
            alpha_optimizer.load_state_dict(checkpoint["alpha_optimizer"])
        global_step = checkpoint["global_step"]
    alpha = log_alpha.exp().item()
    replay_buffer = ReplayBuffer(args.buffer_size, obs_dim, action_dim, device)
    if checkpoint:  # the buffer saved beside the checkpoint; without it, refill before updating again
        learning_starts = resume_replay_buffer(args, replay_buffer, global_step, learning_starts, run_name)

    run_dir, model_path = run_paths(args, run_name)
    writer = open_writer(run_dir, args, checkpoint)

    def checkpoint_state() -> dict:
        return {"script": "diffsac", "args": asdict(args), "agent_kwargs": agent_kwargs, "run_name": run_name,
                "agent": agent.state_dict(), **{name: module.state_dict() for name, module in networks.items()},
                "obs_normalizer": obs_normalizer.state_dict(), "log_alpha": log_alpha.item(),
                "alpha_optimizer": alpha_optimizer.state_dict() if alpha_optimizer else None, "global_step": global_step}

    def save() -> None:
        save_with_replay_buffer(model_path, checkpoint_state(), replay_buffer, global_step)

    stop = StopSignals()
    start_time, start_step, updates = time.time(), global_step, 0
    progress = Progress(args.total_timesteps, global_step, learning_starts=learning_starts)
    last_print = global_step
    recent_returns = deque(maxlen=10)
    obs, _ = envs.reset(seed=args.seed)
    nan = torch.tensor(float("nan"))
    entropy_estimate = qf1_values = qf2_values = qf1_loss = qf2_loss = qf_loss = actor_loss = loss_alpha = nan
    next_checkpoint = global_step + args.checkpoint_frequency

    while global_step < args.total_timesteps and not stop.requested:
        global_step += args.num_envs
        if global_step <= learning_starts and not checkpoint:
            actions = envs.action_space.sample()
        else:
            actions = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        next_obs, infos = step_and_store(envs, obs, actions, replay_buffer)
        for episode_return, episode_length in finished_episodes(infos):
            recent_returns.append(episode_return)
            writer.add_scalar("charts/episodic_return", episode_return, global_step)
            writer.add_scalar("charts/episodic_length", episode_length, global_step)
        obs = next_obs

        if global_step > learning_starts:
            if updates == 0:
                update_start_time = time.time()
            updates += 1
            if args.alpha_start is not None:
                # Progress counted from the run's own --learning-starts, so a resumed run continues the schedule.
                anneal_steps = args.alpha_anneal_fraction * (args.total_timesteps - args.learning_starts)
                alpha = annealed_alpha(args.alpha, args.alpha_start, (global_step - args.learning_starts) / anneal_steps)
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = replay_buffer.sample(args.batch_size)
            with torch.no_grad():
                next_actions, next_path_log_ratio, _ = agent.sample(b_next_obs)
                next_min_q = torch.min(qf1_target(b_next_obs, next_actions), qf2_target(b_next_obs, next_actions))
                target_q = soft_bellman_target(b_rewards, b_terminations, next_min_q, next_path_log_ratio, alpha, args.gamma)
            qf1_values, qf2_values = qf1(b_obs, b_actions), qf2(b_obs, b_actions)
            qf1_loss, qf2_loss = F.mse_loss(qf1_values, target_q), F.mse_loss(qf2_values, target_q)
            qf_loss = qf1_loss + qf2_loss
            if not torch.isfinite(qf_loss):
                raise TrainingDiverged(f"critic loss is {qf_loss.item()} at step {global_step}. "
                                       + (f"Last checkpoint: {model_path}" if args.save_model else "Use --save-model to keep checkpoints."))
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if updates % args.policy_frequency == 0:  # TD3-style delayed update, compensated by repeating it
                for _ in range(args.policy_frequency):
                    if args.actor_loss == "log-variance":
                        actor_loss, entropy_estimate = log_variance_actor_loss(
                            agent, qf1, qf2, b_obs, alpha, args.chains_per_state, args.behaviour_noise_scale)
                    else:
                        actor_loss, entropy_estimate = actor_loss_and_entropy(agent, qf1, qf2, b_obs, alpha)
                    if not torch.isfinite(actor_loss):
                        raise TrainingDiverged(f"actor loss is {actor_loss.item()} at step {global_step}.")
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()
                    agent.actor.clamp_log_std_()
                    if args.autotune:
                        loss_alpha = alpha_loss(log_alpha, entropy_estimate, target_entropy)
                        alpha_optimizer.zero_grad()
                        loss_alpha.backward()
                        alpha_optimizer.step()
                        alpha = log_alpha.exp().item()

            if updates % args.target_network_frequency == 0:
                for network, target in ((qf1, qf1_target), (qf2, qf2_target)):
                    for param, target_param in zip(network.parameters(), target.parameters()):
                        target_param.data.lerp_(param.data, args.tau)

        if global_step - last_print >= 1000 or global_step >= args.total_timesteps:
            last_print = global_step
            elapsed = time.time() - start_time
            sps = int((global_step - start_step) / elapsed)
            updates_per_second = updates / (time.time() - update_start_time) if updates else 0.0
            writer.add_scalar("charts/SPS", sps, global_step)
            recent = f"{np.mean(recent_returns):9.1f}" if recent_returns else "      n/a"
            entropy_text = "    n/a" if math.isnan(entropy_estimate) else f"{float(entropy_estimate):7.2f}"  # nan: no actor update yet
            progress.show(global_step, f"step {global_step:>9d}/{args.total_timesteps} | return (last {len(recent_returns)} episodes) {recent} "
                  f"| entropy estimate {entropy_text} | alpha {alpha:.2e} | SPS {sps} "
                  f"| updates/s {updates_per_second:.1f}")
            if updates:
                writer.add_scalar("charts/updates_per_second", updates_per_second, global_step)
                writer.add_scalar("losses/qf1_values", qf1_values.mean().item(), global_step)
                writer.add_scalar("losses/qf2_values", qf2_values.mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                writer.add_scalar("charts/entropy_estimate", entropy_estimate.item(), global_step)
                writer.add_scalar("charts/alpha", alpha, global_step)
                if args.autotune:
                    writer.add_scalar("losses/alpha_loss", loss_alpha.item(), global_step)
        if args.save_model and global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_frequency
            save()

    progress.close(run_dir)
    envs.close()
    if args.save_model:
        save()
    if stop.requested:
        writer.close()
        stop.exit("diffsac.py", global_step, model_path if args.save_model else None)
    if args.save_model:
        print(f"model saved to {model_path}")
        returns = evaluate(agent, obs_normalizer, args.env_id, args.eval_episodes, seed=args.seed, device=device)
        for index, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, index)
        print(f"evaluation ({args.eval_episodes} deterministic episodes): mean return {np.mean(returns):.2f}")
    writer.close()


if __name__ == "__main__":
    try:
        run_cli(main, "diffsac.py")
    except TrainingDiverged as error:
        print(f"diffsac.py: training diverged: {error}", file=sys.stderr)
        sys.exit(1)
