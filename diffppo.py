"""DiffPPO: PPO on the diffusion-augmented MDP (DA-MDP: PPO) with a K-step diffusion policy.

Sanokowski, Patil, Knoll, arXiv 2512.02019. The maths is in docs/method.md ("method.md §n" below).

    python diffppo.py --env-id Humanoid-v4 --num-diffusion-steps 8

Each environment step becomes K augmented steps (s, x_k, k) -> (s, x_{k-1}, k-1) with soft reward -alpha l_k
(method.md §2-3), and PPO runs on the augmented MDP: one clipped ratio per diffusion step, a value V(s, x_k, k),
GAE over the augmented sequence (trace decay --chain-gae-lambda inside the chain). --alpha 0 gives DPPO. Choices
the paper leaves open: rewards are normalised as in CleanRL's PPO (--alpha acts in that scale), and time-limit
cuts are bootstrapped with gamma V(final obs, x_K, K) (CleanRL's PPO ends the episode there).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from common.cli import at_least_one, in_unit_interval, positive, run_cli
from common.envs import true_next_observations
from common.normalization import ObservationNormalizer, RewardNormalizer
from common.runs import Run, RunArgs


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
    """the discount factor gamma (applied once per environment step)"""
    gae_lambda: float = 0.95
    """the GAE lambda at environment steps"""
    chain_gae_lambda: float = 1.0
    """the GAE lambda inside the diffusion chain (1: no bootstrapping inside a chain)"""
    chain_gamma: float = 1.0
    """the discount inside the diffusion chain (the authors' code: --gamma at every augmented step)"""
    num_minibatches: int = 32
    """the number of minibatches; the augmented batch num_envs*num_steps*K must split into them"""
    minibatch_size: int | None = None
    """augmented samples per minibatch, the same at every K, so optimiser steps grow with K as in the authors' code
    (default: the augmented batch / --num-minibatches)"""
    whole_chain_minibatches: bool = False
    """minibatches of whole chains (all K steps of an environment step), the observation's part computed once each"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient (per diffusion step)"""
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
    num_diffusion_steps: int = 8
    """K, the number of diffusion (denoising) steps per action"""
    alpha: float = 0.001
    """entropy temperature (initial value if --autotune); 0 gives DPPO"""
    autotune: bool = False
    """automatic tuning of alpha toward --target-entropy"""
    target_entropy: float | None = None
    """target of the entropy estimate -E[L] for --autotune (default: -action_dim)"""
    alpha_lr: float = 1e-3
    """learning rate of log(alpha) when --autotune"""
    min_std: float = 0.01
    """floor of every reverse-kernel standard deviation sigma_k"""
    behaviour_noise_scale: float = 1.0
    """rollout kernels' noise x this; ratios and soft rewards keep the kernels' densities (method.md §4.1)"""
    hidden_dim: int = 64
    """width of the two hidden layers of the mean and value networks"""
    chain: str = "ddpm"
    """the reverse kernels: ddpm (cosine schedule, learned sigma_k) or langevin (the authors' chain, method.md §1.1)"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *at_least_one("num_diffusion_steps", "num_steps", "num_minibatches", "update_epochs", "hidden_dim"),
    (
        "minibatch_size is not None or num_envs * num_steps * num_diffusion_steps % num_minibatches == 0",
        "--num-minibatches {num_minibatches} "
        "does not divide the augmented batch {num_envs * num_steps * num_diffusion_steps} (envs x steps x K).",
    ),
    ("minibatch_size is None or minibatch_size >= 1", "--minibatch-size must be at least 1 (got {minibatch_size})."),
    (
        "minibatch_size is None or num_envs * num_steps * num_diffusion_steps % minibatch_size == 0",
        "--minibatch-size {minibatch_size} "
        "does not divide the augmented batch {num_envs * num_steps * num_diffusion_steps} (envs x steps x K).",
    ),
    (
        "not whole_chain_minibatches or "
        "(minibatch_size or num_envs * num_steps * num_diffusion_steps // num_minibatches) % num_diffusion_steps == 0",
        "--whole-chain-minibatches needs a minibatch of whole chains, a multiple of K = {num_diffusion_steps}.",
    ),
    ("chain in ('ddpm', 'langevin')", "--chain must be ddpm or langevin (got {chain!r})."),
    ("total_timesteps >= num_envs * num_steps", "--total-timesteps {total_timesteps} is less than one rollout."),
    ("alpha >= 0", "--alpha must be >= 0 (got {alpha})."),
    ("alpha > 0 or not autotune", "--autotune needs a positive initial --alpha (it tunes log(alpha))."),
    *in_unit_interval("gamma"),
    *in_unit_interval("gae_lambda", "chain_gae_lambda", "chain_gamma", closed=True),
    *positive("learning_rate", "clip_coef", "min_std"),
    *positive("vf_coef", "max_grad_norm", "alpha_lr"),
    ("target_kl is None or target_kl > 0", "--target-kl must be positive (got {target_kl})."),
    ("target_entropy is None or -1e6 <= target_entropy <= 1e6", "--target-entropy must be in [-1e6, 1e6]."),
    ("behaviour_noise_scale > 0", "--behaviour-noise-scale must be a positive number (got {behaviour_noise_scale})."),
    ("min_std < 1", "--min-std must be below 1, the largest sigma_k (got {min_std})."),
]


# ---- diffusion actor: identical in every diffusion script (tests/test_reference_scripts.py); method.md §1-2 ----
LOG_2PI = math.log(2 * math.pi)


def cosine_beta_schedule(num_diffusion_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_k, k = 1..K (index k-1), from alpha_bar(t) = cos^2(((t/K + s)/(1 + s)) pi/2) (Nichol & Dhariwal 2021)."""
    t = torch.arange(num_diffusion_steps + 1, dtype=torch.float64) / num_diffusion_steps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta).float()


