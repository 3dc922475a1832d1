"""Every entry point refuses bad input with one line naming the problem and exit 2, before anything is written:
one table, run against every training script and the evaluator; plus the failures a run can meet on the way
(an unwritable folder, a full disk), which leave one line and no debris."""

import glob
import os
import re

import pytest
import torch
from conftest import REPO_ROOT, run_script
from test_runs import run_with_tests_importable

from common.checkpoint import save_checkpoint
from common.cli import ConfigError

SCRIPTS = [
    "diffsac.py",
    "diffppo.py",
    "diffwpo.py",
    "diffreppo.py",
    "baselines/sac.py",
    "baselines/ppo.py",
    "baselines/wpo.py",
    "baselines/reppo.py",
    "peers/dpmd.py",
    "peers/sdac.py",
]
BAD_INPUT = [  # (flags, the start of the one line)
    (["--seed", "-1"], "--seed must be in [0, 2^32) (got -1)."),
    (["--seed", str(2**32)], "--seed must be in [0, 2^32)"),
    (["--num-envs", "5", "--total-timesteps", "4"], "--num-envs 5 exceeds --total-timesteps 4."),
    (["--eval-frequency", "-5"], "--eval-frequency must be >= 0 (got -5)."),
    (
        ["--env-id", "user_envs:UserImages-v0"],
        "--env-id user_envs:UserImages-v0 has observations Box(0, 255, (8, 8, 3)",
    ),
]


def assert_refused(result, expected: str, cwd) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not os.path.exists(os.path.join(cwd, "runs")) and not os.path.exists(os.path.join(cwd, "videos"))


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flags,expected", BAD_INPUT, ids=[flags[0] + str(i) for i, (flags, _) in enumerate(BAD_INPUT)])
def test_every_script_refuses_bad_input_with_one_line_before_writing_anything(tmp_path, script, flags, expected):
    result = run_with_tests_importable([os.path.join(REPO_ROOT, script), "--env-id", "Pendulum-v1", *flags], tmp_path)
    assert_refused(result, expected, tmp_path)


@pytest.fixture(scope="module")
def pendulum_checkpoint(tmp_path_factory) -> str:
    cwd = tmp_path_factory.mktemp("checkpoint")
    flags = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "256", "--save-model"]
    result = run_script([os.path.join(REPO_ROOT, "baselines/sac.py"), *flags, "--eval-episodes", "1"], cwd=str(cwd))
    assert result.returncode == 0, result.stderr
    return glob.glob(str(cwd / "runs" / "*" / "sac.cleanrl_model"))[0]


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--seed", "-1"], "--seed must be >= 0 (got -1)."),
        (["--episodes", "0"], "--episodes must be at least 1 (got 0)."),
        (["--env-id", "MountainCarContinuous-v0"], "--env-id MountainCarContinuous-v0 has obs_dim 2;"),
        (["--env-id", "InvertedPendulum-v5"], "--env-id InvertedPendulum-v5 has obs_dim 4;"),
    ],
)
def test_the_evaluator_refuses_bad_input_with_one_line(tmp_path, pendulum_checkpoint, flags, expected):
    result = run_script(["-m", "common.evaluation", pendulum_checkpoint, *flags], cwd=str(tmp_path))
    assert_refused(result, expected, tmp_path)


def change(**fields):
    return lambda checkpoint: {**checkpoint, **fields}


def without(name):
    return lambda checkpoint: {key: value for key, value in checkpoint.items() if key != name}


BAD_CHECKPOINTS = [  # (what the file holds instead of the checkpoint, the line's end): load_checkpoint's checks
    (lambda checkpoint: [1, 2], "is not a checkpoint of these scripts"),
    (lambda checkpoint: {}, "is not a checkpoint of these scripts"),
    (without("format"), "is not a checkpoint of these scripts"),
    (change(format=1), "has checkpoint format 1, this version reads 2"),
    (change(script="os"), "names the script 'os', not a training script."),
    (without("agent_kwargs"), "lacks agent_kwargs"),
    (change(args=None), "lacks args"),
    (change(global_step="1000"), "lacks global_step"),
]


@pytest.mark.parametrize("make,expected", BAD_CHECKPOINTS, ids=[str(i) for i in range(len(BAD_CHECKPOINTS))])
def test_a_file_that_is_not_a_whole_checkpoint_is_refused_naming_the_flag(
    tmp_path, pendulum_checkpoint, make, expected
):
    from common.checkpoint import load_checkpoint

    path = str(tmp_path / "sac.cleanrl_model")
    torch.save(make(torch.load(pendulum_checkpoint, weights_only=False)), path)
    for flag in ("--resume", "checkpoint"):  # the two entry points' names for it
        with pytest.raises(ConfigError, match=f"^{flag} '{path}'.*{re.escape(expected)}"):
            load_checkpoint(path, flag)


