"""Short learning regressions, one per family: a few thousand steps of an easy task take the final deterministic
evaluation past a score that the untrained policy is far below, and that a broken update does not reach."""

import os
import re

import pytest
from conftest import run_script

PENDULUM = ["--env-id", "Pendulum-v1", "--total-timesteps", "4000", "--learning-starts", "1000"]
INVERTED_PENDULUM = ["--env-id", "InvertedPendulum-v4", "--total-timesteps", "20480"]
BANDIT = [  # the peers' chains cost too much for Pendulum here: a contextual one-step bandit, small networks
    *["--env-id", "user_envs:FarBandit-v0", "--total-timesteps", "1000", "--learning-starts", "250", "--num-envs", "1"],
    *["--hidden-dim", "64", "--num-hidden-layers", "2", "--num-diffusion-steps", "5", "--batch-size", "64"],
]
CASES = {  # script: (flags, threshold); untrained: Pendulum -1200 to -1500, InvertedPendulum under 30, bandit -0.64
    "diffsac.py": ([*PENDULUM, "--num-diffusion-steps", "2"], -700.0),
    "diffwpo.py": ([*PENDULUM, "--num-diffusion-steps", "2"], -700.0),
    "diffppo.py": (INVERTED_PENDULUM, 100.0),
    "diffreppo.py": (INVERTED_PENDULUM, 100.0),
    "diffreppo.py --actor-loss wpo": (INVERTED_PENDULUM, 100.0),
    "baselines/sac.py": (PENDULUM, -700.0),
    "baselines/wpo.py": (PENDULUM, -700.0),
    "baselines/ppo.py": (INVERTED_PENDULUM, 100.0),
    "baselines/reppo.py": (INVERTED_PENDULUM, 100.0),
    "baselines/reppo.py --actor-loss wpo": (INVERTED_PENDULUM, 100.0),
    "peers/dpmd.py": (BANDIT, -0.2),  # with best-of-N acting, this checks the critic's update more than the policy's
    "peers/sdac.py": (BANDIT, -0.2),
}


@pytest.mark.parametrize("script", list(CASES))
def test_a_short_run_learns_an_easy_task(tmp_path, repo_root, script):
    flags, threshold = CASES[script]
    path, *variant = script.split()
    command = [os.path.join(repo_root, path), *variant, *flags, "--save-model", "--eval-episodes", "5"]
    result = run_script(command, cwd=tmp_path, timeout=600, user_envs=True)
    assert result.returncode == 0, result.stderr
    score = float(re.search(r"deterministic episodes\): mean return (-?[\d.]+)", result.stdout).group(1))
    assert score > threshold, f"{script} {' '.join(flags)}: final evaluation {score} <= {threshold}"
