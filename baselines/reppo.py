"""REPPO with a tanh-Gaussian policy: the Gaussian twin of diffreppo.py (Voelcker et al., arXiv 2507.11019).

    python baselines/reppo.py --env-id Hopper-v4

diffreppo.py with CleanRL's tanh-Gaussian actor (state-dependent log-std in [-5, 2]) in place of the K-step chain,
so that the augmented sequence is the environment's own (K = 1); critic, targets, trust region, temperature, logging
and checkpoints are the same. Only --minibatch-size differs (128): see docs/method.md §4.4.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

if __name__ == "__main__" and not __package__:  # run as a file (python baselines/reppo.py): make common/ importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.cli import at_least_one, between, in_unit_interval, positive, run_cli  # noqa: E402
from common.envs import true_next_observations  # noqa: E402
from common.normalization import ObservationNormalizer, RewardNormalizer  # noqa: E402
from common.runs import Run, RunArgs  # noqa: E402


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
    """environment steps per env per rollout"""
    minibatch_size: int = 128
    """transitions per gradient update (128: diffreppo.py's number of updates per env step at K = 8)"""
    update_epochs: int = 4
    """passes over each rollout's transitions"""
    learning_rate: float = 3e-4
    """AdamW learning rate of the actor and the critic"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    gamma: float = 0.99
    """the discount factor, applied once per environment step"""
    gae_lambda: float = 0.95
    """lambda of the lambda-returns over the augmented sequence"""
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
    """weight of the auxiliary loss (next embedding and env reward prediction)"""
    actor_hidden_dim: int = 128
    """width of the actor's two hidden layers (as diffreppo.py's mean network)"""
    alpha: float = 0.01
    """entropy temperature (initial value if --autotune)"""
    autotune: bool = True
    """tune alpha so that H_est tracks the target entropy"""
    target_entropy_scale: float = 0.5
    """target entropy = -target_entropy_scale * action_dim (official: 0.5)"""
    actor_loss: Literal["reppo", "wpo"] = "reppo"
    """the actor's loss: reppo (pathwise) or wpo (WPO's velocity against the score, method.md §4.5)"""
    kl_bound: float | None = None
    """bound on KL(old policy || new policy) per sample (default 0.1; wpo: 0.02)"""
    beta: float = 0.01
    """initial value of the KL multiplier beta"""
    multiplier_lr: float | None = None
    """Adam learning rate of log(alpha) and log(beta) (default: the official 3e-4; wpo: 6e-4)"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *between("target_entropy_scale", -100, 100),  # target entropy = -scale x action_dim
    *at_least_one("num_steps", "minibatch_size", "update_epochs", "hidden_dim", "actor_hidden_dim"),
    ("num_bins >= 2", "--num-bins must be at least 2 (got {num_bins})."),
    (
        "minibatch_size <= num_envs * num_steps",
        "--minibatch-size {minibatch_size} exceeds the rollout's {num_envs * num_steps} transitions.",
    ),
    ("total_timesteps >= num_envs * num_steps", "--total-timesteps {total_timesteps} is less than one rollout."),
    *positive("learning_rate", "max_grad_norm", "alpha", "beta"),
    ("kl_bound is None or kl_bound > 0", "--kl-bound must be positive (got {kl_bound})."),
    ("multiplier_lr is None or multiplier_lr > 0", "--multiplier-lr must be positive (got {multiplier_lr})."),
    ("v_min < v_max", "--v-min {v_min} must be below --v-max {v_max}."),
    *in_unit_interval("gamma"),
    *in_unit_interval("gae_lambda", closed=True),
    ("aux_loss_coef >= 0", "--aux-loss-coef must be >= 0 (got {aux_loss_coef})."),
]


# ----------------------------------------------------------------------------------------------
# The tanh-Gaussian policy (CleanRL's SAC actor), the critic, the trust region and the lambda-returns
# ----------------------------------------------------------------------------------------------
LOG_2PI = math.log(2 * math.pi)
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(std^2)) summed over the last axis."""
    return (-0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI).sum(-1)


def log_one_minus_tanh_squared(x: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x| (method.md §2)."""
    return 2.0 * (math.log(2.0) - x - nn.functional.softplus(-2.0 * x))


