"""The authors' chain (--chain langevin, method.md §1.1) checked against independent computations: every kernel and
noising step against torch.distributions with the Euler-Maruyama formulas written out here, the fused sampler against
the kernel run step by step, the path log-ratio against its definition, DiffPPO's soft rewards against -alpha L, and
the discount inside the chain against GAE over the flattened augmented sequence. Runs on every script's copy."""

import importlib
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

SCRIPTS = ["diffppo", "diffsac", "diffwpo", "diffreppo"]
PRIOR_STD = 3.0


@pytest.fixture(autouse=True)
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


def langevin_actor(script, obs_dim=3, action_dim=2, num_diffusion_steps=4, seed=0):
    """A Langevin actor away from its initialisation: random output layer, step sizes and frictions."""
    torch.manual_seed(seed)
    actor = script.DiffusionActor(obs_dim, action_dim, num_diffusion_steps, chain="langevin").double()
    with torch.no_grad():
        actor.mean_net[-1].weight.normal_(0, 0.5)
        actor.dt_parameter.uniform_(-3.0, -1.0)
        actor.friction_parameter.uniform_(-1.5, 0.5)
    return actor


def euler_maruyama(actor, obs, x_k, k):
    """Mean and std of x_{k-1} = x_k + eta_k (-x_k / prior_std^2 + f(s, x_k, k)) + sqrt(2 eta_k) eps, written out."""
    dt = torch.log1p(torch.exp(actor.dt_parameter))[k - 1][:, None]  # softplus, by hand
    friction = torch.log1p(torch.exp(actor.friction_parameter))
    eta = dt / friction
    f = actor.mean_net(torch.cat([obs, x_k, actor.time_embedding(k)], dim=-1))
    return x_k + eta * (-x_k / PRIOR_STD**2 + f), torch.sqrt(2 * eta), eta


@pytest.mark.parametrize("num_diffusion_steps,dt", [(4, 0.25), (6, 0.16667), (8, 0.125)])
def test_initial_step_sizes_are_those_of_the_authors_k_sweep(script, num_diffusion_steps, dt):
    actor = script.DiffusionActor(3, 2, num_diffusion_steps, chain="langevin")
    k = torch.arange(1, num_diffusion_steps + 1)
    _, _, eta = euler_maruyama(actor, torch.zeros(num_diffusion_steps, 3), torch.zeros(num_diffusion_steps, 2), k)
    torch.testing.assert_close(eta, torch.full((num_diffusion_steps, 2), dt / 0.25), atol=1e-4, rtol=0)  # friction
    assert actor.prior_std == PRIOR_STD


def test_kernel_and_noising_step_match_torch_distributions(script):
    actor = langevin_actor(script)
    obs, x_k, x_previous = torch.randn(20, 3), torch.randn(20, 2) * 3, torch.randn(20, 2)
    k = torch.randint(1, 5, (20,))
    mean, std, eta = euler_maruyama(actor, obs, x_k, k)
    expected_q = Normal(mean, std).log_prob(x_previous).sum(-1)
    torch.testing.assert_close(actor.log_prob(obs, x_k, k, x_previous), expected_q)
    # The noising step from x_{k-1}: the prior's Langevin dynamics alone, with the same step size.
    noising = Normal(x_previous - eta * x_previous / PRIOR_STD**2, torch.sqrt(2 * eta))
    torch.testing.assert_close(actor.forward_log_prob(x_k, x_previous, k), noising.log_prob(x_k).sum(-1))


def test_fused_sampler_is_the_kernel_run_step_by_step(script):
    actor = langevin_actor(script, num_diffusion_steps=5)
    obs = torch.randn(30, 3)
    torch.manual_seed(1)
    chain, step_log_q = actor.sample_chain(obs)
    torch.manual_seed(1)
    noise = torch.randn(6, 30, 2)  # the sampler's draws, in its order
    x = PRIOR_STD * noise[0]
    torch.testing.assert_close(chain[:, 0], x)
    for j in range(5):
        k = torch.full((30,), 5 - j)
        mean, std, _ = euler_maruyama(actor, obs, x, k)
        x = mean + std * noise[j + 1]
        torch.testing.assert_close(chain[:, j + 1], x)
        torch.testing.assert_close(step_log_q[:, j], Normal(mean, std).log_prob(x).sum(-1))
    deterministic_chain, _ = actor.sample_chain(obs, deterministic=True)
    torch.testing.assert_close(deterministic_chain[:, 0], torch.zeros(30, 2))
    for j in range(5):
        mean, _, _ = euler_maruyama(actor, obs, deterministic_chain[:, j], torch.full((30,), 5 - j))
        torch.testing.assert_close(deterministic_chain[:, j + 1], mean)


