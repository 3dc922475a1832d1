"""Target networks move by --tau toward the critics: with --tau 1 a target is its critic after every target update,
with the default tau it lags behind; for every off-policy script, through its saved checkpoint."""

import glob
import os

import pytest
import torch
from conftest import REPO_ROOT, run_script, single_run_dir

SMALL = "--learning-starts 256 --batch-size 64 --hidden-dim 32 --total-timesteps 400"
FLAGS = {
    "diffsac.py": f"{SMALL} --num-diffusion-steps 2",
    "diffwpo.py": f"{SMALL} --num-diffusion-steps 2",
    "baselines/sac.py": SMALL,
    "baselines/wpo.py": SMALL,
    # The peers update their targets at every second update: 145 updates, the last one with a target update.
    "peers/dpmd.py": f"{SMALL} --num-diffusion-steps 2 --num-particles 2 --num-envs 1 --total-timesteps 401",
    "peers/sdac.py": f"{SMALL} --num-diffusion-steps 2 --num-particles 2 --num-envs 1 --total-timesteps 401",
}


def critics_and_targets(script: str, cwd, tau: str) -> list[tuple[dict, dict]]:
    os.makedirs(cwd)
    flags = [*FLAGS[script].split(), "--env-id", "Pendulum-v1", "--save-model", "--eval-episodes", "1", "--tau", tau]
    result = run_script([os.path.join(REPO_ROOT, script), *flags], cwd=str(cwd))
    assert result.returncode == 0, result.stderr
    saved = torch.load(glob.glob(f"{single_run_dir(str(cwd))}/*.cleanrl_model")[0], weights_only=False)
    if script.startswith("peers"):  # the critics live in the agent
        critics = [{k[4:]: v for k, v in saved["agent"].items() if k.startswith(f"{q}.")} for q in ("qf1", "qf2")]
    else:
        critics = [saved["qf1"], saved["qf2"]]
    return list(zip(critics, [saved["qf1_target"], saved["qf2_target"]]))


@pytest.mark.parametrize("script", list(FLAGS))
def test_targets_follow_the_critics_at_rate_tau(tmp_path, script):
    for tau in ("1.0", "0.005"):  # both critics: a critic left out of the loss would equal its target throughout
        for index, (critic, target) in enumerate(critics_and_targets(script, tmp_path / tau, tau), start=1):
            same = all(torch.equal(critic[name], target[name]) for name in critic)
            assert same == (tau == "1.0"), (script, tau, f"qf{index}")
