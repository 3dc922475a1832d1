"""DiffSAC: soft actor-critic whose actor is a K-step diffusion policy.

Sanokowski, Patil, Knoll, arXiv 2512.02019 (DiffSAC). The maths is in docs/method.md ("method.md §n" below).

    python diffsac.py --env-id Hopper-v4 --num-diffusion-steps 8

CleanRL's SAC except the actor: the action is reparameterised through the K reverse kernels (method.md §1), and
the path log-ratio L(s, x_{0:K}) replaces log pi(a|s) (method.md §2) in the critic target and the actor loss
E[alpha L - min_i Q_i(s, a)]; alpha is tuned so that H_est = -E[L], a lower bound on the entropy, tracks
-target_entropy_scale * action_dim. Choices the paper leaves open: the actor's mean network has ReLU and 128 units
(it runs K times per action); time-limit cuts bootstrap from the true final observation; --actor-loss
log-variance (not the paper's) covers every mode of a multimodal pi*; the replay buffer is saved beside each
checkpoint, so --resume continues learning where the run stopped.
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
    """environment steps between checkpoints (and replay-buffer files) when --save-model is set"""
    env_id: str = "Hopper-v4"
    """the id of the environment (any gymnasium id with a bounded Box action space; module:EnvId imports module)"""
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
    num_diffusion_steps: int = 8
    """K, the number of diffusion (denoising) steps per action"""
    min_std: float = 0.01
    """floor of every reverse-kernel standard deviation sigma_k"""
    hidden_dim: int = 256
    """width of the two hidden layers of the Q networks"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the actor's mean network (run K times per action)"""
    actor_loss: str = "reverse-kl"
    """"reverse-kl": E[alpha L - min Q], pathwise (the paper's); "log-variance": mass-covering (method.md §2)"""
    chains_per_state: int = 8
    """with --actor-loss log-variance: chains drawn at each replayed state (the variance is taken over them)"""
    behaviour_noise_scale: float = 1.5
    """with --actor-loss log-variance: kernel noise x this when drawing its training paths (1: the chain's own)"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *between("target_entropy_scale", -100, 100),  # target entropy = -scale x action_dim
    *at_least_one("num_diffusion_steps", "batch_size", "buffer_size", "policy_frequency", "target_network_frequency"),
    *at_least_one("hidden_dim", "actor_hidden_dim", "chains_per_state"),
    ("batch_size <= buffer_size", "--batch-size {batch_size} is larger than --buffer-size {buffer_size}."),
    ("learning_starts >= batch_size", "--learning-starts {learning_starts} is below --batch-size {batch_size}."),
    ("total_timesteps > learning_starts", "--total-timesteps {total_timesteps} must exceed --learning-starts."),
    ("alpha >= 0", "--alpha must be >= 0 (got {alpha})."),
    (
        "alpha > 0 or not (autotune or actor_loss == 'log-variance')",
        "--alpha must be > 0 to tune it or with log-variance.",
    ),
    ("alpha_start is None or not autotune", "--alpha-start anneals a fixed temperature; add --no-autotune."),
    ("alpha_start is None or alpha_start > alpha > 0", "--alpha-start must be above --alpha > 0 (got {alpha_start})."),
    *in_unit_interval("alpha_anneal_fraction", "gamma", "tau"),
    *positive("policy_lr", "q_lr", "min_std"),
    ("behaviour_noise_scale > 0", "--behaviour-noise-scale must be a positive number (got {behaviour_noise_scale})."),
    ("min_std < 1", "--min-std must be below 1, the largest sigma_k (got {min_std})."),
    ("actor_loss in ('reverse-kl', 'log-variance')", "--actor-loss {actor_loss!r}: allowed: reverse-kl, log-variance."),
    ("chains_per_state >= 2", "--chains-per-state must be at least 2: a variance needs two chains."),
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

    def __init__(self, obs_dim, action_dim, action_low, action_high, num_diffusion_steps, hidden_dim=256, min_std=0.01):
        super().__init__()
        self.actor = DiffusionActor(obs_dim, action_dim, num_diffusion_steps, hidden_dim, min_std, activation="relu")
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x_0: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x_0)."""
        return self.action_center + self.action_half_width * torch.tanh(x_0)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, path log-ratio L [B], chain) with the action reparameterised through all K steps."""
        chain, step_log_q = self.actor.sample_chain(obs)
        step_log_ratio, log_prior, log_det = self.actor.path_log_ratio_terms(chain, step_log_q, self.action_half_width)
        return self.squash(chain[:, -1]), log_prior + step_log_ratio.sum(1) - log_det, chain

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        chain, _ = self.actor.sample_chain(obs, deterministic)
        return self.squash(chain[:, -1])


def soft_bellman_target(rewards, terminations, next_min_q, next_path_log_ratio, alpha, gamma):
    """y = r + gamma (1 - terminated) (min_i Q_target_i(s', a') - alpha L(s', x'_{0:K})), L in place of log pi."""
    return rewards + gamma * (1.0 - terminations) * (next_min_q - alpha * next_path_log_ratio)


def actor_loss_and_entropy(agent: Agent, qf1: SoftQNetwork, qf2: SoftQNetwork, obs: torch.Tensor, alpha: float):
    """(E[alpha L - min_i Q_i(s, a)], H_est = -E[L] detached): the paper's surrogate (method.md §2)."""
    actions, path_log_ratio, _ = agent.sample(obs)
    # The critics pass gradients only to the action: frozen, they skip weight gradients the actor would not use.
    qf1.requires_grad_(False)
    qf2.requires_grad_(False)
    min_q = torch.min(qf1(obs, actions), qf2(obs, actions))
    qf1.requires_grad_(True)
    qf2.requires_grad_(True)
    return (alpha * path_log_ratio - min_q).mean(), -path_log_ratio.detach().mean()


