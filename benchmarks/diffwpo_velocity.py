"""How good is the velocity DiffWPO's actor follows at each diffusion step? (docs/benchmarks.md, "Why
DiffWPO is slow on Hopper-v4").

At step k the actor moves x_{k-1} along the gradient of the augmented critic Q_k(s, x_k, k, x_{k-1})
(method.md §4.3). That critic is trained to the soft value of the rest of the chain,
V(s, x_{k-1}, k-1) = E[min Q_1(s, x_1, 1, x_0) - alpha * sum_{j<k} lt_j], whose gradient in x_{k-1} can
also be estimated directly: roll the remaining chain out from x_{k-1} with the reparameterisation
(x_{j-1} = mean_j(x_j) + sigma_j eps) and differentiate through it, as DiffSAC's actor does with its
Q(s, a). This script loads a DiffWPO checkpoint and, for each k, compares the two:

- cos(critic, path): cosine similarity, per state, between the critic's gradient d/dx_{k-1} Q_k and the
  path gradient d/dx_{k-1} V (averaged over --rollouts reparameterised continuations); 1 at k = 1,
  where both are the k = 1 critic's gradient;
- cos(path, path'): the same between two independent path estimates, the ceiling that Monte-Carlo
  noise leaves to the first column;
- |critic| / |path|: the ratio of their norms;
- corr(Q_k, V): correlation over the states of the critic's value with the rolled-out value.

    python benchmarks/diffwpo_velocity.py --checkpoint runs/<run>/diffwpo.cleanrl_model
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import diffwpo  # noqa: E402
from common.checkpoint import load_checkpoint  # noqa: E402
from common.runs import replay_buffer_path  # noqa: E402


@dataclass
class Args:
    checkpoint: str
    """a diffwpo.py checkpoint saved with --save-model (its replay buffer beside it gives the states)"""
    states: int = 256
    """states drawn from the replay buffer"""
    rollouts: int = 64
    """reparameterised continuations per state and step for the path gradient"""
    seed: int = 0
    """seed of the draws"""


def load(path: str):
    checkpoint = load_checkpoint(path, "--checkpoint")
    if checkpoint.get("script") != "diffwpo":
        raise SystemExit(f"--checkpoint {path!r} is a {checkpoint.get('script')} checkpoint; allowed: one from diffwpo.py.")
    kwargs = checkpoint["agent_kwargs"]
    agent = diffwpo.Agent(**kwargs)
    agent.load_state_dict(checkpoint["agent"])
    hidden = checkpoint["args"]["hidden_dim"]
    critics = []
    for name in ("qf1", "qf2"):
        critic = diffwpo.AugmentedQNetwork(kwargs["obs_dim"], kwargs["action_dim"], kwargs["num_diffusion_steps"], hidden)
        critic.load_state_dict(checkpoint[name])
        critics.append(critic)
    buffer_path = replay_buffer_path(path)
    if not os.path.isfile(buffer_path):
        raise SystemExit(f"--checkpoint {path!r}: no replay buffer beside it ({buffer_path}); save the run with --save-model.")
    observations = torch.load(buffer_path, map_location="cpu", weights_only=True)["obs"]
    return agent, critics, float(torch.tensor(checkpoint["log_alpha"]).exp()), observations, checkpoint["global_step"]


def rolled_out_value(agent, min_q, obs, x, k: int, alpha: float) -> torch.Tensor:
    """V(s, x_k, k) for one k, one reparameterised continuation per row (differentiable in x): the chain
    runs from x_k down to x_0, the k = 1 critic values the last step, minus alpha times the log-ratios."""
    actor = agent.actor
    value = torch.zeros(len(obs))
    while True:
        steps = torch.full((len(obs),), k, dtype=torch.long)
        mean, std = actor.kernel(obs, x, steps)
        x_next = mean + std * torch.randn_like(mean)
        value = value - alpha * diffwpo.step_log_ratio(agent, obs, x, steps, x_next)
        if k == 1:
            return value + min_q(obs, x, steps, x_next)
        x, k = x_next, k - 1


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    agent, (qf1, qf2), alpha, observations, global_step = load(args.checkpoint)
    for module in (agent, qf1, qf2):
        module.requires_grad_(False)

    def min_q(obs, x_k, k, x_previous):
        return torch.min(qf1(obs, x_k, k, x_previous), qf2(obs, x_k, k, x_previous))

    K = agent.actor.num_diffusion_steps
    obs = observations[torch.randint(0, len(observations), (args.states,))]
    chain, _ = agent.actor.sample_chain(obs)
    print(f"{args.checkpoint}: step {global_step}, alpha {alpha:.3g}, {args.states} states, {args.rollouts} rollouts")
    print("| k | cos(critic, path) | cos(path, path') | abs critic / abs path | corr(Q_k, V) |")
    print("|---|---|---|---|---|")
    for k in range(K, 0, -1):
        j = K - k
        x_k, x_previous = chain[:, j], chain[:, j + 1].clone().requires_grad_(True)
        steps = torch.full((args.states,), k, dtype=torch.long)
        q_value = min_q(obs, x_k, steps, x_previous)
        (critic_gradient,) = torch.autograd.grad(q_value.sum(), x_previous)
        if k == 1:
            path_halves, values = [critic_gradient, critic_gradient], q_value.detach()
        else:
            # Two independent halves of the rollouts: their agreement is the noise ceiling.
            repeated_obs, repeated_x = obs.repeat(args.rollouts, 1), x_previous.detach().repeat(args.rollouts, 1).requires_grad_(True)
            value = rolled_out_value(agent, min_q, repeated_obs, repeated_x, k - 1, alpha)
            (gradient,) = torch.autograd.grad(value.sum(), repeated_x)
            gradient = gradient.view(args.rollouts, args.states, -1)
            half = args.rollouts // 2
            path_halves = [gradient[:half].mean(0), gradient[half:].mean(0)]
            values = value.detach().view(args.rollouts, args.states).mean(0)
        path_gradient = (path_halves[0] + path_halves[1]) / 2
        cosine = torch.nn.functional.cosine_similarity(critic_gradient, path_gradient, dim=-1).mean()
        ceiling = torch.nn.functional.cosine_similarity(path_halves[0], path_halves[1], dim=-1).mean()
        norm_ratio = (critic_gradient.norm(dim=-1) / path_gradient.norm(dim=-1).clamp_min(1e-12)).median()
        correlation = torch.corrcoef(torch.stack([q_value.detach(), values]))[0, 1]
        print(f"| {k} | {cosine:.2f} | {ceiling:.2f} | {norm_ratio:.2f} | {correlation:.2f} |")


if __name__ == "__main__":
    main(tyro.cli(Args))