class GaussianActor(nn.Module):
    """CleanRL's SAC actor without the squashing: obs -> (mean, std) of the pre-tanh Gaussian."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc_mean = nn.Linear(hidden_dim, action_dim)
        self.fc_logstd = nn.Linear(hidden_dim, action_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc2(F.relu(self.fc1(obs))))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(self.fc_logstd(x)) + 1)
        return self.fc_mean(x), log_std.exp()


class Agent(nn.Module):
    """The Gaussian actor and the squashing a = c + h tanh(x)."""

    def __init__(self, obs_dim, action_dim, action_low, action_high, hidden_dim=128):
        super().__init__()
        self.actor = GaussianActor(obs_dim, action_dim, hidden_dim)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x)."""
        return self.action_center + self.action_half_width * torch.tanh(x)

    def one_step(self, obs: torch.Tensor):
        """(x = mean + std eps reparameterised, log pi(a|s), mean, std), with
        log pi(a|s) = log N(x; mean, std) - sum_i [log h_i + log(1 - tanh(x_i)^2)]."""
        mean, std = self.actor(obs)
        x = mean + std * torch.randn_like(mean)
        squash_log_det = (torch.log(self.action_half_width) + log_one_minus_tanh_squared(x)).sum(-1)
        return x, gaussian_log_prob(x, mean, std) - squash_log_det, mean, std

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action per observation; deterministic: c + h tanh(mean)."""
        return self.squash(self.actor(obs)[0]) if deterministic else self.squash(self.one_step(obs)[0])


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
    """Q(s, x) as a categorical over bins on [v_min, v_max], with an auxiliary head that predicts the next
    state's embedding and the reward from this one's embedding (diffreppo.py's critic with K = 1)."""

    def __init__(self, obs_dim, action_dim, hidden_dim=256, num_bins=101, v_min=-10.0, v_max=10.0):
        super().__init__()

        def block(inputs: int) -> list[nn.Module]:
            return [nn.Linear(inputs, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU()]

        self.encoder = nn.Sequential(*block(obs_dim + 2 * action_dim), *block(hidden_dim))
        self.value_head = nn.Sequential(*block(hidden_dim), nn.Linear(hidden_dim, num_bins))
        self.prediction_head = nn.Sequential(*block(hidden_dim), nn.Linear(hidden_dim, hidden_dim + 1))
        self.register_buffer(
            "bin_centres", torch.linspace(v_min, v_max, num_bins + 1)[:-1] + (v_max - v_min) / num_bins / 2
        )

    def forward(self, obs, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, bins], embedding [B, hidden]); the action enters through tanh and scaled, as in diffreppo.py."""
        embedding = self.encoder(torch.cat([obs, torch.tanh(x), x / 3], dim=-1))
        return self.value_head(embedding), embedding

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """The categorical's mean: sum_i softmax(logits)_i * centre_i."""
        return (logits.softmax(-1) * self.bin_centres).sum(-1)


def gaussian_kl(mean_old, std_old, mean_new, std_new):
    """KL(N(mean_old, diag std_old^2) || N(mean_new, diag std_new^2)), summed over the last axis (closed form)."""
    return (torch.log(std_new / std_old) + (std_old**2 + (mean_old - mean_new) ** 2) / (2 * std_new**2) - 0.5).sum(-1)


def lambda_returns(rewards, next_values, terminations, truncations, gamma, gae_lambda):
    """G_t = r~_t + gamma (1 - term_t) [lambda G_{t+1} + (1 - lambda) V_{t+1}] backwards over [T, N], with
    G_{t+1} replaced by V_{t+1} after a truncation and after the rollout's last step."""
    returns = torch.zeros_like(rewards)
    next_return = next_values[-1]  # so the last step bootstraps with V alone: lambda V + (1 - lambda) V
    for t in reversed(range(rewards.shape[0])):
        v = next_values[t]
        bootstrap = torch.where(truncations[t].bool(), v, gae_lambda * next_return + (1 - gae_lambda) * v)
        next_return = rewards[t] + gamma * (1.0 - terminations[t]) * bootstrap
        returns[t] = next_return
    return returns


def auxiliary_loss(prediction, next_embeddings, env_rewards, weights):
    """REPPO's auxiliary loss: the squared errors of the predicted next embedding and env reward, averaged over the
    H + 1 outputs, weighted per sample (0 where the step terminated) and averaged."""
    errors = torch.cat([prediction[:, :-1] - next_embeddings, prediction[:, -1:] - env_rewards[:, None]], -1)
    return (weights * errors.pow(2).mean(-1)).mean()


def multiplier_loss(log_alpha, log_beta, entropy_estimate, target_entropy, kl, kl_bound, autotune: bool):
    """Descending it raises beta while the mean KL exceeds the bound, lowers alpha while the entropy is above target."""
    loss = -log_beta.exp() * (kl - kl_bound)
    return loss + log_alpha.exp() * (entropy_estimate - target_entropy) if autotune else loss


def actor_losses(agent, old_actor, critic, obs, alpha, beta, kl_bound):
    """(actor loss, log pi of the new samples [B], KL [B]): alpha log pi - Q(s, x) where KL(old || new) < kl_bound,
    else beta KL (REPPO's clipped trust region); the critic is frozen."""
    x, log_pi, mean, std = agent.one_step(obs)
    critic.requires_grad_(False)
    logits, _ = critic(obs, x)
    critic.requires_grad_(True)
    with torch.no_grad():
        mean_old, std_old = old_actor(obs)
    kl = gaussian_kl(mean_old, std_old, mean, std)
    loss = torch.where(kl < kl_bound, alpha * log_pi - critic.value(logits), beta * kl).mean()
    return loss, log_pi, kl


def wpo_actor_losses(agent, old_actor, critic, obs, alpha, beta, kl_bound):
    """(loss, log pi [B], KL [B]) for WPO on this pipeline, diffreppo.py's --actor-loss wpo with K = 1:
    -<v, d log N(x; mean, std^2) / dx> with the velocity v = d(Q - alpha log pi)/dx taken with the parameters held
    fixed, where KL < kl_bound, else beta KL; the critic is frozen."""
    mean, std = agent.actor(obs)
    x = (mean + std * torch.randn_like(mean)).detach().requires_grad_(True)
    squash_log_det = (torch.log(agent.action_half_width) + log_one_minus_tanh_squared(x)).sum(-1)
    log_pi = gaussian_log_prob(x, mean.detach(), std.detach()) - squash_log_det
    critic.requires_grad_(False)
    logits, _ = critic(obs, x)
    critic.requires_grad_(True)
    (velocity,) = torch.autograd.grad((critic.value(logits) - alpha * log_pi).sum(), x)
    score = (mean - x.detach()) / std**2  # d log N(x; mean, std^2) / dx, as a function of the parameters
    with torch.no_grad():
        mean_old, std_old = old_actor(obs)
    kl = gaussian_kl(mean_old, std_old, mean, std)
    loss = torch.where(kl < kl_bound, -(score * velocity).sum(-1), beta * kl).mean()
    return loss, log_pi.detach(), kl


def main() -> None:
    run = Run(Args, "baselines.reppo", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    T, N = args.num_steps, args.num_envs
    batch_size, num_iterations = T * N, run.iterations(T * N)
    agent_kwargs = dict(**run.space, hidden_dim=args.actor_hidden_dim)
    critic_kwargs = dict(obs_dim=obs_dim, action_dim=action_dim, hidden_dim=args.hidden_dim, num_bins=args.num_bins)
    critic_kwargs.update(v_min=args.v_min, v_max=args.v_max)

    def networks():
        return [Agent(**agent_kwargs), DistributionalCritic(**critic_kwargs)]

    rollout_bytes = 4 * args.num_steps * args.num_envs * (2) * (obs_dim + 3 * action_dim + 8)
    agent, critic = run.build(networks, "--hidden-dim, --actor-hidden-dim, --num-steps or --num-envs", rollout_bytes)
    old_actor = copy.deepcopy(agent.actor).requires_grad_(False)
    actor_optimizer = torch.optim.AdamW(agent.parameters(), lr=args.learning_rate)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=args.learning_rate)
    log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=args.autotune)
    log_beta = torch.tensor(math.log(args.beta), device=device, requires_grad=True)
    multipliers = [log_alpha, log_beta] if args.autotune else [log_beta]
    wpo = args.actor_loss == "wpo"  # WPO, with the official DA-MDP: WPO override's bound and multiplier rate
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

    obs_buffer, x_buffer = torch.zeros((T, N, obs_dim), device=device), torch.zeros((T, N, action_dim), device=device)
    next_embedding_buffer = torch.zeros((T, N, args.hidden_dim), device=device)
    reward_buffer, next_value_buffer, termination_buffer, truncation_buffer, log_pi_buffer, saturated_buffer = (
        torch.zeros((6, T, N), device=device)
    )
    env_reward_buffer = torch.zeros((T, N), device=device)
    update_seconds, num_updates = 0.0, 0  # the update phase alone: its cost per minibatch
    next_obs_raw = run.reset_envs(obs_normalizer)
    next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)

    while iteration < num_iterations and run.stop is None:  # a signal stops within seconds (run.check_stop)
        run.keep(global_step, iteration=iteration)  # what a stop inside this iteration saves
        iteration += 1
        for step in range(args.num_steps):
            global_step += args.num_envs
            obs_buffer[step] = next_obs
            with torch.no_grad():
                x, log_pi, _, _ = agent.one_step(next_obs)
            next_obs_raw, reward, terminated, truncated, infos = envs.step(agent.squash(x).cpu().numpy())
            normalised_reward = torch.as_tensor(
                reward_normalizer(reward, np.logical_or(terminated, truncated)), dtype=torch.float32, device=device
            )
            final_obs = torch.as_tensor(obs_normalizer(true_next_observations(next_obs_raw, infos)), device=device)
            with torch.no_grad():  # V(s') = Q(s', x') with a fresh x' ~ pi(.|s'), whose log pi enters the soft reward
                fresh_x, fresh_log_pi, _, _ = agent.one_step(final_obs)
                logits, embedding = critic(final_obs, fresh_x)
            terminated_t = torch.as_tensor(terminated, dtype=torch.float32, device=device)
            reward_buffer[step] = normalised_reward - args.gamma * (1.0 - terminated_t) * alpha * fresh_log_pi
            x_buffer[step], log_pi_buffer[step], env_reward_buffer[step] = x, log_pi, normalised_reward
            next_value_buffer[step], next_embedding_buffer[step] = critic.value(logits), embedding
            termination_buffer[step] = terminated_t
            truncation_buffer[step] = torch.as_tensor(
                np.logical_and(truncated, np.logical_not(terminated)), dtype=torch.float32, device=device
            )
            saturated_buffer[step] = (x.abs() > 3.0).float().mean(-1)  # |tanh(x)| > 0.995
            obs_normalizer.update(next_obs_raw)
            next_obs = torch.as_tensor(obs_normalizer(next_obs_raw), device=device)
            run.episodes(infos, global_step)

        returns = lambda_returns(
            reward_buffer, next_value_buffer, termination_buffer, truncation_buffer, args.gamma, args.gae_lambda
        )
        b_obs, b_x = obs_buffer.reshape(batch_size, -1), x_buffer.reshape(batch_size, -1)
        b_returns, b_env_rewards = returns.reshape(-1), env_reward_buffer.reshape(-1)
        b_aux_weights = (1 - termination_buffer).reshape(-1)
        b_next_embeddings = next_embedding_buffer.reshape(batch_size, -1)
        old_actor.load_state_dict(agent.actor.state_dict())
        kl_over_bound, update_start = [], time.time()
        for epoch in range(args.update_epochs):
            permutation = torch.randperm(batch_size, device=device)
            for start in range(0, batch_size - args.minibatch_size + 1, args.minibatch_size):
                run.check_stop(global_step)
                mb = permutation[start : start + args.minibatch_size]
                logits, embedding = critic(b_obs[mb], b_x[mb])
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
                actor_loss, log_pi, kl = (wpo_actor_losses if wpo else actor_losses)(
                    agent, old_actor, critic, b_obs[mb], alpha, beta, kl_bound
                )
                run.check_finite("actor loss", actor_loss, global_step, f" (iteration {iteration}, epoch {epoch})")
                actor_optimizer.zero_grad()
                actor_loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                actor_optimizer.step()
                entropy_estimate = -log_pi.detach().mean()
                kl_mean = kl.detach().mean()
                loss = multiplier_loss(
                    log_alpha, log_beta, entropy_estimate, target_entropy, kl_mean, kl_bound, args.autotune
                )
                multiplier_optimizer.zero_grad()
                loss.backward()
                multiplier_optimizer.step()
                alpha, beta = log_alpha.exp().item(), log_beta.exp().item()
                kl_over_bound.append((kl >= kl_bound).float().mean().item())
        update_seconds, num_updates = update_seconds + time.time() - update_start, num_updates + len(kl_over_bound)

        rollout_entropy = -log_pi_buffer.mean().item()
        run.log(global_step, "charts", entropy_estimate=rollout_entropy, alpha=alpha, beta=beta)
        run.log(global_step, "charts", saturated_action_fraction=saturated_buffer.mean())
        run.log(global_step, "losses", critic_loss=critic_loss, critic_cross_entropy=cross_entropy, aux_loss=aux_loss)
        run.log(global_step, "losses", actor_loss=actor_loss, kl=kl.mean(), kl_over_bound=np.mean(kl_over_bound))
        clipped = ((b_returns < args.v_min) | (b_returns > args.v_max)).float().mean()
        run.log(global_step, "losses", returns_mean=b_returns.mean(), clipped_target_fraction=clipped)
        text = f"entropy estimate {rollout_entropy:7.2f} | alpha {alpha:.2e} | beta {beta:.2e} | updates/s "
        run.show(global_step, text + f"{num_updates / update_seconds:.1f}")
        crossed = global_step // args.checkpoint_frequency > (global_step - T * N) // args.checkpoint_frequency
        if args.save_model and (crossed or iteration == num_iterations):
            run.save(global_step, iteration=iteration)

    run.finish(global_step, iteration=iteration)


if __name__ == "__main__":
    run_cli(main, "baselines/reppo.py")
