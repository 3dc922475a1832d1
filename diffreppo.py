"""DiffREPPO: REPPO on the diffusion-augmented MDP (DA-MDP: REPPO; Sanokowski et al., arXiv 2512.02019, later version;
REPPO: Voelcker et al., arXiv 2507.11019). Maths: docs/method.md (§4.5: this script, its differences from the authors').

    python diffreppo.py --env-id Hopper-v4 --num-diffusion-steps 8

Each environment step is stored with its chain, K augmented transitions (s, x_k, k) -> x_{k-1}; a distributional soft
critic Q~(s, x_k, k, x_{k-1}) learns lambda-returns over the augmented sequence, and the actor follows its pathwise
gradient through one reparameterised diffusion step at a time, inside a KL trust region."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from common.cli import at_least_one, between, in_unit_interval, positive, run_cli
from common.envs import true_next_observations
from common.normalization import ObservationNormalizer, RewardNormalizer
from common.runs import Run, RunArgs


@dataclass
class Args(RunArgs):
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    checkpoint_frequency: int = 50000
    """environment steps between checkpoints when --save-model is set"""
    env_id: str = "Hopper-v4"
    """the id of the environment (any gymnasium id with a bounded Box action space)"""
    total_timesteps: int = 1000000
    """total environment steps of the experiment"""
    num_envs: int = 8
    """the number of parallel environments (the official code uses 1024 on a GPU)"""
    num_steps: int = 128
    """environment steps per env per rollout (each is K augmented transitions)"""
    minibatch_size: int = 1024
    """augmented transitions per gradient update (the cost of an update does not depend on K)"""
    update_epochs: int = 4
    """passes over each rollout's augmented transitions"""
    learning_rate: float = 3e-4
    """AdamW learning rate of the actor and the critic"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    gamma: float = 0.99
    """the discount factor, applied once per environment step"""
    augmented_gamma: float | None = None
    """if set, this discount at every augmented step instead (the official DA-MDP: REPPO uses 0.999)"""
    gae_lambda: float = 0.95
    """lambda of the lambda-returns, applied at every augmented step (as the authors' code)"""
    lambda_per_env_step: bool = False
    """apply --gae-lambda once per environment step instead: lambda^(1/K) at each augmented step"""
    norm_reward: bool = True
    """scale env rewards by a running std of the discounted return (--no-norm-reward: raw rewards)"""
    num_bins: int = 101
    """bins of the categorical critic (the official code uses 151)"""
    v_min: float = -10.0
    """lowest value the critic represents (in normalised-reward units unless --no-norm-reward)"""
    v_max: float = 10.0
    """highest value the critic represents"""
    hidden_dim: int = 256
    """width of the critic's layers"""
    aux_loss_coef: float = 1.0
    """weight of the auxiliary loss (next embedding and env reward, predicted at environment steps)"""
    num_diffusion_steps: int = 8
    """K, the number of diffusion (denoising) steps per action"""
    min_std: float = 0.01
    """floor of every reverse-kernel standard deviation sigma_k"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the actor's mean network (run K times per action)"""
    alpha: float = 0.01
    """entropy temperature (initial value if --autotune)"""
    autotune: bool = True
    """tune alpha so that H_est tracks the target entropy"""
    target_entropy_scale: float = 0.5
    """target entropy = -target_entropy_scale * action_dim (official: 0.5)"""
    actor_loss: Literal["reppo", "wpo"] = "reppo"
    """the actor's loss at each sampled step: reppo (pathwise) or wpo (DA-MDP: WPO's velocity, method.md §4.5)"""
    kl_bound: float | None = None
    """bound on K x KL(old kernel || new kernel) per augmented sample, a budget per action (default 0.1; wpo: 0.02)"""
    beta: float = 0.01
    """initial value of the KL multiplier beta"""
    multiplier_lr: float | None = None
    """Adam learning rate of log(alpha) and log(beta) (default: the official 3e-4; wpo: 6e-4)"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *between("target_entropy_scale", -100, 100),  # target entropy = -scale x action_dim
    *at_least_one("num_diffusion_steps", "num_steps", "minibatch_size", "update_epochs"),
    *at_least_one("hidden_dim", "actor_hidden_dim"),
    ("num_bins >= 2", "--num-bins must be at least 2 (got {num_bins})."),
    (
        "minibatch_size <= num_envs * num_steps * num_diffusion_steps",
        "--minibatch-size {minibatch_size} exceeds the rollout's {num_envs * num_steps * num_diffusion_steps} "
        "augmented transitions (--num-envs x --num-steps x --num-diffusion-steps).",
    ),
    ("total_timesteps >= num_envs * num_steps", "--total-timesteps {total_timesteps} is less than one rollout."),
    *positive("learning_rate", "alpha", "max_grad_norm", "beta", "min_std"),
    ("kl_bound is None or kl_bound > 0", "--kl-bound must be positive (got {kl_bound})."),
    ("multiplier_lr is None or multiplier_lr > 0", "--multiplier-lr must be positive (got {multiplier_lr})."),
    ("min_std < 1", "--min-std must be below 1, the largest sigma_k (got {min_std})."),
    ("v_min < v_max", "--v-min {v_min} must be below --v-max {v_max}."),
    *in_unit_interval("gamma"),
    ("augmented_gamma is None or 0 < augmented_gamma <= 1", "--augmented-gamma must be in (0, 1]."),
    *in_unit_interval("gae_lambda", closed=True),
    ("aux_loss_coef >= 0", "--aux-loss-coef must be >= 0 (got {aux_loss_coef})."),
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


def step_log_ratio_term(actor, x_k, k, x_previous, log_q, action_half_width):
    """lt_k = log q(x_{k-1}|x_k,s) - log p(x_k|x_{k-1}), plus log N(x_K; 0, I) at k = K and minus the squash
    log-Jacobian at k = 1, so that sum_k lt_k = L (method.md §2, §3)."""
    term = log_q - actor.forward_log_prob(x_k, x_previous, k)
    prior = gaussian_log_prob(x_k, torch.zeros_like(x_k), torch.ones_like(x_k))
    squash = squash_log_det(x_previous, action_half_width)
    return term + torch.where(k == actor.num_diffusion_steps, prior, 0.0) - torch.where(k == 1, squash, 0.0)


class Agent(nn.Module):
    """The diffusion actor and the squashing a = c + h tanh(x_0)."""

    def __init__(self, obs_dim, action_dim, action_low, action_high, num_diffusion_steps, hidden_dim=128, min_std=0.01):
        super().__init__()
        self.actor = DiffusionActor(obs_dim, action_dim, num_diffusion_steps, hidden_dim, min_std, activation="relu")
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x_0: torch.Tensor) -> torch.Tensor:  # a = c + h tanh(x_0)
        return self.action_center + self.action_half_width * torch.tanh(x_0)

    def one_step(self, obs: torch.Tensor, x_k: torch.Tensor, k: torch.Tensor):
        """(x_{k-1} = mean + sigma_k eps reparameterised, lt_k(x_{k-1}), mean, std): one augmented action."""
        mean, std = self.actor.kernel(obs, x_k, k)
        x_previous = mean + std * torch.randn_like(mean)
        log_q = gaussian_log_prob(x_previous, mean, std)
        log_ratio_term = step_log_ratio_term(self.actor, x_k, k, x_previous, log_q, self.action_half_width)
        return x_previous, log_ratio_term, mean, std

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        chain, _ = self.actor.sample_chain(obs, deterministic)
        return self.squash(chain[:, -1])


def hl_gauss_histogram(values, v_min, v_max, num_bins, sigma_ratio=0.75):
    """The HL-Gauss target: N(clip(y), (sigma_ratio * bin width)^2) integrated over each bin, renormalised
    to the mass inside [v_min, v_max]. [B] -> [B, num_bins], rows sum to one."""
    edges = torch.linspace(v_min, v_max, num_bins + 1, device=values.device, dtype=values.dtype)
    sigma = sigma_ratio * (v_max - v_min) / num_bins
    y = values.clamp(v_min, v_max)[:, None]
    cdf = torch.special.ndtr((edges[None] - y) / sigma)
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / (cdf[:, -1:] - cdf[:, :1])


class DistributionalCritic(nn.Module):
    """Q~(s, x_k, k, x_{k-1}) as a categorical over bins on [v_min, v_max], with an auxiliary head that
    predicts the next augmented state's embedding and the environment reward from this one's embedding."""

    def __init__(self, obs_dim, action_dim, num_diffusion_steps, hidden_dim=256, num_bins=101, v_min=-10.0, v_max=10.0):
        super().__init__()
        time_embedding_dim = 16
        self.time_embedding = nn.Embedding(num_diffusion_steps + 1, time_embedding_dim)

        def block(inputs):
            return [nn.Linear(inputs, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU()]

        self.encoder = nn.Sequential(*block(obs_dim + 4 * action_dim + time_embedding_dim), *block(hidden_dim))
        self.value_head = nn.Sequential(*block(hidden_dim), nn.Linear(hidden_dim, num_bins))
        self.prediction_head = nn.Sequential(*block(hidden_dim), nn.Linear(hidden_dim, hidden_dim + 1))
        bin_centres = torch.linspace(v_min, v_max, num_bins + 1)[:-1] + (v_max - v_min) / num_bins / 2
        self.register_buffer("bin_centres", bin_centres)

    def forward(self, obs, x_k, k, x_previous) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, bins], embedding [B, hidden])."""
        # Each latent enters twice: through tanh, as the environment sees x_0, and scaled (x / 3), so that the
        # critic still tells a latent at 5 from one at 30 (tanh alone hides how far out a latent has drifted).
        latents = [torch.tanh(x_k), x_k / 3, self.time_embedding(k), torch.tanh(x_previous), x_previous / 3]
        embedding = self.encoder(torch.cat([obs, *latents], dim=-1))
        return self.value_head(embedding), embedding

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """The categorical's mean: sum_i softmax(logits)_i * centre_i."""
        return (logits.softmax(-1) * self.bin_centres).sum(-1)


def gaussian_kl(mean_old, std_old, mean_new, std_new):
    """KL(N(mean_old, diag std_old^2) || N(mean_new, diag std_new^2)), summed over the last axis (closed form)."""
    return (torch.log(std_new / std_old) + (std_old**2 + (mean_old - mean_new) ** 2) / (2 * std_new**2) - 0.5).sum(-1)


def augmented_lambda_returns(rewards, next_values, terminations, truncations, discounts, gae_lambda):
    """Lambda-returns [T, N, K] backwards over the augmented sequence (method.md §4.5): rewards and next_values
    (V after step j) [T, N, K], j = 0 is k = K and j = K-1 the env step; terminations, truncations [T, N]; discounts
    [K], g of step j. The rollout's last step bootstraps with V alone, as does a truncated env step."""
    returns, next_return = torch.zeros_like(rewards), next_values[-1, :, -1]
    for t in reversed(range(rewards.shape[0])):
        for j in reversed(range(rewards.shape[2])):
            v = next_values[t, :, j]
            bootstrap = gae_lambda * next_return + (1 - gae_lambda) * v
            if j == rewards.shape[2] - 1:
                bootstrap = (1.0 - terminations[t]) * torch.where(truncations[t].bool(), v, bootstrap)
            next_return = returns[t, :, j] = rewards[t, :, j] + discounts[j] * bootstrap
    return returns


def augmented_next_states(obs, final_obs, chain):
    """The augmented state after each step j of every env's chain, flattened [N * K]: (s_t, x_{k-1}, k-1) inside
    the chain, (s_{t+1}, x_K ~ N(0, I), K) after the env step (method.md §4.5)."""
    num_envs, K, action_dim = chain.shape[0], chain.shape[1] - 1, chain.shape[2]
    state_obs = torch.cat([obs[:, None].expand(-1, K - 1, -1), final_obs[:, None]], 1).flatten(0, 1)
    state_x = torch.cat([chain[:, 1:K], torch.randn_like(chain[:, :1])], 1).reshape(-1, action_dim)
    state_k = torch.cat([torch.arange(K - 1, 0, -1), torch.tensor([K])]).to(chain.device).repeat(num_envs)
    return state_obs, state_x, state_k


def augmented_discounts(num_diffusion_steps: int, gamma: float, augmented_gamma: float | None) -> torch.Tensor:
    """g_j of the augmented steps j = 0..K-1: 1 inside the chain and gamma at the env step, or augmented_gamma."""
    inside, last = (1.0, gamma) if augmented_gamma is None else (augmented_gamma, augmented_gamma)
    return torch.tensor([inside] * (num_diffusion_steps - 1) + [last])


def augmented_rewards(env_rewards, terminated, fresh_log_ratio_terms, discounts, alpha):
    """The soft rewards [N, K] of the augmented steps: -alpha g_j lt' of the fresh step at the next augmented state
    (dropped after a termination), plus the environment's reward at the environment step j = K - 1 (method.md §4.5)."""
    not_terminated = torch.ones_like(fresh_log_ratio_terms)
    not_terminated[:, -1] = 1.0 - terminated
    rewards = -alpha * discounts * not_terminated * fresh_log_ratio_terms
    rewards[:, -1] += env_rewards
    return rewards


def multiplier_loss(log_alpha, log_beta, entropy_estimate, target_entropy, kl, kl_bound, autotune: bool):
    """Descending it raises beta while the mean KL exceeds the bound and lowers alpha while H_est is above target."""
    loss = -log_beta.exp() * (kl - kl_bound)
    return loss + log_alpha.exp() * (entropy_estimate - target_entropy) if autotune else loss


def actor_losses(agent, old_actor, critic, obs, x_k, k, alpha, beta, kl_bound):
    """(loss, lt_k [B], KL [B]) for one reparameterised step per augmented state: alpha lt_k - Q~ where
    KL < kl_bound, else beta KL (REPPO's trust region), KL = K KL(old || new) of the step, the whole action's
    budget (method.md §4.5); the critic is frozen."""
    x_previous, log_ratio_term, mean, std = agent.one_step(obs, x_k, k)
    critic.requires_grad_(False)
    logits, _ = critic(obs, x_k, k, x_previous)
    critic.requires_grad_(True)
    with torch.no_grad():
        mean_old, std_old = old_actor.kernel(obs, x_k, k)
    kl = agent.actor.num_diffusion_steps * gaussian_kl(mean_old, std_old, mean, std)
    objective = alpha * log_ratio_term - critic.value(logits)
    loss = torch.where(kl < kl_bound, objective, beta * kl).mean()
    return loss, log_ratio_term, kl


def auxiliary_loss(prediction, next_embeddings, env_rewards, weights):
    """REPPO's auxiliary loss: the squared errors of the predicted next embedding and env reward, averaged over the
    H + 1 outputs, weighted per sample (K at unterminated environment steps, 0 elsewhere) and averaged."""
    errors = torch.cat([prediction[:, :-1] - next_embeddings, prediction[:, -1:] - env_rewards[:, None]], -1)
    return (weights * errors.pow(2).mean(-1)).mean()


def auxiliary_weights(terminations: torch.Tensor, step_k: torch.Tensor) -> torch.Tensor:
    """The auxiliary loss's weight of each augmented sample [T * N * K]: K at environment steps (k = 1) that did not
    terminate, 0 elsewhere, so that a batch weighs environment steps as the twin's does (the authors' form)."""
    return (len(step_k) * (1 - terminations)[:, :, None] * (step_k == 1)).reshape(-1)


def wpo_actor_losses(agent, old_actor, critic, obs, x_k, k, alpha, beta, kl_bound):
    """(loss, lt_k [B], KL [B]) for DA-MDP: WPO at one step per augmented state, as the authors' WPO loss without the
    Fisher preconditioner: -<v, d log q(x_{k-1}|s, x_k, k) / dx_{k-1}> with the velocity v = d(Q~ - alpha lt_k)/dx_{k-1}
    taken with the parameters held fixed, where KL < kl_bound, else beta KL; the critic is frozen (method.md §4.5)."""
    mean, std = agent.actor.kernel(obs, x_k, k)
    x = (mean + std * torch.randn_like(mean)).detach().requires_grad_(True)
    log_q = gaussian_log_prob(x, mean.detach(), std.detach())
    log_ratio_term = step_log_ratio_term(agent.actor, x_k, k, x, log_q, agent.action_half_width)
    critic.requires_grad_(False)
    logits, _ = critic(obs, x_k, k, x)
    critic.requires_grad_(True)
    (velocity,) = torch.autograd.grad((critic.value(logits) - alpha * log_ratio_term).sum(), x)
    score = (mean - x.detach()) / std**2  # d log N(x; mean, std^2) / dx, as a function of the parameters
    with torch.no_grad():
        mean_old, std_old = old_actor.kernel(obs, x_k, k)
    kl = agent.actor.num_diffusion_steps * gaussian_kl(mean_old, std_old, mean, std)
    loss = torch.where(kl < kl_bound, -(score * velocity).sum(-1), beta * kl).mean()
    return loss, log_ratio_term.detach(), kl


def augmented_samples(obs: torch.Tensor, chain: torch.Tensor, step_k: torch.Tensor):
    """Flatten a rollout into augmented samples (s, x_k, k) -> x_{k-1}, in the order of the [T, N, K] buffers."""
    flat_obs = obs[:, :, None].expand(-1, -1, len(step_k), -1).reshape(-1, obs.shape[-1])
    x_k, x_previous = chain[:, :, :-1].reshape(-1, chain.shape[-1]), chain[:, :, 1:].reshape(-1, chain.shape[-1])
    return flat_obs, x_k, step_k.repeat(chain.shape[0] * chain.shape[1]), x_previous


def main() -> None:
    run = Run(Args, "diffreppo", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    K, T, N = args.num_diffusion_steps, args.num_steps, args.num_envs  # augmented step j of a chain has k = K - j
    augmented_batch_size, num_iterations = T * N * K, run.iterations(T * N)
    agent_kwargs = dict(**run.space, num_diffusion_steps=K, hidden_dim=args.actor_hidden_dim, min_std=args.min_std)
    critic_kwargs = dict(obs_dim=obs_dim, action_dim=action_dim, num_diffusion_steps=K, hidden_dim=args.hidden_dim)
    critic_kwargs.update(num_bins=args.num_bins, v_min=args.v_min, v_max=args.v_max)

    def networks():
        return [Agent(**agent_kwargs), DistributionalCritic(**critic_kwargs)]

    rollout_bytes = 4 * args.num_steps * args.num_envs * (args.num_diffusion_steps + 1) * (obs_dim + 3 * action_dim + 8)
    agent, critic = run.build(networks, "--hidden-dim, --actor-hidden-dim, --num-steps or --num-envs", rollout_bytes)
    old_actor = copy.deepcopy(agent.actor).requires_grad_(False)
    actor_optimizer = torch.optim.AdamW(agent.parameters(), lr=args.learning_rate)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=args.learning_rate)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=args.autotune)
    log_beta = torch.tensor(math.log(args.beta), device=device, requires_grad=True)
    multipliers = [log_alpha, log_beta] if args.autotune else [log_beta]
    wpo = args.actor_loss == "wpo"  # DA-MDP: WPO, with the official override's bound and multiplier rate
    kl_bound = args.kl_bound or (0.02 if wpo else 0.1)
    multiplier_optimizer = torch.optim.Adam(multipliers, lr=args.multiplier_lr or (6e-4 if wpo else 3e-4))
    target_entropy = -args.target_entropy_scale * action_dim
    obs_normalizer = ObservationNormalizer((obs_dim,))
    reward_normalizer = RewardNormalizer(args.num_envs, args.gamma, enabled=args.norm_reward)
    state = dict(agent=agent, critic=critic, actor_optimizer=actor_optimizer, critic_optimizer=critic_optimizer)
    state.update(multiplier_optimizer=multiplier_optimizer, log_alpha=log_alpha, log_beta=log_beta)
    state.update(obs_normalizer=obs_normalizer, reward_normalizer=reward_normalizer)
    checkpoint = run.restore(state, agent_kwargs=agent_kwargs, critic_kwargs=critic_kwargs)
    global_step, iteration = checkpoint.get("global_step", 0), checkpoint.get("iteration", 0)
    alpha, beta = log_alpha.exp().item(), log_beta.exp().item()

    obs_buffer = torch.zeros((T, N, obs_dim), device=device)  # augmented step j of env step t has k = K - j
    chain_buffer = torch.zeros((T, N, K + 1, action_dim), device=device)
    reward_buffer, next_value_buffer = (torch.zeros((T, N, K), device=device) for _ in range(2))
    next_embedding_buffer = torch.zeros((T, N, K, args.hidden_dim), device=device)
    termination_buffer, truncation_buffer, path_log_ratio_buffer, saturated_buffer, env_reward_buffer = torch.zeros(
        (5, T, N)
    ).to(device)
    step_k = agent.actor.step_k  # [K]: k of augmented step j
    discounts = augmented_discounts(K, args.gamma, args.augmented_gamma).to(device)
    update_seconds, num_updates, half_width = 0.0, 0, agent.action_half_width  # the update phase's cost per minibatch
    next_obs_raw = run.reset_envs(obs_normalizer)
    next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)

    while iteration < num_iterations and run.stop is None:  # a signal stops within seconds (run.check_stop)
        run.keep(global_step, iteration=iteration)  # what a stop inside this iteration saves
        iteration += 1
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs_buffer[step] = next_obs
            with torch.no_grad():
                chain, step_log_q = agent.actor.sample_chain(next_obs)
                log_ratio, log_prior, log_det = agent.actor.path_log_ratio_terms(chain, step_log_q, half_width)
            next_obs_raw, reward, terminated, truncated, infos = envs.step(agent.squash(chain[:, -1]).cpu().numpy())
            done, truncated_only = np.logical_or(terminated, truncated), np.logical_and(truncated, ~terminated)
            normalised_reward = torch.as_tensor(reward_normalizer(reward, done), dtype=torch.float32, device=device)
            final_obs = torch.as_tensor(obs_normalizer(true_next_observations(next_obs_raw, infos)), device=device)
            terminated_t = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            with torch.no_grad():  # V at the next augmented state = Q~ with a fresh step, whose lt' enters the reward
                state_obs, state_x, state_k = augmented_next_states(next_obs, final_obs, chain)
                fresh_x, fresh_log_ratio_term, _, _ = agent.one_step(state_obs, state_x, state_k)
                logits, embedding = critic(state_obs, state_x, state_k, fresh_x)
            fresh_log_ratio_term = fresh_log_ratio_term.view(args.num_envs, K)
            rewards = augmented_rewards(normalised_reward, terminated_t, fresh_log_ratio_term, discounts, alpha)
            chain_buffer[step], reward_buffer[step], env_reward_buffer[step] = chain, rewards, normalised_reward
            next_value_buffer[step] = critic.value(logits).view(args.num_envs, K)
            next_embedding_buffer[step] = embedding.view(args.num_envs, K, -1)
            termination_buffer[step] = terminated_t
            truncation_buffer[step] = torch.as_tensor(truncated_only, dtype=torch.float32, device=device)
            path_log_ratio_buffer[step] = log_prior + log_ratio.sum(1) - log_det
            saturated_buffer[step] = (chain[:, -1].abs() > 3.0).float().mean(-1)  # |tanh(x_0)| > 0.995
            obs_normalizer.update(next_obs_raw)
            next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)
            run.episodes(infos, global_step)

        buffers = (reward_buffer, next_value_buffer, termination_buffer, truncation_buffer)
        chain_lambda = args.gae_lambda ** (1 / K) if args.lambda_per_env_step else args.gae_lambda
        returns = augmented_lambda_returns(*buffers, discounts, chain_lambda)
        b_obs, b_x_k, b_k, b_x_previous = augmented_samples(obs_buffer, chain_buffer, step_k)
        b_returns, b_env_rewards = returns.reshape(-1), env_reward_buffer[:, :, None].expand(-1, -1, K).reshape(-1)
        b_aux_weights = auxiliary_weights(termination_buffer, step_k)
        b_next_embeddings = next_embedding_buffer.reshape(augmented_batch_size, -1)
        old_actor.load_state_dict(agent.actor.state_dict())
        kl_over_bound, update_start, per_k = [], time.time(), torch.zeros((3, K), device=device)  # KL, lt_k, count
        for epoch in range(args.update_epochs):
            permutation = torch.randperm(augmented_batch_size, device=device)
            for start in range(0, augmented_batch_size - args.minibatch_size + 1, args.minibatch_size):
                run.check_stop(global_step)
                mb = permutation[start : start + args.minibatch_size]
                # Critic: HL-Gauss cross-entropy to the lambda-return, plus the auxiliary predictions.
                logits, embedding = critic(b_obs[mb], b_x_k[mb], b_k[mb], b_x_previous[mb])
                target = hl_gauss_histogram(b_returns[mb], args.v_min, args.v_max, args.num_bins)
                cross_entropy = -(target * logits.log_softmax(-1)).sum(-1).mean()
                prediction = critic.prediction_head(embedding)
                aux_loss = auxiliary_loss(prediction, b_next_embeddings[mb], b_env_rewards[mb], b_aux_weights[mb])
                critic_loss = cross_entropy + args.aux_loss_coef * aux_loss
                run.check_finite("critic loss", critic_loss, global_step, f" (iteration {iteration}, epoch {epoch})")
                critic_optimizer.zero_grad()
                critic_loss.backward()
                nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
                critic_optimizer.step()
                # Actor: one reparameterised step per augmented state, through the updated critic (frozen).
                actor_loss, log_ratio_term, kl = (wpo_actor_losses if wpo else actor_losses)(
                    agent, old_actor, critic, b_obs[mb], b_x_k[mb], b_k[mb], alpha, beta, kl_bound
                )
                run.check_finite("actor loss", actor_loss, global_step, f" (iteration {iteration}, epoch {epoch})")
                actor_optimizer.zero_grad()
                actor_loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                actor_optimizer.step()
                agent.actor.clamp_log_std_()
                # Multipliers: beta rises while the mean KL exceeds the bound; alpha falls while H_est is above target.
                entropy_estimate = -K * log_ratio_term.detach().mean()  # H_est = -E[L], L = sum_k lt_k
                kl_mean = kl.detach().mean()
                loss = multiplier_loss(
                    log_alpha, log_beta, entropy_estimate, target_entropy, kl_mean, kl_bound, args.autotune
                )
                multiplier_optimizer.zero_grad()
                loss.backward()
                multiplier_optimizer.step()
                alpha, beta = log_alpha.exp().item(), log_beta.exp().item()
                kl_over_bound.append((kl >= kl_bound).float().mean().item())
                step_stats = torch.stack([kl.detach() / K, log_ratio_term.detach(), torch.ones_like(kl)])
                per_k.index_add_(1, b_k[mb] - 1, step_stats)
        update_seconds, num_updates = update_seconds + time.time() - update_start, num_updates + len(kl_over_bound)

        rollout_entropy = -path_log_ratio_buffer.mean().item()
        run.log(global_step, "charts", entropy_estimate=rollout_entropy, alpha=alpha, beta=beta)
        saturated, latent_max = saturated_buffer.mean(), chain_buffer.abs().amax()
        run.log(global_step, "charts", saturated_action_fraction=saturated, latent_abs_max=latent_max)
        losses = dict(critic_loss=critic_loss, critic_cross_entropy=cross_entropy, aux_loss=aux_loss, kl=kl.mean())
        run.log(global_step, "losses", **losses, actor_loss=actor_loss, kl_over_bound=np.mean(kl_over_bound))
        clipped = ((b_returns < args.v_min) | (b_returns > args.v_max)).float().mean()
        run.log(global_step, "losses", returns_mean=b_returns.mean(), clipped_target_fraction=clipped)
        kl_k, log_ratio_k = per_k[:2] / per_k[2]  # per k: the one-step KL and -E[lt_k], which sum to H_est
        run.log(global_step, "losses", **{f"kl_k{k}": kl_k[k - 1] for k in range(1, K + 1)})
        run.log(global_step, "charts", **{f"entropy_k{k}": -log_ratio_k[k - 1] for k in range(1, K + 1)})
        text = f"entropy estimate {rollout_entropy:7.2f} | alpha {alpha:.2e} | beta {beta:.2e} | updates/s "
        run.show(global_step, text + f"{num_updates / update_seconds:.1f}")
        crossed = global_step // args.checkpoint_frequency > (global_step - T * N) // args.checkpoint_frequency
        if args.save_model and (crossed or iteration == num_iterations):
            run.save(global_step, iteration=iteration)

    run.finish(global_step, iteration=iteration)


if __name__ == "__main__":
    run_cli(main, "diffreppo.py")
