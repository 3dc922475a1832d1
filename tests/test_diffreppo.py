"""DiffREPPO (diffreppo.py): the HL-Gauss target, the closed-form trust-region KL, the lambda-returns over
the augmented sequence, the one-step actor gradient, and the script from the command line."""

import math
import os
import re

import numpy as np
import pytest
import torch
from conftest import run_script, single_run_dir
from torch.distributions import Normal

import diffreppo
from benchmarks.logs import read_scalars

SMALL = [
    "--num-envs",
    "2",
    "--num-steps",
    "64",
    "--minibatch-size",
    "128",
    "--update-epochs",
    "2",
    "--hidden-dim",
    "64",
]
TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/entropy_estimate",
    "charts/alpha",
    "charts/beta",
    "losses/critic_loss",
    "losses/critic_cross_entropy",
    "losses/aux_loss",
    "losses/actor_loss",
    "losses/kl",
    "losses/kl_over_bound",
    "losses/clipped_target_fraction",
    "losses/kl_k1",
    "charts/entropy_k1",
]


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("value", [-3.7, 0.0, 0.26, 4.3, 4.999])
def test_hl_gauss_histogram_matches_bin_integrals_and_keeps_the_mean(value):
    """Each bin's mass is the integral of N(y, (0.75 w)^2) over it (math.erf, bin by bin), renormalised to the mass
    in [v_min, v_max]; the mass sums to one and the histogram's mean is y to within a fraction of a bin width."""
    v_min, v_max, num_bins = -5.0, 5.0, 41
    width = (v_max - v_min) / num_bins
    histogram = diffreppo.hl_gauss_histogram(torch.tensor([value], dtype=torch.float64), v_min, v_max, num_bins)[0]
    sigma = 0.75 * width
    edges = [v_min + i * width for i in range(num_bins + 1)]
    inside = normal_cdf((v_max - value) / sigma) - normal_cdf((v_min - value) / sigma)
    expected = [
        (normal_cdf((edges[i + 1] - value) / sigma) - normal_cdf((edges[i] - value) / sigma)) / inside
        for i in range(num_bins)
    ]
    np.testing.assert_allclose(histogram.numpy(), expected, atol=1e-12)
    assert histogram.sum().item() == pytest.approx(1.0, abs=1e-12)
    centres = torch.tensor([v_min + (i + 0.5) * width for i in range(num_bins)], dtype=torch.float64)
    # Two sigma inside the support the mean is y to 5% of a bin; at the edge it is pulled inward by less than a bin
    # (sigma phi(0) / (1/2) = 0.6 bin widths from the truncation, and the last centre sits half a bin inside).
    tolerance = 0.05 * width if v_max - abs(value) > 2 * sigma else width
    assert (histogram * centres).sum().item() == pytest.approx(value, abs=tolerance)


def test_hl_gauss_clips_values_outside_the_support():
    values = torch.tensor([-100.0, -5.0, 5.0, 42.0], dtype=torch.float64)
    histogram = diffreppo.hl_gauss_histogram(values, -5.0, 5.0, 21)
    torch.testing.assert_close(histogram[0], histogram[1])
    torch.testing.assert_close(histogram[2], histogram[3])
    assert histogram[3, -1] > 0.4 and histogram[0, 0] > 0.4


def test_critic_value_is_the_categoricals_mean_over_bin_centres():
    critic = diffreppo.DistributionalCritic(3, 2, 4, hidden_dim=16, num_bins=11, v_min=-2.0, v_max=3.0)
    logits = torch.randn(5, 11)
    centres = torch.linspace(-2.0, 3.0, 12)[:-1] + 5.0 / 22
    torch.testing.assert_close(critic.value(logits), (torch.softmax(logits, -1) * centres).sum(-1))