def gaussian_log_prob(x, mean, std):
    """log N(x; mean, diag(std^2)) summed over the last axis."""
    return (-0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI).sum(-1)


def log_one_minus_tanh_squared(x):
    """log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x| (method.md §2)."""
    return 2.0 * (math.log(2.0) - x - nn.functional.softplus(-2.0 * x))


def squash_log_det(x_0, action_half_width):
    """sum_i log h_i + log(1 - tanh(x_0i)^2): the log-Jacobian of a = c + h tanh(x_0), per sample."""
    return (torch.log(action_half_width) + log_one_minus_tanh_squared(x_0)).sum(-1)


def layer_init(layer, std=math.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class DiffusionActor(nn.Module):
    """K Gaussian reverse kernels q(x_{k-1} | x_k, s, k) = N(a_k x_k + c_k f(s, x_k, k), sigma_k^2), x_K ~ N(0,
    prior_std^2 I) (method.md §1). chain="ddpm": a_k = sqrt(alpha_k), c_k = 1, sigma_k learned from sigma_k^2 = beta_k,
    prior_std 1; at initialisation f ~ 0, the exact reverse process of x_0 ~ N(0, I). chain="langevin", the authors'
    chain (method.md §1.1): Euler-Maruyama steps of Langevin dynamics with eta_k = dt_k / friction (dt_k per step and
    friction per dimension, both learned), a_k = 1 - eta_k / prior_std^2, c_k = eta_k, sigma_k^2 = 2 eta_k, prior_std 3.
    Chains are in time order: chain[:, j] = x_{K-j}, so chain[:, 0] = x_K, chain[:, K] = x_0, and step j has k = K - j.
    """

    def __init__(
        self, obs_dim, action_dim, num_diffusion_steps, hidden_dim=64, min_std=0.01, activation="tanh", chain="ddpm"
    ):
        super().__init__()
        self.num_diffusion_steps, self.action_dim, time_embedding_dim = num_diffusion_steps, action_dim, 16
        Activation = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.activation = {"tanh": torch.tanh, "relu": torch.relu}[activation]  # the same, as a function
        betas = cosine_beta_schedule(num_diffusion_steps)
        self.register_buffer("betas", betas)  # beta_k at index k-1
        self.register_buffer("sqrt_alphas", torch.sqrt(1 - betas))
        self.register_buffer("step_k", torch.arange(num_diffusion_steps, 0, -1))  # k of step j = K - j
        self.time_embedding = nn.Embedding(num_diffusion_steps + 1, time_embedding_dim)
        self.mean_net = nn.Sequential(
            layer_init(nn.Linear(obs_dim + action_dim + time_embedding_dim, hidden_dim)),
            Activation(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            Activation(),
            layer_init(nn.Linear(hidden_dim, action_dim), std=0.01),
        )
        self.chain = chain
        self.log_std_min = math.log(min_std)
        if chain == "ddpm":
            self.prior_std = 1.0
            self.log_std = nn.Parameter(0.5 * torch.log(betas)[:, None].repeat(1, action_dim))  # sigma_k^2 = beta_k
        else:  # softplus parameters, initialised as the authors' K sweep: K dt = 1, friction 0.25
            self.prior_std = 3.0
            dt = 1.0 / num_diffusion_steps
            self.dt_parameter = nn.Parameter(torch.full((num_diffusion_steps,), math.log(math.expm1(dt))))
            self.friction_parameter = nn.Parameter(torch.full((action_dim,), math.log(math.expm1(0.25))))

    @torch.no_grad()
    def clamp_log_std_(self):  # ddpm: sigma_k in [min_std, 1] after an optimiser step (the forward pass clamps too)
        if self.chain == "ddpm":
            self.log_std.clamp_(self.log_std_min, 0.0)

    def coefficients(self):
        """(a, c, log sigma), each [K, d] with row k-1: the kernel's mean a_k x_k + c_k f and its log std."""
        if self.chain == "ddpm":
            log_std = self.log_std.clamp(self.log_std_min, 0.0)
            return self.sqrt_alphas[:, None].expand_as(log_std), torch.ones_like(log_std), log_std
        eta = nn.functional.softplus(self.dt_parameter)[:, None] / nn.functional.softplus(self.friction_parameter)
        return 1 - eta / self.prior_std**2, eta, 0.5 * torch.log(2 * eta)

    def kernel(self, obs, x_k, k):
        """Mean and std of q(x_{k-1} | x_k, s, k); k is a LongTensor of diffusion indices in 1..K."""
        scale, output_scale, log_std = self.coefficients()
        features = torch.cat([obs, x_k, self.time_embedding(k)], dim=-1)
        mean = scale[k - 1] * x_k + output_scale[k - 1] * self.mean_net(features)
        return mean, log_std[k - 1].exp()

    def log_prob(self, obs, x_k, k, x_previous):
        """log q(x_{k-1} | x_k, s, k) for a batch of augmented samples (any mix of k)."""
        return gaussian_log_prob(x_previous, *self.kernel(obs, x_k, k))

    def forward_log_prob(self, x_k, x_previous, k):
        """log p(x_k | x_{k-1}), the noising kernel: ddpm N(sqrt(alpha_k) x_{k-1}, beta_k I); langevin the
        Euler-Maruyama step of the prior's Langevin dynamics N(a_k x_{k-1}, 2 eta_k I) (method.md §1.1)."""
        if self.chain == "ddpm":
            return gaussian_log_prob(x_k, self.sqrt_alphas[k - 1, None] * x_previous, self.betas[k - 1, None].sqrt())
        scale, _, log_std = self.coefficients()
        return gaussian_log_prob(x_k, scale[k - 1] * x_previous, log_std[k - 1].exp())

    def sample_chain(self, obs, deterministic=False, noise_scale=1.0):
        """(chain [B, K+1, d], log q per step [B, K]) in time order: ``kernel`` run K times, fused (the same numbers,
        a test checks). deterministic: x_K = 0, no noise; noise_scale widens the paths, log q stays the kernels'."""
        batch, K, obs_dim = obs.shape[0], self.num_diffusion_steps, obs.shape[1]
        first, second, last = self.mean_net[0], self.mean_net[2], self.mean_net[4]
        obs_part = nn.functional.linear(obs, first.weight[:, :obs_dim], first.bias)  # [B, H], shared by all steps
        x_weight = first.weight[:, obs_dim : obs_dim + self.action_dim]
        time_part = self.time_embedding.weight @ first.weight[:, obs_dim + self.action_dim :].T  # [K+1, H], row k
        scale, output_scale, log_std = self.coefficients()  # [K, d], row k-1
        std = noise_scale * log_std.exp()  # the paths' step size; log q below keeps the kernels' own sigma
        shape = (K + 1, batch, self.action_dim)
        noise = obs.new_zeros(shape) if deterministic else torch.randn(shape, device=obs.device, dtype=obs.dtype)
        step_bias = (obs_part[None] + time_part[:, None]).unbind(0)  # row k: obs_part + time_part[k], [B, H]
        step_noise = (std.flip(0)[:, None] * noise[1:]).unbind(0)  # row j-1: sigma_k eps_j, k = K - j + 1
        x = self.prior_std * noise[0]
        chain = [x]
        for j, k in enumerate(range(K, 0, -1), start=1):
            hidden = self.activation(step_bias[k] + nn.functional.linear(x, x_weight))
            hidden = self.activation(nn.functional.linear(hidden, second.weight, second.bias))
            output = nn.functional.linear(hidden, last.weight, last.bias)
            x = scale[k - 1] * x + output_scale[k - 1] * output + step_noise[j - 1]
            chain.append(x)
        # log q(x_{k-1}|x_k) with x_{k-1} = mean + sigma_k * noise_scale * noise: only the noise is quadratic.
        step_log_q = (-0.5 * (noise_scale * noise[1:]) ** 2).sum(-1).T - log_std.flip(0).sum(-1)  # [B, K], time order
        step_log_q = step_log_q - 0.5 * LOG_2PI * self.action_dim
        return torch.stack(chain, dim=1), step_log_q

    def chain_log_ratio_terms(self, chain, step_log_q):
        """(l_k = log q(x_{k-1}|x_k,s) - log p(x_k|x_{k-1}) [B, K] in time order, log N(x_K; 0, prior_std^2 I) [B]):
        the parts of the path log-ratio L without the squash (method.md §2)."""
        step_log_ratio = step_log_q - self.forward_log_prob(chain[:, :-1], chain[:, 1:], self.step_k)
        prior_std = torch.full_like(chain[:, 0], self.prior_std)
        return step_log_ratio, gaussian_log_prob(chain[:, 0], torch.zeros_like(chain[:, 0]), prior_std)

    def path_log_ratio_terms(self, chain, step_log_q, action_half_width):
        """(step_log_ratio, log_prior, squash_log_det): L = log_prior + step_log_ratio.sum(1) - squash_log_det."""
        return (*self.chain_log_ratio_terms(chain, step_log_q), squash_log_det(chain[:, -1], action_half_width))


# ---- end of the diffusion actor ----


class ValueNetwork(nn.Module):
    """V(s, x_k, k): the value of an augmented state (method.md §3)."""

    def __init__(self, obs_dim, action_dim, num_diffusion_steps, hidden_dim=64, time_embedding_dim=16):
        super().__init__()
        self.time_embedding = nn.Embedding(num_diffusion_steps + 1, time_embedding_dim)
        self.net = nn.Sequential(
            layer_init(nn.Linear(obs_dim + action_dim + time_embedding_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, 1), std=1.0),
        )

    def forward(self, obs: torch.Tensor, x_k: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, x_k, self.time_embedding(k)], dim=-1)).squeeze(-1)