def log_variance_actor_loss(agent, qf1, qf2, obs, alpha, chains_per_state, noise_scale):
    """(Var_m[alpha L - min_i Q_i(s, a)] / (2 alpha), H_est): the log-variance divergence (method.md §2).

    M = chains_per_state paths per state, drawn without gradient with the kernel noise times noise_scale; L of
    those fixed paths is re-evaluated with gradient and the variance taken over the M paths of one state.
    """
    actor, K, action_dim = agent.actor, agent.actor.num_diffusion_steps, agent.actor.action_dim
    obs = obs.repeat_interleave(chains_per_state, 0)
    with torch.no_grad():
        chain, _ = actor.sample_chain(obs, noise_scale=noise_scale)
        actions = agent.squash(chain[:, -1])
        min_q = torch.min(qf1(obs, actions), qf2(obs, actions))
        _, own_path_log_ratio, _ = agent.sample(obs[::chains_per_state])  # H_est on the chain's own paths
    step_log_q = actor.log_prob(
        obs.repeat_interleave(K, 0),
        chain[:, :-1].reshape(-1, action_dim),
        actor.step_k.repeat(len(obs)),
        chain[:, 1:].reshape(-1, action_dim),
    ).view(-1, K)
    step_log_ratio, log_prior, log_det = actor.path_log_ratio_terms(chain, step_log_q, agent.action_half_width)
    path_log_ratio = log_prior + step_log_ratio.sum(1) - log_det
    objective = (alpha * path_log_ratio - min_q).view(-1, chains_per_state)
    return objective.var(dim=1, unbiased=False).mean() / (2 * alpha), -own_path_log_ratio.mean()


def annealed_alpha(alpha: float, alpha_start: float, progress: float) -> float:
    """Temperature at `progress` in [0, 1]: 1/alpha_t rises linearly from 1/alpha_start to 1/alpha."""
    weight = alpha / alpha_start + (1.0 - alpha / alpha_start) * min(max(progress, 0.0), 1.0)
    return alpha / weight


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """alpha (H_est - target): descending it lowers alpha when the entropy estimate is above target."""
    return log_alpha.exp() * (entropy_estimate - target_entropy)


