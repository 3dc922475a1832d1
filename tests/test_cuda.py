"""The GPU path: every training script trains, checkpoints, resumes and evaluates with --cuda.

Skipped on machines without CUDA (the reason is printed by pytest -rs); run it on a GPU machine with
    python -m pytest tests/test_cuda.py -rs
"""

import os

import pytest
import torch
from conftest import run_script, single_run_dir

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)

OFF_POLICY_SMALL = ["--learning-starts", "256", "--batch-size", "64", "--total-timesteps"]
SCRIPTS = {
    "diffppo.py": ["--num-steps", "64", "--num-minibatches", "4", "--num-diffusion-steps", "4", "--total-timesteps"],
    "diffsac.py": ["--num-diffusion-steps", "4", *OFF_POLICY_SMALL],
    "diffwpo.py": ["--num-diffusion-steps", "4", *OFF_POLICY_SMALL],
    "diffreppo.py": [
        "--num-envs",
        "2",
        "--num-steps",
        "64",
        "--minibatch-size",
        "128",
        "--update-epochs",
        "2",
        "--num-diffusion-steps",
        "4",
        "--total-timesteps",
    ],
    "baselines/ppo.py": ["--num-steps", "64", "--num-minibatches", "4", "--total-timesteps"],
    "baselines/sac.py": OFF_POLICY_SMALL,
    "baselines/wpo.py": OFF_POLICY_SMALL,
    "baselines/reppo.py": [
        "--num-envs",
        "2",
        "--num-steps",
        "64",
        "--minibatch-size",
        "128",
        "--update-epochs",
        "2",
        "--total-timesteps",
    ],
}


@pytest.mark.parametrize("script_name", SCRIPTS)
def test_training_on_the_gpu_checkpoints_gpu_tensors_then_resumes_and_evaluates(tmp_path, repo_root, script_name):
    script = os.path.join(repo_root, script_name)
    flags = ["--env-id", "Pendulum-v1", "--cuda", "--save-model", "--eval-episodes", "1", *SCRIPTS[script_name]]
    result = run_script([script, *flags, "512"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mean return" in result.stdout
    checkpoint_path = os.path.join(
        single_run_dir(tmp_path), os.path.basename(script_name).replace(".py", ".cleanrl_model")
    )
    checkpoint = torch.load(checkpoint_path, map_location=None, weights_only=False)
    assert all(tensor.is_cuda for tensor in checkpoint["agent"].values()), "the agent was not trained on the GPU"

    resumed = run_script([script, *flags, "1024", "--resume", checkpoint_path], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "mean return" in resumed.stdout
