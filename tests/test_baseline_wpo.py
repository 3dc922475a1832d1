"""baselines/wpo.py (Gaussian WPO): the closed-form score, log pi against torch.distributions, the WPO
step on a hand-solvable critic, time limits, and the command line (smoke trainings, logging tags,
checkpoint, evaluation, resume, bad input, divergence)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_script, single_run_dir

from baselines import wpo
from benchmarks.logs import read_scalars
from common.envs import make_vector_env
from common.replay_buffer import ReplayBuffer, step_and_store

SCRIPT = os.path.join("baselines", "wpo.py")
SMALL = ["--learning-starts", "256", "--batch-size", "64", "--hidden-dim", "64"]
TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/updates_per_second",
    "charts/entropy_estimate",
    "charts/alpha",
    "losses/qf1_values",
    "losses/qf1_loss",
    "losses/qf2_loss",
    "losses/qf_loss",
    "losses/actor_loss",
    "losses/alpha_loss",
]


def make_agent(obs_dim=3, low=(-1.0, -2.0), high=(1.0, 4.0), seed=0):
    torch.manual_seed(seed)
    agent = wpo.Agent(obs_dim, len(low), list(low), list(high), hidden_dim=32).double()
    with torch.no_grad():  # away from the initialisation: means and stds that differ per state
        agent.fc_mean.weight.normal_(0, 0.3)
        agent.fc_logstd.weight.normal_(0, 0.05)
    return agent


def test_closed_form_score_equals_autograd_gradient_of_log_prob():
    agent = make_agent()
    with torch.no_grad():
        mean, std = agent(torch.randn(64, 3, dtype=torch.float64))
    x = torch.randn(64, 2, dtype=torch.float64, requires_grad=True)
    (autograd_score,) = torch.autograd.grad(wpo.gaussian_log_prob(x, mean, std).sum(), x)
    torch.testing.assert_close(wpo.gaussian_score(x, mean, std), autograd_score)


def test_log_prob_equals_torch_distributions_tanh_affine_transform():
    """log pi(a|s) = log N(x; mean, std) - sum_i [log h_i + log(1 - tanh(x_i)^2)] for a = c + h tanh(x),
    recomputed as the density of TransformedDistribution(Normal, [Tanh, Affine(c, h)]) at a (float64)."""
    agent = make_agent()
    obs = torch.randn(256, 3, dtype=torch.float64)
    with torch.no_grad():
        x, mean, std, log_prob = agent.sample(obs)
        action = agent.squash(x)
    assert x.abs().max() < 8  # the distribution inverts a through atanh: stay where float64 is exact
    c, h = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)
    policy = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, std),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(c, h)],
    )
    torch.testing.assert_close(log_prob, policy.log_prob(action).sum(-1), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(agent.log_prob(x, mean, std), log_prob)


def one_state_agent(mean, std):
    """An agent whose Gaussian is N(mean, diag(std^2)) at obs = 0: the trunk biases are 0, so the hidden
    layer is 0 there and the mean is fc_mean.bias (its bias gradient is the gradient w.r.t. the mean)."""
    agent = make_agent(obs_dim=1)
    raw = torch.atanh(
        (torch.log(torch.tensor(std, dtype=torch.float64)) - wpo.LOG_STD_MIN) / (wpo.LOG_STD_MAX - wpo.LOG_STD_MIN) * 2
        - 1
    )
    with torch.no_grad():
        agent.fc_mean.bias.copy_(torch.tensor(mean, dtype=torch.float64))
        agent.fc_logstd.bias.copy_(raw)
    return agent


def pre_tanh_quadratic_critic(agent, optimum):
    """Q(s, a) = -|atanh((a - c)/h) - x*|^2 = -|x - x*|^2: quadratic in the pre-tanh action, dQ/dx = -2 (x - x*)."""
    return lambda obs, a: -((torch.atanh((a - agent.action_center) / agent.action_half_width) - optimum) ** 2).sum(-1)


@pytest.mark.parametrize("fisher_preconditioner", [True, False])
def test_wpo_gradient_equals_minus_mean_velocity_and_moves_the_mean_up_q(fisher_preconditioner):
    """loss = -(1/B) sum_b sum_i score_i(x_b) v_i(x_b), score_i = -(x_i - m_i)/s_i^2, with x_b and v_b held
    fixed; so d loss / d m_i = -(1/B) sum_b v_bi / s_i^2. With the Fisher preconditioner v <- s^2 v
    (detached) this is exactly -(1/B) sum_b v_bi: minus the batch mean of the velocity, whatever s is.
    Here Q = -|x - x*|^2 in pre-tanh space and alpha = 0.5, so (recomputed from the same noise)
        v = -2 (x - x*) - alpha d/dx log pi(x) = -2 (x - x*) + alpha [(x - m)/s^2 - 2 tanh(x)],
    whose expectation is -2 (m - x*) - 2 alpha E[tanh x]. One SGD step on the mean's bias moves the
    mean by lr * mean(v) (by lr * mean(v)/s^2 without the preconditioner): along dQ/dx at the mean,
    i.e. towards x*. s = (0.5, 0.3) != 1, so a missing s^2, or a wrong sign, fails the test."""
    mean, std, optimum, alpha = [0.2, -0.4], [0.5, 0.3], torch.tensor([1.0, 0.5], dtype=torch.float64), 0.5
    agent = one_state_agent(mean, std)
    obs = torch.zeros(20000, 1, dtype=torch.float64)
    torch.manual_seed(3)
    loss, entropy_estimate = wpo.wpo_actor_loss(
        agent, pre_tanh_quadratic_critic(agent, optimum), obs, alpha, fisher_preconditioner
    )
    loss.backward()
    torch.manual_seed(3)  # the loss draws one randn_like(mean): the same noise gives the same x
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    x = m + s * torch.randn(20000, 2, dtype=torch.float64)
    velocity = -2 * (x - optimum) + alpha * ((x - m) / s**2 - 2 * torch.tanh(x))
    expected = -velocity.mean(0) / (1.0 if fisher_preconditioner else s**2)
    gradient = agent.fc_mean.bias.grad
    torch.testing.assert_close(gradient, expected, rtol=1e-9, atol=1e-9)
    # The analytic expectation, and the entropy estimate -E[log pi] from the same samples.
    analytic = -2 * (m - optimum) - 2 * alpha * torch.tanh(x).mean(0)
    torch.testing.assert_close(-gradient * (1.0 if fisher_preconditioner else s**2), analytic, rtol=0, atol=0.03)
    torch.testing.assert_close(entropy_estimate, -agent.log_prob(x, m.expand_as(x), s.expand_as(x)).mean())

    with torch.no_grad():
        agent.fc_mean.bias -= 0.05 * gradient
        new_mean, _ = agent(obs[:1])
    step = new_mean[0] - m
    assert torch.all(torch.sign(step) == torch.sign(optimum - m))  # towards the maximiser of Q
    if fisher_preconditioner:  # the step follows the mean velocity itself
        assert torch.nn.functional.cosine_similarity(step, analytic, dim=0) > 0.999


def test_entropy_term_of_the_velocity_widens_a_narrow_policy():
    """With Q = 0 the velocity is -alpha d/dx log pi: the flow of entropy ascent. For a narrow tanh-Gaussian
    (s = 0.3 around 0) d loss / d s = -(2 alpha / s^3)(1 - 2 E[(x - m) tanh x]) < 0, so a descent step
    raises std (and the sign of alpha in the velocity is checked)."""
    agent = one_state_agent([0.0, 0.0], [0.3, 0.3])

    def zero_critic(obs, a):
        return torch.zeros(len(obs), dtype=obs.dtype)

    loss, _ = wpo.wpo_actor_loss(agent, zero_critic, torch.zeros(4096, 1, dtype=torch.float64), 0.5, True)
    loss.backward()
    assert torch.all(agent.fc_logstd.bias.grad < 0)
    assert torch.all(agent.fc_mean.bias.grad.abs() < 0.15)  # no drift of the mean (symmetric case)


def test_time_limit_bootstraps_from_true_final_observation_and_termination_does_not():
    for env_id, steps, obs, next_obs, terminations in (
        ("tests/CountingTruncated-v0", 5, [0, 1, 2, 0, 1], [1, 2, 3, 1, 2], [0, 0, 0, 0, 0]),
        ("tests/CountingTerminated-v0", 4, [0, 1, 0, 1], [1, 2, 1, 2], [0, 1, 0, 1]),
    ):
        envs = make_vector_env(env_id, num_envs=1, seed=0)
        buffer = ReplayBuffer(100, 1, 1, torch.device("cpu"))
        observation, _ = envs.reset(seed=0)
        for _ in range(steps):
            observation, _ = step_and_store(envs, observation, np.zeros((1, 1), np.float32), buffer)
        np.testing.assert_array_equal(buffer.obs[:steps, 0].numpy(), obs)
        np.testing.assert_array_equal(buffer.next_obs[:steps, 0].numpy(), next_obs)
        np.testing.assert_array_equal(buffer.terminations[:steps].numpy(), terminations)
    target = wpo.soft_bellman_target(
        torch.tensor([1.0, 1.0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([10.0, 10.0]),
        torch.tensor([-2.0, -2.0]),
        alpha=0.5,
        gamma=0.9,
    )
    torch.testing.assert_close(target, torch.tensor([10.9, 1.0]))  # 1 + 0.9 (10 + 0.5 * 2), and 1 if terminated


def test_untrained_actor_samples_unit_gaussian_pre_tanh_actions():
    """The warm-up policy: at initialisation std = 1 exactly at the bias, mean ~ 0 (as diffwpo.py's chain)."""
    torch.manual_seed(0)
    agent = wpo.Agent(3, 2, [-1.0, -1.0], [1.0, 1.0])
    mean, std = agent(torch.randn(512, 3))
    assert mean.abs().max() < 0.1 and (std - 1).abs().max() < 0.1


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v4"])
def test_smoke_training_logs_every_tag(tmp_path, repo_root, env_id):
    result = run_script(
        [os.path.join(repo_root, SCRIPT), "--env-id", env_id, "--total-timesteps", "1200", *SMALL], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "step      1200/1200" in result.stdout and "updates/s" in result.stdout
    run_dir = single_run_dir(tmp_path)
    assert os.path.basename(run_dir).startswith(f"{env_id}__wpo__1__")
    for tag in TAGS:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0, f"{tag} missing from {run_dir}"


def test_save_model_then_evaluate_checkpoint_then_resume(tmp_path, repo_root):
    script = os.path.join(repo_root, SCRIPT)
    common = ["--env-id", "Pendulum-v1", *SMALL, "--save-model", "--eval-episodes", "2"]
    result = run_script([script, *common, "--total-timesteps", "400"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(2 deterministic episodes): mean return" in result.stdout
    checkpoint = os.path.join(single_run_dir(tmp_path), "wpo.cleanrl_model")
    assert torch.load(checkpoint, weights_only=False)["script"] == "baselines.wpo"
    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Pendulum-v1 (deterministic, 2 episodes): mean return" in evaluation.stdout

    resumed = run_script([script, *common, "--total-timesteps", "800", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 400" in resumed.stdout
    assert "step       800/800" in resumed.stdout


BAD_INPUT = [
    (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
    (["--env-id", "Pendulum-v9"], "--env-id 'Pendulum-v9' is not a registered gymnasium environment"),
    (["--batch-size", "512", "--buffer-size", "256"], "--batch-size 512 is larger than --buffer-size 256"),
    (["--tau", "0"], "--tau must be in (0, 1]"),
]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("baselines/wpo.py: error:")]


@pytest.mark.parametrize("flags,expected", BAD_INPUT)
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, capsys, flags, expected):
    """The command line's own path (tyro, validate_args, make_vector_env, run_cli), in-process to stay fast."""
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the repository
    monkeypatch.setattr(sys, "argv", ["baselines/wpo.py", *flags])
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # keep this process's setting
    with pytest.raises(SystemExit) as exit_info:
        wpo.run_cli(wpo.main, "baselines/wpo.py")
    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and expected in lines[0], lines


def test_bad_input_from_the_command_line_without_pythonpath(tmp_path, repo_root):
    """Run as a user would, from another folder and without PYTHONPATH: the script finds common/ itself."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, os.path.join(repo_root, SCRIPT), *BAD_INPUT[-1][0]],
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and BAD_INPUT[-1][1] in lines[0], result.stderr


def test_divergence_is_detected_and_reported(tmp_path, repo_root):
    """Absurd learning rates blow the critics up; training stops with a clear message, exit 1."""
    result = run_script(
        [
            os.path.join(repo_root, SCRIPT),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "1000",
            "--q-lr",
            "1e30",
            "--policy-lr",
            "1e30",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(
        r"baselines/wpo\.py: training diverged: (critic|actor) loss is (nan|inf) at step \d+", result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr
