"""The log-probability maths of the diffusion policy (method.md §1, §2), checked against
independent computations: torch.distributions, direct formulas, numerical integration
and closed forms. Every script carries its own copy of the diffusion actor (scripts are
meant to be copied), so every test runs on each script's copy."""

import importlib
import math

import numpy as np
import pytest
import torch

SCRIPTS = ["diffppo", "diffsac", "diffwpo", "diffreppo"]


@pytest.fixture(autouse=True)
def float64_by_default():
    """These tests compare against integrals and closed forms: run them in float64, then restore."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


def log_one_minus_tanh_squared_direct(x):
    return torch.log(1 - torch.tanh(x) ** 2)


def zero_mean_network(actor):
    """f_theta = 0: the mean is sqrt(alpha_k) x_k, the chain is the exact reverse process of N(0, I)."""
    with torch.no_grad():
        actor.mean_net[-1].weight.zero_()
        actor.mean_net[-1].bias.zero_()
    return actor


def random_actor(script, obs_dim=3, action_dim=2, num_diffusion_steps=4, seed=0):
    """An actor far from its initialisation: random mean-network output and step stds."""
    torch.manual_seed(seed)
    actor = script.DiffusionActor(obs_dim, action_dim, num_diffusion_steps).double()
    with torch.no_grad():
        actor.mean_net[-1].weight.normal_(0, 0.5)
        actor.log_std.uniform_(-2.0, -0.3)
    return actor


def test_gaussian_log_prob_matches_torch_distributions(script):
    torch.manual_seed(0)
    x, mean, std = torch.randn(50, 3), torch.randn(50, 3), torch.rand(50, 3) + 0.1
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
    torch.testing.assert_close(script.gaussian_log_prob(x, mean, std), expected)


def test_kernel_and_forward_log_probs_match_torch_distributions(script):
    """log q(x_{k-1}|x_k,s) uses the kernel's mean and std; log p(x_k|x_{k-1}) = N(sqrt(alpha_k) x_{k-1}, beta_k)."""
    actor = random_actor(script)
    obs, x_k, x_previous = torch.randn(20, 3), torch.randn(20, 2), torch.randn(20, 2)
    k = torch.randint(1, 5, (20,))
    mean, std = actor.kernel(obs, x_k, k)
    expected_q = torch.distributions.Normal(mean, std).log_prob(x_previous).sum(-1)
    torch.testing.assert_close(actor.log_prob(obs, x_k, k, x_previous), expected_q)
    betas = script.cosine_beta_schedule(4).double()
    forward = torch.distributions.Normal(torch.sqrt(1 - betas[k - 1, None]) * x_previous, betas[k - 1, None].sqrt())
    torch.testing.assert_close(actor.forward_log_prob(x_k, x_previous, k), forward.log_prob(x_k).sum(-1))


def test_cosine_schedule_is_increasing_and_clipped(script):
    for num_steps in (1, 2, 8, 50):
        betas = script.cosine_beta_schedule(num_steps)
        assert betas.shape == (num_steps,)
        assert torch.all(betas[1:] >= betas[:-1]) and torch.all(betas > 0) and betas.max() <= 0.999 + 1e-7
        # The forward marginal at step K is close to the N(0, I) prior: alpha_bar_K <= 1e-3.
        assert torch.prod(1 - betas.double()) <= 1.01e-3


def test_sampled_step_log_q_equals_kernel_log_prob(script):
    """sample_chain's fast path (split first layer, log q from the noise) agrees with log_prob at every step."""
    actor = random_actor(script, num_diffusion_steps=5)
    obs = torch.randn(30, 3)
    chain, step_log_q = actor.sample_chain(obs)
    for j in range(5):
        k = torch.full((30,), 5 - j)
        torch.testing.assert_close(step_log_q[:, j], actor.log_prob(obs, chain[:, j], k, chain[:, j + 1]))
        mean, _ = actor.kernel(obs, chain[:, j], k)
        deterministic_chain, _ = actor.sample_chain(obs, deterministic=True)
        assert not torch.allclose(mean, chain[:, j + 1])  # the sample is noisy ...
    torch.testing.assert_close(deterministic_chain[:, 0], torch.zeros(30, 2))  # ... the deterministic path is not
    for j in range(5):
        mean, _ = actor.kernel(obs, deterministic_chain[:, j], torch.full((30,), 5 - j))
        torch.testing.assert_close(deterministic_chain[:, j + 1], mean)


