"""DiffWPO: Wasserstein policy optimisation on the diffusion-augmented MDP (DA-MDP: WPO).

Sanokowski, Patil, Knoll, arXiv 2512.02019 (DiffWPO); WPO: Pfau et al., arXiv 2505.00663.
The maths is written out in docs/method.md; "method.md §n" below names its sections.

    python diffwpo.py --env-id Hopper-v4 --num-diffusion-steps 8

Off-policy, with a replay buffer that keeps each transition's whole chain x_K..x_0.
Each environment step is K augmented steps (s, x_k, k) -> (s, x_{k-1}, k-1) (method.md §3),
each with its own log-ratio term
    lt_k = log q(x_{k-1}|x_k,s) - log p(x_k|x_{k-1}) [+ log N(x_K; 0, I) at k = K]
           [- sum_i (log h_i + log(1 - tanh(x_0i)^2)) at k = 1],        sum_k lt_k = L.
Twin augmented critics Q(s, x_k, k, x_{k-1}) learn soft Bellman targets (as SAC's Q, the
current step's own -alpha * lt_k is left out of Q and enters the soft value):
    inside the chain (k > 1): y = V(s, x_{k-1}, k-1)                       (no reward, discount 1)
    last step (k = 1):        y = r + gamma * (1 - terminated) * V(s', x'_K ~ N(0, I), K)
    V(s, x_k, k) = E_{x_{k-1} ~ q}[ Q(s, x_k, k, x_{k-1}) - alpha * lt_k ]
                 = E_{rest of the chain ~ q}[ Q_target(s, x_1, 1, x_0) - alpha * sum_{j<=k} lt_j ]
The second form (no reward, no discount inside the chain) is what soft_value computes: it rolls
the current policy out to the last step, so value information reaches every k in one target
hop instead of k hops through lagging target networks.
The actor follows the Wasserstein gradient flow at every diffusion step (method.md §4.3):
    loss = -E[ sum_i d/dx_i log q_theta(x | x_k, s) * stopgrad(d/dx_i (Q(s, x_k, k, x) - alpha * lt_k(x))) ]
at x = stopgrad(x_{k-1} sampled from the current policy); d/dx log q = -(x - mean) / sigma^2 in
closed form. With --fisher-preconditioner the velocity of each dimension is multiplied by
sigma_k^2, the inverse of the kernel's Fisher information for its mean (diagonal): the mean
then moves by the velocity itself, whatever sigma_k is (the natural-gradient form of WPO).

Choices the design leaves open, made here:
- Each critic update samples one diffusion step k per transition (uniformly), and each actor
  update one step per freshly sampled chain, so an update costs one batch whatever K is
  (using all K steps of every chain was 1.4x slower per update and, in one 8k-step Pendulum run,
  learned no faster).
- The diffusion actor is the one of diffppo.py (copied; the maths tests run on every copy),
  with ReLU and 128 units as in diffsac.py; critics have CleanRL's 256 units.
- The augmented critics see x_k and x_{k-1} through tanh, as the environment sees x_0. With raw
  inputs the critic's gradient kept growing where tanh saturates (an MLP extrapolates linearly),
  x_0 drifted outward, the entropy estimate collapsed and alpha diverged (Hopper, ~27k steps).
- Warm-up actions (before --learning-starts) come from the untrained actor, whose pre-tanh
  action is exactly N(0, I), so the stored chains are consistent with the forward process.
- Observations are not normalised (as SAC); time-limit truncations bootstrap; the replay
  buffer (the whole chains) is saved beside each checkpoint, so --resume continues learning at once.
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
    """save a checkpoint and the replay buffer (filled rows; K=8: Hopper 192 MB, Humanoid 3.6 GB at 1M) every --checkpoint-frequency steps and at the end, then evaluate"""
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
    """the replay memory buffer size (transitions, each with its chain)"""
    gamma: float = 0.99
    """the discount factor gamma (once per environment step)"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """transitions per gradient update"""
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
    target_entropy_scale: float = 1.0
    """target entropy = -target_entropy_scale * action_dim, applied to H_est = -E[L]"""
    fisher_preconditioner: bool = True
    """multiply each step's velocity by sigma_k^2 (diagonal Fisher of the kernel mean)"""
    last_step_samples: int = 0
    """extra transitions per critic update drawn at the chain's last step (k = 1, whose target holds the reward); 224 at K = 8 gives it SAC's 256"""
    actor_all_steps: bool = False
    """train the actor at every step of each chain (each kernel sees the whole batch; about K x the actor's cost), not at one drawn step"""
    inner_velocity: str = "critic"
    """actor velocity at steps k > 1: "critic" (d/dx of Q_k) or "rollout" (d/dx of one reparameterised roll-out of the rest of the chain, valued by the k = 1 critic)"""

    # Diffusion policy
    num_diffusion_steps: int = 8
    """K, the number of diffusion (denoising) steps per action"""
    min_std: float = 0.01
    """floor of every reverse-kernel standard deviation sigma_k"""
    hidden_dim: int = 256
    """width of the two hidden layers of the augmented Q networks"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the actor's mean network (run K times per action)"""


