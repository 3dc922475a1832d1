"""diffsac.py and diffwpo.py from the command line: smoke trainings, logging tags, checkpoint,
evaluation and resume, bad input."""

import os

import pytest
from conftest import run_script

SCRIPTS = ["diffsac.py", "diffwpo.py"]
SMALL = ["--learning-starts", "256", "--batch-size", "64", "--hidden-dim", "64"]
TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/entropy_estimate",
    "charts/alpha",
    "losses/qf1_loss",
    "losses/qf2_loss",
    "losses/actor_loss",
    "losses/alpha_loss",
]


@pytest.mark.parametrize("script", [*SCRIPTS, "baselines/sac.py", "baselines/wpo.py"])
def test_progress_line_says_n_a_for_the_entropy_before_the_first_actor_update(tmp_path, repo_root, script):
    result = run_script(
        [
            os.path.join(repo_root, script),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "1200",
            "--learning-starts",
            "1100",
            "--eval-episodes",
            "1",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("step      1000/1200"))
    assert "entropy estimate     n/a |" in line and "nan" not in line, line
