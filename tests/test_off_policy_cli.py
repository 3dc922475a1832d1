"""diffsac.py and diffwpo.py from the command line: smoke trainings, logging tags, checkpoint,
evaluation and resume, bad input."""

import math
import os
import re

import pytest
from conftest import run_script, single_run_dir

from benchmarks.logs import read_scalars

SCRIPTS = ["diffsac.py", "diffwpo.py"]
SMALL = ["--learning-starts", "256", "--batch-size", "64", "--hidden-dim", "64"]
TAGS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/entropy_estimate", "charts/alpha",
        "losses/qf1_loss", "losses/qf2_loss", "losses/actor_loss", "losses/alpha_loss"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("env_id,num_diffusion_steps", [("Hopper-v4", 8), ("Pendulum-v1", 4)])
def test_smoke_training_logs_every_tag(tmp_path, repo_root, script, env_id, num_diffusion_steps):
    result = run_script([os.path.join(repo_root, script), "--env-id", env_id, "--total-timesteps", "1200",
                         "--num-diffusion-steps", str(num_diffusion_steps), *SMALL], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step      1200/1200" in result.stdout and "updates/s" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in TAGS:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0, f"{tag} missing from {run_dir}"


@pytest.mark.parametrize("script_name", SCRIPTS)
def test_save_model_then_evaluate_checkpoint_then_resume(tmp_path, repo_root, script_name):
    script = os.path.join(repo_root, script_name)
    common = ["--env-id", "Pendulum-v1", "--num-diffusion-steps", "3", *SMALL, "--save-model", "--eval-episodes", "2"]
    result = run_script([script, *common, "--total-timesteps", "600"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "evaluation (2 deterministic episodes): mean return" in result.stdout
    checkpoint = os.path.join(single_run_dir(tmp_path), script_name.replace(".py", ".cleanrl_model"))
    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Pendulum-v1 (deterministic, 2 episodes): mean return" in evaluation.stdout

    resumed = run_script([script, *common, "--total-timesteps", "1200", "--resume", checkpoint], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 600" in resumed.stdout
    assert "step      1200/1200" in resumed.stdout


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flags,expected", [
    (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
    (["--env-id", "Pendulum-v9"], "--env-id 'Pendulum-v9' is not a registered gymnasium environment"),
    (["--num-diffusion-steps", "0"], "--num-diffusion-steps must be at least 1 (got 0)"),
    (["--batch-size", "512", "--buffer-size", "256"], "--batch-size 512 is larger than --buffer-size 256"),
    (["--learning-starts", "100", "--batch-size", "256"], "--learning-starts 100 is below --batch-size 256"),
    (["--tau", "0"], "--tau must be in (0, 1]"),
])
def test_bad_input_gives_one_clear_line(tmp_path, repo_root, script, flags, expected):
    result = run_script([os.path.join(repo_root, script), *flags], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_divergence_is_detected_and_reported(tmp_path, repo_root, script):
    """Absurd learning rates blow the critics up; training stops with a clear message, exit 1."""
    result = run_script([os.path.join(repo_root, script), "--env-id", "Pendulum-v1", "--total-timesteps", "1000",
                         "--q-lr", "1e30", "--policy-lr", "1e30", *SMALL], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"{script}: training diverged: (critic|actor) loss is (nan|inf) at step \d+", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags,expected", [
    (["--alpha-start", "1.0"], "--alpha-start anneals a fixed temperature; add --no-autotune"),
    (["--no-autotune", "--alpha-start", "0.1"], "--alpha-start must be a number above --alpha > 0"),
    (["--no-autotune", "--alpha-start", "nan"], "--alpha-start must be a finite number (got nan)"),
    (["--alpha-anneal-fraction", "0"], "--alpha-anneal-fraction must be in (0, 1]"),
])
def test_diffsac_alpha_annealing_flags_are_checked(tmp_path, repo_root, flags, expected):
    result = run_script([os.path.join(repo_root, "diffsac.py"), *flags], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("flags,expected", [
    (["--actor-loss", "forward-kl"], "--actor-loss 'forward-kl': allowed: reverse-kl, log-variance"),
    (["--actor-loss", "log-variance", "--chains-per-state", "1"], "--chains-per-state must be at least 2"),
    (["--actor-loss", "log-variance", "--behaviour-noise-scale", "0"], "--behaviour-noise-scale must be a positive number"),
    (["--actor-loss", "log-variance", "--behaviour-noise-scale", "nan"], "--behaviour-noise-scale must be a finite number (got nan)"),
    (["--actor-loss", "log-variance", "--no-autotune", "--alpha", "0"], "> 0 with --autotune or --actor-loss log-variance"),
])
def test_diffsac_log_variance_flags_are_checked(tmp_path, repo_root, flags, expected):
    result = run_script([os.path.join(repo_root, "diffsac.py"), *flags], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr


def test_diffsac_log_variance_smoke_training_logs_every_tag(tmp_path, repo_root):
    result = run_script([os.path.join(repo_root, "diffsac.py"), "--env-id", "Pendulum-v1", "--total-timesteps", "800",
                         "--num-diffusion-steps", "4", "--actor-loss", "log-variance", "--chains-per-state", "4",
                         *SMALL], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step       800/800" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in TAGS:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0 and all(map(math.isfinite, values)), f"{tag} missing or not finite in {run_dir}"


def test_diffwpo_inner_velocity_flag_is_checked(tmp_path, repo_root):
    result = run_script([os.path.join(repo_root, "diffwpo.py"), "--inner-velocity", "path"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--inner-velocity 'path': allowed: critic, rollout" in result.stderr, result.stderr


@pytest.mark.parametrize("flags,expected", [
    (["--last-step-samples", "-1"], "--last-step-samples must be at least 0 (got -1)"),
    (["--last-step-samples", "300", "--learning-starts", "500"], "--learning-starts 500 is below --batch-size + --last-step-samples (556)"),
    (["--last-step-samples", "300", "--buffer-size", "512"], "--batch-size 256 + --last-step-samples 300 is larger than --buffer-size 512"),
])
def test_diffwpo_last_step_samples_flag_is_checked(tmp_path, repo_root, flags, expected):
    result = run_script([os.path.join(repo_root, "diffwpo.py"), *flags], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize("variant", [["--inner-velocity", "rollout"], ["--last-step-samples", "48"], ["--actor-all-steps"]])
def test_diffwpo_variant_smoke_training_logs_every_tag(tmp_path, repo_root, variant):
    result = run_script([os.path.join(repo_root, "diffwpo.py"), "--env-id", "Pendulum-v1", "--total-timesteps", "800",
                         "--num-diffusion-steps", "4", *variant, *SMALL], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step       800/800" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in TAGS:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0 and all(map(math.isfinite, values)), f"{tag} missing or not finite in {run_dir}"


@pytest.mark.parametrize("script", [*SCRIPTS, "baselines/sac.py", "baselines/wpo.py"])
def test_progress_line_says_n_a_for_the_entropy_before_the_first_actor_update(tmp_path, repo_root, script):
    result = run_script([os.path.join(repo_root, script), "--env-id", "Pendulum-v1", "--total-timesteps", "1200",
                         "--learning-starts", "1100", "--eval-episodes", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("step      1000/1200"))
    assert "entropy estimate     n/a |" in line and "nan" not in line, line