def validate_args(args: Args) -> None:
    """One clear ConfigError per impossible flag, before any environment or network is built."""
    if args.num_diffusion_steps < 1:
        raise ConfigError(f"--num-diffusion-steps must be at least 1 (got {args.num_diffusion_steps}).")
    for flag, value in [("--num-envs", args.num_envs), ("--batch-size", args.batch_size),
                        ("--buffer-size", args.buffer_size), ("--policy-frequency", args.policy_frequency),
                        ("--target-network-frequency", args.target_network_frequency),
                        ("--hidden-dim", args.hidden_dim), ("--actor-hidden-dim", args.actor_hidden_dim),
                        ("--checkpoint-frequency", args.checkpoint_frequency), ("--torch-threads", args.torch_threads)]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value}).")
    if args.batch_size > args.buffer_size:
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --buffer-size {args.buffer_size}; "
                          "allowed: --batch-size <= --buffer-size.")
    if args.learning_starts < args.batch_size:
        raise ConfigError(f"--learning-starts {args.learning_starts} is below --batch-size {args.batch_size}; "
                          "allowed: --learning-starts >= --batch-size (the first batch must exist).")
    if args.last_step_samples < 0:
        raise ConfigError(f"--last-step-samples must be at least 0 (got {args.last_step_samples}).")
    critic_batch = args.batch_size + args.last_step_samples
    if critic_batch > args.buffer_size:
        raise ConfigError(f"--batch-size {args.batch_size} + --last-step-samples {args.last_step_samples} is larger than "
                          f"--buffer-size {args.buffer_size}; allowed: their sum <= --buffer-size.")
    if args.learning_starts < critic_batch:
        raise ConfigError(f"--learning-starts {args.learning_starts} is below --batch-size + --last-step-samples ({critic_batch}); "
                          "allowed: --learning-starts >= their sum (the first batch must exist).")
    if args.total_timesteps <= args.learning_starts:
        raise ConfigError(f"--total-timesteps {args.total_timesteps} must exceed --learning-starts {args.learning_starts}.")
    if args.alpha < 0 or (args.autotune and args.alpha <= 0):
        raise ConfigError(f"--alpha must be >= 0, and > 0 with --autotune (got {args.alpha}).")
    if not 0 < args.gamma <= 1:
        raise ConfigError(f"--gamma must be in (0, 1] (got {args.gamma}).")
    if not 0 < args.tau <= 1:
        raise ConfigError(f"--tau must be in (0, 1] (got {args.tau}).")
    for flag, value in [("--policy-lr", args.policy_lr), ("--q-lr", args.q_lr), ("--min-std", args.min_std)]:
        if value <= 0:
            raise ConfigError(f"{flag} must be positive (got {value}).")
    if args.inner_velocity not in ("critic", "rollout"):
        raise ConfigError(f"--inner-velocity {args.inner_velocity!r}: allowed: critic, rollout.")
    if args.min_std >= 1:
        raise ConfigError(f"--min-std must be below 1, the largest sigma_k (got {args.min_std}).")


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

    def sample_chain(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(chain [B, K+1, d] in time order, log q of each step [B, K] in time order).

        deterministic: x_K = 0 and every step takes the kernel mean (no noise).
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
        std = log_std.exp()
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
        # log q(x_{k-1}|x_k) with x_{k-1} = mean + sigma_k * noise: only the noise enters the quadratic term.
        step_log_std = log_std.flip(0).sum(-1)  # [K], time order
        step_log_q = (-0.5 * noise[1:] ** 2).sum(-1).T - step_log_std - 0.5 * LOG_2PI * self.action_dim
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






class AugmentedQNetwork(nn.Module):
    """Q(s, x_k, k, x_{k-1}): the value of taking x_{k-1} in the augmented state (s, x_k, k)."""

    def __init__(self, obs_dim: int, action_dim: int, num_diffusion_steps: int, hidden_dim: int = 256,
                 time_embedding_dim: int = 16):
        super().__init__()
        self.time_embedding = nn.Embedding(num_diffusion_steps + 1, time_embedding_dim)
        self.fc1 = nn.Linear(obs_dim + 2 * action_dim + time_embedding_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, obs: torch.Tensor, x_k: torch.Tensor, k: torch.Tensor, x_previous: torch.Tensor) -> torch.Tensor:
        # The chain enters through tanh, as the executed action does: the critic is flat where tanh
        # saturates instead of extrapolating linearly, so its gradient cannot push x_0 without bound.
        x = F.relu(self.fc1(torch.cat([obs, torch.tanh(x_k), self.time_embedding(k), torch.tanh(x_previous)], dim=1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x).squeeze(-1)


class Agent(nn.Module):
    """The diffusion actor (ReLU) and the squashing a = c + h tanh(x_0)."""

    def __init__(self, obs_dim: int, action_dim: int, action_low: list[float], action_high: list[float],
                 num_diffusion_steps: int, hidden_dim: int = 128, min_std: float = 0.01, activation: str = "relu"):
        super().__init__()
        self.actor = DiffusionActor(obs_dim, action_dim, num_diffusion_steps, hidden_dim, min_std, activation=activation)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x_0: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x_0)."""
        return self.action_center + self.action_half_width * torch.tanh(x_0)

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        chain, _ = self.actor.sample_chain(obs, deterministic)
        return self.squash(chain[:, -1])


class ReplayBuffer:
    """Transitions (s, chain x_K..x_0, r, s', terminated); s' is the state actually reached."""

    def __init__(self, buffer_size: int, obs_dim: int, action_dim: int, num_diffusion_steps: int, device: torch.device):
        self.obs = torch.zeros((buffer_size, obs_dim), device=device)
        self.next_obs = torch.zeros((buffer_size, obs_dim), device=device)
        self.chains = torch.zeros((buffer_size, num_diffusion_steps + 1, action_dim), device=device)
        self.rewards = torch.zeros(buffer_size, device=device)
        self.terminations = torch.zeros(buffer_size, device=device)
        self.buffer_size, self.position, self.size, self.device = buffer_size, 0, 0, device

    def add(self, obs, next_obs, chains, rewards, terminations) -> None:
        """Store one row per environment: one copy per field, whatever the number of envs."""
        rows = (self.position + torch.arange(len(obs), device=self.device)) % self.buffer_size
        for storage, values in ((self.obs, obs), (self.next_obs, next_obs), (self.chains, chains),
                               (self.rewards, rewards), (self.terminations, terminations)):
            storage[rows] = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        self.position = (self.position + len(obs)) % self.buffer_size
        self.size = min(self.size + len(obs), self.buffer_size)

    def sample(self, batch_size: int):
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[index], self.chains[index], self.rewards[index], self.next_obs[index], self.terminations[index]


def step_and_store(envs, obs: np.ndarray, chains: torch.Tensor, agent: Agent, replay_buffer: ReplayBuffer):
    """Execute a = c + h tanh(x_0) of each chain; store the chain with the state actually reached
    (final_obs where an episode ended); only terminations, not time limits, stop bootstrapping."""
    actions = agent.squash(chains[:, -1]).cpu().numpy()
    next_obs, rewards, terminations, truncations, infos = envs.step(actions)
    replay_buffer.add(obs, true_next_observations(next_obs, infos), chains, rewards, terminations)
    return next_obs, infos


def step_log_ratio(agent: Agent, obs, x_k, k, x_previous) -> torch.Tensor:
    """lt_k per augmented sample (any mix of k): l_k plus the prior term at k = K and the squash term
    at k = 1, so that the K terms of a chain add up to L (method.md §2)."""
    actor = agent.actor
    log_ratio = actor.log_prob(obs, x_k, k, x_previous) - actor.forward_log_prob(x_k, x_previous, k)
    log_prior = gaussian_log_prob(x_k, torch.zeros_like(x_k), torch.ones_like(x_k))
    squash_log_det = (torch.log(agent.action_half_width) + log_one_minus_tanh_squared(x_previous)).sum(-1)
    return (log_ratio + torch.where(k == actor.num_diffusion_steps, log_prior, 0.0)
            - torch.where(k == 1, squash_log_det, 0.0))


def augmented_bellman_target(rewards, terminations, is_last_step, next_soft_value, gamma: float) -> torch.Tensor:
    """Inside the chain y = V(s, x_{k-1}, k-1): no reward, no discount; at k = 1
    y = r + gamma (1 - terminated) V(s', x'_K, K)."""
    return torch.where(is_last_step, rewards + gamma * (1.0 - terminations) * next_soft_value, next_soft_value)


def soft_value(agent: Agent, qf1_target, qf2_target, obs, x_k, k, alpha: float) -> torch.Tensor:
    """V(s, x_k, k) = E[min_i Q_target_i(s, x_1, 1, x_0) - alpha * sum_{j<=k} lt_j], one sample per row.

    Inside the chain no environment time passes and no reward is paid, so the soft value of
    (s, x_k, k) is the soft value at its last step with the rest of the chain sampled from the
    current policy; the (per-row) remaining steps k..2 are rolled out here, the last step is
    valued by the k = 1 critic. Every target thus needs one critic hop, not k of them.
    """
    actor, log_ratio_sum = agent.actor, torch.zeros(len(obs), device=obs.device)
    for _ in range(actor.num_diffusion_steps - 1):
        inside = k > 1
        if not inside.any():
            break
        mean, std = actor.kernel(obs, x_k, k)
        x_previous = mean + std * torch.randn_like(mean)
        log_ratio_sum = log_ratio_sum + torch.where(inside, step_log_ratio(agent, obs, x_k, k, x_previous), 0.0)
        x_k, k = torch.where(inside[:, None], x_previous, x_k), torch.where(inside, k - 1, k)
    mean, std = actor.kernel(obs, x_k, k)
    x_0 = mean + std * torch.randn_like(mean)
    log_ratio_sum = log_ratio_sum + step_log_ratio(agent, obs, x_k, k, x_0)
    return torch.min(qf1_target(obs, x_k, k, x_0), qf2_target(obs, x_k, k, x_0)) - alpha * log_ratio_sum


def critic_targets(agent: Agent, qf1_target, qf2_target, obs, chains, rewards, next_obs, terminations, alpha, gamma,
                   last_step_samples: int = 0):
    """Pick one diffusion step per transition (uniformly; the last ``last_step_samples`` rows at k = 1,
    --last-step-samples) and its soft Bellman target. The per-k targets do not change, only how many
    samples each k gets. Returns (obs, x_k, k, x_{k-1}, y) for the critic regression.
    """
    batch, num_diffusion_steps = obs.shape[0], agent.actor.num_diffusion_steps
    rows = torch.arange(batch, device=obs.device)
    j = torch.randint(0, num_diffusion_steps, (batch,), device=obs.device)  # time-order index, k = K - j
    j[batch - last_step_samples:] = num_diffusion_steps - 1
    k, x_k, x_previous = num_diffusion_steps - j, chains[rows, j], chains[rows, j + 1]
    with torch.no_grad():
        is_last_step = k == 1
        # Next augmented state: (s, x_{k-1}, k-1) inside the chain, (s', fresh x_K, K) after the env step.
        next_obs_augmented = torch.where(is_last_step[:, None], next_obs, obs)
        next_x = torch.where(is_last_step[:, None], torch.randn_like(x_previous), x_previous)
        next_k = torch.where(is_last_step, num_diffusion_steps, k - 1)
        next_soft_value = soft_value(agent, qf1_target, qf2_target, next_obs_augmented, next_x, next_k, alpha)
        target = augmented_bellman_target(rewards, terminations, is_last_step, next_soft_value, gamma)
    return obs, x_k, k, x_previous, target


def kernel_score(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """d/dx log N(x; mean, diag(std^2)) = -(x - mean) / std^2."""
    return -(x - mean) / std**2


def wpo_actor_loss(agent: Agent, q_value, obs: torch.Tensor, alpha: float, fisher_preconditioner: bool,
                   rollout_critics: tuple | None = None, all_steps: bool = False):
    """(WPO loss at one uniformly drawn step of each fresh chain, H_est = -E[L]) (method.md §4.3).

    q_value(obs, x_k, k, x_{k-1}) -> [B]; the velocity is d/dx (q_value - alpha lt_k) at the sampled
    x_{k-1}, with the parameters held fixed (stop-gradient).
    rollout_critics=(qf1, qf2) (--inner-velocity rollout): at k > 1, Q_k(s, x_k, k, x) is replaced by
    the quantity it is trained to, V(s, x, k-1) (no reward, no discount inside the chain), estimated
    by one reparameterised roll-out of the rest of the chain valued by min(qf1, qf2) at k = 1 (as
    soft_value); d/dx then flows through the roll-out, as DiffSAC's action gradient flows through
    its chain. At k = 1 both forms are the k = 1 critic.
    all_steps (--actor-all-steps): every step of every chain, the same mean over the K steps without
    the draw's variance (each kernel sees the whole batch, not 1/K of it).
    """
    actor, num_diffusion_steps = agent.actor, agent.actor.num_diffusion_steps
    with torch.no_grad():
        chain, step_log_q = actor.sample_chain(obs)
        log_ratio_terms, log_prior, squash_log_det = actor.path_log_ratio_terms(chain, step_log_q, agent.action_half_width)
        entropy_estimate = -(log_prior + log_ratio_terms.sum(1) - squash_log_det).mean()
    # One augmented sample (s, x_k, k) -> x_{k-1} per chain, k uniform: an unbiased estimate of the
    # mean over the K steps at 1/K of the cost of using them all (all_steps: use them all).
    batch = obs.shape[0]
    rows = torch.arange(batch, device=obs.device)
    if all_steps:
        rows, j = rows.repeat_interleave(num_diffusion_steps), torch.arange(num_diffusion_steps, device=obs.device).repeat(batch)
        b_obs = obs[rows]
    else:
        j, b_obs = torch.randint(0, num_diffusion_steps, (batch,), device=obs.device), obs
    b_x_k, b_k = chain[rows, j], num_diffusion_steps - j
    x = chain[rows, j + 1].clone().requires_grad_(True)
    q = q_value(b_obs, b_x_k, b_k, x)
    if rollout_critics is not None:
        rest_of_chain_value = soft_value(agent, *rollout_critics, b_obs, x, (b_k - 1).clamp_min(1), alpha)
        q = torch.where(b_k > 1, rest_of_chain_value, q)
    objective = q - alpha * step_log_ratio(agent, b_obs, b_x_k, b_k, x)
    (velocity,) = torch.autograd.grad(objective.sum(), x)
    mean, std = actor.kernel(b_obs, b_x_k, b_k)
    if fisher_preconditioner:
        velocity = velocity * std.detach() ** 2
    loss = -(kernel_score(x.detach(), mean, std) * velocity).sum(-1).mean()
    return loss, entropy_estimate


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """alpha (H_est - target): descending it lowers alpha when the entropy estimate is above target, raises it below."""
    return log_alpha.exp() * (entropy_estimate - target_entropy)


def main() -> None:
    args, checkpoint = parse_args(Args, "diffwpo", "diffwpo.py")
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
    K = args.num_diffusion_steps
    agent_kwargs = dict(obs_dim=obs_dim, action_dim=action_dim,
                        action_low=envs.single_action_space.low.tolist(),
                        action_high=envs.single_action_space.high.tolist(),
                        num_diffusion_steps=K, hidden_dim=args.actor_hidden_dim, min_std=args.min_std)
    check_memory(count_parameters(lambda: [Agent(**agent_kwargs)] + [AugmentedQNetwork(obs_dim, action_dim, K, args.hidden_dim)] * 4),
                 replay_buffer_bytes(args.buffer_size, obs_dim, (K + 1) * action_dim), device, "--hidden-dim, --actor-hidden-dim or --buffer-size")
    agent = Agent(**agent_kwargs).to(device)
    qf1, qf2, qf1_target, qf2_target = (AugmentedQNetwork(obs_dim, action_dim, K, args.hidden_dim).to(device)
                                        for _ in range(4))
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(agent.parameters(), lr=args.policy_lr)
    target_entropy = -args.target_entropy_scale * action_dim
    log_alpha = torch.tensor(math.log(args.alpha) if args.alpha > 0 else -math.inf, device=device, requires_grad=args.autotune)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr) if args.autotune else None
    obs_normalizer = ObservationNormalizer.identity((obs_dim,))  # WPO, like SAC, does not normalise
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

    run_dir, model_path = run_paths(args, run_name)
    writer = open_writer(run_dir, args, checkpoint)

    def checkpoint_state() -> dict:
        return {"script": "diffwpo", "args": asdict(args), "agent_kwargs": agent_kwargs, "run_name": run_name,
                "agent": agent.state_dict(), **{name: module.state_dict() for name, module in networks.items()},
                "obs_normalizer": obs_normalizer.state_dict(), "log_alpha": log_alpha.item(),
                "alpha_optimizer": alpha_optimizer.state_dict() if alpha_optimizer else None, "global_step": global_step}

    def min_q(obs, x_k, k, x_previous):
        return torch.min(qf1(obs, x_k, k, x_previous), qf2(obs, x_k, k, x_previous))

    replay_buffer = ReplayBuffer(args.buffer_size, obs_dim, action_dim, K, device)
    if checkpoint:  # the buffer saved beside the checkpoint; without it, refill before updating again
        learning_starts = resume_replay_buffer(args, replay_buffer, global_step, learning_starts, run_name)

    def save() -> None:
        save_with_replay_buffer(model_path, checkpoint_state(), replay_buffer, global_step)

    stop = StopSignals()
    start_time, start_step, updates, last_print = time.time(), global_step, 0, global_step
    progress = Progress(args.total_timesteps, global_step, learning_starts=learning_starts)
    recent_returns = deque(maxlen=10)
    obs, _ = envs.reset(seed=args.seed)
    nan = torch.tensor(float("nan"))
    entropy_estimate = qf1_values = qf1_loss = qf2_loss = qf_loss = actor_loss = loss_alpha = nan
    next_checkpoint = global_step + args.checkpoint_frequency

    while global_step < args.total_timesteps and not stop.requested:
        global_step += args.num_envs
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)
        # Before learning starts the actor is untrained: its chain is the exact reverse process of
        # x_0 ~ N(0, I), a random policy whose chains are consistent with the forward process.
        with torch.no_grad():
            chains, _ = agent.actor.sample_chain(obs_tensor)
        next_obs, infos = step_and_store(envs, obs, chains, agent, replay_buffer)
        for episode_return, episode_length in finished_episodes(infos):
            recent_returns.append(episode_return)
            writer.add_scalar("charts/episodic_return", episode_return, global_step)
            writer.add_scalar("charts/episodic_length", episode_length, global_step)
        obs = next_obs

        if global_step > learning_starts:
            if updates == 0:
                update_start_time = time.time()
            updates += 1
            batch = replay_buffer.sample(args.batch_size + args.last_step_samples)
            b_obs, b_x_k, b_k, b_x_previous, target = critic_targets(agent, qf1_target, qf2_target, *batch, alpha=alpha,
                                                                     gamma=args.gamma, last_step_samples=args.last_step_samples)
            qf1_values = qf1(b_obs, b_x_k, b_k, b_x_previous)
            qf1_loss = F.mse_loss(qf1_values, target)
            qf2_loss = F.mse_loss(qf2(b_obs, b_x_k, b_k, b_x_previous), target)
            qf_loss = qf1_loss + qf2_loss
            if not torch.isfinite(qf_loss):
                raise TrainingDiverged(f"critic loss is {qf_loss.item()} at step {global_step}. "
                                       + (f"Last checkpoint: {model_path}" if args.save_model else "Use --save-model to keep checkpoints."))
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if updates % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    actor_loss, entropy_estimate = wpo_actor_loss(agent, min_q, batch[0][:args.batch_size], alpha, args.fisher_preconditioner,
                                                                  (qf1, qf2) if args.inner_velocity == "rollout" else None,
                                                                  args.actor_all_steps)
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
                for network, target_network in ((qf1, qf1_target), (qf2, qf2_target)):
                    for param, target_param in zip(network.parameters(), target_network.parameters()):
                        target_param.data.lerp_(param.data, args.tau)

        if global_step - last_print >= 1000 or global_step >= args.total_timesteps:
            last_print = global_step
            sps = int((global_step - start_step) / (time.time() - start_time))
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
        stop.exit("diffwpo.py", global_step, model_path if args.save_model else None)
    if args.save_model:
        print(f"model saved to {model_path}")
        returns = evaluate(agent, obs_normalizer, args.env_id, args.eval_episodes, seed=args.seed, device=device)
        for index, episodic_return in enumerate(returns):
            writer.add_scalar("eval/episodic_return", episodic_return, index)
        print(f"evaluation ({args.eval_episodes} deterministic episodes): mean return {np.mean(returns):.2f}")
    writer.close()


if __name__ == "__main__":
    try:
        run_cli(main, "diffwpo.py")
    except TrainingDiverged as error:
        print(f"diffwpo.py: training diverged: {error}", file=sys.stderr)
        sys.exit(1)
