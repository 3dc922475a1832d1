"""DiffSAC: reparameterised actor gradients, the entropy estimate, temperature tuning,
soft Bellman targets and time-limit handling."""

import math

import numpy as np
import pytest
import torch

import diffsac
from common.envs import make_vector_env
from common.replay_buffer import ReplayBuffer, step_and_store


def make_agent_and_critics(obs_dim=4, action_dim=2, num_diffusion_steps=5, seed=0):
    torch.manual_seed(seed)
    agent = diffsac.Agent(
        obs_dim, action_dim, [-1.0] * action_dim, [2.0] * action_dim, num_diffusion_steps, hidden_dim=32
    )
    with torch.no_grad():
        agent.actor.mean_net[-1].weight.normal_(0, 0.05)  # away from the initialisation, x_0 stays moderate
    return agent, diffsac.SoftQNetwork(obs_dim, action_dim, 32), diffsac.SoftQNetwork(obs_dim, action_dim, 32)


def test_actor_loss_gradient_reaches_every_diffusion_step():
    """With alpha = 0 the loss is -min Q(s, a): the parameters of step k (its time-embedding row
    and its sigma_k) get a gradient only if the action is reparameterised through every step from
    k down to x_0. A chain detached between steps would leave the early steps without gradient."""
    num_diffusion_steps = 5
    agent, qf1, qf2 = make_agent_and_critics(num_diffusion_steps=num_diffusion_steps)
    loss, _ = diffsac.actor_loss_and_entropy(agent, qf1, qf2, torch.randn(64, 4), alpha=0.0)
    loss.backward()
    embedding_grad = agent.actor.time_embedding.weight.grad
    for k in range(1, num_diffusion_steps + 1):
        assert embedding_grad[k].abs().sum() > 0, f"no gradient reaches the embedding of step k={k}"
        assert agent.actor.log_std.grad[k - 1].abs().sum() > 0, f"no gradient reaches sigma_k for k={k}"
    assert embedding_grad[0].abs().sum() == 0  # row 0 is never used (k runs over 1..K)
    for name, parameter in agent.actor.mean_net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for parameter in list(qf1.parameters()) + list(qf2.parameters()):  # the actor loss leaves the critics alone
        assert parameter.grad is None and parameter.requires_grad


