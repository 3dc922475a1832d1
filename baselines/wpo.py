"""WPO: Wasserstein policy optimisation with a tanh-Gaussian policy, replay and twin critics.

Pfau et al., arXiv 2505.00663. The Gaussian counterpart of ../diffwpo.py: a comparison of the two
differs only in the policy class (one Gaussian, not K diffusion kernels). Maths: docs/method.md.

    python baselines/wpo.py --env-id Hopper-v4          (or: python -m baselines.wpo ...)

WPO moves the policy along the Wasserstein gradient flow of the soft objective: each sample of the
pre-tanh action moves with the velocity v, the parameters follow through the score (method.md §4.3, K = 1):
    x ~ pi(.|s) = N(mean(s), diag(std(s)^2)),  a = c + h tanh(x)           (stop-gradient on x)
    v = d/dx [ min_i Q_i(s, c + h tanh(x)) - alpha log pi(a(x)|s) ]        (parameters held fixed)
    loss = -E[ sum_i score_i * v_i ],  score = d/dx log N(x; mean, std) = -(x - mean) / std^2
    log pi(a|s) = log N(x; mean, std) - sum_i [log h_i + log(1 - tanh(x_i)^2)]
Its gradient w.r.t. the mean is -E[v] / std^2; --fisher-preconditioner (default) multiplies v by std^2
(detached), the inverse diagonal Fisher information of the mean, so a step moves the mean by E[v]
whatever std is (WPO's natural-gradient form). The rest is diffwpo.py's and CleanRL SAC's: twin critics
with targets y = r + gamma (1 - terminated) (min_i Q_target_i(s', a') - alpha log pi(a'|s')), delayed
actor updates, alpha tuned on the entropy estimate -E[log pi] (unbiased; diffwpo's -E[L] is a bound).

Choices, and where they differ from diffwpo.py:
- Actor: CleanRL SAC's (2 x --actor-hidden-dim ReLU trunk, fc_mean, fc_logstd squashed by tanh into
  [-5, 2]) with diffwpo.py's initialisation: orthogonal trunk, output layers of scale 0.01, a log-std
  bias giving std = 1. So the untrained pre-tanh action is (nearly) N(0, I), as diffwpo.py's untrained
  chain, and warm-up actions (before --learning-starts) come from the untrained actor as there: both
  scripts start from the same replay data a = c + h tanh(N(0, I)), which uniform actions would not give.
- Critics: diffsac.py's Q(s, a) on the executed (replayed) a = c + h tanh(x), which plays the role of the
  tanh inputs of diffwpo.py's critics: d/dx Q vanishes where tanh saturates. No --num-diffusion-steps,
  no --min-std (the log-std range bounds std).
- As there: observations not normalised, truncations bootstrapped, replay buffer saved beside each checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

if __name__ == "__main__" and not __package__:  # run as a file (python baselines/wpo.py): make common/ importable
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
    exp_name: str = "wpo"
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
    """transitions per gradient update"""
    learning_starts: int = 5000
    """environment steps with the untrained actor before learning starts"""
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
    fisher_preconditioner: bool = True
    """multiply the velocity by std^2 (inverse diagonal Fisher information of the Gaussian mean)"""
    hidden_dim: int = 256
    """width of the two hidden layers of the Q networks"""
    actor_hidden_dim: int = 128
    """width of the two hidden layers of the actor"""


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
    return 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))


def gaussian_score(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """d/dx log N(x; mean, diag(std^2)) = -(x - mean) / std^2."""
    return -(x - mean) / std**2


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Tanh-Gaussian actor: x ~ N(mean(s), diag(std(s)^2)), a = c + h tanh(x) (CleanRL SAC's Actor)."""

    def __init__(self, obs_dim, action_dim, action_low, action_high, hidden_dim=128):
        super().__init__()
        self.fc1 = layer_init(nn.Linear(obs_dim, hidden_dim))
        self.fc2 = layer_init(nn.Linear(hidden_dim, hidden_dim))
        self.fc_mean = layer_init(nn.Linear(hidden_dim, action_dim), std=0.01)
        # The bias gives log_std = 0 at initialisation: the pre-tanh action starts as N(0, I), as in diffwpo.py.
        unit_std_bias = math.atanh(2 * (0.0 - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN) - 1)
        self.fc_logstd = layer_init(nn.Linear(hidden_dim, action_dim), std=0.01, bias_const=unit_std_bias)
        low, high = torch.tensor(action_low, dtype=torch.float32), torch.tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_half_width", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the pre-tanh Gaussian."""
        hidden = F.relu(self.fc2(F.relu(self.fc1(obs))))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(self.fc_logstd(hidden)) + 1)
        return self.fc_mean(hidden), log_std.exp()

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """a = c + h * tanh(x)."""
        return self.action_center + self.action_half_width * torch.tanh(x)

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """log pi(a(x)|s) = log N(x; mean, std) - sum_i [log h_i + log(1 - tanh(x_i)^2)]."""
        squash_log_det = (torch.log(self.action_half_width) + log_one_minus_tanh_squared(x)).sum(-1)
        return gaussian_log_prob(x, mean, std) - squash_log_det

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre-tanh x, mean, std, log pi(a(x)|s)) with x = mean + std * eps (one randn draw)."""
        mean, std = self(obs)
        x = mean + std * torch.randn_like(mean)
        return x, mean, std, self.log_prob(x, mean, std)

    @torch.inference_mode()  # no autograd bookkeeping: the action only goes to the environment
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, std = self(obs)
        return self.squash(mean if deterministic else mean + std * torch.randn_like(mean))


class SoftQNetwork(nn.Module):
    """Q(s, a), as CleanRL's SAC (and diffsac.py)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + action_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.cat([obs, action], dim=1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x).squeeze(-1)


