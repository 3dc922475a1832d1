"""baselines/reppo.py, DiffREPPO's tanh-Gaussian twin: its log-density, trust region and lambda-returns
against independent computations, and the script from the command line."""

import math
import os

import numpy as np
import pytest
import torch
from conftest import run_script, single_run_dir
from test_diffreppo import lambda_returns_forward_view

from baselines import reppo
from benchmarks.logs import read_scalars

SMALL = ["--num-envs", "2", "--num-steps", "64", "--minibatch-size", "64", "--update-epochs", "2", "--hidden-dim", "64"]


def test_log_pi_is_the_gaussian_density_minus_the_tanh_jacobian():
    torch.manual_seed(0)
    agent = reppo.Agent(3, 2, [-2.0, -1.0], [2.0, 3.0], hidden_dim=16).double()
    obs = torch.randn(200, 3, dtype=torch.float64)
    torch.manual_seed(1)
    x, log_pi, mean, std = agent.one_step(obs)
    base = torch.distributions.Independent(torch.distributions.Normal(mean, std), 1).log_prob(x)
    jacobian = torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1)
    torch.testing.assert_close(log_pi, base - jacobian)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_wpo_actor_loss_is_gaussian_wpos_on_this_pipeline(alpha):
    """--actor-loss wpo equals baselines/wpo.py's WPO loss (no Fisher preconditioner) for the same policy, critic and
    noise, with log pi from torch.distributions; parameter gradients too. Its gradient never reaches the critic."""
    from baselines import wpo

    torch.manual_seed(2)
    agent = reppo.Agent(3, 2, [-2.0, -1.0], [2.0, 3.0], hidden_dim=16)
    critic = reppo.DistributionalCritic(3, 2, hidden_dim=16, num_bins=21, v_min=-3.0, v_max=3.0)
    obs = torch.randn(24, 3)

    class GaussianPolicy:  # baselines/wpo.py's interface over this agent, in the pre-tanh space
        def __call__(self, observations):
            return agent.actor(observations)

        def squash(self, x):
            return x

        def log_prob(self, x, mean, std):
            jacobian = torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2)).sum(-1)
            return torch.distributions.Normal(mean, std).log_prob(x).sum(-1) - jacobian

    def q_value(observations, x):
        return critic.value(critic(observations, x)[0])

    torch.manual_seed(3)
    loss, _, kl = reppo.wpo_actor_losses(agent, agent.actor, critic, obs, alpha, beta=1.0, kl_bound=0.1)
    torch.manual_seed(3)
    expected, _ = wpo.wpo_actor_loss(GaussianPolicy(), q_value, obs, alpha, fisher_preconditioner=False)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(
        torch.autograd.grad(loss, list(agent.parameters()), retain_graph=True),
        torch.autograd.grad(expected, list(agent.parameters())),
    ):
        torch.testing.assert_close(got, want)
    loss.backward()
    assert all(p.grad is None for p in critic.parameters()) and kl.abs().max() < 1e-6


def test_wpo_actor_loss_trains_from_the_command_line(tmp_path, repo_root):
    script = os.path.join(repo_root, "baselines", "reppo.py")
    flags = ["--env-id", "Pendulum-v1", *SMALL, "--total-timesteps", "256", "--actor-loss", "wpo"]
    result = run_script([script, *flags], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for tag in ("losses/actor_loss", "losses/kl", "charts/beta"):
        _, values = read_scalars(single_run_dir(tmp_path), tag)
        assert len(values) > 0 and all(map(math.isfinite, values)), tag


def test_closed_form_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean_old, mean_new = torch.randn(40, 2, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    std_old, std_new = torch.rand(40, 2, dtype=torch.float64) + 0.1, torch.rand(40, 2, dtype=torch.float64) + 0.1
    old = torch.distributions.Independent(torch.distributions.Normal(mean_old, std_old), 1)
    new = torch.distributions.Independent(torch.distributions.Normal(mean_new, std_new), 1)
    torch.testing.assert_close(
        reppo.gaussian_kl(mean_old, std_old, mean_new, std_new), torch.distributions.kl_divergence(old, new)
    )


def test_lambda_returns_match_the_forward_view_with_a_truncation_and_a_termination():
    rng = np.random.default_rng(3)
    T, N = 5, 2
    rewards, next_values = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    terminations, truncations = np.zeros((T, N)), np.zeros((T, N))
    truncations[1, 0], terminations[3, 1] = 1.0, 1.0
    returns = reppo.lambda_returns(
        *(torch.tensor(a) for a in (rewards, next_values, terminations, truncations)), gamma=0.9, gae_lambda=0.6
    )
    expected = lambda_returns_forward_view(
        rewards[..., None], next_values[..., None], terminations, truncations, 0.9, 0.6
    )
    np.testing.assert_allclose(returns.numpy(), expected[..., 0], atol=1e-12)


def test_actor_loss_leaves_the_critic_alone_and_clips_by_kl():
    torch.manual_seed(2)
    agent = reppo.Agent(3, 1, [-1.0], [1.0], hidden_dim=16)
    critic = reppo.DistributionalCritic(3, 1, hidden_dim=16, num_bins=11)
    obs = torch.randn(32, 3)
    loss, _, kl = reppo.actor_losses(agent, agent.actor, critic, obs, alpha=0.1, beta=2.0, kl_bound=0.1)
    loss.backward()
    assert kl.abs().max() < 1e-6 and all(p.grad is None for p in critic.parameters())
    assert all(p.grad is not None for p in agent.actor.parameters())
    far = reppo.GaussianActor(3, 1, 16)
    far.load_state_dict(agent.actor.state_dict())
    with torch.no_grad():
        far.fc_mean.bias.fill_(5.0)
    loss, _, kl = reppo.actor_losses(agent, far, critic, obs, alpha=0.1, beta=2.0, kl_bound=0.1)
    assert (kl > 0.1).all() and loss.item() == pytest.approx(2.0 * kl.mean().item(), rel=1e-6)


def test_smoke_training_checkpoint_evaluation_and_resume(tmp_path, repo_root):
    script = os.path.join(repo_root, "baselines", "reppo.py")
    common = ["--env-id", "Pendulum-v1", *SMALL, "--save-model", "--eval-episodes", "2", "--checkpoint-frequency", "1"]
    result = run_script([script, *common, "--total-timesteps", "512"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = single_run_dir(tmp_path)
    for tag in [
        "charts/episodic_return",
        "charts/SPS",
        "charts/entropy_estimate",
        "charts/alpha",
        "charts/beta",
        "losses/critic_cross_entropy",
        "losses/aux_loss",
        "losses/actor_loss",
        "losses/kl",
        "losses/clipped_target_fraction",
    ]:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0 and all(map(math.isfinite, values)), tag
    checkpoint = os.path.join(run_dir, "reppo.cleanrl_model")
    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0 and "mean return" in evaluation.stdout, evaluation.stderr
    resumed = run_script([script, *common, "--total-timesteps", "768", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0 and "at step 512" in resumed.stdout, resumed.stderr
    as_module = run_script(
        ["-m", "baselines.reppo", "--env-id", "Pendulum-v1", *SMALL, "--total-timesteps", "128"], cwd=tmp_path
    )
    assert as_module.returncode == 0, as_module.stderr


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
        (["--minibatch-size", "100000"], "--minibatch-size 100000 exceeds the rollout's"),
        (["--v-min", "1", "--v-max", "0"], "--v-min 1.0 must be below --v-max 0.0"),
        (["--num-diffusion-steps", "4"], "Unrecognized"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, repo_root, flags, expected):
    result = run_script([os.path.join(repo_root, "baselines", "reppo.py"), *flags], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr


def test_twin_hl_gauss_histogram_and_critic_value_match_diffreppos_tested_ones():
    """The twin carries its own copy of the HL-Gauss target (scripts are self-contained); it must equal
    diffreppo.py's, which tests/test_diffreppo.py checks against bin-by-bin integrals, also outside the support."""
    import diffreppo

    values = torch.linspace(-14.0, 14.0, 57, dtype=torch.float64)
    torch.testing.assert_close(
        reppo.hl_gauss_histogram(values, -10.0, 10.0, 41), diffreppo.hl_gauss_histogram(values, -10.0, 10.0, 41)
    )
    critic = reppo.DistributionalCritic(3, 1, hidden_dim=8, num_bins=11, v_min=-2.0, v_max=3.0)
    logits = torch.randn(4, 11)
    centres = torch.linspace(-2.0, 3.0, 12)[:-1] + 5.0 / 22
    torch.testing.assert_close(critic.value(logits), (torch.softmax(logits, -1) * centres).sum(-1))
