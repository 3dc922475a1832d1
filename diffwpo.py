"""DiffWPO: Wasserstein policy optimisation on the diffusion-augmented MDP (DA-MDP: WPO).

Sanokowski, Patil, Knoll, arXiv 2512.02019 (DiffWPO); WPO: Pfau et al., arXiv 2505.00663. The maths is in
docs/method.md ("method.md §n" below).

    python diffwpo.py --env-id Hopper-v4 --num-diffusion-steps 8

Off-policy; the replay buffer keeps each transition's last diffusion step (x_1, x_0). Each environment step is K
augmented steps (s, x_k, k) -> (s, x_{k-1}, k-1), each with its log-ratio term lt_k (sum_k lt_k = L, method.md §3).
Inside the chain no reward is paid and no time passes, so the soft value of any augmented state is the k = 1
critic's value at the end of the chain rolled out with the current policy. Twin critics Q(s, x_1, 1, x_0) learn
r + gamma (1 - terminated) V(s', x'_K, K) on the stored last steps. The actor follows the Wasserstein gradient flow
at every diffusion step (method.md §4.3): each update rolls out a fresh chain by reparameterisation, values it by
J = Q(s, x_1, 1, x_0) - alpha L, and moves every kernel along the velocity dJ/dx_{k-1} (noise and parameters held
fixed) through its score; --fisher-preconditioner multiplies it by sigma_k^2 (the natural-gradient form). Choices
the paper leaves open: the velocity from the roll-out instead of learned critics inside the chain; the critics see
the chain through tanh, as the environment sees x_0; warm-up actions come from the untrained actor (the exact
reverse process of x_0 ~ N(0, I)); observations are not normalised (as SAC).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import at_least_one, between, in_unit_interval, positive, run_cli
from common.normalization import ObservationNormalizer
from common.replay_buffer import ReplayBuffer, step_and_store
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

    num_diffusion_steps: int = 8
    """K, the number of diffusion (denoising) steps per action"""
    min_std: float = 0.01
    """floor of every reverse-kernel standard deviation sigma_k"""
    hidden_dim: int = 256
    """width of the two hidden layers of the augmented Q networks"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the actor's mean network (run K times per action)"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *between("target_entropy_scale", -100, 100),  # target entropy = -scale x action_dim
    *at_least_one("num_diffusion_steps", "batch_size", "buffer_size", "policy_frequency", "target_network_frequency"),
    *at_least_one("hidden_dim", "actor_hidden_dim"),
    ("batch_size <= buffer_size", "--batch-size {batch_size} is larger than --buffer-size {buffer_size}."),
    ("learning_starts >= batch_size", "--learning-starts {learning_starts} is below --batch-size {batch_size}."),
    ("total_timesteps > learning_starts", "--total-timesteps {total_timesteps} must exceed --learning-starts."),
    ("alpha >= 0 and (alpha > 0 or not autotune)", "--alpha must be >= 0, and > 0 with --autotune (got {alpha})."),
    *in_unit_interval("gamma", "tau"),
    *positive("policy_lr", "q_lr", "min_std"),
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


class AugmentedQNetwork(nn.Module):
    """Q(s, x_k, k, x_{k-1}): the value of taking x_{k-1} in the augmented state (s, x_k, k). The script trains and
    reads it at k = 1 only; the other augmented states' values are roll-outs to it (method.md §4.3)."""

    def __init__(self, obs_dim, action_dim, num_diffusion_steps, hidden_dim=256, time_embedding_dim=16):
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

    def __init__(self, obs_dim, action_dim, action_low, action_high, num_diffusion_steps, hidden_dim=128, min_std=0.01):
        super().__init__()
        self.actor = DiffusionActor(obs_dim, action_dim, num_diffusion_steps, hidden_dim, min_std, activation="relu")
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