@pytest.mark.parametrize("script_name", SCRIPTS)
def test_widened_chain_reports_the_kernels_own_log_density(script_name):
    """sample_chain(noise_scale=c) draws x_{k-1} = mean + c sigma_k eps (the widened paths of DiffSAC's
    log-variance loss and DiffPPO's widened rollouts), and its log q of each step is the density of the
    kernel N(mean, sigma_k^2) itself at that point, recomputed with torch.distributions."""
    actor = random_actor(importlib.import_module(script_name), num_diffusion_steps=4)
    obs = torch.randn(400, 3)
    chain, step_log_q = actor.sample_chain(obs, noise_scale=1.7)
    for j in range(4):
        mean, std = actor.kernel(obs, chain[:, j], torch.full((400,), 4 - j))
        expected = torch.distributions.Normal(mean, std).log_prob(chain[:, j + 1]).sum(-1)
        torch.testing.assert_close(step_log_q[:, j], expected)
        assert 1.55 < ((chain[:, j + 1] - mean) / std).std() < 1.85  # the noise really is widened by 1.7


def test_stable_log_one_minus_tanh_squared_matches_direct_formula(script):
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(script.log_one_minus_tanh_squared(x), torch.log(1 - torch.tanh(x) ** 2))
    # Far in the tails the direct formula gives -inf; the stable one follows 2 log 2 - 2|x|.
    big = torch.tensor([-200.0, 60.0, 400.0])
    assert torch.isinf(torch.log(1 - torch.tanh(big) ** 2)).all()
    torch.testing.assert_close(script.log_one_minus_tanh_squared(big), 2 * math.log(2) - 2 * big.abs())


def test_tanh_change_of_variables_density_integrates_to_gaussian_cdf(script):
    """p_a(a) = N(x; m, s^2) / (h (1 - tanh(x)^2)) with x = atanh((a - c)/h) is the density of a = c + h tanh(x).

    Integrating it numerically over (c - h, a_0) must give the Gaussian CDF at atanh((a_0 - c)/h),
    and over the whole interval must give 1.
    """
    mean, std, center, half_width = 0.4, 0.9, 1.0, 2.5
    a = torch.linspace(center - half_width, center + half_width, 400001)[1:-1]
    x = torch.atanh((a - center) / half_width)
    log_density = (
        torch.distributions.Normal(mean, std).log_prob(x) - math.log(half_width) - script.log_one_minus_tanh_squared(x)
    )
    cdf = torch.cumulative_trapezoid(log_density.exp(), a)
    for a_0 in (-0.5, 1.0, 2.9):
        index = int(torch.searchsorted(a, torch.tensor(a_0)))
        expected = torch.distributions.Normal(mean, std).cdf(x[index])
        assert abs(cdf[index - 1].item() - expected.item()) < 1e-4
    assert abs(cdf[-1].item() - 1.0) < 1e-4


def exact_reverse_process(m, v, betas):
    """Marginals N(mu_k, V_k) of the forward process started at x_0 ~ N(m, v), and its reverse kernels.

    x_k = sqrt(alpha_k) x_{k-1} + sqrt(beta_k) eps, so V_k = alpha_k V_{k-1} + beta_k and
    Cov(x_{k-1}, x_k) = sqrt(alpha_k) V_{k-1}; conditioning gives the Gaussian reverse kernel
    x_{k-1} | x_k ~ N(mu_{k-1} + G_k (x_k - mu_k), V_{k-1} - G_k sqrt(alpha_k) V_{k-1}),
    G_k = sqrt(alpha_k) V_{k-1} / V_k.
    """
    mus, variances = [m], [v]
    for beta in betas:
        mus.append(math.sqrt(1 - beta) * mus[-1])
        variances.append((1 - beta) * variances[-1] + beta)
    gains, kernel_vars = [], []
    for k in range(1, len(betas) + 1):
        gain = math.sqrt(1 - betas[k - 1]) * variances[k - 1] / variances[k]
        gains.append(gain)
        kernel_vars.append(variances[k - 1] - gain * math.sqrt(1 - betas[k - 1]) * variances[k - 1])
    return mus, variances, gains, kernel_vars