def test_prior_draws_have_the_prior_std(script):
    actor = langevin_actor(script, num_diffusion_steps=1)
    chain, _ = actor.sample_chain(torch.zeros(200_000, 3))
    assert abs(chain[:, 0].std().item() - PRIOR_STD) < 0.02


def test_path_log_ratio_is_its_definition(script):
    """L = log N(x_K; 0, 9 I) + sum_k [log q(x_{k-1}|x_k, s) - log p(x_k|x_{k-1})] - log|da/dx_0|."""
    actor = langevin_actor(script, num_diffusion_steps=3)
    obs = torch.randn(50, 3)
    half_width = torch.tensor([2.0, 0.5])
    chain, step_log_q = actor.sample_chain(obs)
    step_log_ratio, log_prior, squash = actor.path_log_ratio_terms(chain, step_log_q, half_width)
    expected = Normal(0.0, PRIOR_STD).log_prob(chain[:, 0]).sum(-1)
    for j in range(3):
        k = torch.full((50,), 3 - j)
        mean, std, eta = euler_maruyama(actor, obs, chain[:, j], k)
        noising = Normal(chain[:, j + 1] * (1 - eta / PRIOR_STD**2), torch.sqrt(2 * eta))
        expected = expected + Normal(mean, std).log_prob(chain[:, j + 1]).sum(-1)
        expected = expected - noising.log_prob(chain[:, j]).sum(-1)
    x_0 = chain[:, -1]
    expected = expected - (torch.log(half_width) + torch.log(1 - torch.tanh(x_0) ** 2)).sum(-1)
    torch.testing.assert_close(log_prior + step_log_ratio.sum(1) - squash, expected)


def test_diffppo_soft_rewards_sum_to_minus_alpha_l_on_the_langevin_chain():
    import diffppo

    actor = langevin_actor(diffppo, num_diffusion_steps=4)
    obs = torch.randn(6, 3)
    half_width = torch.tensor([1.0, 1.0])
    with torch.no_grad():
        chain, step_log_q = actor.sample_chain(obs)
        step_log_ratio, log_prior, squash = actor.path_log_ratio_terms(chain, step_log_q, half_width)
    env_rewards = np.zeros((6, 1))
    rewards = diffppo.augmented_rewards(step_log_ratio, log_prior, squash, 0.3, env_rewards, np.zeros((6, 1)))
    path_log_ratio = (log_prior + step_log_ratio.sum(1) - squash).numpy()
    np.testing.assert_allclose(rewards.sum(-1)[:, 0], -0.3 * path_log_ratio, rtol=1e-6)


def test_step_sizes_and_frictions_are_learned(script):
    actor = langevin_actor(script)
    obs, x_k, x_previous = torch.randn(20, 3), torch.randn(20, 2), torch.randn(20, 2)
    actor.log_prob(obs, x_k, torch.randint(1, 5, (20,)), x_previous).sum().backward()
    assert actor.dt_parameter.grad.abs().sum() > 0 and actor.friction_parameter.grad.abs().sum() > 0


def test_discount_at_every_augmented_step_is_gae_over_the_flattened_sequence():
    """--chain-gamma gamma --chain-gae-lambda lambda (the authors' discounting): the augmented GAE is ordinary GAE
    over the T*K augmented steps, computed here directly."""
    from diffppo import augmented_gae

    rng = np.random.default_rng(0)
    num_steps, num_envs, K, gamma, lam = 5, 2, 3, 0.9, 0.8
    rewards, values = rng.normal(size=(num_steps, num_envs, K)), rng.normal(size=(num_steps, num_envs, K))
    dones = (rng.random((num_steps, num_envs)) < 0.3).astype(float)
    next_value = rng.normal(size=num_envs)
    flat_rewards, flat_values = rewards.transpose(1, 0, 2).reshape(num_envs, -1), values.transpose(1, 0, 2)
    flat_values = flat_values.reshape(num_envs, -1)
    flat_dones = np.zeros((num_envs, num_steps * K))
    flat_dones[:, K - 1 :: K] = dones.T  # an episode ends at the last augmented step of an environment step
    expected = np.zeros_like(flat_rewards)
    last = np.zeros(num_envs)
    for i in reversed(range(num_steps * K)):
        following = next_value if i == num_steps * K - 1 else flat_values[:, i + 1]
        delta = flat_rewards[:, i] + gamma * following * (1 - flat_dones[:, i]) - flat_values[:, i]
        last = delta + gamma * lam * (1 - flat_dones[:, i]) * last
        expected[:, i] = last
    advantages, _ = augmented_gae(rewards, values, dones, next_value, gamma, lam, lam, chain_gamma=gamma)
    np.testing.assert_allclose(advantages.transpose(1, 0, 2).reshape(num_envs, -1), expected)
    assert not math.isclose(
        advantages[0, 0, 0], augmented_gae(rewards, values, dones, next_value, gamma, lam, lam)[0][0, 0, 0]
    )