def roll_out(agent: Agent, obs: torch.Tensor):
    """(chain [x_K, ..., x_0], L [B]): a fresh chain drawn by reparameterisation (x_K ~ N(0, I), x_{k-1} = mean +
    sigma_k eps) and its path log-ratio L (method.md §2), differentiable in every x_{k-1}. Fused as the actor's
    sample_chain (the observation's part of the first layer once per chain); the numbers of actor.kernel run step by
    step, with log q(x_{k-1} | x_k) a function of x_{k-1} for the velocity (a test checks both)."""
    actor, obs_dim = agent.actor, obs.shape[1]
    first = actor.mean_net[0]
    obs_part = F.linear(obs, first.weight[:, :obs_dim], first.bias)
    x_weight = first.weight[:, obs_dim : obs_dim + actor.action_dim]
    time_part = actor.time_embedding.weight @ first.weight[:, obs_dim + actor.action_dim :].T  # row k
    scale, output_scale, log_std = actor.coefficients()  # row k-1
    x_k = torch.randn(obs.shape[0], actor.action_dim, device=obs.device, dtype=obs.dtype)
    chain, means = [x_k], []
    for k in range(actor.num_diffusion_steps, 0, -1):
        output = actor.mean_net[1:](obs_part + time_part[k] + F.linear(x_k, x_weight))
        means.append(scale[k - 1] * x_k + output_scale[k - 1] * output)
        x_k = means[-1] + log_std[k - 1].exp() * torch.randn_like(x_k)
        chain.append(x_k)
    path = torch.stack(chain, dim=1)
    step_log_q = gaussian_log_prob(path[:, 1:], torch.stack(means, dim=1), log_std.flip(0).exp())  # time order
    step_log_ratio, log_prior, squash = actor.path_log_ratio_terms(path, step_log_q, agent.action_half_width)
    return chain, log_prior + step_log_ratio.sum(1) - squash


def critic_targets(
    agent: Agent, qf1_target, qf2_target, obs, last_steps, rewards, next_obs, terminations, alpha, gamma
):
    """(obs, x_1, k = 1, x_0, y): each stored last step (x_1, x_0) [B, 2, d] and its soft Bellman target
    y = r + gamma (1 - terminated) V(s', x'_K, K), V from a fresh chain at s' rolled out to the k = 1 critic: no reward
    and no time pass inside the chain (method.md §4.3)."""
    last_step = agent.actor.step_k[-1:].expand(obs.shape[0])  # k = 1
    with torch.no_grad():
        chain, path_log_ratio = roll_out(agent, next_obs)
        next_q = torch.min(
            qf1_target(next_obs, chain[-2], last_step, chain[-1]), qf2_target(next_obs, chain[-2], last_step, chain[-1])
        )
        target = rewards + gamma * (1.0 - terminations) * (next_q - alpha * path_log_ratio)
    return obs, last_steps[:, 0], last_step, last_steps[:, 1], target