@pytest.mark.parametrize("num_diffusion_steps", [1, 3, 8])
def test_log_ratio_is_exact_for_gaussian_target_on_every_path(script, num_diffusion_steps):
    """Exactness (method.md §2): with reverse kernels equal to the forward process's exact Gaussian
    posteriors and the exact marginal at step K as prior, q(x_{0:K}) = pi(x_0) p(x_{1:K}|x_0), so
    L = log q(x_{0:K}) - log p(x_{1:K}|x_0) - log|da/dx_0| = log pi(a) on every sampled path.
    """
    torch.manual_seed(1)
    actor = script.DiffusionActor(1, 1, num_diffusion_steps).double()
    betas = actor.betas.tolist()
    m, v = 0.7, 0.3
    mus, variances, gains, kernel_vars = exact_reverse_process(m, v, betas)
    half_width = torch.tensor([2.0])
    batch = 2000
    x = mus[-1] + math.sqrt(variances[-1]) * torch.randn(batch, 1)
    chain, step_log_q = [x], []
    for k in range(num_diffusion_steps, 0, -1):
        mean = mus[k - 1] + gains[k - 1] * (x - mus[k])
        std = torch.full_like(mean, math.sqrt(kernel_vars[k - 1]))
        x = mean + std * torch.randn_like(mean)
        chain.append(x)
        step_log_q.append(script.gaussian_log_prob(x, mean, std))
    chain, step_log_q = torch.stack(chain, 1), torch.stack(step_log_q, 1)
    step_log_ratio, _, squash_log_det = actor.path_log_ratio_terms(chain, step_log_q, half_width)
    exact_prior = torch.distributions.Normal(mus[-1], math.sqrt(variances[-1])).log_prob(chain[:, 0, 0])
    path_log_ratio = exact_prior + step_log_ratio.sum(1) - squash_log_det
    x_0 = chain[:, -1, 0]
    log_pi = (
        torch.distributions.Normal(m, math.sqrt(v)).log_prob(x_0)
        - torch.log(half_width[0])
        - log_one_minus_tanh_squared_direct(x_0)
    )
    torch.testing.assert_close(path_log_ratio, log_pi, atol=1e-6, rtol=1e-6)


def test_initial_actor_log_ratio_is_exact_log_policy(script):
    """The actor at initialisation (f = 0, sigma_k^2 = beta_k) is the exact reverse process of
    x_0 ~ N(0, I), so the L it computes on its own samples equals log pi(a) of a = c + h tanh(x_0),
    x_0 ~ N(0, I), path by path. This runs the actor's own sampler and its L.
    """
    torch.manual_seed(2)
    agent = script.Agent(
        obs_dim=4, action_dim=3, action_low=[-1, -2, 0], action_high=[1, 2, 3], num_diffusion_steps=6
    ).double()
    zero_mean_network(agent.actor)
    chain, step_log_q = agent.actor.sample_chain(torch.randn(500, 4))
    step_log_ratio, log_prior, squash_log_det = agent.actor.path_log_ratio_terms(
        chain, step_log_q, agent.action_half_width
    )
    path_log_ratio = log_prior + step_log_ratio.sum(1) - squash_log_det
    x_0 = chain[:, -1]
    log_pi = (
        torch.distributions.Normal(0.0, 1.0).log_prob(x_0)
        - torch.log(agent.action_half_width)
        - log_one_minus_tanh_squared_direct(x_0)
    ).sum(-1)
    torch.testing.assert_close(path_log_ratio, log_pi, atol=1e-6, rtol=1e-6)


def marginal_entropy_by_integration(actor, obs, grid):
    """H(x_0) of the actor's chain in 1-D, with the marginal p(x_0) integrated numerically on a grid:
    p_K = N(0, 1), p_{k-1}(y) = integral p_k(x) q(y | x, s, k) dx, then H = -integral p_0 log p_0."""
    spacing = (grid[1] - grid[0]).item()
    density = torch.distributions.Normal(0.0, 1.0).log_prob(grid).exp()
    n = len(grid)
    for k in range(actor.num_diffusion_steps, 0, -1):
        mean, std = actor.kernel(obs.expand(n, -1), grid[:, None], torch.full((n,), k))
        # transition[i, j] = q(grid_j | grid_i)
        transition = torch.distributions.Normal(mean, std).log_prob(grid[None, :]).exp()
        density = (density[:, None] * transition).sum(0) * spacing
    assert abs(density.sum().item() * spacing - 1.0) < 1e-4, "the grid must hold the whole marginal"
    positive = density > 0
    return -(density[positive] * density[positive].log()).sum().item() * spacing, density


def entropy_estimate_by_sampling(agent, obs, samples=400_000):
    """H_est = -E[L] by Monte Carlo, with its standard error, and the mean squash term."""
    with torch.no_grad():
        chain, step_log_q = agent.actor.sample_chain(obs.expand(samples, -1))
        step_log_ratio, log_prior, squash_log_det = agent.actor.path_log_ratio_terms(
            chain, step_log_q, agent.action_half_width
        )
    path_log_ratio = log_prior + step_log_ratio.sum(1) - squash_log_det
    return -path_log_ratio.mean().item(), path_log_ratio.std().item() / math.sqrt(samples), squash_log_det.mean().item()


def test_entropy_estimate_is_lower_bound_with_strict_gap_for_mismatched_kernel(script):
    """Lower bound (method.md §2): E_q[L] - E_q[log pi(a)] = KL(q(x_{1:K}|x_0) || p(x_{1:K}|x_0)) >= 0,
    so H_est = -E[L] <= H(pi). The true entropy comes from the marginal integrated on a grid:
    H(a) = H(x_0) + E[log h + log(1 - tanh(x_0)^2)]. A nonlinear, mismatched reverse kernel gives
    a strict gap; the exact kernels (initialisation) give none.
    """
    torch.manual_seed(3)
    grid = torch.linspace(-9, 9, 1801)
    obs = torch.tensor([[0.5]])

    exact = script.Agent(1, 1, [-2.0], [2.0], num_diffusion_steps=3, hidden_dim=64).double()
    zero_mean_network(exact.actor)
    true_entropy_x0, _ = marginal_entropy_by_integration(exact.actor, obs, grid)
    estimate, stderr, squash = entropy_estimate_by_sampling(exact, obs)
    assert abs(true_entropy_x0 - 0.5 * math.log(2 * math.pi * math.e)) < 1e-4  # N(0, 1)
    assert abs(estimate - (true_entropy_x0 + squash)) < 5 * stderr + 1e-3

    mismatched = script.Agent(1, 1, [-2.0], [2.0], num_diffusion_steps=3, hidden_dim=64).double()
    with torch.no_grad():
        mismatched.actor.mean_net[-1].weight.normal_(0, 0.3)
        mismatched.actor.mean_net[-1].bias.fill_(0.3)
        mismatched.actor.log_std.fill_(math.log(0.4))
    true_entropy_x0, _ = marginal_entropy_by_integration(mismatched.actor, obs, grid)
    estimate, stderr, squash = entropy_estimate_by_sampling(mismatched, obs)
    true_entropy = true_entropy_x0 + squash
    gap = true_entropy - estimate
    assert gap > 10 * stderr + 0.05, f"expected a strict gap, got H={true_entropy:.4f}, H_est={estimate:.4f}"


def test_deterministic_action_is_repeatable_and_stochastic_is_not(script):
    torch.manual_seed(4)
    agent = script.Agent(3, 2, [-1.0, 0.0], [1.0, 5.0], num_diffusion_steps=4).double()
    obs = torch.randn(64, 3)
    torch.testing.assert_close(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    assert not torch.allclose(agent.act(obs), agent.act(obs))
    np.testing.assert_allclose(agent.action_center.numpy(), [0.0, 2.5])


def test_actions_stay_inside_bounds_when_x0_is_far_out(script):
    torch.manual_seed(5)
    agent = script.Agent(3, 2, [-1.0, 0.0], [1.0, 5.0], num_diffusion_steps=4).double()
    with torch.no_grad():
        agent.actor.mean_net[-1].bias.copy_(torch.tensor([40.0, -40.0]))
    for deterministic in (True, False):
        actions = agent.act(torch.randn(64, 3), deterministic=deterministic)
        assert torch.all(actions >= torch.tensor([-1.0, 0.0])) and torch.all(actions <= torch.tensor([1.0, 5.0]))
