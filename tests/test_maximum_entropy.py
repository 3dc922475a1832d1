"""The maximum-entropy part of the actor losses and of the temperature updates, against independent computations.

Pathwise actors (diffsac.py, baselines/sac.py): with alpha = 0 the actor's gradient is the critic's gradient through
the reparameterised action; with Q = 0 it is alpha times the gradient of the path log-ratio L (log pi for the twin),
recomputed here from torch.distributions along the same noise. WPO actors (baselines/wpo.py): the loss is
-E[score . v] with the velocity v = d/dx (Q - alpha log pi) recomputed the same way. Temperatures: a step on each
script's alpha loss lowers alpha when the entropy estimate is above its target and raises it below.
"""

import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import Normal

import diffsac
import diffwpo
from baselines import sac, wpo

OBS_DIM, ACTION_DIM, BATCH = 3, 2, 16
LOW, HIGH = [-2.0, -1.0], [2.0, 3.0]


class LinearQ(nn.Module):
    """Q(s, a) = w . a + 0 s, or 0 with scale 0: a critic whose gradient in a is known."""

    def __init__(self, scale: float):
        super().__init__()
        self.weight = nn.Parameter(scale * torch.tensor([1.5, -0.5]))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (action * self.weight).sum(-1) + 0.0 * obs.sum(-1)


def gradients(loss: torch.Tensor, module: nn.Module) -> list[torch.Tensor]:
    parameters = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)


def assert_same_gradients(left, right):
    for a, b in zip(left, right):
        if a is None or b is None:
            assert (a is None or a.abs().max() == 0) and (b is None or b.abs().max() == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def diffusion_path(agent: diffsac.Agent, obs: torch.Tensor, noise: torch.Tensor):
    """(action, L) along the chain that this noise draws, step by step through kernel(), with L from
    torch.distributions: log N(x_K; 0, I) + sum_k [log q(x_{k-1}|x_k, s) - log p(x_k|x_{k-1})] - log|da/dx_0|."""
    actor = agent.actor
    x, log_ratio = noise[0], Normal(0.0, 1.0).log_prob(noise[0]).sum(-1)
    for j, k in enumerate(range(actor.num_diffusion_steps, 0, -1), start=1):
        mean, std = actor.kernel(obs, x, torch.full((len(obs),), k))
        previous = mean + std * noise[j]
        beta = actor.betas[k - 1]
        forward = Normal(torch.sqrt(1 - beta) * previous, torch.sqrt(beta)).log_prob(x).sum(-1)
        log_ratio = log_ratio + Normal(mean, std).log_prob(previous).sum(-1) - forward
        x = previous
    log_det = torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1)
    return agent.squash(x), log_ratio - log_det


def gaussian_path(agent: sac.Agent, obs: torch.Tensor, noise: torch.Tensor):
    """(action, log pi) of x = mean + std * noise, log pi from torch.distributions and the tanh Jacobian."""
    mean, log_std = agent.actor(obs)
    x = mean + log_std.exp() * noise
    log_det = torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1)
    return agent.squash(x), Normal(mean, log_std.exp()).log_prob(x).sum(-1) - log_det


PATHWISE = {
    "diffsac.py": (lambda: diffsac.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, 3, hidden_dim=16), diffusion_path, 4),
    "baselines/sac.py": (lambda: sac.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, hidden_dim=16), gaussian_path, 1),
}


