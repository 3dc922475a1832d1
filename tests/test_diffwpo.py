"""DiffWPO: the closed-form kernel score, the WPO step on a quadratic critic, the critics' soft Bellman target at the
last diffusion step, the roll-out's path log-ratio and its velocity."""

import torch
from torch.distributions import Normal

import diffwpo


def make_agent(obs_dim=2, action_dim=2, num_diffusion_steps=3, seed=0):
    torch.manual_seed(seed)
    agent = diffwpo.Agent(
        obs_dim, action_dim, [-1.0] * action_dim, [1.0] * action_dim, num_diffusion_steps, hidden_dim=32
    )
    with torch.no_grad():
        agent.actor.mean_net[-1].weight.normal_(0, 0.3)
    return agent


def test_closed_form_score_equals_autograd_gradient_of_log_prob():
    agent = make_agent()
    obs, x_k, x = torch.randn(50, 2), torch.randn(50, 2), torch.randn(50, 2, requires_grad=True)
    k = torch.randint(1, 4, (50,))
    (autograd_score,) = torch.autograd.grad(agent.actor.log_prob(obs, x_k, k, x).sum(), x)
    mean, std = agent.actor.kernel(obs, x_k, k)
    torch.testing.assert_close(diffwpo.kernel_score(x, mean, std), autograd_score)


def quadratic_critic(center):
    """Q(s, x_k, k, x) = -|x - center|^2, whose gradient is -2 (x - center)."""
    return lambda obs, x_k, k, x: -((x - center) ** 2).sum(-1)


def test_wpo_step_moves_gaussian_mean_along_gradient_of_quadratic_q():
    """One Gaussian step (K = 1), alpha = 0, Q = -|x - c|^2. The WPO loss is
    -E[score(x) . v(x)] with score = -(x - mean)/sigma^2 and v = grad Q(x) = -2 (x - c), so its
    gradient with respect to the mean is -E[v]/sigma^2 = 2 (mean - c)/sigma^2 (preconditioned by
    sigma^2: 2 (mean - c)). A gradient step on the bias of the mean network (which shifts the mean
    of every state) thus moves the mean along grad Q(mean) = -2 (mean - c)."""
    center = torch.tensor([1.5, -0.5])
    for fisher_preconditioner in (True, False):
        agent = make_agent(obs_dim=1, num_diffusion_steps=1)
        with torch.no_grad():
            agent.actor.log_std.copy_(torch.log(torch.tensor([[0.5, 0.3]])))  # sigma^2 != 1: the preconditioner shows
        obs = torch.zeros(40000, 1)  # one state, many samples: the expectation is tight
        one = torch.ones(len(obs), dtype=torch.long)
        x_prior = torch.randn(len(obs), 2)  # the mean depends on x_K ~ N(0, I): average over it

        def policy_mean():
            with torch.no_grad():
                mean, std = agent.actor.kernel(obs, x_prior, one)
            return mean.mean(0), std[0]

        mean_before, std = policy_mean()
        loss, _ = diffwpo.wpo_actor_loss(
            agent, quadratic_critic(center), obs, alpha=0.0, fisher_preconditioner=fisher_preconditioner
        )
        loss.backward()
        bias_gradient = agent.actor.mean_net[-1].bias.grad
        expected = 2 * (mean_before - center) / (1.0 if fisher_preconditioner else std**2)
        torch.testing.assert_close(bias_gradient, expected, rtol=0.03, atol=0.03)

        with torch.no_grad():
            agent.actor.mean_net[-1].bias -= 0.01 * bias_gradient
        mean_after, _ = policy_mean()
        step, gradient_of_q = mean_after - mean_before, -2 * (mean_before - center)
        assert (
            torch.nn.functional.cosine_similarity(step, gradient_of_q, dim=0) > 0.99
            if fisher_preconditioner
            else torch.all(torch.sign(step) == torch.sign(gradient_of_q))
        )