class Agent(nn.Module):
    def __init__(self, obs_dim, action_dim, action_low, action_high, num_diffusion_steps, hidden_dim=64, **actor):
        super().__init__()
        self.actor = DiffusionActor(obs_dim, action_dim, num_diffusion_steps, hidden_dim, **actor)  # min_std, chain
        self.critic = ValueNetwork(obs_dim, action_dim, num_diffusion_steps, hidden_dim)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x_0: torch.Tensor) -> torch.Tensor:  # a = c + h tanh(x_0)
        return self.action_center + self.action_half_width * torch.tanh(x_0)

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        chain, _ = self.actor.sample_chain(obs, deterministic)
        return self.squash(chain[:, -1])


def augmented_samples(obs: torch.Tensor, chain: torch.Tensor, step_k: torch.Tensor):
    """A rollout (obs [T, N, obs_dim], chain [T, N, K+1, d] in time order, step_k [K]) as augmented samples
    (s, x_k, k) -> x_{k-1}, flat [T*N*K, ...] in the order of the [T, N, K] buffers."""
    flat_obs = obs[:, :, None].expand(-1, -1, len(step_k), -1).reshape(-1, obs.shape[-1])
    x_k, x_previous = chain[:, :, :-1].reshape(-1, chain.shape[-1]), chain[:, :, 1:].reshape(-1, chain.shape[-1])
    return flat_obs, x_k, step_k.repeat(chain.shape[0] * chain.shape[1]), x_previous