@pytest.mark.parametrize("script", list(PATHWISE))
@pytest.mark.parametrize("alpha,q_scale", [(0.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_pathwise_actor_gradient_is_the_critics_plus_alpha_times_the_path_log_ratios(script, alpha, q_scale):
    build, path, noise_draws = PATHWISE[script]
    module = diffsac if script == "diffsac.py" else sac
    torch.manual_seed(0)
    agent, critic, obs = build(), LinearQ(q_scale), torch.randn(BATCH, OBS_DIM)
    torch.manual_seed(1)
    loss, _ = module.actor_loss_and_entropy(agent, critic, critic, obs, alpha)
    torch.manual_seed(1)
    noise = torch.randn(noise_draws, BATCH, ACTION_DIM) if noise_draws > 1 else torch.randn(BATCH, ACTION_DIM)
    action, log_ratio = path(agent, obs, noise)
    expected = (alpha * log_ratio - critic(obs, action)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert_same_gradients(gradients(loss, agent), gradients(expected, agent))
    assert any(g is not None and g.abs().max() > 0 for g in gradients(loss, agent))


@pytest.mark.parametrize("alpha,q_scale", [(0.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_wpo_loss_is_minus_the_score_times_the_velocity_of_q_minus_alpha_log_pi(alpha, q_scale):
    torch.manual_seed(0)
    agent, critic, obs = wpo.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, hidden_dim=16), LinearQ(q_scale), torch.randn(8, 3)
    torch.manual_seed(1)
    loss, _ = wpo.wpo_actor_loss(agent, critic, obs, alpha, fisher_preconditioner=False)
    torch.manual_seed(1)
    mean, std = agent(obs)
    x = (mean.detach() + std.detach() * torch.randn_like(mean)).requires_grad_(True)
    log_pi = Normal(mean.detach(), std.detach()).log_prob(x).sum(-1)
    log_pi = log_pi - torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1)
    (velocity,) = torch.autograd.grad((critic(obs, agent.squash(x)) - alpha * log_pi).sum(), x)
    x = x.detach().requires_grad_(True)
    (score,) = torch.autograd.grad(Normal(mean, std).log_prob(x).sum(), x, create_graph=True)
    expected = -(score * velocity).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert_same_gradients(gradients(loss, agent), gradients(expected, agent))


class AugmentedLinearQ(LinearQ):
    """Q~(s, x_k, k, x_{k-1}) = w . x_{k-1}: an augmented critic whose gradient in x_{k-1} is known."""

    def forward(self, obs, x_k, k, x_previous):
        return super().forward(obs, x_previous) + 0.0 * x_k.sum(-1)


@pytest.mark.parametrize("alpha,q_scale", [(0.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_diffwpo_loss_is_minus_the_kernel_score_times_the_velocity_of_q_minus_alpha_lt_k(alpha, q_scale):
    """At one uniformly drawn step of each chain: v = d/dx_{k-1} (Q~ - alpha lt_k), lt_k = log q(x_{k-1}|x_k, s)
    - log p(x_k|x_{k-1}) (+ log N(x_K; 0, I) at k = K, - log|da/dx_0| at k = 1), from torch.distributions."""
    torch.manual_seed(0)
    K, agent = 3, diffwpo.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, 3, hidden_dim=16)
    critic, obs = AugmentedLinearQ(q_scale), torch.randn(BATCH, OBS_DIM)
    torch.manual_seed(1)
    loss, _ = diffwpo.wpo_actor_loss(agent, critic, obs, alpha, fisher_preconditioner=False)
    torch.manual_seed(1)
    noise, actor = torch.randn(K + 1, BATCH, ACTION_DIM), agent.actor
    j = torch.randint(0, K, (BATCH,))
    with torch.no_grad():
        chain = [noise[0]]
        for step, k in enumerate(range(K, 0, -1), start=1):
            mean, std = actor.kernel(obs, chain[-1], torch.full((BATCH,), k))
            chain.append(mean + std * noise[step])
    chain, rows = torch.stack(chain, 1), torch.arange(BATCH)
    x_k, k, x = chain[rows, j], K - j, chain[rows, j + 1].clone().requires_grad_(True)
    mean, std = actor.kernel(obs, x_k, k)
    beta = actor.betas[k - 1][:, None]
    lt_k = Normal(mean.detach(), std.detach()).log_prob(x).sum(-1)
    lt_k = lt_k - Normal(torch.sqrt(1 - beta) * x, torch.sqrt(beta)).log_prob(x_k).sum(-1)
    squash = torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1)
    lt_k = lt_k - torch.where(k == 1, squash, 0.0)  # the prior term at k = K does not depend on x_{k-1}
    (velocity,) = torch.autograd.grad((critic(obs, x_k, k, x) - alpha * lt_k).sum(), x)
    x = x.detach().requires_grad_(True)
    (score,) = torch.autograd.grad(Normal(mean, std).log_prob(x).sum(), x, create_graph=True)
    expected = -(score * velocity).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert_same_gradients(gradients(loss, agent), gradients(expected, agent))


@pytest.mark.parametrize("module", [diffsac, sac, diffwpo, wpo])
def test_a_step_on_the_alpha_loss_lowers_alpha_above_the_target_entropy_and_raises_it_below(module):
    for entropy, direction in [(2.0, -1.0), (-4.0, 1.0)]:
        log_alpha = torch.tensor(math.log(0.2), requires_grad=True)
        optimizer = torch.optim.SGD([log_alpha], lr=0.1)
        module.alpha_loss(log_alpha, torch.tensor(entropy), target_entropy=-1.0).backward()
        optimizer.step()
        assert direction * (log_alpha.item() - math.log(0.2)) > 0, (module.__name__, entropy)
