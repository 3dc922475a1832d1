"""The reference scripts as a user copies them: one diffusion actor in every diffusion script, and each training
script runs from an empty folder holding only itself and common/."""

import os
import re
import shutil

import pytest
from conftest import REPO_ROOT, run_script

DIFFUSION_SCRIPTS = ["diffsac.py", "diffppo.py", "diffwpo.py", "diffreppo.py"]
BEGIN, END = "# ---- diffusion actor: identical in every diffusion script", "# ---- end of the diffusion actor ----"


def actor_block(text: str) -> str:
    """The lines from the actor's opening marker to its closing one (ValueError when a marker is missing)."""
    start, end = text.index(BEGIN), text.index(END)
    return text[start:end]


def differing_copies(texts: dict[str, str]) -> list[str]:
    """Names of the scripts whose actor block differs from the first script's."""
    reference = actor_block(next(iter(texts.values())))
    return [name for name, text in texts.items() if actor_block(text) != reference]


def read(name: str) -> str:
    with open(os.path.join(REPO_ROOT, name)) as file:
        return file.read()


def test_diffusion_actor_block_is_identical_in_every_diffusion_script():
    texts = {name: read(name) for name in DIFFUSION_SCRIPTS}
    assert all(text.count(BEGIN) == 1 and text.count(END) == 1 for text in texts.values())
    assert "class DiffusionActor(nn.Module):" in actor_block(texts["diffsac.py"])
    assert differing_copies(texts) == []


def test_a_one_character_change_in_one_copy_is_reported():
    texts = {name: read(name) for name in DIFFUSION_SCRIPTS}
    texts["diffwpo.py"] = texts["diffwpo.py"].replace("s: float = 0.008", "s: float = 0.009", 1)
    assert differing_copies(texts) == ["diffwpo.py"]


SHORT_RUNS = {
    "diffsac.py": ["--learning-starts", "300", "--batch-size", "64", "--num-diffusion-steps", "2"],
    "diffwpo.py": ["--learning-starts", "300", "--batch-size", "64", "--num-diffusion-steps", "2"],
    "baselines/sac.py": ["--learning-starts", "300", "--batch-size", "64"],
    "baselines/wpo.py": ["--learning-starts", "300", "--batch-size", "64"],
    "peers/dpmd.py": ["--learning-starts", "300", "--batch-size", "64", "--num-diffusion-steps", "2"],
    "peers/sdac.py": ["--learning-starts", "300", "--batch-size", "64", "--num-diffusion-steps", "2"],
    "diffppo.py": ["--num-steps", "200", "--num-minibatches", "4", "--num-diffusion-steps", "2"],
    "baselines/ppo.py": ["--num-steps", "200", "--num-minibatches", "4"],
    "diffreppo.py": ["--num-envs", "2", "--num-steps", "100", "--minibatch-size", "64", "--num-diffusion-steps", "2"],
    "baselines/reppo.py": ["--num-envs", "2", "--num-steps", "100", "--minibatch-size", "64"],
}


@pytest.mark.parametrize("script", sorted(SHORT_RUNS))
def test_script_runs_copied_into_an_empty_folder_with_only_common(tmp_path, script):
    shutil.copytree(os.path.join(REPO_ROOT, "common"), tmp_path / "common")
    copy = tmp_path / os.path.basename(script)
    shutil.copy(os.path.join(REPO_ROOT, script), copy)
    result = run_script(
        [
            str(copy),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "400",
            "--save-model",
            "--eval-episodes",
            "1",
            *SHORT_RUNS[script],
        ],
        cwd=tmp_path,
        isolated=True,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(1 deterministic episodes\): mean return -?\d", result.stdout), result.stdout
    assert sorted(os.listdir(tmp_path)) == sorted(["common", copy.name, "runs"])