def first_layer_by_chain(layer, time_embedding, obs, x_k, step_k):
    """layer(cat([obs, x_k, time_embedding(k)])) [B, K, H] for whole chains (obs [B, obs_dim], x_k [B, K, d], step j
    has k = step_k[j]), the observation's part computed once per chain instead of K times (method.md §4.1)."""
    obs_dim, x_dim = obs.shape[-1], x_k.shape[-1]
    obs_part = nn.functional.linear(obs, layer.weight[:, :obs_dim], layer.bias)
    x_part = nn.functional.linear(x_k, layer.weight[:, obs_dim : obs_dim + x_dim])
    time_part = nn.functional.linear(time_embedding(step_k), layer.weight[:, obs_dim + x_dim :])
    return obs_part[:, None] + x_part + time_part


def whole_chain_log_prob_and_value(agent, obs, chain):
    """(log q(x_{k-1} | x_k, s, k), V(s, x_k, k)), each [B, K] in time order, for whole chains [B, K+1, d]:
    actor.log_prob and the critic at every step of the chains (the same numbers up to rounding, a test checks)."""
    actor, critic, x_k = agent.actor, agent.critic, chain[:, :-1]
    output = actor.mean_net[1:](first_layer_by_chain(actor.mean_net[0], actor.time_embedding, obs, x_k, actor.step_k))
    scale, output_scale, log_std = (rows[actor.step_k - 1] for rows in actor.coefficients())
    log_q = gaussian_log_prob(chain[:, 1:], scale * x_k + output_scale * output, log_std.exp())
    hidden = first_layer_by_chain(critic.net[0], critic.time_embedding, obs, x_k, actor.step_k)
    return log_q, critic.net[1:](hidden).squeeze(-1)


