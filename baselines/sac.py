"""SAC with CleanRL's tanh-Gaussian actor: the fair Gaussian counterpart of diffsac.py.

    python baselines/sac.py --env-id Hopper-v4

diffsac.py with its K-step diffusion actor replaced by the actor of CleanRL's
sac_continuous_action.py and nothing else changed (flags, defaults, critics, replay buffer,
updates, temperature tuning, logging, checkpoints): a comparison differs only in the policy.
Actor: ReLU trunk obs -> actor_hidden_dim -> actor_hidden_dim, heads fc_mean and fc_logstd,
log_std squashed by tanh into [-5, 2], x = mean + std * eps, a = c + h tanh(x), and
log pi(a|s) = log N(x; mean, std) - sum_i [log h_i + log(1 - tanh(x_i)^2)] in the critic target
r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha log pi(a'|s')) and the actor loss
E[alpha log pi - min_i Q_i(s, a)]; alpha is tuned so that -E[log pi] tracks -target_entropy_scale * action_dim.

What differs from CleanRL's sac_continuous_action.py (each as in diffsac.py):
- log(1 - tanh(x)^2) is the stable 2 (log 2 - x - softplus(-2x)) (method.md §2), not
  log(1 - tanh(x)^2 + 1e-6), which floors at -13.8 where the truth is log 4 - 2|x| (|x| > ~7).
- Time-limit truncations store the true final observation and bootstrap; terminations do not.
- --save-model checkpoints hold what `python -m common.evaluation CKPT` and --resume need (with an
  identity observation normaliser), and the replay buffer is saved beside it, so that a resumed
  run continues learning at once.
- Impossible flags give one clear line and exit code 2; a NaN/inf loss stops with exit code 1.
- The actor is 128 units wide (--actor-hidden-dim, as diffsac.py; CleanRL: 256), the critics 256;
  CleanRL's repeated delayed actor update, default init and hyperparameters are kept.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

if __name__ == "__main__" and not __package__:  # run as a file (python baselines/sac.py): make common/ importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.cli import at_least_one, between, in_unit_interval, positive, run_cli  # noqa: E402
from common.normalization import ObservationNormalizer  # noqa: E402
from common.replay_buffer import ReplayBuffer, step_and_store  # noqa: E402
from common.runs import Run, RunArgs  # noqa: E402


@dataclass
class Args(RunArgs):
    exp_name: str = "sac"
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
    target_entropy_scale: float = 1.0
    """target entropy = -target_entropy_scale * action_dim, applied to the estimate -E[log pi]"""

    hidden_dim: int = 256
    """width of the two hidden layers of the Q networks"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the Gaussian actor"""


CHECKS = [  # (condition, message) over the flags, refused before anything is built (common/cli.py)
    *between("target_entropy_scale", -100, 100),  # target entropy = -scale x action_dim
    *at_least_one("batch_size", "buffer_size", "policy_frequency", "target_network_frequency", "hidden_dim"),
    *at_least_one("actor_hidden_dim"),
    ("batch_size <= buffer_size", "--batch-size {batch_size} is larger than --buffer-size {buffer_size}."),
    ("learning_starts >= batch_size", "--learning-starts {learning_starts} is below --batch-size {batch_size}."),
    ("total_timesteps > learning_starts", "--total-timesteps {total_timesteps} must exceed --learning-starts."),
    ("alpha >= 0 and (alpha > 0 or not autotune)", "--alpha must be >= 0, and > 0 with --autotune (got {alpha})."),
    *in_unit_interval("gamma", "tau"),
    *positive("policy_lr", "q_lr"),
]


LOG_2PI = math.log(2 * math.pi)
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(std^2)) summed over the last axis."""
    return (-0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI).sum(-1)


def log_one_minus_tanh_squared(x: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x| (method.md §2)."""
    return 2.0 * (math.log(2.0) - x - nn.functional.softplus(-2.0 * x))


class GaussianActor(nn.Module):
    """CleanRL's SAC actor without the squashing: obs -> (mean, log_std) of the pre-tanh Gaussian."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc_mean = nn.Linear(hidden_dim, action_dim)
        self.fc_logstd = nn.Linear(hidden_dim, action_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc1(obs))
        x = F.relu(self.fc2(x))
        log_std = torch.tanh(self.fc_logstd(x))  # squashed into [LOG_STD_MIN, LOG_STD_MAX] (Spinning Up / Denis Yarats)
        return self.fc_mean(x), LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)


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
    """The Gaussian actor and the squashing a = c + h tanh(x)."""

    def __init__(self, obs_dim, action_dim, action_low, action_high, hidden_dim=256):
        super().__init__()
        self.actor = GaussianActor(obs_dim, action_dim, hidden_dim)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x)."""
        return self.action_center + self.action_half_width * torch.tanh(x)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log pi(a|s) [B], pre-tanh x = mean + std * eps, reparameterised).

        log pi(a|s) = log N(x; mean, std) - sum_i [log h_i + log(1 - tanh(x_i)^2)].
        """
        mean, log_std = self.actor(obs)
        std = log_std.exp()
        x = mean + std * torch.randn_like(mean)
        squash_log_det = (torch.log(self.action_half_width) + log_one_minus_tanh_squared(x)).sum(-1)
        return self.squash(x), gaussian_log_prob(x, mean, std) - squash_log_det, x

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action per observation; deterministic: c + h tanh(mean)."""
        return self.squash(self.actor(obs)[0]) if deterministic else self.sample(obs)[0]


def soft_bellman_target(rewards, terminations, next_min_q, next_log_pi, alpha, gamma):
    """y = r + gamma (1 - terminated) (min_i Q_target_i(s', a') - alpha log pi(a'|s'))."""
    return rewards + gamma * (1.0 - terminations) * (next_min_q - alpha * next_log_pi)


def actor_loss_and_entropy(agent: Agent, qf1: SoftQNetwork, qf2: SoftQNetwork, obs: torch.Tensor, alpha: float):
    """(E[alpha log pi - min_i Q_i(s, a)], entropy estimate -E[log pi] detached)."""
    actions, log_pi, _ = agent.sample(obs)
    # The critics only pass gradients through to the action: building the graph with their
    # parameters frozen skips the weight gradients that the actor optimiser would not use.
    qf1.requires_grad_(False)
    qf2.requires_grad_(False)
    min_q = torch.min(qf1(obs, actions), qf2(obs, actions))
    qf1.requires_grad_(True)
    qf2.requires_grad_(True)
    return (alpha * log_pi - min_q).mean(), -log_pi.detach().mean()


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """alpha (H - target): descending it lowers alpha when the entropy estimate is above target, raises it below."""
    return log_alpha.exp() * (entropy_estimate - target_entropy)


def main() -> None:
    run = Run(Args, "baselines.sac", CHECKS)
    args, envs, device, obs_dim, action_dim = run.args, run.envs, run.device, run.obs_dim, run.action_dim
    agent_kwargs = dict(**run.space, hidden_dim=args.actor_hidden_dim)

    def networks():
        return [Agent(**agent_kwargs)] + [SoftQNetwork(obs_dim, action_dim, args.hidden_dim) for _ in range(4)]

    buffer_bytes = ReplayBuffer.bytes(args.buffer_size, obs_dim, action_dim)
    agent, qf1, qf2, qf1_target, qf2_target = run.build(networks, "--hidden-dim or --buffer-size", buffer_bytes)
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
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = replay_buffer.sample(args.batch_size)
            with torch.no_grad():
                next_actions, next_log_pi, _ = agent.sample(b_next_obs)
                next_min_q = torch.min(qf1_target(b_next_obs, next_actions), qf2_target(b_next_obs, next_actions))
                target_q = soft_bellman_target(b_rewards, b_terminations, next_min_q, next_log_pi, alpha, args.gamma)
            qf1_values, qf2_values = qf1(b_obs, b_actions), qf2(b_obs, b_actions)
            qf1_loss, qf2_loss = F.mse_loss(qf1_values, target_q), F.mse_loss(qf2_values, target_q)
            qf_loss = qf1_loss + qf2_loss
            run.check_finite("critic loss", qf_loss, global_step)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if updates % args.policy_frequency == 0:  # TD3-style delayed update, compensated by repeating it
                for _ in range(args.policy_frequency):
                    actor_loss, entropy_estimate = actor_loss_and_entropy(agent, qf1, qf2, b_obs, alpha)
                    run.check_finite("actor loss", actor_loss, global_step)
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()
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
    run_cli(main, "baselines/sac.py")