@pytest.mark.parametrize(
    "entry_point,make,expected",
    [
        ("evaluator", change(script="os"), "names the script 'os', not a training script."),
        ("evaluator", change(agent={"unknown.weight": torch.zeros(2)}), "its agent does not fit baselines.sac.Agent"),
        ("--resume", change(format=1), "has checkpoint format 1, this version reads 2"),
        ("--resume", without("q_optimizer"), "lacks q_optimizer, which baselines.sac saves."),
        ("--resume", change(agent={"unknown.weight": torch.zeros(2)}), "its agent does not fit baselines.sac's"),
    ],
)
def test_both_entry_points_refuse_a_bad_checkpoint_with_one_line(
    tmp_path, pendulum_checkpoint, entry_point, make, expected
):
    path = str(tmp_path / "sac.cleanrl_model")
    torch.save(make(torch.load(pendulum_checkpoint, weights_only=False)), path)
    (tmp_path / "cwd").mkdir()
    if entry_point == "evaluator":
        result = run_script(["-m", "common.evaluation", path, "--episodes", "1"], cwd=str(tmp_path / "cwd"))
    else:
        resume = [os.path.join(REPO_ROOT, "baselines/sac.py"), "--resume", path, "--total-timesteps", "600"]
        result = run_script(resume, cwd=str(tmp_path / "cwd"))
    assert_refused(result, expected, str(tmp_path / "cwd"))


def test_an_unwritable_folder_is_one_line_before_any_training(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    os.chmod(tmp_path, 0o555)
    try:
        result = run_script([os.path.join(REPO_ROOT, "baselines/sac.py"), "--env-id", "Pendulum-v1"], cwd=str(tmp_path))
    finally:
        os.chmod(tmp_path, 0o755)
    assert result.returncode == 2 and "cannot create the run folder" in result.stderr, result.stderr


@pytest.mark.parametrize("fail_at", ["buffer", "checkpoint"])
def test_a_full_disk_while_saving_is_one_error_and_leaves_no_debris(tmp_path, monkeypatch, fail_at):
    """The write fails (ENOSPC) at the buffer's pending file or at the checkpoint's temporary file: a ConfigError
    naming the checkpoint, the previous pair untouched, no .tmp or .pending left behind."""

    class Buffer:
        def __init__(self):
            self.obs, self.position, self.size, self.buffer_size = torch.zeros(4, 2), 0, 4, 4

    path = str(tmp_path / "run" / "agent.cleanrl_model")
    save_checkpoint(path, {"global_step": 1}, Buffer())
    before = {name: open(name, "rb").read() for name in glob.glob(path + "*")}
    real_save = torch.save

    def save(obj, target, *args, **kwargs):
        if str(target).endswith(".pending" if fail_at == "buffer" else ".tmp"):
            real_save(obj, target, *args, **kwargs)  # a partly written file, then the disk is full
            raise OSError(28, "No space left on device")
        real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(ConfigError, match=f"cannot write the checkpoint {path}"):
        save_checkpoint(path, {"global_step": 2}, Buffer())
    monkeypatch.undo()
    assert {name: open(name, "rb").read() for name in glob.glob(path + "*")} == before


def test_the_evaluator_runs_with_the_runs_torch_threads_unless_told(tmp_path, pendulum_checkpoint, monkeypatch):
    from common import evaluation

    checkpoint = torch.load(pendulum_checkpoint, weights_only=False)
    checkpoint["args"]["torch_threads"] = 3  # as a run made with --torch-threads 3
    path = str(tmp_path / "sac.cleanrl_model")
    torch.save(checkpoint, path)
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    for flags in ([], ["--torch-threads", "2"]):
        monkeypatch.setattr("sys.argv", ["common.evaluation", path, "--episodes", "1", *flags])
        evaluation.main()
    assert threads == [3, 2]  # the run's --torch-threads, then the flag


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_of_every_script_has_a_declared_range(script):
    """The class rule: a new int or float flag without a check row fails here, so no flag goes unbounded."""
    import dataclasses
    import importlib
    import re

    from common.cli import COMMON_CHECKS

    module = importlib.import_module(script[: -len(".py")].replace("/", "."))
    conditions = " ".join(condition for condition, _ in module.CHECKS + COMMON_CHECKS)
    numeric = [f.name for f in dataclasses.fields(module.Args) if re.search(r"\b(int|float)\b", str(f.type))]
    assert numeric and [name for name in numeric if not re.search(rf"\b{name}\b", conditions)] == []
