"""The maximum-entropy part of the actor losses and of the temperature updates, against independent computations.

Pathwise actors (diffsac.py, baselines/sac.py): with alpha = 0 the actor's gradient is the critic's gradient through
the reparameterised action; with Q = 0 it is alpha times the gradient of the path log-ratio L (log pi for the twin),
recomputed here from torch.distributions along the same noise. WPO actors (baselines/wpo.py, diffwpo.py): the loss
is -E[score . v] with the velocity v = d/dx (Q - alpha log pi), or the rolled-out d/dx_{k-1} (Q - alpha L) at every
diffusion step, recomputed the same way. Temperatures: a step on each script's alpha loss lowers alpha when the
entropy estimate is above its target and raises it below.
"""

import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import Normal

import diffppo
import diffreppo
import diffsac
import diffwpo
from baselines import ppo, reppo, sac, wpo

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
    """Q~(s, x_k, k, x_{k-1}) = w . x_{k-1} + w . x_k / 4: an augmented critic with a known gradient in both."""

    def forward(self, obs, x_k, k, x_previous):
        return super().forward(obs, x_previous) + super().forward(obs, x_k) / 4


@pytest.mark.parametrize("alpha,q_scale", [(0.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_diffwpo_loss_is_minus_each_kernels_score_times_the_rolled_out_velocity_of_q_minus_alpha_l(alpha, q_scale):
    """At every step of each fresh chain: v = d/dx_{k-1} [Q~(s, x_1, 1, x_0) - alpha L] along the chain the noise
    draws (noise and parameters held fixed), L = log N(x_K; 0, I) + sum_k [log q(x_{k-1}|x_k, s) - log p(x_k|x_{k-1})]
    - log|da/dx_0| from torch.distributions; the loss is -mean over the B K steps of score_k(x_{k-1}) . v."""
    torch.manual_seed(0)
    K, agent = 3, diffwpo.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, 3, hidden_dim=16)
    critic, obs, actor = AugmentedLinearQ(q_scale), torch.randn(BATCH, OBS_DIM), agent.actor
    torch.manual_seed(1)
    loss, _ = diffwpo.wpo_actor_loss(agent, critic, obs, alpha, fisher_preconditioner=False)
    torch.manual_seed(1)
    noise = [torch.randn(BATCH, ACTION_DIM) for _ in range(K + 1)]  # x_K, then one draw per kernel
    chain, log_ratio = [noise[0]], Normal(0.0, 1.0).log_prob(noise[0]).sum(-1)
    for j, k in enumerate(range(K, 0, -1), start=1):
        mean, std = actor.kernel(obs, chain[-1], torch.full((BATCH,), k))
        previous = mean + std * noise[j]
        beta = actor.betas[k - 1]
        forward = Normal(torch.sqrt(1 - beta) * previous, torch.sqrt(beta)).log_prob(chain[-1]).sum(-1)
        log_ratio = log_ratio + Normal(mean, std).log_prob(previous).sum(-1) - forward
        chain.append(previous)
    log_ratio = log_ratio - torch.log(agent.action_half_width * (1 - torch.tanh(chain[-1]) ** 2)).sum(-1)
    objective = critic(obs, chain[-2], torch.ones(BATCH, dtype=torch.long), chain[-1]) - alpha * log_ratio
    velocity = torch.autograd.grad(objective.sum(), chain[1:])
    expected = 0.0
    for j, k in enumerate(range(K, 0, -1)):
        x = chain[j + 1].detach().requires_grad_(True)
        mean, std = actor.kernel(obs, chain[j].detach(), torch.full((BATCH,), k))
        (score,) = torch.autograd.grad(Normal(mean, std).log_prob(x).sum(), x, create_graph=True)
        expected = expected - (score * velocity[j]).sum(-1).sum() / (BATCH * K)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert_same_gradients(gradients(loss, agent), gradients(expected, agent))
    assert any(g is not None and g.abs().max() > 0 for g in gradients(loss, agent))


@pytest.mark.parametrize("module", [diffsac, sac, diffwpo, wpo, diffppo, ppo])
def test_a_step_on_the_alpha_loss_lowers_alpha_above_the_target_entropy_and_raises_it_below(module):
    for entropy, direction in [(2.0, -1.0), (-4.0, 1.0)]:
        log_alpha = torch.tensor(math.log(0.2), requires_grad=True)
        optimizer = torch.optim.SGD([log_alpha], lr=0.1)
        module.alpha_loss(log_alpha, torch.tensor(entropy), target_entropy=-1.0).backward()
        optimizer.step()
        assert direction * (log_alpha.item() - math.log(0.2)) > 0, (module.__name__, entropy)


class LinearCategoricalCritic(nn.Module):
    """A stand-in for the distributional critic whose value is w . x for the last input (the action or x_{k-1})."""

    def __init__(self, scale: float):
        super().__init__()
        self.weight = nn.Parameter(scale * torch.tensor([1.5, -0.5]))

    def forward(self, obs, *inputs):
        return (inputs[-1] * self.weight).sum(-1, keepdim=True) + 0.0 * obs.sum(-1, keepdim=True), None

    def value(self, logits):
        return logits[:, 0]


@pytest.mark.parametrize("alpha,q_scale", [(0.0, 1.0), (0.3, 0.0), (0.3, 1.0)])
def test_reppo_actor_gradients_are_the_critics_plus_alpha_times_the_one_step_log_ratios(alpha, q_scale):
    """Inside the trust region (the old actor is the actor): the twin's loss is E[alpha log pi - Q(s, x)], the
    diffusion script's E[alpha lt_k - Q~(s, x_k, k, x_{k-1})] through one reparameterised step, lt_k recomputed
    from torch.distributions (+ log N(x_K; 0, I) at k = K, - log|da/dx_0| at k = 1)."""
    torch.manual_seed(0)
    critic, obs = LinearCategoricalCritic(q_scale), torch.randn(BATCH, OBS_DIM)
    twin = reppo.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, hidden_dim=16)
    torch.manual_seed(1)
    loss, _, _ = reppo.actor_losses(twin, twin.actor, critic, obs, alpha, beta=1.0, kl_bound=10.0)
    torch.manual_seed(1)
    mean, std = twin.actor(obs)
    x = mean + std * torch.randn(BATCH, ACTION_DIM)
    log_pi = Normal(mean, std).log_prob(x).sum(-1) - torch.log(twin.action_half_width * (1 - torch.tanh(x) ** 2)).sum(
        -1
    )
    expected = (alpha * log_pi - (x * critic.weight).sum(-1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert_same_gradients(gradients(loss, twin), gradients(expected, twin))

    K, agent = 3, diffreppo.Agent(OBS_DIM, ACTION_DIM, LOW, HIGH, 3, hidden_dim=16)
    x_k, k = torch.randn(BATCH, ACTION_DIM), torch.tensor([1, 2, 3, 1] * (BATCH // 4))
    torch.manual_seed(2)
    loss, _, _ = diffreppo.actor_losses(agent, agent.actor, critic, obs, x_k, k, alpha, beta=1.0, kl_bound=10.0)
    torch.manual_seed(2)
    mean, std = agent.actor.kernel(obs, x_k, k)
    x = mean + std * torch.randn_like(mean)
    beta = agent.actor.betas[k - 1][:, None]
    lt_k = Normal(mean, std).log_prob(x).sum(-1) - Normal(torch.sqrt(1 - beta) * x, torch.sqrt(beta)).log_prob(x_k).sum(
        -1
    )
    lt_k = lt_k + torch.where(k == K, Normal(0.0, 1.0).log_prob(x_k).sum(-1), 0.0)
    lt_k = lt_k - torch.where(k == 1, torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1), 0.0)
    expected = (alpha * lt_k - (x * critic.weight).sum(-1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert_same_gradients(gradients(loss, agent), gradients(expected, agent))


@pytest.mark.parametrize("module", [diffreppo, reppo])
def test_a_step_on_the_multiplier_loss_moves_beta_with_the_kl_and_alpha_against_the_entropy(module):
    for kl, entropy, beta_direction, alpha_direction in [(0.5, 2.0, 1.0, -1.0), (0.01, -4.0, -1.0, 1.0)]:
        log_alpha, log_beta = (torch.tensor(math.log(0.2), requires_grad=True) for _ in range(2))
        optimizer = torch.optim.SGD([log_alpha, log_beta], lr=0.1)
        module.multiplier_loss(log_alpha, log_beta, torch.tensor(entropy), -1.0, torch.tensor(kl), 0.1, True).backward()
        optimizer.step()
        assert (
            beta_direction * (log_beta.item() - math.log(0.2)) > 0
            and alpha_direction * (log_alpha.item() - math.log(0.2)) > 0
        )


def test_augmented_next_states_step_down_the_chain_then_to_the_next_state_at_k():
    K, obs, final_obs = 3, torch.arange(4.0).view(2, 2), 10 + torch.arange(4.0).view(2, 2)
    chain = torch.arange(2 * (K + 1) * 2, dtype=torch.float32).view(2, K + 1, 2)  # chain[:, j] = x_{K-j}
    state_obs, state_x, state_k = diffreppo.augmented_next_states(obs, final_obs, chain)
    assert state_k.tolist() == [2, 1, 3, 2, 1, 3]  # after the steps from k = 3, 2, 1 of each env's chain
    torch.testing.assert_close(state_obs.view(2, K, 2), torch.stack([obs, obs, final_obs], 1))
    torch.testing.assert_close(state_x.view(2, K, 2)[:, :2], chain[:, 1:3])  # x_2, x_1: the chain's own latents


def test_augmented_rewards_by_hand_and_at_k_1_the_twins_soft_reward():
    """g = (1, 1, gamma): the soft term -alpha g lt' at every step, dropped after a termination at the env step,
    and the env reward added there; with K = 1 it is the twin's r - gamma (1 - term) alpha log pi(x'|s')."""
    fresh = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    rewards = diffreppo.augmented_rewards(
        torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0]), fresh, torch.tensor([1.0, 1.0, 0.9]), 0.2
    )
    expected = [[-0.1, 0.2, 3.0 - 0.2 * 0.9 * 2.0], [-0.2, -0.2, 4.0]]
    torch.testing.assert_close(rewards, torch.tensor(expected))
    env_reward, terminated, fresh_log_pi = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.7, 0.3])
    twin = env_reward - 0.99 * (1.0 - terminated) * 0.2 * fresh_log_pi  # baselines/reppo.py's soft reward
    diffusion = diffreppo.augmented_rewards(env_reward, terminated, fresh_log_pi[:, None], torch.tensor([0.99]), 0.2)
    torch.testing.assert_close(diffusion[:, 0], twin)


def test_augmented_discounts_are_one_inside_the_chain_and_gamma_at_the_environment_step():
    assert diffreppo.augmented_discounts(3, 0.9, None).tolist() == pytest.approx([1.0, 1.0, 0.9])
    assert diffreppo.augmented_discounts(3, 0.9, 0.999).tolist() == pytest.approx([0.999] * 3)
    assert diffreppo.augmented_discounts(1, 0.9, None).tolist() == pytest.approx([0.9])  # K = 1: the twin's gamma
