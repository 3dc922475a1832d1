"""baselines/ppo.py, the tanh-Gaussian counterpart of diffppo.py: policy maths, time-limit bootstrap,
GAE, smoke trainings with every logging tag, checkpoints, evaluation, resume, bad input, divergence."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_script, single_run_dir
from torch import distributions

from baselines.ppo import Agent, cli, gae, step_with_bootstrap
from benchmarks.logs import read_scalars

SCRIPT = os.path.join(REPO_ROOT, "baselines", "ppo.py")
TINY = ["--num-steps", "64", "--num-minibatches", "4", "--update-epochs", "2"]
TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/learning_rate",
    "charts/entropy_estimate",
    "charts/alpha",
    "losses/value_loss",
    "losses/policy_loss",
    "losses/old_approx_kl",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
]
PROGRESS = re.compile(
    r"step +(\d+)/(\d+) \| return \(last \d+ episodes\) +(n/a|-?[\d.]+) \| "
    r"entropy estimate +-?[\d.]+ \| alpha [\d.]+e[-+]\d+ \| SPS \d+ \| (\d+:\d\d:\d\d|\?) left"
)


def test_log_pi_matches_torch_distributions():
    """a = c + h tanh(x) with x ~ N(mu, sigma) has, by the change of variables,
    log pi(a) = log N(x; mu, sigma) - sum_i log |da_i/dx_i|
              = log N(x; mu, sigma) - sum_i [log h_i + log(1 - tanh(x_i)^2)];
    torch.distributions builds the same density from Normal, TanhTransform and AffineTransform (float64)."""
    torch.manual_seed(0)
    agent = Agent(4, 3, [-2.0, 0.0, -0.5], [2.0, 1.0, 3.0]).double()
    with torch.no_grad():
        agent.actor.mean_net[-1].weight.normal_(0, 1.0)  # a mean that depends on the state
        agent.actor.log_std.copy_(torch.tensor([-1.0, -0.3, 0.0]))
    obs = torch.randn(256, 4, dtype=torch.float64)
    x = 2.5 * torch.randn(256, 3, dtype=torch.float64)
    log_pi = agent.actor.log_prob(obs, x) - agent.squash_log_det(x)  # the expression of the rollout
    mean, std = agent.actor.mean_net(obs), agent.actor.std()
    reference = distributions.TransformedDistribution(
        distributions.Normal(mean, std.expand_as(mean)),
        [distributions.TanhTransform(), distributions.AffineTransform(agent.action_center, agent.action_half_width)],
    )
    torch.testing.assert_close(log_pi, reference.log_prob(agent.squash(x)).sum(-1), rtol=1e-9, atol=1e-7)
    # The stable log(1 - tanh^2) keeps log pi finite where tanh(x) rounds to +-1.
    far = torch.tensor([[40.0, -40.0, 25.0]], dtype=torch.float64)
    assert torch.isfinite(agent.actor.log_prob(obs[:1], far) - agent.squash_log_det(far)).all()


def test_initial_pre_tanh_policy_is_standard_normal():
    """mu's last layer is orthogonal with gain 0.01 and zero bias, so |mu(s)| <= 0.01 * ||hidden|| <= 0.01 * 8;
    log sigma starts at 0: the pre-tanh policy is N(0, I), the diffusion policy's initial chain."""
    torch.manual_seed(0)
    agent = Agent(11, 3, [-1.0] * 3, [1.0] * 3)
    obs = torch.randn(20000, 11)
    with torch.no_grad():
        assert agent.actor.mean_net(obs).abs().max() < 0.08
        torch.testing.assert_close(agent.actor.std(), torch.ones(3))
        x, _ = agent.actor.sample(obs)
    torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(3), atol=0.03, rtol=0)


def test_gae_is_diffppos_augmented_gae_with_one_diffusion_step():
    from diffppo import augmented_gae

    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(9, 2)), rng.normal(size=(9, 2))
    dones, next_value = (rng.random((9, 2)) < 0.3).astype(float), rng.normal(size=2)
    advantages, returns = gae(rewards, values, dones, next_value, 0.9, 0.8)
    expected, expected_returns = augmented_gae(rewards[..., None], values[..., None], dones, next_value, 0.9, 0.8, 0.5)
    np.testing.assert_allclose(advantages, expected[..., 0])
    np.testing.assert_allclose(returns, expected_returns[..., 0])


class ValueOfObservation(torch.nn.Module):
    """A stand-in critic: V(s) = 10 * s."""

    def forward(self, obs):
        return 10.0 * obs


class UnitRewards:
    """A stand-in reward normaliser that leaves rewards as they are."""

    def __call__(self, reward, done):
        return reward.astype(np.float32)


def rewards_over_episode(env_id, steps, gamma=0.9, soft_reward=0.25):
    from common.envs import make_vector_env
    from common.normalization import ObservationNormalizer

    agent = Agent(1, 1, [-1.0], [1.0])
    agent.critic = ValueOfObservation()
    envs = make_vector_env(env_id, num_envs=1, seed=0)
    envs.reset(seed=0)
    rewards, dones = [], []
    for _ in range(steps):
        _, reward, done, _ = step_with_bootstrap(
            envs,
            agent,
            torch.zeros(1, 1),
            np.full(1, soft_reward, np.float32),
            ObservationNormalizer.identity((1,)),
            UnitRewards(),
            gamma,
        )
        rewards.append(reward[0])
        dones.append(bool(done[0]))
    return rewards, dones