def augmented_gae(rewards, values, dones, next_value, gamma, gae_lambda, chain_gae_lambda, chain_gamma=1.0):
    """(advantages, returns) [T, N, K]: GAE over the augmented sequence (method.md §3, §4.1). rewards and values
    are [T, N, K] (j = 0 is k = K; the env reward is at j = K-1), dones [T, N], next_value [N]. Inside the chain the
    discount is chain_gamma and the trace decay chain_gae_lambda; j = K-1 -> (t+1, 0) is an environment step."""
    num_steps, _, num_diffusion_steps = rewards.shape
    advantages = np.zeros_like(rewards)
    last_advantage = np.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        for j in reversed(range(num_diffusion_steps)):
            if j == num_diffusion_steps - 1:  # environment step
                next_values = next_value if t == num_steps - 1 else values[t + 1, :, 0]
                discount, trace = gamma * (1.0 - dones[t]), gae_lambda
            else:  # inside the chain: no environment time passes
                next_values, discount, trace = values[t, :, j + 1], chain_gamma, chain_gae_lambda
            delta = rewards[t, :, j] + discount * next_values - values[t, :, j]
            last_advantage = delta + discount * trace * last_advantage
            advantages[t, :, j] = last_advantage
    return advantages, advantages + values


def step_with_bootstrap(envs, agent, chain, obs_normalizer, reward_normalizer, gamma):
    """Execute a = c + h tanh(x_0): (next raw obs, normalised env reward [N], bootstrap [N], done, infos). The
    bootstrap is gamma V(final obs, x_K, K) where a time limit cut the episode, else 0 (to the last augmented step)."""
    next_obs_raw, reward, terminated, truncated, infos = envs.step(agent.squash(chain[:, -1]).cpu().numpy())
    done, truncated_only = np.logical_or(terminated, truncated), np.logical_and(truncated, np.logical_not(terminated))
    env_reward = reward_normalizer(reward, done)
    bootstrap = np.zeros_like(env_reward)
    if truncated_only.any():
        final_obs = torch.as_tensor(obs_normalizer(true_next_observations(next_obs_raw, infos)), device=chain.device)
        first_k = torch.full((chain.shape[0],), chain.shape[1] - 1, device=chain.device)  # k = K
        with torch.no_grad():
            final_values = agent.critic(final_obs, torch.randn_like(chain[:, 0]), first_k)
        bootstrap[truncated_only] = gamma * final_values.cpu().numpy()[truncated_only]
    return next_obs_raw, env_reward, bootstrap, done, infos