def main() -> None:
    run = Run(Args, "diffsac", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    K = args.num_diffusion_steps
    agent_kwargs = dict(**run.space, num_diffusion_steps=K, hidden_dim=args.actor_hidden_dim, min_std=args.min_std)

    def networks():
        return [Agent(**agent_kwargs)] + [SoftQNetwork(obs_dim, action_dim, args.hidden_dim) for _ in range(4)]

    buffer_bytes = ReplayBuffer.bytes(args.buffer_size, obs_dim, action_dim)
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
    obs_normalizer = ObservationNormalizer.identity((obs_dim,))  # SAC does not normalise; checkpoints stay uniform
    state = dict(agent=agent, qf1=qf1, qf2=qf2, qf1_target=qf1_target, qf2_target=qf2_target, log_alpha=log_alpha)
    state.update(q_optimizer=q_optimizer, actor_optimizer=actor_optimizer, alpha_optimizer=alpha_optimizer)
    replay_buffer = ReplayBuffer(args.buffer_size, obs_dim, (action_dim,), device)
    checkpoint = run.restore(dict(**state, obs_normalizer=obs_normalizer), replay_buffer, agent_kwargs=agent_kwargs)
    global_step, alpha = checkpoint.get("global_step", 0), log_alpha.exp().item()
    learning_starts = run.learning_starts(args.learning_starts)
    updates = resumed_updates = checkpoint.get("updates", 0)  # delayed updates keep their phase on --resume
    last_print, next_checkpoint = global_step, global_step + args.checkpoint_frequency
    obs = run.reset_envs()
    entropy_estimate = torch.tensor(float("nan"))

    while global_step < args.total_timesteps and run.stop is None:
        global_step += args.num_envs
        if global_step <= learning_starts and not run.refill_buffer:
            actions = envs.action_space.sample()
        else:
            actions = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        next_obs, infos = step_and_store(envs, obs, actions, replay_buffer)
        run.episodes(infos, global_step)
        obs = next_obs

        if global_step > learning_starts:
            if updates == resumed_updates:
                update_start_time = time.time()
            updates += 1
            if args.alpha_start is not None:  # counted from --learning-starts, so a resumed run continues it
                anneal_steps = args.alpha_anneal_fraction * (args.total_timesteps - args.learning_starts)
                alpha = annealed_alpha(
                    args.alpha, args.alpha_start, (global_step - args.learning_starts) / anneal_steps
                )
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = replay_buffer.sample(args.batch_size)
            with torch.no_grad():
                next_actions, next_path_log_ratio, _ = agent.sample(b_next_obs)
                next_min_q = torch.min(qf1_target(b_next_obs, next_actions), qf2_target(b_next_obs, next_actions))
                target_q = soft_bellman_target(
                    b_rewards, b_terminations, next_min_q, next_path_log_ratio, alpha, args.gamma
                )
            qf1_values, qf2_values = qf1(b_obs, b_actions), qf2(b_obs, b_actions)
            qf1_loss, qf2_loss = F.mse_loss(qf1_values, target_q), F.mse_loss(qf2_values, target_q)
            qf_loss = qf1_loss + qf2_loss
            run.check_finite("critic loss", qf_loss, global_step)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if updates % args.policy_frequency == 0:  # TD3-style delayed update, compensated by repeating it
                for _ in range(args.policy_frequency):
                    if args.actor_loss == "log-variance":
                        actor_loss, entropy_estimate = log_variance_actor_loss(
                            agent, qf1, qf2, b_obs, alpha, args.chains_per_state, args.behaviour_noise_scale
                        )
                    else:
                        actor_loss, entropy_estimate = actor_loss_and_entropy(agent, qf1, qf2, b_obs, alpha)
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
                for network, target in ((qf1, qf1_target), (qf2, qf2_target)):
                    for param, target_param in zip(network.parameters(), target.parameters()):
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
                run.log(global_step, "losses", qf1_values=qf1_values.mean(), qf2_values=qf2_values.mean())
                run.log(global_step, "losses", qf1_loss=qf1_loss, qf2_loss=qf2_loss, qf_loss=qf_loss / 2.0)
                run.log(global_step, "losses", actor_loss=actor_loss)
                if args.autotune:
                    run.log(global_step, "losses", alpha_loss=loss_alpha)
        if args.save_model and global_step >= next_checkpoint:
            next_checkpoint += args.checkpoint_frequency
            run.save(global_step, replay_buffer, updates=updates)

    run.finish(global_step, replay_buffer, updates=updates)


if __name__ == "__main__":
    run_cli(main, "diffsac.py")
