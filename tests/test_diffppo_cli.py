"""diffppo.py from the command line: smoke trainings, logging tags, checkpoints, resume, bad input."""

import os
import re

import pytest
from conftest import run_script, single_run_dir

from benchmarks.logs import read_scalars

SMALL = ["--num-steps", "256", "--num-minibatches", "8", "--update-epochs", "2"]
TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/entropy_estimate",
    "charts/alpha",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/approx_kl",
    "losses/clipfrac",
]


@pytest.mark.parametrize("env_id,num_diffusion_steps", [("Hopper-v4", 8), ("Pendulum-v1", 4)])
def test_smoke_training_logs_every_tag(tmp_path, repo_root, env_id, num_diffusion_steps):
    result = run_script(
        [
            os.path.join(repo_root, "diffppo.py"),
            "--env-id",
            env_id,
            "--total-timesteps",
            "2048",
            "--num-diffusion-steps",
            str(num_diffusion_steps),
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step      2048/2048" in result.stdout and "SPS" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in TAGS:
        steps, values = read_scalars(run_dir, tag)
        assert len(values) > 0, f"{tag} missing from {run_dir}"


def test_save_model_then_evaluate_checkpoint_then_resume(tmp_path, repo_root):
    script = os.path.join(repo_root, "diffppo.py")
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
    result = run_script([script, *common, "--total-timesteps", "512"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(2 deterministic episodes): mean return" in result.stdout
    run_dir = single_run_dir(tmp_path)
    checkpoint = os.path.join(run_dir, "diffppo.cleanrl_model")
    assert os.path.isfile(checkpoint)

    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Pendulum-v1 (deterministic, 2 episodes): mean return" in evaluation.stdout
    stochastic = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "1", "--stochastic"], cwd=tmp_path)
    assert stochastic.returncode == 0 and "stochastic" in stochastic.stdout

    resumed = run_script([script, *common, "--total-timesteps", "1024", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 512" in resumed.stdout
    assert "step       768/1024" in resumed.stdout and "step       256/" not in resumed.stdout
    assert single_run_dir(tmp_path) == run_dir  # logging continues in the same run folder
    steps, _ = read_scalars(run_dir, "charts/SPS")
    assert list(steps) == [256, 512, 768, 1024]


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--env-id", "CartPole-v1"], "--env-id CartPole-v1 has a Discrete action space"),
        (
            ["--env-id", "Hoper-v4"],
            "--env-id 'Hoper-v4' is not a registered gymnasium environment. Did you mean: Hopper-v4",
        ),
        (["--num-diffusion-steps", "0"], "--num-diffusion-steps must be at least 1 (got 0)"),
        (
            ["--num-steps", "10", "--num-diffusion-steps", "1", "--num-minibatches", "7"],
            "--num-minibatches 7 does not divide the augmented batch",
        ),
        (["--alpha", "-1"], "--alpha must be >= 0"),
        (["--minibatch-size", "0"], "--minibatch-size must be at least 1 (got 0)"),
        (["--num-steps", "10", "--minibatch-size", "7"], "--minibatch-size 7 does not divide the augmented batch 80"),
        (
            ["--num-steps", "10", "--minibatch-size", "20", "--whole-chain-minibatches"],
            "--whole-chain-minibatches needs a minibatch of whole chains, a multiple of K = 8.",
        ),
        (["--num-steps", "10000000000", "--total-timesteps", "10000000000"], "GiB of buffers need about"),
        (["--chain", "cosine"], "--chain must be ddpm or langevin (got 'cosine')"),
        (["--chain-gamma", "1.5"], "--chain-gamma must be in [0, 1] (got 1.5)"),
        (["--behaviour-noise-scale", "-1"], "--behaviour-noise-scale must be a positive number (got -1.0)"),
        (["--resume", "no/such/file"], "--resume 'no/such/file': no such checkpoint file"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, repo_root, flags, expected):
    result = run_script([os.path.join(repo_root, "diffppo.py"), *flags], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffppo.py: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_divergence_is_detected_and_reported(tmp_path, repo_root):
    """An absurd learning rate blows the networks up; training stops with a clear message, exit 1."""
    result = run_script(
        [
            os.path.join(repo_root, "diffppo.py"),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "2048",
            "--learning-rate",
            "1e30",
            "--no-anneal-lr",
            *SMALL,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"diffppo.py: training diverged: loss is (nan|inf) at step \d+", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def optimiser_steps(tmp_path, repo_root, num_diffusion_steps: int, minibatch_flags: list[str]) -> int:
    """Adam's step count after one rollout of 64 environment steps and one epoch (read from the checkpoint)."""
    import glob

    import torch

    cwd = tmp_path / f"k{num_diffusion_steps}{''.join(minibatch_flags)}"
    os.makedirs(cwd)
    flags = ["--env-id", "Pendulum-v1", "--total-timesteps", "64", "--num-steps", "64", "--update-epochs", "1"]
    flags += ["--num-diffusion-steps", str(num_diffusion_steps), "--save-model", "--eval-episodes", "1"]
    result = run_script([os.path.join(repo_root, "diffppo.py"), *flags, *minibatch_flags], cwd=str(cwd))
    assert result.returncode == 0, result.stderr
    checkpoint = torch.load(glob.glob(f"{single_run_dir(str(cwd))}/*.cleanrl_model")[0], weights_only=False)
    return {int(state["step"]) for state in checkpoint["optimizer"]["state"].values()}.pop()


def test_a_fixed_minibatch_size_makes_optimiser_steps_grow_with_k_where_a_fixed_count_does_not(tmp_path, repo_root):
    """--minibatch-size 32: 64 K augmented samples make 2 K minibatches; --num-minibatches 4: 4 at every K."""
    assert [optimiser_steps(tmp_path, repo_root, k, ["--minibatch-size", "32"]) for k in (1, 4)] == [2, 8]
    assert [optimiser_steps(tmp_path, repo_root, k, ["--num-minibatches", "4"]) for k in (1, 4)] == [4, 4]