def kernel_score(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """d/dx log N(x; mean, diag(std^2)) = -(x - mean) / std^2."""
    return -(x - mean) / std**2


def rolled_out_velocity(agent: Agent, q_value, obs: torch.Tensor, alpha: float):
    """(chain [B, K+1, d], velocity [B, K, d], L [B]) of one roll-out (method.md §4.3): the velocity at x_{k-1} is
    d/dx_{k-1} [Q(s, x_1, 1, x_0) - alpha L], the noise and the parameters held fixed, an estimate of
    d/dx [V(s, x, k-1) - alpha lt_k(x)]."""
    chain, path_log_ratio = roll_out(agent, obs)
    last_step = agent.actor.step_k[-1:].expand(obs.shape[0])
    objective = q_value(obs, chain[-2], last_step, chain[-1]) - alpha * path_log_ratio
    velocity = torch.autograd.grad(objective.sum(), chain[1:])
    return torch.stack(chain, dim=1).detach(), torch.stack(velocity, dim=1), path_log_ratio.detach()


def wpo_actor_loss(agent: Agent, q_value, obs: torch.Tensor, alpha: float, fisher_preconditioner: bool):
    """(WPO loss at every step of each fresh chain, H_est = -E[L]) (method.md §4.3): each kernel's score at its
    sample against the rolled-out velocity there."""
    chain, velocity, path_log_ratio = rolled_out_velocity(agent, q_value, obs, alpha)
    num_diffusion_steps = agent.actor.num_diffusion_steps
    b_obs, b_k = obs.repeat_interleave(num_diffusion_steps, 0), agent.actor.step_k.repeat(obs.shape[0])
    b_x_k, x, velocity = chain[:, :-1].flatten(0, 1), chain[:, 1:].flatten(0, 1), velocity.flatten(0, 1)
    mean, std = agent.actor.kernel(b_obs, b_x_k, b_k)
    if fisher_preconditioner:
        velocity = velocity * std.detach() ** 2
    loss = -(kernel_score(x, mean, std) * velocity).sum(-1).mean()
    return loss, -path_log_ratio.mean()


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """alpha (H_est - target): descending it lowers alpha when the entropy estimate is above target."""
    return log_alpha.exp() * (entropy_estimate - target_entropy)


def main() -> None:
    run = Run(Args, "diffwpo", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    K = args.num_diffusion_steps
    agent_kwargs = dict(**run.space, num_diffusion_steps=K, hidden_dim=args.actor_hidden_dim, min_std=args.min_std)

    def networks():
        return [Agent(**agent_kwargs)] + [AugmentedQNetwork(obs_dim, action_dim, K, args.hidden_dim) for _ in range(4)]

    buffer_bytes = ReplayBuffer.bytes(args.buffer_size, obs_dim, 2 * action_dim)
    flags = "--hidden-dim, --actor-hidden-dim or --buffer-size"
    agent, qf1, qf2, qf1_target, qf2_target = run.build(networks, flags, buffer_bytes)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(agent.parameters(), lr=args.policy_lr)
    target_entropy = -args.target_entropy_scale * action_dim
    log_alpha = torch.tensor(math.log(args.alpha) if args.alpha > 0 else -math.inf, device=device)
    log_alpha.requires_grad_(args.autotune)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr) if args.autotune else None
    obs_normalizer = ObservationNormalizer.identity((obs_dim,))  # WPO, like SAC, does not normalise
    state = dict(agent=agent, qf1=qf1, qf2=qf2, qf1_target=qf1_target, qf2_target=qf2_target, log_alpha=log_alpha)
    state.update(q_optimizer=q_optimizer, actor_optimizer=actor_optimizer, alpha_optimizer=alpha_optimizer)
    replay_buffer = ReplayBuffer(args.buffer_size, obs_dim, (2, action_dim), device)  # the last step (x_1, x_0)
    checkpoint = run.restore(dict(**state, obs_normalizer=obs_normalizer), replay_buffer, agent_kwargs=agent_kwargs)
    global_step, alpha = checkpoint.get("global_step", 0), log_alpha.exp().item()

    def min_q(obs, x_k, k, x_previous):
        return torch.min(qf1(obs, x_k, k, x_previous), qf2(obs, x_k, k, x_previous))

    learning_starts = run.learning_starts(args.learning_starts)
    updates = resumed_updates = checkpoint.get("updates", 0)  # delayed updates keep their phase on --resume
    last_print, next_checkpoint = global_step, global_step + args.checkpoint_frequency
    obs = run.reset_envs()
    entropy_estimate = torch.tensor(float("nan"))

    while global_step < args.total_timesteps and run.stop is None:
        global_step += args.num_envs
        # Before learning starts the untrained actor is the exact reverse process of x_0 ~ N(0, I): a random policy.
        with torch.no_grad():
            chains, _ = agent.actor.sample_chain(torch.as_tensor(obs, dtype=torch.float32, device=device))
        next_obs, infos = step_and_store(
            envs, obs, agent.squash(chains[:, -1]).cpu().numpy(), replay_buffer, chains[:, -2:]
        )
        run.episodes(infos, global_step)
        obs = next_obs

        if global_step > learning_starts:
            if updates == resumed_updates:
                update_start_time = time.time()
            updates += 1
            batch = replay_buffer.sample(args.batch_size)
            b_obs, b_x_k, b_k, b_x_previous, target = critic_targets(
                agent, qf1_target, qf2_target, *batch, alpha=alpha, gamma=args.gamma
            )
            qf1_values = qf1(b_obs, b_x_k, b_k, b_x_previous)
            qf1_loss = F.mse_loss(qf1_values, target)
            qf2_loss = F.mse_loss(qf2(b_obs, b_x_k, b_k, b_x_previous), target)
            qf_loss = qf1_loss + qf2_loss
            run.check_finite("critic loss", qf_loss, global_step)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if updates % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    actor_loss, entropy_estimate = wpo_actor_loss(
                        agent, min_q, batch[0], alpha, args.fisher_preconditioner
                    )
                    run.check_finite("actor loss", actor_loss, global_step)
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
            session_updates = updates - resumed_updates
            updates_per_second = session_updates / (time.time() - update_start_time) if session_updates else 0.0
            entropy_text = "    n/a" if math.isnan(entropy_estimate) else f"{float(entropy_estimate):7.2f}"
            text = f"entropy estimate {entropy_text} | alpha {alpha:.2e} | updates/s {updates_per_second:.1f}"
            run.show(global_step, text, learning_starts)
            if session_updates >= args.policy_frequency:
                run.log(global_step, "charts", updates_per_second=updates_per_second, alpha=alpha)
                run.log(global_step, "charts", entropy_estimate=entropy_estimate)
                run.log(global_step, "losses", qf1_values=qf1_values.mean(), qf1_loss=qf1_loss, qf2_loss=qf2_loss)
                run.log(global_step, "losses", qf_loss=qf_loss / 2.0, actor_loss=actor_loss)
                if args.autotune:
                    run.log(global_step, "losses", alpha_loss=loss_alpha)
        if args.save_model and global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_frequency
            run.save(global_step, replay_buffer, updates=updates)

    run.finish(global_step, replay_buffer, updates=updates)


if __name__ == "__main__":
    run_cli(main, "diffwpo.py")
