"""Evaluation during training (--eval-frequency): every training script evaluates its policy at the steps it
names, logs the episodes of the deterministic and of the stochastic policy at those steps, and leaves the
training itself untouched (the same parameters as a run without evaluation, bitwise)."""

import glob
import os

import pytest
import torch
from conftest import REPO_ROOT, run_script, single_run_dir

from benchmarks.logs import read_scalars

OFF_POLICY = "--learning-starts 256 --batch-size 64 --hidden-dim 64"
ON_POLICY = "--num-envs 2 --num-steps 64 --update-epochs 2"
PEERS = f"{OFF_POLICY} --num-diffusion-steps 3 --num-particles 2 --num-envs 2"
FLAGS = {
    "diffsac.py": f"{OFF_POLICY} --num-diffusion-steps 3",
    "diffwpo.py": f"{OFF_POLICY} --num-diffusion-steps 3",
    "baselines/sac.py": OFF_POLICY,
    "baselines/wpo.py": OFF_POLICY,
    "peers/dpmd.py": PEERS,
    "peers/sdac.py": f"{PEERS} --num-reconstructions 4",
    "diffppo.py": f"{ON_POLICY} --num-minibatches 4 --num-diffusion-steps 3",
    "baselines/ppo.py": f"{ON_POLICY} --num-minibatches 4",
    "diffreppo.py": f"{ON_POLICY} --minibatch-size 128 --num-diffusion-steps 3 --hidden-dim 64",
    "baselines/reppo.py": f"{ON_POLICY} --minibatch-size 64 --hidden-dim 64",
}


def train(script: str, cwd, eval_frequency: int) -> str:
    flags = [*FLAGS[script].split(), "--env-id", "Pendulum-v1", "--total-timesteps", "768", "--eval-episodes", "1"]
    flags += ["--save-model", "--eval-frequency", str(eval_frequency)]
    os.makedirs(cwd)
    result = run_script([os.path.join(REPO_ROOT, script), *flags], cwd=str(cwd))
    assert result.returncode == 0, result.stderr
    return single_run_dir(str(cwd))


@pytest.mark.parametrize("script", list(FLAGS))
def test_evaluations_at_their_steps_leave_the_training_as_it_was(tmp_path, script):
    evaluated = train(script, tmp_path / "evaluated", eval_frequency=256)
    steps, returns = read_scalars(evaluated, "eval/episodic_return")
    assert steps.tolist() == [256, 512, 768] and (returns < 0).all()  # one Pendulum episode each, the last at the end
    stochastic_steps, stochastic_returns = read_scalars(evaluated, "eval/stochastic_episodic_return")
    assert stochastic_steps.tolist() == [256, 512, 768] and (stochastic_returns < 0).all()  # the sampled policy too
    plain = train(script, tmp_path / "plain", eval_frequency=0)
    assert read_scalars(plain, "eval/episodic_return")[0].tolist() == [768]  # --save-model: the final one only
    saved = [torch.load(glob.glob(f"{run}/*.cleanrl_model")[0], weights_only=False) for run in (evaluated, plain)]
    for name, tensor in saved[0]["agent"].items():
        assert torch.equal(tensor, saved[1]["agent"][name]), name