def test_entropy_estimate_equals_minus_mean_path_log_ratio_computed_independently():
    """H_est = -mean(L), L = log N(x_K; 0, I) + sum_k [log q(x_{k-1}|x_k) - log p(x_k|x_{k-1})]
    - sum_i [log h_i + log(1 - tanh(x_0i)^2)], recomputed here with torch.distributions, a
    cosine schedule written out again, and the direct tanh formula, on the same chain."""
    num_diffusion_steps = 4
    agent, qf1, qf2 = make_agent_and_critics(num_diffusion_steps=num_diffusion_steps)
    agent, qf1, qf2 = agent.double(), qf1.double(), qf2.double()  # the direct tanh formula needs the range
    obs = torch.randn(128, 4, dtype=torch.float64)
    torch.manual_seed(7)
    _, entropy_estimate = diffsac.actor_loss_and_entropy(agent, qf1, qf2, obs, alpha=0.3)
    torch.manual_seed(7)
    _, _, chain = agent.sample(obs)  # the same noise gives the same chain
    chain = chain.detach()

    s, K = 0.008, num_diffusion_steps
    alpha_bar = [math.cos(((t / K) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(K + 1)]
    betas = [min(1 - alpha_bar[k] / alpha_bar[k - 1], 0.999) for k in range(1, K + 1)]
    log_ratio = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0).log_prob(chain[:, 0]).sum(-1)
    for j in range(K):
        k = K - j
        x_k, x_previous = chain[:, j], chain[:, j + 1]
        with torch.no_grad():
            mean, std = agent.actor.kernel(obs, x_k, torch.full((len(obs),), k))
        assert x_previous.abs().max() < 15  # inside the range of the direct formula below
        log_ratio += torch.distributions.Normal(mean, std).log_prob(x_previous).sum(-1)
        forward = torch.distributions.Normal(math.sqrt(1 - betas[k - 1]) * x_previous, math.sqrt(betas[k - 1]))
        log_ratio -= forward.log_prob(x_k).sum(-1)
    x_0 = chain[:, -1]
    log_ratio -= (math.log(1.5) + torch.log(1 - torch.tanh(x_0) ** 2)).sum(-1)  # h = (2 - (-1)) / 2
    torch.testing.assert_close(entropy_estimate, -log_ratio.mean(), atol=1e-6, rtol=1e-6)  # float32 schedule


def test_alpha_moves_toward_the_target_entropy():
    """One optimiser step on the temperature loss lowers alpha when H_est is above the target
    and raises it when H_est is below."""
    for entropy_estimate, direction in ((0.5, -1), (-5.0, +1)):
        log_alpha = torch.tensor(math.log(0.2), requires_grad=True)
        optimizer = torch.optim.Adam([log_alpha], lr=1e-2)
        loss = diffsac.alpha_loss(log_alpha, torch.tensor(entropy_estimate), target_entropy=-2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert np.sign(log_alpha.item() - math.log(0.2)) == direction


def test_soft_bellman_target_bootstraps_unless_terminated():
    """y = r + gamma (1 - terminated)(min Q' - alpha L'): r=1, gamma=0.9, min Q'=10, alpha=0.5, L'=-2
    gives 1 + 0.9 * (10 + 1) = 10.9 when not terminated, and 1 when terminated."""
    target = diffsac.soft_bellman_target(
        torch.tensor([1.0, 1.0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([10.0, 10.0]),
        torch.tensor([-2.0, -2.0]),
        alpha=0.5,
        gamma=0.9,
    )
    torch.testing.assert_close(target, torch.tensor([10.9, 1.0]))


def collect(env_id, steps):
    envs = make_vector_env(env_id, num_envs=1, seed=0)
    buffer = ReplayBuffer(100, 1, 1, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    for _ in range(steps):
        obs, _ = step_and_store(envs, obs, np.zeros((1, 1), np.float32), buffer)
    return buffer


def test_time_limit_stores_true_final_observation_and_bootstraps():
    """Time limit 3: the third transition is 2 -> 3 (the final observation, not the reset 0) and is
    not a termination, so the critic target bootstraps from it; the next episode starts at 0."""
    buffer = collect("tests/CountingTruncated-v0", 5)
    np.testing.assert_array_equal(buffer.obs[:5, 0].numpy(), [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(buffer.next_obs[:5, 0].numpy(), [1, 2, 3, 1, 2])
    np.testing.assert_array_equal(buffer.terminations[:5].numpy(), [0, 0, 0, 0, 0])


def test_termination_stores_final_observation_and_stops_bootstrap():
    buffer = collect("tests/CountingTerminated-v0", 4)
    np.testing.assert_array_equal(buffer.obs[:4, 0].numpy(), [0, 1, 0, 1])
    np.testing.assert_array_equal(buffer.next_obs[:4, 0].numpy(), [1, 2, 1, 2])
    np.testing.assert_array_equal(buffer.terminations[:4].numpy(), [0, 1, 0, 1])


def test_annealed_alpha_raises_the_weight_on_q_linearly_from_alpha_start_to_alpha():
    """alpha_t = alpha / (alpha/alpha_start + (1 - alpha/alpha_start) p): alpha_start at p = 0, alpha at p >= 1,
    and 1/alpha_t (the weight on Q in the surrogate alpha L - Q, divided by alpha_t) linear in p in between."""
    assert diffsac.annealed_alpha(0.2, 4.0, 0.0) == pytest.approx(4.0)
    assert diffsac.annealed_alpha(0.2, 4.0, 1.0) == pytest.approx(0.2)
    assert diffsac.annealed_alpha(0.2, 4.0, 3.0) == pytest.approx(0.2) and diffsac.annealed_alpha(
        0.2, 4.0, -1.0
    ) == pytest.approx(4.0)
    inverse = [1 / diffsac.annealed_alpha(0.2, 4.0, p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert np.diff(inverse) == pytest.approx([np.diff(inverse)[0]] * 4)
    assert inverse[-1] - inverse[0] == pytest.approx(1 / 0.2 - 1 / 4.0)


def exact_agent(obs_dim=3, action_dim=2, num_diffusion_steps=4):
    """The untrained chain with its mean network's output zeroed: exactly the reverse process of
    x_0 ~ N(0, I), so L = log pi(a) on every path (method.md §2), pi the law of a = c + h tanh(x_0)."""
    agent = diffsac.Agent(
        obs_dim, action_dim, [-1.0] * action_dim, [2.0] * action_dim, num_diffusion_steps, hidden_dim=16
    ).double()
    with torch.no_grad():
        agent.actor.mean_net[-1].weight.zero_()
        agent.actor.mean_net[-1].bias.zero_()
    return agent


def exact_log_pi(agent, actions):
    """log pi(a) of the exact chain, independently: x_0 = atanh((a - c) / h) ~ N(0, I), minus log|da/dx_0|."""
    x_0 = torch.atanh((actions - agent.action_center) / agent.action_half_width)
    log_normal = torch.distributions.Normal(torch.zeros_like(x_0), 1.0).log_prob(x_0).sum(-1)
    return log_normal - torch.log(agent.action_half_width * (1 - torch.tanh(x_0) ** 2)).sum(-1)


@pytest.mark.parametrize("noise_scale", [1.0, 1.5])
def test_log_variance_loss_is_zero_when_alpha_l_minus_q_is_constant_at_each_state(noise_scale):
    """With an exact chain and Q(s, a) = alpha log pi(a) + c(s), alpha L - Q = -c(s) on every path, also on
    widened paths (L of a path is evaluated with the kernels' own densities). The loss, a variance over the
    chains of one state, is then zero and has zero gradient, though c(s) differs between states: a variance
    over the whole batch, or L evaluated with the widened densities, would not be zero."""
    torch.manual_seed(0)
    agent, alpha = exact_agent(), 0.3
    obs = torch.randn(16, 3, dtype=torch.float64)

    def critic(observations, actions):
        return alpha * exact_log_pi(agent, actions) + 5.0 * observations.sum(-1)

    loss, entropy_estimate = diffsac.log_variance_actor_loss(agent, critic, critic, obs, alpha, 8, noise_scale)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-9)
    for name, parameter in agent.actor.named_parameters():
        assert parameter.grad is None or parameter.grad.abs().max() < 1e-6, name
    batch_variance = (5.0 * obs.sum(-1)).var()
    assert batch_variance > 1.0  # so a variance over the batch would be far from zero
    assert torch.isfinite(entropy_estimate)