def test_time_limit_is_bootstrapped_from_the_final_observation():
    """Time limit 3: the third reward is soft 0.25 + 1 + gamma * V(final obs 3) = 1.25 + 0.9 * 30, not V of the
    reset observation (0); the episode still counts as done for GAE. A termination is not bootstrapped."""
    rewards, dones = rewards_over_episode("tests/CountingTruncated-v0", 4)
    np.testing.assert_allclose(rewards, [1.25, 1.25, 1.25 + 0.9 * 30.0, 1.25])
    assert dones == [False, False, True, False]
    rewards, dones = rewards_over_episode("tests/CountingTerminated-v0", 3)
    np.testing.assert_allclose(rewards, [1.25, 1.25, 1.25])
    assert dones == [False, True, False]


def assert_every_tag_logged(run_dir, autotune):
    for tag in TAGS + (["losses/alpha_loss"] if autotune else []):
        assert len(read_scalars(run_dir, tag)[1]) > 0, f"{tag} missing from {run_dir}"
    alphas = read_scalars(run_dir, "charts/alpha")[1]
    assert (alphas[-1] != alphas[0]) == autotune  # alpha moves only when auto-tuned


def assert_progress_lines(stdout, steps, total):
    progress = [PROGRESS.fullmatch(line) for line in stdout.splitlines() if line.startswith("step ")]
    assert all(progress) and [m.group(1, 2) for m in progress] == [(str(s), str(total)) for s in steps], stdout


def test_smoke_training_without_pythonpath(tmp_path):
    """256 steps in 4 rollouts, run as `python baselines/ppo.py` from another folder and without PYTHONPATH:
    the script puts the repository root on the path itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run(
        [sys.executable, SCRIPT, "--env-id", "InvertedPendulum-v4", "--total-timesteps", "256", *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_progress_lines(result.stdout, [64, 128, 192, 256], 256)
    run_dir = single_run_dir(tmp_path)
    assert os.path.basename(run_dir).startswith("InvertedPendulum-v4__ppo__1__")
    assert_every_tag_logged(run_dir, autotune=False)


def test_hopper_save_model_then_evaluate_checkpoint_then_resume(tmp_path):
    """Hopper with --autotune: every tag (losses/alpha_loss too), the checkpoint evaluated by common.evaluation
    (which imports baselines.ppo by the checkpoint's "script"), then resumed in the same run folder."""
    common = [
        "--env-id",
        "Hopper-v4",
        *TINY,
        "--autotune",
        "--save-model",
        "--eval-episodes",
        "2",
        "--checkpoint-frequency",
        "1",
    ]
    result = run_script([SCRIPT, *common, "--total-timesteps", "128"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_progress_lines(result.stdout, [64, 128], 128)
    assert "(2 deterministic episodes): mean return" in result.stdout
    run_dir = single_run_dir(tmp_path)
    checkpoint = os.path.join(run_dir, "ppo.cleanrl_model")
    assert torch.load(checkpoint, weights_only=False)["script"] == "baselines.ppo"

    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Hopper-v4 (deterministic, 2 episodes): mean return" in evaluation.stdout

    resumed = run_script([SCRIPT, *common, "--total-timesteps", "256", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 128" in resumed.stdout
    assert_progress_lines(resumed.stdout, [192, 256], 256)
    assert single_run_dir(tmp_path) == run_dir  # logging continues in the same run folder
    assert list(read_scalars(run_dir, "charts/SPS")[0]) == [64, 128, 192, 256]
    assert_every_tag_logged(run_dir, autotune=True)


@pytest.mark.parametrize(
    "flags,expected",
    [
        (
            ["--env-id", "Hoper-v4"],
            "--env-id 'Hoper-v4' is not a registered gymnasium environment. Did you mean: Hopper-v4",
        ),
        (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
        (
            ["--num-steps", "10", "--num-minibatches", "4"],
            "--num-minibatches 4 does not divide the batch --num-envs * --num-steps = 10; allowed: a divisor of 10.",
        ),
        (["--alpha", "-1"], "--alpha must be >= 0 (got -1.0)"),
        (["--min-std", "1"], "--min-std must be below 1"),
        (["--resume", "no/such/file"], "--resume 'no/such/file': no such checkpoint file"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, capsys, flags, expected):
    """In-process through the script's own entry point (cli, which `python baselines/ppo.py` runs, as the
    subprocess tests above check), to keep the test fast: exit code 2 and one line naming the flag."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli(flags)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("baselines/ppo.py: error:")]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not os.path.exists(tmp_path / "runs")


def test_divergence_is_detected_and_reported(tmp_path, monkeypatch, capsys):
    """An absurd learning rate blows the networks up; training stops with a clear message, exit 1."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli(["--env-id", "Pendulum-v1", "--total-timesteps", "128", "--learning-rate", "1e30", "--no-anneal-lr", *TINY])
    assert exit_info.value.code == 1
    assert re.search(r"baselines/ppo.py: training diverged: loss is (nan|inf) at step \d+", capsys.readouterr().err)