def soft_bellman_target(rewards, terminations, next_min_q, next_log_prob, alpha: float, gamma: float) -> torch.Tensor:
    """y = r + gamma (1 - terminated) (min_i Q_target_i(s', a') - alpha log pi(a'|s'))."""
    return rewards + gamma * (1.0 - terminations) * (next_min_q - alpha * next_log_prob)


def wpo_actor_loss(agent: Agent, q_value, obs: torch.Tensor, alpha: float, fisher_preconditioner: bool):
    """(WPO loss, entropy estimate -E[log pi]) at one fresh sample x ~ pi(.|s) per state (method.md §4.3, K = 1).
    q_value(obs, actions) -> [B]; v = d/dx (q_value(s, c + h tanh x) - alpha log pi(a(x)|s)) is taken with
    the parameters held fixed (mean and std detached, gradient w.r.t. x only)."""
    mean, std = agent(obs)
    mean_fixed, std_fixed = mean.detach(), std.detach()
    x = (mean_fixed + std_fixed * torch.randn_like(mean_fixed)).requires_grad_(True)
    log_prob = agent.log_prob(x, mean_fixed, std_fixed)
    objective = q_value(obs, agent.squash(x)) - alpha * log_prob
    (velocity,) = torch.autograd.grad(objective.sum(), x)
    if fisher_preconditioner:
        velocity = velocity * std_fixed**2
    loss = -(gaussian_score(x.detach(), mean, std) * velocity).sum(-1).mean()
    return loss, -log_prob.detach().mean()


def alpha_loss(log_alpha: torch.Tensor, entropy_estimate: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """alpha (H_est - target): descending it lowers alpha when the entropy estimate is above target, raises it below."""
    return log_alpha.exp() * (entropy_estimate - target_entropy)


def main() -> None:
    run = Run(Args, "baselines.wpo", CHECKS)
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
    obs_normalizer = ObservationNormalizer.identity((obs_dim,))  # WPO, like SAC, does not normalise
    state = dict(agent=agent, qf1=qf1, qf2=qf2, qf1_target=qf1_target, qf2_target=qf2_target, log_alpha=log_alpha)
    state.update(q_optimizer=q_optimizer, actor_optimizer=actor_optimizer, alpha_optimizer=alpha_optimizer)
    replay_buffer = ReplayBuffer(args.buffer_size, obs_dim, (action_dim,), device)
    checkpoint = run.restore(dict(**state, obs_normalizer=obs_normalizer), replay_buffer, agent_kwargs=agent_kwargs)
    global_step, alpha = checkpoint.get("global_step", 0), log_alpha.exp().item()

    def min_q(obs, actions):
        return torch.min(qf1(obs, actions), qf2(obs, actions))

    learning_starts = run.learning_starts(args.learning_starts)
    updates = resumed_updates = checkpoint.get("updates", 0)  # delayed updates keep their phase on --resume
    last_print, next_checkpoint = global_step, global_step + args.checkpoint_frequency
    obs = run.reset_envs()
    entropy_estimate = torch.tensor(float("nan"))

    while global_step < args.total_timesteps and run.stop is None:
        global_step += args.num_envs
        # Before learning starts the actor is untrained: its pre-tanh action is N(0, I), as diffwpo.py's.
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
                next_x, _, _, next_log_prob = agent.sample(b_next_obs)
                next_actions = agent.squash(next_x)
                next_min_q = torch.min(qf1_target(b_next_obs, next_actions), qf2_target(b_next_obs, next_actions))
                target = soft_bellman_target(b_rewards, b_terminations, next_min_q, next_log_prob, alpha, args.gamma)
            qf1_values = qf1(b_obs, b_actions)
            qf1_loss, qf2_loss = F.mse_loss(qf1_values, target), F.mse_loss(qf2(b_obs, b_actions), target)
            qf_loss = qf1_loss + qf2_loss
            run.check_finite("critic loss", qf_loss, global_step)
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if updates % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    actor_loss, entropy_estimate = wpo_actor_loss(
                        agent, min_q, b_obs, alpha, args.fisher_preconditioner
                    )
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
    run_cli(main, "baselines/wpo.py")