def test_closed_form_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean_old, mean_new = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    std_old, std_new = torch.rand(50, 3, dtype=torch.float64) + 0.1, torch.rand(50, 3, dtype=torch.float64) + 0.1
    old = torch.distributions.Independent(torch.distributions.Normal(mean_old, std_old), 1)
    new = torch.distributions.Independent(torch.distributions.Normal(mean_new, std_new), 1)
    torch.testing.assert_close(
        diffreppo.gaussian_kl(mean_old, std_old, mean_new, std_new), torch.distributions.kl_divergence(old, new)
    )
    assert diffreppo.gaussian_kl(mean_old, std_old, mean_old, std_old).abs().max() < 1e-12


def lambda_returns_forward_view(rewards, next_values, terminations, truncations, gamma, lam, augmented_gamma=None):
    """The same returns from their definition, per env: the lambda-weighted mix of n-step returns
    G^(n)_i = sum_{m<n} D_m r_{i+m} + D_n V'_{i+n-1}, D_0 = 1, D_{m+1} = D_m g_{i+m} (1 - term_{i+m}),
    with all weight from the first cut on (truncation or the rollout's end) on the n-step return ending there."""
    T, N, K = rewards.shape
    out = np.zeros((T, N, K))
    for env in range(N):
        seq = []  # (r, g, V', term, cut) in augmented time order
        for t in range(T):
            for j in range(K):
                env_step = j == K - 1
                g = (gamma if env_step else 1.0) if augmented_gamma is None else augmented_gamma
                seq.append(
                    (
                        rewards[t, env, j],
                        g,
                        next_values[t, env, j],
                        env_step and terminations[t, env] > 0,
                        env_step and (truncations[t, env] > 0 or t == T - 1),
                    )
                )
        for i in range(len(seq)):
            horizon = next(n for n in range(1, len(seq) - i + 1) if seq[i + n - 1][4] or seq[i + n - 1][3])
            n_step = []
            for n in range(1, horizon + 1):
                total, discount = 0.0, 1.0
                for m in range(n):
                    r, g, v, term, _ = seq[i + m]
                    total += discount * r
                    discount *= g * (0.0 if term else 1.0)
                n_step.append(total + discount * seq[i + n - 1][2])
            value = (
                sum((1 - lam) * lam ** (n - 1) * n_step[n - 1] for n in range(1, horizon))
                + lam ** (horizon - 1) * n_step[-1]
            )
            out[i // K, env, i % K] = value
    return out


@pytest.mark.parametrize("augmented_gamma", [None, 0.999])
def test_lambda_returns_match_the_forward_view_with_a_truncation_and_a_termination(augmented_gamma):
    """T = 4 env steps, K = 3, two envs: env 0 is truncated after step 1, env 1 terminates after step 2."""
    rng = np.random.default_rng(0)
    T, N, K = 4, 2, 3
    rewards, next_values = rng.normal(size=(T, N, K)), rng.normal(size=(T, N, K))
    terminations, truncations = np.zeros((T, N)), np.zeros((T, N))
    truncations[1, 0], terminations[2, 1] = 1.0, 1.0
    inside, last = (1.0, 0.9) if augmented_gamma is None else (augmented_gamma, augmented_gamma)
    discounts = torch.tensor([inside] * (K - 1) + [last], dtype=torch.float64)
    arrays = (torch.tensor(a) for a in (rewards, next_values, terminations, truncations))
    returns = diffreppo.augmented_lambda_returns(*arrays, discounts=discounts, gae_lambda=0.7)
    expected = lambda_returns_forward_view(rewards, next_values, terminations, truncations, 0.9, 0.7, augmented_gamma)
    np.testing.assert_allclose(returns.numpy(), expected, atol=1e-12)
    # the termination: the env step's return is its reward alone, nothing bootstraps past it
    assert returns[2, 1, K - 1].item() == pytest.approx(rewards[2, 1, K - 1])


def test_actor_loss_backpropagates_through_one_diffusion_step_only():
    """With every sample at k = 3 of K = 5, only step 3's time embedding and sigma_3 get a gradient: the loss
    goes through one reparameterised step, never through the chain that produced x_k, whatever K is."""
    torch.manual_seed(0)
    K = 5
    agent = diffreppo.Agent(4, 2, [-1.0, -1.0], [1.0, 1.0], K, hidden_dim=32)
    critic = diffreppo.DistributionalCritic(4, 2, K, hidden_dim=32, num_bins=21)
    obs, x_k = torch.randn(64, 4), torch.randn(64, 2)
    k = torch.full((64,), 3)
    loss, log_ratio_term, kl = diffreppo.actor_losses(
        agent, agent.actor, critic, obs, x_k, k, alpha=0.1, beta=1.0, kl_bound=0.1
    )
    loss.backward()
    embedding_grad = agent.actor.time_embedding.weight.grad
    for row in range(K + 1):
        assert (embedding_grad[row].abs().sum() > 0) == (row == 3), row
        if row >= 1:
            assert (agent.actor.log_std.grad[row - 1].abs().sum() > 0) == (row == 3), row
    assert all(p.grad is None for p in critic.parameters())  # the critic is frozen in the actor loss
    assert kl.abs().max() < 1e-6  # the old actor is the actor itself here: KL = 0, no sample is clipped


def test_actor_loss_uses_beta_kl_on_samples_over_the_bound():
    """Where KL(old || new) exceeds the bound, the sample's loss is beta * KL (REPPO's clipped trust region)."""
    torch.manual_seed(1)
    agent = diffreppo.Agent(3, 1, [-1.0], [1.0], 2, hidden_dim=16)
    old_actor = diffreppo.DiffusionActor(3, 1, 2, 16, activation="relu")
    old_actor.load_state_dict(agent.actor.state_dict())
    with torch.no_grad():
        old_actor.mean_net[-1].bias.fill_(3.0)  # every sample far from the old kernel
    critic = diffreppo.DistributionalCritic(3, 1, 2, hidden_dim=16, num_bins=11)
    obs, x_k, k = torch.randn(32, 3), torch.randn(32, 1), torch.randint(1, 3, (32,))
    loss, _, kl = diffreppo.actor_losses(agent, old_actor, critic, obs, x_k, k, alpha=0.1, beta=2.0, kl_bound=0.1)
    assert (kl > 0.1).all()
    assert loss.item() == pytest.approx(2.0 * kl.mean().item(), rel=1e-6)


def test_trust_region_kl_is_k_times_the_step_kl_a_budget_per_action():
    """KL = K x KL(old kernel || new kernel), the kernels' KL from torch.distributions: a step whose own KL is under
    the bound but K times it is over is clipped to beta KL, so a whole action moves as far as the twin's."""
    torch.manual_seed(3)
    K, bound = 4, 0.1
    agent = diffreppo.Agent(3, 2, [-1.0, -1.0], [1.0, 1.0], K, hidden_dim=16)
    old_actor = diffreppo.DiffusionActor(3, 2, K, 16, activation="relu")
    old_actor.load_state_dict(agent.actor.state_dict())
    obs, x_k, k = torch.randn(40, 3), torch.randn(40, 2), torch.full((40,), 2)
    with torch.no_grad():  # the old mean 0.25 sigma_2 away in each of 2 dims: a step KL of 0.0625, in (bound/K, bound)
        old_actor.mean_net[-1].bias += 0.25 * agent.actor.log_std[1].exp()
        mean_new, std_new = agent.actor.kernel(obs, x_k, k)
        mean_old, std_old = old_actor.kernel(obs, x_k, k)
    old, new = (torch.distributions.Normal(m, s) for m, s in ((mean_old, std_old), (mean_new, std_new)))
    step_kl = torch.distributions.kl_divergence(old, new).sum(-1)
    critic = diffreppo.DistributionalCritic(3, 2, K, hidden_dim=16, num_bins=11)
    loss, _, kl = diffreppo.actor_losses(agent, old_actor, critic, obs, x_k, k, alpha=0.1, beta=2.0, kl_bound=bound)
    torch.testing.assert_close(kl, K * step_kl)
    assert ((step_kl < bound) & (kl >= bound)).all(), step_kl  # every sample is over only through the factor K
    assert loss.item() == pytest.approx(2.0 * kl.mean().item(), rel=1e-6)


def test_auxiliary_loss_predicts_the_env_reward_at_unterminated_environment_steps_only():
    """The weights: K at k = 1 unless the step terminated, 0 inside the chain; the loss: the weighted mean of the
    squared errors averaged over the H + 1 outputs, computed here sample by sample. K = 1 gives the twin's."""
    from baselines import reppo

    terminations = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # [T = 2, N = 2]; env 1 terminates at t = 0
    weights = diffreppo.auxiliary_weights(terminations, torch.tensor([3, 2, 1]))
    expected = [0, 0, 3, 0, 0, 0, 0, 0, 3, 0, 0, 3]  # [T, N, K] order: only j = K - 1 (k = 1) of unterminated steps
    assert weights.tolist() == expected
    torch.testing.assert_close(diffreppo.auxiliary_weights(terminations, torch.tensor([1])), 1 - terminations.flatten())
    torch.manual_seed(4)
    prediction, next_embeddings, env_rewards = torch.randn(12, 5), torch.randn(12, 4), torch.randn(12)
    by_hand = 0.0
    for i, weight in enumerate(weights.tolist()):
        squared = sum((prediction[i, h] - next_embeddings[i, h]) ** 2 for h in range(4))
        by_hand += weight * (squared + (prediction[i, 4] - env_rewards[i]) ** 2) / 5 / 12
    loss = diffreppo.auxiliary_loss(prediction, next_embeddings, env_rewards, weights)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert reppo.auxiliary_loss(prediction, next_embeddings, env_rewards, weights).item() == pytest.approx(loss.item())


def test_wpo_actor_loss_backpropagates_through_one_diffusion_step_only():
    """DA-MDP: WPO's loss, like REPPO's, reaches only the sampled step's parameters and never the critic."""
    torch.manual_seed(5)
    K = 5
    agent = diffreppo.Agent(4, 2, [-1.0, -1.0], [1.0, 1.0], K, hidden_dim=32)
    critic = diffreppo.DistributionalCritic(4, 2, K, hidden_dim=32, num_bins=21)
    obs, x_k, k = torch.randn(64, 4), torch.randn(64, 2), torch.full((64,), 3)
    loss, _, kl = diffreppo.wpo_actor_losses(agent, agent.actor, critic, obs, x_k, k, alpha=0.1, beta=1.0, kl_bound=0.1)
    loss.backward()
    for row in range(K + 1):
        assert (agent.actor.time_embedding.weight.grad[row].abs().sum() > 0) == (row == 3), row
        if row >= 1:
            assert (agent.actor.log_std.grad[row - 1].abs().sum() > 0) == (row == 3), row
    assert all(p.grad is None for p in critic.parameters())
    assert kl.abs().max() < 1e-6


@pytest.mark.parametrize("k_value", [1, 2, 3])
def test_wpo_actor_loss_is_minus_the_kernel_score_against_the_velocity_of_q_minus_alpha_lt(k_value):
    """An independent computation: lt_k from torch.distributions (the kernel, the forward kernel, the prior at
    k = K, the tanh log-Jacobian at k = 1), v = d(Q~ - alpha lt_k)/dx by autograd, and the score d log q/dx with the
    parameters' graph; the loss and its parameter gradients match."""
    K, alpha = 3, 0.3
    torch.manual_seed(6)
    agent = diffreppo.Agent(4, 2, [-1.0, -2.0], [1.0, 2.0], K, hidden_dim=16)
    critic = diffreppo.DistributionalCritic(4, 2, K, hidden_dim=16, num_bins=21, v_min=-3.0, v_max=3.0)
    obs, x_k, k = torch.randn(32, 4), torch.randn(32, 2), torch.full((32,), k_value)
    torch.manual_seed(7)
    loss, _, _ = diffreppo.wpo_actor_losses(agent, agent.actor, critic, obs, x_k, k, alpha, beta=1.0, kl_bound=10.0)
    torch.manual_seed(7)
    mean, std = agent.actor.kernel(obs, x_k, k)
    x = (mean + std * torch.randn_like(mean)).detach().requires_grad_(True)
    half_width = agent.action_half_width
    step = agent.actor.betas[k_value - 1]
    lt = Normal(mean.detach(), std.detach()).log_prob(x).sum(-1)
    lt = lt - Normal((1 - step).sqrt() * x, step.sqrt()).log_prob(x_k).sum(-1)
    if k_value == K:
        lt = lt + Normal(0.0, 1.0).log_prob(x_k).sum(-1)
    if k_value == 1:
        lt = lt - (torch.log(half_width) + torch.log(1 - torch.tanh(x) ** 2)).sum(-1)
    (velocity,) = torch.autograd.grad((critic.value(critic(obs, x_k, k, x)[0]) - alpha * lt).sum(), x)
    x = x.detach().requires_grad_(True)
    (score,) = torch.autograd.grad(Normal(mean, std).log_prob(x).sum(), x, create_graph=True)
    expected = -(score * velocity).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    parameters = [p for p in agent.parameters() if p.requires_grad]
    for got, want in zip(
        torch.autograd.grad(loss, parameters, allow_unused=True), torch.autograd.grad(expected, parameters)
    ):
        torch.testing.assert_close(got if got is not None else torch.zeros_like(want), want, rtol=1e-4, atol=1e-6)


def test_wpo_actor_loss_at_k_1_and_alpha_0_is_gaussian_wpos_at_the_kernel():
    """At K = 1 and alpha = 0 the step's loss is baselines/wpo.py's (without its Fisher preconditioner) for the
    Gaussian N(mean, std^2) of the kernel at the given x_1 and the critic Q~(s, x_1, 1, .): the same velocity dQ/dx
    against the same score. (With alpha > 0 the DA-MDP's lt_1 adds the forward kernel's -log p(x_1|x_0).)"""
    from baselines import wpo

    torch.manual_seed(8)
    agent = diffreppo.Agent(3, 2, [-1.0, -1.0], [1.0, 1.0], 1, hidden_dim=16)
    critic = diffreppo.DistributionalCritic(3, 2, 1, hidden_dim=16, num_bins=21, v_min=-3.0, v_max=3.0)
    obs, x_1, k = torch.randn(16, 3), torch.randn(16, 2), torch.ones(16, dtype=torch.long)

    class KernelAsGaussian:  # the twin's interface, answered by the diffusion kernel at x_1
        def __call__(self, observations):
            return agent.actor.kernel(observations, x_1, k)

        def squash(self, x):
            return x

        def log_prob(self, x, mean, std):
            return Normal(mean, std).log_prob(x).sum(-1)

    def q_value(observations, x):
        return critic.value(critic(observations, x_1, k, x)[0])

    torch.manual_seed(9)
    loss, _, _ = diffreppo.wpo_actor_losses(agent, agent.actor, critic, obs, x_1, k, 0.0, beta=1.0, kl_bound=10.0)
    torch.manual_seed(9)
    gaussian, _ = wpo.wpo_actor_loss(KernelAsGaussian(), q_value, obs, alpha=0.0, fisher_preconditioner=False)
    torch.testing.assert_close(loss, gaussian)


def test_step_log_ratio_terms_add_up_to_the_path_log_ratio():
    """sum_k lt_k over a sampled chain equals L = log_prior + sum_k l_k - squash_log_det (method.md §2)."""
    torch.manual_seed(2)
    K = 4
    agent = diffreppo.Agent(3, 2, [-2.0, -1.0], [2.0, 3.0], K, hidden_dim=16)
    obs = torch.randn(10, 3)
    chain, step_log_q = agent.actor.sample_chain(obs)
    step_log_ratio, log_prior, squash = agent.actor.path_log_ratio_terms(chain, step_log_q, agent.action_half_width)
    total = torch.zeros(10)
    for j in range(K):
        k = torch.full((10,), K - j)
        total += diffreppo.step_log_ratio_term(
            agent.actor, chain[:, j], k, chain[:, j + 1], step_log_q[:, j], agent.action_half_width
        )
    torch.testing.assert_close(total, log_prior + step_log_ratio.sum(1) - squash)


@pytest.mark.parametrize(
    "env_id,num_diffusion_steps,flags",
    [("Hopper-v4", 8, ["--lambda-per-env-step"]), ("Pendulum-v1", 1, []), ("Pendulum-v1", 3, ["--actor-loss", "wpo"])],
)
def test_smoke_training_logs_every_tag(tmp_path, repo_root, env_id, num_diffusion_steps, flags):
    result = run_script(
        [
            os.path.join(repo_root, "diffreppo.py"),
            "--env-id",
            env_id,
            "--total-timesteps",
            "512",
            "--num-diffusion-steps",
            str(num_diffusion_steps),
            *SMALL,
            *flags,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step       512/512" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in TAGS:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0 and all(map(math.isfinite, values)), f"{tag} missing or not finite in {run_dir}"


def test_save_model_then_evaluate_checkpoint_then_resume(tmp_path, repo_root):
    script = os.path.join(repo_root, "diffreppo.py")
    common = [
        "--env-id",
        "Pendulum-v1",
        "--num-diffusion-steps",
        "3",
        *SMALL,
        "--save-model",
        "--eval-episodes",
        "2",
        "--checkpoint-frequency",
        "1",
    ]
    result = run_script([script, *common, "--total-timesteps", "256"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(2 deterministic episodes): mean return" in result.stdout
    run_dir = single_run_dir(tmp_path)
    checkpoint = os.path.join(run_dir, "diffreppo.cleanrl_model")
    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Pendulum-v1 (deterministic, 2 episodes): mean return" in evaluation.stdout
    resumed = run_script([script, *common, "--total-timesteps", "512", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 256" in resumed.stdout
    assert "step       384/512" in resumed.stdout and "step       128/" not in resumed.stdout
    other = run_script(
        [script, "--env-id", "Pendulum-v1", "--num-diffusion-steps", "2", *SMALL, "--resume", checkpoint], cwd=tmp_path
    )
    assert other.returncode == 2 and "--num-diffusion-steps 2 differs from the resumed run's 3" in other.stderr


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
        (["--num-diffusion-steps", "0"], "--num-diffusion-steps must be at least 1 (got 0)"),
        (["--minibatch-size", "100000"], "--minibatch-size 100000 exceeds the rollout's"),
        (["--v-min", "5", "--v-max", "5"], "--v-min 5.0 must be below --v-max 5.0"),
        (["--kl-bound", "nan"], "--kl-bound must be a finite number"),
        (["--alpha", "0"], "--alpha must be positive"),
        (["--augmented-gamma", "1.5"], "--augmented-gamma must be in (0, 1]"),
        (["--num-bins", "1"], "--num-bins must be at least 2"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, repo_root, flags, expected):
    result = run_script([os.path.join(repo_root, "diffreppo.py"), *flags], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffreppo.py: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_divergence_is_detected_and_reported(tmp_path, repo_root):
    result = run_script(
        [
            os.path.join(repo_root, "diffreppo.py"),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "512",
            "--learning-rate",
            "1e30",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"diffreppo.py: training diverged: (critic|actor) loss is (nan|inf)", result.stderr), result.stderr
    assert "Traceback" not in result.stderr