def test_critic_target_is_the_reward_plus_the_discounted_value_at_the_end_of_a_fresh_chain_at_the_next_state():
    """With alpha = 0 and Q_target(s, x_k, k, x) = 100 s + k the soft value at s' is Q_target at the end of the
    rolled-out chain, 100 s' + 1: the target is r + gamma (1 - terminated)(100 s' + 1), on the stored (x_1, x_0) at
    k = 1."""
    agent = make_agent(obs_dim=1, num_diffusion_steps=4)
    critic = lambda obs, x_k, k, x: 100 * obs[:, 0] + k  # noqa: E731
    obs, next_obs, last_steps = torch.rand(64, 1), torch.rand(64, 1) + 5, torch.randn(64, 2, 2)
    rewards, terminations = torch.randn(64), (torch.rand(64) < 0.5).float()
    b_obs, x_k, k, x_previous, target = diffwpo.critic_targets(
        agent, critic, critic, obs, last_steps, rewards, next_obs, terminations, alpha=0.0, gamma=0.9
    )
    assert k.tolist() == [1] * 64
    torch.testing.assert_close(b_obs, obs)
    torch.testing.assert_close(x_k, last_steps[:, 0])
    torch.testing.assert_close(x_previous, last_steps[:, 1])
    torch.testing.assert_close(target, rewards + 0.9 * (1 - terminations) * (100 * next_obs[:, 0] + 1))


def test_soft_value_subtracts_alpha_times_the_path_log_ratio_of_the_same_roll_out():
    """With Q_target = 0, no reward and gamma = 1 the target is -alpha L of the chain rolled out at s', the same L
    (prior, K kernel terms and squash) that roll_out returns for the same noise and that the fused sample_chain gives
    for that chain."""
    agent, alpha = make_agent(num_diffusion_steps=4), 0.7
    zero = lambda obs, x_k, k, x: torch.zeros(len(obs))  # noqa: E731
    obs, next_obs, last_steps = torch.randn(32, 2), torch.randn(32, 2), torch.randn(32, 2, 2)
    torch.manual_seed(3)
    *_, target = diffwpo.critic_targets(
        agent, zero, zero, obs, last_steps, torch.zeros(32), next_obs, torch.zeros(32), alpha=alpha, gamma=1.0
    )
    torch.manual_seed(3)
    with torch.no_grad():
        chain, path_log_ratio = diffwpo.roll_out(agent, next_obs)
        chain = torch.stack(chain, dim=1)
        actor, step_k = agent.actor, agent.actor.step_k.expand(len(obs), -1)
        step_log_q = torch.stack(
            [actor.log_prob(next_obs, chain[:, j], step_k[:, j], chain[:, j + 1]) for j in range(4)], dim=1
        )
        terms, log_prior, squash_log_det = actor.path_log_ratio_terms(chain, step_log_q, agent.action_half_width)
    torch.testing.assert_close(target, -alpha * path_log_ratio)
    torch.testing.assert_close(path_log_ratio, log_prior + terms.sum(1) - squash_log_det)


def test_critic_gradient_vanishes_where_the_action_saturates():
    """The critic reads x through tanh, so d Q / d x_{k-1} dies out where tanh saturates (the executed
    action no longer changes) instead of extrapolating linearly and pushing x_0 without bound."""
    torch.manual_seed(0)
    critic = diffwpo.AugmentedQNetwork(obs_dim=2, action_dim=2, num_diffusion_steps=3, hidden_dim=32)
    obs, x_k, k = torch.randn(64, 2), torch.randn(64, 2), torch.ones(64, dtype=torch.long)
    gradients = {}
    for scale in (0.0, 20.0):
        x = torch.full((64, 2), scale, requires_grad=True)
        (gradients[scale],) = torch.autograd.grad(critic(obs, x_k, k, x).sum(), x)
    assert gradients[0.0].abs().mean() > 1e-3
    assert gradients[20.0].abs().max() < 1e-12


