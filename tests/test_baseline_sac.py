"""baselines/sac.py, the tanh-Gaussian counterpart of diffsac.py: log pi against torch.distributions,
the soft Bellman target, time limits, and the command line (smoke trainings and logging tags,
checkpoint -> common.evaluation -> resume, bad input, divergence)."""

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_script, single_run_dir
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from baselines import sac
from benchmarks.logs import read_scalars
from common.cli import run_cli
from common.envs import make_vector_env
from common.replay_buffer import ReplayBuffer, step_and_store

SCRIPT = "baselines/sac.py"
LOW, HIGH = [-1.0, -2.0, 0.0], [2.0, 0.0, 0.5]  # centres 0.5, -1, 0.25; half-widths 1.5, 1, 0.25
SMALL = ["--learning-starts", "256", "--batch-size", "64", "--hidden-dim", "64"]
TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/updates_per_second",
    "charts/entropy_estimate",
    "charts/alpha",
    "losses/qf1_values",
    "losses/qf2_values",
    "losses/qf1_loss",
    "losses/qf2_loss",
    "losses/qf_loss",
    "losses/actor_loss",
    "losses/alpha_loss",
]


def make_agent(obs_dim=4, mean_bias=None, seed=0):
    torch.manual_seed(seed)
    agent = sac.Agent(obs_dim, len(LOW), LOW, HIGH, hidden_dim=32).double()
    if mean_bias is not None:  # push the pre-tanh sample far into saturation
        with torch.no_grad():
            agent.actor.fc_mean.weight.zero_()
            agent.actor.fc_mean.bias.copy_(torch.tensor(mean_bias))
    return agent


def reference_log_prob(agent, obs, x):
    """log pi(a|s) by torch.distributions: Normal(mean, std) pushed through tanh, then a = c + h y.
    The transforms cache their last input, so log_prob(a) sees the exact x (no atanh of a saturated a)."""
    mean, log_std = agent.actor(obs)
    tanh, affine = (
        TanhTransform(cache_size=1),
        AffineTransform(agent.action_center, agent.action_half_width, cache_size=1),
    )
    policy = TransformedDistribution(Normal(mean, log_std.exp()), [tanh, affine], validate_args=False)
    action = affine(tanh(x))
    return action, policy.log_prob(action).sum(-1)


@pytest.mark.parametrize("mean_bias", [None, [25.0, -40.0, 30.0]])
def test_log_pi_equals_torch_distributions(mean_bias):
    """log pi(a|s) = log N(x; m, s) - sum_i [log h_i + log(1 - tanh(x_i)^2)] is the change of variables
    of a = c + h tanh(x), whose Jacobian is diag(h (1 - tanh(x)^2)). In float64 tanh(x) rounds to
    +-1 once |x| > ~19, so the naive log(1 - tanh(x)^2) is -inf (and CleanRL's log(h (1 - y^2) + 1e-6)
    is stuck near log(1e-6) = -13.8) while the stable form keeps log 4 - 2|x| + O(e^{-2|x|})."""
    agent = make_agent(mean_bias=mean_bias)
    obs = torch.randn(256, 4, dtype=torch.float64)
    action, log_pi, x = agent.sample(obs)
    expected_action, expected = reference_log_prob(agent, obs, x)
    torch.testing.assert_close(action, expected_action)
    torch.testing.assert_close(log_pi, expected, rtol=1e-10, atol=1e-9)
    assert torch.all(
        (action >= agent.action_center - agent.action_half_width)
        & (action <= agent.action_center + agent.action_half_width)
    )
    if mean_bias is not None:
        assert x.abs().min() > 20
        assert torch.isinf(torch.log(1 - torch.tanh(x) ** 2)).all()  # the naive formula fails here
        mean, log_std = agent.actor(obs)
        asymptotic = sac.gaussian_log_prob(x, mean, log_std.exp()) - (
            torch.log(agent.action_half_width) + math.log(4.0) - 2 * x.abs()
        ).sum(-1)
        torch.testing.assert_close(log_pi, asymptotic, rtol=1e-10, atol=1e-9)
        cleanrl = (
            torch.distributions.Normal(mean, log_std.exp()).log_prob(x)
            - torch.log(agent.action_half_width * (1 - torch.tanh(x) ** 2) + 1e-6)
        ).sum(-1)
        assert (log_pi - cleanrl).min() > 10  # the epsilon form understates log pi (overstates entropy) by far


def test_sample_is_reparameterised_and_deterministic_act_is_the_squashed_mean():
    """With alpha = 0 the actor loss is -min Q(s, a(x)), x = mean + std eps: both heads get a gradient
    (through x) while the critics' weights get none; act(deterministic=True) = c + h tanh(mean)."""
    agent = make_agent().float()
    qf1, qf2 = sac.SoftQNetwork(4, 3, 32), sac.SoftQNetwork(4, 3, 32)
    obs = torch.randn(64, 4)
    loss, entropy_estimate = sac.actor_loss_and_entropy(agent, qf1, qf2, obs, alpha=0.0)
    loss.backward()
    for name, parameter in agent.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None and p.requires_grad for p in list(qf1.parameters()) + list(qf2.parameters()))
    assert not entropy_estimate.requires_grad
    mean, log_std = agent.actor(obs)
    assert log_std.min() >= sac.LOG_STD_MIN and log_std.max() <= sac.LOG_STD_MAX
    torch.testing.assert_close(
        agent.act(obs, deterministic=True), agent.action_center + agent.action_half_width * torch.tanh(mean)
    )