def augmented_rewards(step_log_ratio, log_prior, squash_log_det, alpha, env_rewards, bootstraps) -> np.ndarray:
    """Rewards [T, N, K] of the augmented steps (method.md §3): the soft rewards -alpha l_k, with -alpha log N(x_K; 0,
    I) at k = K and +alpha log|da/dx_0| at k = 1 (together -alpha L), plus the env reward and bootstrap at the last."""
    soft_rewards = -alpha * step_log_ratio
    soft_rewards[:, 0] -= alpha * log_prior
    soft_rewards[:, -1] += alpha * squash_log_det
    rewards = soft_rewards.view(*env_rewards.shape, -1).cpu().numpy().copy()
    rewards[:, :, -1] += env_rewards
    rewards[:, :, -1] += bootstraps  # after the reward, as a step-by-step sum would add them
    return rewards


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """log(alpha) (H_est - target): its gradient in log(alpha) is H_est - target, so descending it lowers alpha
    while the entropy estimate is above target."""
    return log_alpha * (entropy_estimate - target_entropy)


def main() -> None:
    run = Run(Args, "diffppo", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    K, T, N = args.num_diffusion_steps, args.num_steps, args.num_envs  # augmented step j of a chain has k = K - j
    augmented_batch_size, num_iterations = T * N * K, run.iterations(T * N)
    minibatch_size = args.minibatch_size or augmented_batch_size // args.num_minibatches
    agent_kwargs = dict(**run.space, num_diffusion_steps=K, hidden_dim=args.hidden_dim, min_std=args.min_std)
    agent_kwargs.update(chain=args.chain)
    rollout_bytes = 4 * T * N * (K + 1) * (obs_dim + 3 * action_dim + 8)  # buffers and their augmented copies
    (agent,) = run.build(lambda: [Agent(**agent_kwargs)], "--hidden-dim, --num-steps or --num-envs", rollout_bytes)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs_normalizer = ObservationNormalizer((obs_dim,))
    reward_normalizer = RewardNormalizer(args.num_envs, args.gamma, enabled=args.norm_reward)
    log_alpha = torch.tensor(math.log(args.alpha) if args.alpha > 0 else -math.inf, device=device)
    log_alpha.requires_grad_(args.autotune)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr) if args.autotune else None
    target_entropy = args.target_entropy if args.target_entropy is not None else -float(action_dim)
    state = dict(agent=agent, optimizer=optimizer, obs_normalizer=obs_normalizer, reward_normalizer=reward_normalizer)
    state.update(log_alpha=log_alpha, alpha_optimizer=alpha_optimizer)
    checkpoint = run.restore(state, agent_kwargs=agent_kwargs)
    global_step, iteration = checkpoint.get("global_step", 0), checkpoint.get("iteration", 0)
    alpha = log_alpha.exp().item()
    obs_buffer, log_q_buffer = torch.zeros((T, N, obs_dim), device=device), torch.zeros((T, N, K), device=device)
    chain_buffer = torch.zeros((T, N, K + 1, action_dim), device=device)
    squash_log_det_buffer = torch.zeros((T, N), device=device)
    env_reward_buffer, bootstrap_buffer, done_buffer = (np.zeros((T, N), dtype=np.float32) for _ in range(3))
    step_k, first_k = agent.actor.step_k, torch.full((N,), K, dtype=torch.long, device=device)  # k of step j, K
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
                chain, step_log_q = agent.actor.sample_chain(next_obs, noise_scale=args.behaviour_noise_scale)
                # The squash term at the rollout's batch size keeps the numbers of a step-by-step rollout.
                squash_log_det_buffer[step] = squash_log_det(chain[:, -1], agent.action_half_width)
            chain_buffer[step], log_q_buffer[step] = chain, step_log_q
            bootstrapped = step_with_bootstrap(envs, agent, chain, obs_normalizer, reward_normalizer, args.gamma)
            next_obs_raw, env_reward_buffer[step], bootstrap_buffer[step], done_buffer[step], infos = bootstrapped
            obs_normalizer.update(next_obs_raw)
            next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)
            run.episodes(infos, global_step)

        # What the actions did not depend on, and V(s_T, fresh x_K, K), in one pass (the same numbers as step by step):
        b_obs, b_x_k, b_k, b_x_previous = augmented_samples(obs_buffer, chain_buffer, step_k)
        with torch.no_grad():
            chains, squash_terms = chain_buffer.view(-1, K + 1, action_dim), squash_log_det_buffer.view(-1)
            step_log_ratio, log_prior = agent.actor.chain_log_ratio_terms(chains, log_q_buffer.view(-1, K))
            value_buffer = agent.critic(b_obs, b_x_k, b_k).view(T, N, K)  # V(s, x_k, k)
            next_value = agent.critic(next_obs, torch.randn(args.num_envs, action_dim, device=device), first_k)
        path_log_ratio_buffer = (log_prior + step_log_ratio.sum(1) - squash_terms).view(T, N)
        rewards = (step_log_ratio, log_prior, squash_terms, alpha, env_reward_buffer, bootstrap_buffer)
        reward_buffer = augmented_rewards(*rewards)
        values, next_value = value_buffer.cpu().numpy(), next_value.cpu().numpy()
        discounting = (args.gamma, args.gae_lambda, args.chain_gae_lambda, args.chain_gamma)
        advantages, returns = augmented_gae(reward_buffer, values, done_buffer, next_value, *discounting)
        b_log_q, b_values = log_q_buffer.reshape(-1), value_buffer.reshape(-1)
        b_advantages, b_returns = (torch.as_tensor(x, device=device).reshape(-1) for x in (advantages, returns))

        clipfracs = []
        for epoch in range(args.update_epochs):
            if args.whole_chain_minibatches:  # the K augmented samples of an environment step stay together
                chain_order = torch.randperm(T * N, device=device)
                permutation = (chain_order[:, None] * K + torch.arange(K, device=device)).view(-1)
            else:
                permutation = torch.randperm(augmented_batch_size, device=device)
            for start in range(0, augmented_batch_size, minibatch_size):
                run.check_stop(global_step)
                mb = permutation[start : start + minibatch_size]
                if args.whole_chain_minibatches:
                    chains = mb[::K] // K  # flat index (t N + n) K + j
                    mb_chains = obs_buffer.view(T * N, -1)[chains], chain_buffer.view(T * N, K + 1, -1)[chains]
                    new_log_q, new_value = (x.reshape(-1) for x in whole_chain_log_prob_and_value(agent, *mb_chains))
                else:
                    new_log_q = agent.actor.log_prob(b_obs[mb], b_x_k[mb], b_k[mb], b_x_previous[mb])
                    new_value = agent.critic(b_obs[mb], b_x_k[mb], b_k[mb])
                log_importance_ratio = new_log_q - b_log_q[mb]  # one ratio per diffusion step (method.md §4.1)
                ratio = log_importance_ratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-log_importance_ratio).mean()
                    approx_kl = ((ratio - 1) - log_importance_ratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())

                mb_advantages = b_advantages[mb]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                clipped_ratio = torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(-mb_advantages * ratio, -mb_advantages * clipped_ratio).mean()

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

        entropy_estimate = -path_log_ratio_buffer.mean()  # H_est = -E[L], a lower bound on the entropy (method.md §2)
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
        losses = dict(value_loss=v_loss, policy_loss=pg_loss, old_approx_kl=old_approx_kl, approx_kl=approx_kl)
        run.log(global_step, "losses", **losses, clipfrac=np.mean(clipfracs), explained_variance=explained_var)
        run.show(global_step, f"entropy estimate {entropy_estimate.item():7.2f} | alpha {alpha:.2e}")
        crossed = global_step // args.checkpoint_frequency > (global_step - T * N) // args.checkpoint_frequency
        if args.save_model and (crossed or iteration == num_iterations):
            run.save(global_step, iteration=iteration)

    run.finish(global_step, iteration=iteration)


if __name__ == "__main__":
    run_cli(main, "diffppo.py")