def test_rolled_out_velocity_is_the_finite_difference_of_the_rolled_out_objective():
    """Recover each kernel's noise from the returned chain, move x_{k-1} by +-h along one coordinate, roll the rest of
    the chain out again with the same noise and value it by Q(s, x_1, x_0) - alpha L in float64: the central
    difference must equal the velocity at every step (own log q, forward kernel, downstream steps and critic)."""
    num_diffusion_steps, alpha, h = 3, 0.3, 1e-6
    agent = make_agent(num_diffusion_steps=num_diffusion_steps).double()
    critic = lambda obs, x_k, k, x: -((x - 0.5) ** 2).sum(-1) + (x_k * x).sum(-1) * obs[:, 0]  # noqa: E731
    obs = torch.randn(4, 2, dtype=torch.float64)
    chain, velocity, path_log_ratio = diffwpo.rolled_out_velocity(agent, critic, obs, alpha)
    actor, step_k = agent.actor, agent.actor.step_k.expand(len(obs), -1)
    with torch.no_grad():
        noise = [
            (chain[:, j + 1] - actor.kernel(obs, chain[:, j], step_k[:, j])[0])
            / actor.kernel(obs, chain[:, j], step_k[:, j])[1]
            for j in range(num_diffusion_steps)
        ]

        def objective(chain_prefix):  # x_K .. x_{k-1} given; the rest rolled out with the recovered noise
            xs = list(chain_prefix)
            for j in range(len(xs) - 1, num_diffusion_steps):
                mean, std = actor.kernel(obs, xs[j], step_k[:, j])
                xs.append(mean + std * noise[j])
            total = diffwpo.gaussian_log_prob(xs[0], torch.zeros_like(xs[0]), torch.ones_like(xs[0]))
            for j in range(num_diffusion_steps):
                k = step_k[:, j]
                mean, std = actor.kernel(obs, xs[j], k)
                log_q = diffwpo.gaussian_log_prob(xs[j + 1], mean, std)
                total = total + log_q - actor.forward_log_prob(xs[j], xs[j + 1], k)
            total = total - diffwpo.squash_log_det(xs[-1], agent.action_half_width)
            return critic(obs, xs[-2], step_k[:, -1], xs[-1]) - alpha * total, total

        torch.testing.assert_close(objective([chain[:, 0]])[1], path_log_ratio)
        for j in range(num_diffusion_steps):  # velocity[:, j] is at x_{k-1} = chain[:, j + 1]
            for i in range(2):
                step = torch.zeros(2, dtype=torch.float64)
                step[i] = h
                prefix = [chain[:, m] for m in range(j + 1)]
                difference = (
                    objective(prefix + [chain[:, j + 1] + step])[0] - objective(prefix + [chain[:, j + 1] - step])[0]
                )
                torch.testing.assert_close(difference / (2 * h), velocity[:, j, i], rtol=1e-5, atol=1e-6)


def step_by_step_roll_out(agent, obs):
    """The roll-out written out with actor.kernel, one augmented step at a time: x_K ~ N(0, I), x_{k-1} = mean + sigma_k
    eps, and L = log N(x_K; 0, I) + sum_k [log q(x_{k-1} | x_k) - log p(x_k | x_{k-1})] - log|da/dx_0|."""
    actor = agent.actor
    x_k = torch.randn(obs.shape[0], actor.action_dim, dtype=obs.dtype)
    chain = [x_k]
    path_log_ratio = Normal(0.0, 1.0).log_prob(x_k).sum(-1)
    for k in range(actor.num_diffusion_steps, 0, -1):
        mean, std = actor.kernel(obs, x_k, torch.full((obs.shape[0],), k))
        x_previous = mean + std * torch.randn_like(x_k)
        noising = Normal(actor.sqrt_alphas[k - 1] * x_previous, actor.betas[k - 1].sqrt())
        path_log_ratio = path_log_ratio + Normal(mean, std).log_prob(x_previous).sum(-1)
        path_log_ratio = path_log_ratio - noising.log_prob(x_k).sum(-1)
        x_k = x_previous
        chain.append(x_k)
    squash = (torch.log(agent.action_half_width) + torch.log(1 - torch.tanh(x_k) ** 2)).sum(-1)
    return chain, path_log_ratio - squash


def test_fused_roll_out_equals_the_kernels_run_step_by_step_with_their_velocity():
    """Same chain and L from the same noise, and the same gradient of an objective in every x_{k-1} (the velocity,
    which needs log q(x_{k-1} | x_k) as a function of x_{k-1})."""
    agent = make_agent(obs_dim=5, action_dim=2, num_diffusion_steps=4).double()
    obs = torch.randn(7, 5, dtype=torch.float64)
    results = []
    for roll_out in (diffwpo.roll_out, step_by_step_roll_out):
        torch.manual_seed(3)
        chain, path_log_ratio = roll_out(agent, obs)
        objective = (torch.sin(chain[-1]).sum(-1) + 0.3 * chain[-2].sum(-1) ** 2 - 0.1 * path_log_ratio).sum()
        results.append((torch.stack(chain, 1), path_log_ratio, torch.stack(torch.autograd.grad(objective, chain[1:]))))
    for fused, step_by_step in zip(*results):
        torch.testing.assert_close(fused, step_by_step, rtol=1e-10, atol=1e-10)