def test_soft_bellman_target_hand_computed():
    """y = r + gamma (1 - terminated)(min Q' - alpha log pi'):
    r=1, gamma=0.9, min Q'=10, alpha=0.5, log pi'=-2: 1 + 0.9 (10 + 1) = 10.9, and 1 when terminated;
    r=-1, gamma=0.99, min Q'=4, alpha=0.2, log pi'=3: -1 + 0.99 (4 - 0.6) = 2.366."""
    target = sac.soft_bellman_target(
        torch.tensor([1.0, 1.0]),
        torch.tensor([0.0, 1.0]),
        torch.tensor([10.0, 10.0]),
        torch.tensor([-2.0, -2.0]),
        alpha=0.5,
        gamma=0.9,
    )
    torch.testing.assert_close(target, torch.tensor([10.9, 1.0]))
    target = sac.soft_bellman_target(
        torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([3.0]), alpha=0.2, gamma=0.99
    )
    torch.testing.assert_close(target, torch.tensor([2.366]))


def test_time_limit_stores_true_final_observation_and_bootstraps():
    """Time limit 3: the third transition is 2 -> 3 (not the reset 0) and is not a termination."""
    envs = make_vector_env("tests/CountingTruncated-v0", num_envs=1, seed=0)
    buffer = ReplayBuffer(100, 1, 1, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    for _ in range(5):
        obs, _ = step_and_store(envs, obs, np.zeros((1, 1), np.float32), buffer)
    np.testing.assert_array_equal(buffer.obs[:5, 0].numpy(), [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(buffer.next_obs[:5, 0].numpy(), [1, 2, 3, 1, 2])
    np.testing.assert_array_equal(buffer.terminations[:5].numpy(), [0, 0, 0, 0, 0])


def test_smoke_training_on_hopper_logs_every_tag(tmp_path, repo_root):
    result = run_script(
        [os.path.join(repo_root, SCRIPT), "--env-id", "Hopper-v4", "--total-timesteps", "700", *SMALL], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "step       700/700" in result.stdout and "updates/s" in result.stdout
    run_dir = single_run_dir(tmp_path)
    assert os.path.basename(run_dir).startswith("Hopper-v4__sac__1__")
    for tag in TAGS:
        assert len(read_scalars(run_dir, tag)[1]) > 0, f"{tag} missing from {run_dir}"


def test_pendulum_logs_every_tag_saves_evaluates_and_resumes(tmp_path, repo_root):
    """The Pendulum smoke run doubles as the checkpoint test: train 600 steps with --save-model, evaluate
    the checkpoint with common.evaluation from another folder (it imports baselines.sac), resume to 900
    (the replay buffer is refilled for --learning-starts 256 steps, then 44 updates)."""
    script = os.path.join(repo_root, SCRIPT)
    common = ["--env-id", "Pendulum-v1", *SMALL, "--save-model", "--eval-episodes", "2"]
    result = run_script([script, *common, "--total-timesteps", "600"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step       600/600" in result.stdout
    assert "(2 deterministic episodes): mean return" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in TAGS:
        assert len(read_scalars(run_dir, tag)[1]) > 0, f"{tag} missing from {run_dir}"
    checkpoint = os.path.join(run_dir, "sac.cleanrl_model")
    assert torch.load(checkpoint, weights_only=False)["script"] == "baselines.sac"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=elsewhere)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Pendulum-v1 (deterministic, 2 episodes): mean return" in evaluation.stdout

    resumed = run_script([script, *common, "--total-timesteps", "900", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 600" in resumed.stdout
    assert "step       900/900" in resumed.stdout and "updates/s 0.0" not in resumed.stdout
    assert single_run_dir(tmp_path) == run_dir  # the run folder is reused


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{SCRIPT}: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_input_from_the_command_line_gives_one_clear_line(tmp_path, repo_root):
    """Run as a plain file without PYTHONPATH (python baselines/sac.py): the script finds common/ itself."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, os.path.join(repo_root, SCRIPT), "--tau", "0"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "--tau must be in (0, 1]" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--env-id", "Pendulum-v9"], "--env-id 'Pendulum-v9' is not a registered gymnasium environment"),
        (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
        (["--batch-size", "512", "--buffer-size", "256"], "--batch-size 512 is larger than --buffer-size 256"),
        (["--learning-starts", "100", "--batch-size", "256"], "--learning-starts 100 is below --batch-size 256"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, capsys, flags, expected):
    """The same path as the command line (run_cli around main), in-process to save interpreter starts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [SCRIPT, *flags])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sac.main, "baselines/sac.py")
    assert exit_info.value.code == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "runs")  # rejected before any run folder is made


def test_divergence_is_detected_and_reported(tmp_path, repo_root):
    result = run_script(
        [
            os.path.join(repo_root, SCRIPT),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "400",
            "--q-lr",
            "1e30",
            "--policy-lr",
            "1e30",
            "--learning-starts",
            "64",
            "--batch-size",
            "64",
            "--hidden-dim",
            "64",
            "--save-model",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"{SCRIPT}: training diverged: (critic|actor) loss is (nan|inf) at step \d+", result.stderr), (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    # diverged before the first save: no checkpoint is named, because none exists
    assert "No checkpoint was written." in result.stderr and "Last checkpoint" not in result.stderr
