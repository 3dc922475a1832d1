"""Runs that survive (common/runs.py): resume continues the saved run, signals save and exit cleanly,
bad flags are refused before any work, TensorBoard holds one curve after a resume."""

import glob
import importlib
import importlib.util
import itertools
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_script, single_run_dir
from torch.utils.tensorboard import SummaryWriter

from benchmarks.logs import read_scalars
from common import runs
from common.checkpoint import load_replay_buffer, save_checkpoint
from common.cli import parse_args
from common.envs import ConfigError
from common.replay_buffer import ReplayBuffer

SCRIPTS = [
    "diffppo.py",
    "diffsac.py",
    "diffwpo.py",
    "diffreppo.py",
    "baselines/ppo.py",
    "baselines/sac.py",
    "baselines/wpo.py",
    "baselines/reppo.py",
    "peers/dpmd.py",
    "peers/sdac.py",
]
OFF_POLICY = ["diffsac.py", "diffwpo.py", "baselines/sac.py", "baselines/wpo.py", "peers/dpmd.py", "peers/sdac.py"]


def module_of(script: str) -> str:
    return script[: -len(".py")].replace("/", ".")


def fake_checkpoint(path, script_module: str, args, global_step: int = 1000) -> str:
    from dataclasses import asdict

    fields = dict(run_name="run", agent_kwargs={}, agent={}, obs_normalizer={}, format=2)
    torch.save({"script": script_module, "args": asdict(args), "global_step": global_step, **fields}, path)
    return str(path)


# ----------------------------------------------------------------------------------------------
# parse_args: the resume rules, in-process
# ----------------------------------------------------------------------------------------------
def test_resume_takes_the_saved_flags_without_repeating_them(tmp_path):
    diffppo = importlib.import_module("diffppo")
    path = fake_checkpoint(
        tmp_path / "c.cleanrl_model", "diffppo", diffppo.Args(num_steps=256, env_id="Pendulum-v1", exp_name="mine")
    )
    args, checkpoint = parse_args(diffppo.Args, "diffppo", diffppo.CHECKS, ["--resume", path])
    assert (args.num_steps, args.env_id, args.exp_name, args.resume) == (256, "Pendulum-v1", "mine", path)
    args, _ = parse_args(
        diffppo.Args, "diffppo", diffppo.CHECKS, [f"--resume={path}", "--total-timesteps", "5000", "--num-steps", "256"]
    )
    assert args.total_timesteps == 5000 and args.num_steps == 256  # repeating a saved value is fine


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--num-steps", "2048"], "--num-steps 2048 differs from the resumed run's 256"),
        (["--exp-name", "other"], "--exp-name other differs from the resumed run's mine"),
        (["--total-timesteps", "1000"], "--total-timesteps 1000 is not beyond the checkpoint's step 1000"),
        (["--total-timesteps", "10"], "is not beyond the checkpoint's step 1000"),
        (["--eval-episodes", "0"], "--eval-episodes must be at least 1"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    ],
)
def test_resume_refuses_a_changed_flag_or_a_target_already_reached(tmp_path, flags, expected):
    diffppo = importlib.import_module("diffppo")
    path = fake_checkpoint(
        tmp_path / "c.cleanrl_model", "diffppo", diffppo.Args(num_steps=256, env_id="Pendulum-v1", exp_name="mine")
    )
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        parse_args(diffppo.Args, "diffppo", diffppo.CHECKS, ["--resume", path, *flags])


def test_resume_refuses_another_scripts_checkpoint_naming_both(tmp_path):
    diffsac, diffppo = importlib.import_module("diffsac"), importlib.import_module("diffppo")
    path = fake_checkpoint(tmp_path / "c.cleanrl_model", "diffsac", diffsac.Args())
    with pytest.raises(ConfigError, match="is a checkpoint of diffsac.py, not of diffppo.py"):
        parse_args(diffppo.Args, "diffppo", diffppo.CHECKS, ["--resume", path])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_flag_must_be_finite(value):
    diffsac = importlib.import_module("diffsac")
    float_flags = [name for name, field in diffsac.Args.__dataclass_fields__.items() if field.type in ("float", float)]
    assert {"alpha", "gamma", "tau", "policy_lr", "q_lr", "min_std"} <= set(float_flags)
    for name in float_flags:
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a finite number"):
            parse_args(diffsac.Args, "diffsac", diffsac.CHECKS, [f"--{name.replace('_', '-')}", value])


@pytest.mark.parametrize("script", ["diffsac.py", "peers/sdac.py", "baselines/reppo.py"])
def test_eval_episodes_must_be_at_least_one(script):
    module = importlib.import_module(module_of(script))
    with pytest.raises(ConfigError, match="--eval-episodes must be at least 1"):
        parse_args(module.Args, module_of(script), module.CHECKS, ["--eval-episodes", "0"])


def bare_run(total_timesteps: int = 10_000, start_step: int = 0, start_time: float = 0.0):
    """A Run with only what iterations, show and build read: no flags parsed, no envs, no folder."""
    import types

    run = object.__new__(runs.Run)
    run.args, run.device = types.SimpleNamespace(total_timesteps=total_timesteps), torch.device("cpu")
    run.writer, run.recent_returns = types.SimpleNamespace(add_scalar=lambda *a: None), []
    run.start_step, run.start_time, run.rate_origin = start_step, start_time, (start_step, start_time)
    run.target = total_timesteps
    return run


def test_iterations_round_up_to_whole_rollouts_and_say_so(capsys):
    assert bare_run(4096).iterations(2048) == 2 and capsys.readouterr().out == ""
    assert bare_run(5000).iterations(2048) == 3
    assert "running 6144" in capsys.readouterr().out


def shown(run, monkeypatch, capsys, lines: list[tuple[float, int, int]]) -> list[str]:
    """The progress lines of run.show at (time, step, learning_starts)."""
    import types

    for now, step, learning_starts in lines:
        monkeypatch.setattr(runs, "time", types.SimpleNamespace(time=lambda now=now: now))
        run.show(step, "text", learning_starts)
    return [line.rsplit(" | ", 1)[1] for line in capsys.readouterr().out.splitlines()]


def test_progress_gives_no_time_left_during_random_steps_then_the_learning_rate(monkeypatch, capsys):
    """Random steps run far faster than learning ones: an estimate from them (seconds for a run of hours) is
    not shown; once learning runs, the time left is the steps left at the rate since learning began."""
    times = [(1.0, 1000, 5000), (2.0, 5000, 5000), (102.0, 6000, 5000)]  # then 1000 steps in 100 s: 4000 take 400 s
    left = shown(bare_run(), monkeypatch, capsys, times)
    assert left == ["time left known after step 5000"] * 2 + ["0:06:40 left"]
    assert shown(bare_run(), monkeypatch, capsys, [(10.0, 1000, 0)]) == ["0:01:30 left"]  # on-policy: from the start


def test_progress_time_left_is_steady_at_a_steady_mean_speed(monkeypatch, capsys):
    """Lines at uneven intervals (an update phase, a loaded machine) but a steady mean of 330 steps/s over a
    1M-step run: every estimate after the first minute is within 10% of the true time left."""
    now, step, times = 0.0, 0, []
    while step + 2048 <= 1_000_000:
        step, now = step + 2048, now + 2048 / 330 * (0.5 if len(times) % 2 else 1.5)  # 9 s, 3 s, 9 s, ...
        times.append((now, step, 0))
    left = shown(bare_run(1_000_000), monkeypatch, capsys, times)
    for (now, step, _), text in zip(times, left):
        hours, minutes, seconds = map(int, text.split()[0].split(":"))
        estimate, truth = 3600 * hours + 60 * minutes + seconds, (1_000_000 - step) / 330
        assert now < 60 or truth < 60 or abs(estimate - truth) <= 0.1 * truth, (step, text, truth)


def test_memory_check_counts_parameters_on_the_meta_device_and_refuses_what_cannot_fit():
    diffsac = importlib.import_module("diffsac")
    (critic,) = bare_run().build(
        lambda: [diffsac.SoftQNetwork(11, 3, 256)], "--hidden-dim", ReplayBuffer.bytes(1000, 11, 3)
    )
    assert isinstance(critic, diffsac.SoftQNetwork)
    with pytest.raises(ConfigError, match="lower --hidden-dim"):
        bare_run().build(lambda: [diffsac.SoftQNetwork(11, 3, 256)], "--hidden-dim", 10**15)
    assert ReplayBuffer.bytes(1_000_000, 11, 3) == 108_000_000  # Hopper, as --help says


# ----------------------------------------------------------------------------------------------
# TensorBoard: a resumed run's log is one curve
# ----------------------------------------------------------------------------------------------
def test_read_scalars_drops_the_events_a_resumed_run_purged(tmp_path):
    first = SummaryWriter(str(tmp_path))
    for step in range(1, 11):
        first.add_scalar("x", float(step), step)
    first.close()
    time.sleep(1.1)  # the event file's name holds the time in seconds
    checkpoint = {"global_step": 6}
    resumed = SummaryWriter(str(tmp_path), purge_step=checkpoint["global_step"] + 1)  # as Run.restore: purges > 6
    for step in range(7, 15):
        resumed.add_scalar("x", 100.0 + step, step)
    resumed.close()
    steps, values = read_scalars(str(tmp_path), "x")
    assert steps.tolist() == list(range(1, 15))
    assert values.tolist() == [float(s) for s in range(1, 7)] + [100.0 + s for s in range(7, 15)]


# ----------------------------------------------------------------------------------------------
# A resumed run restores what was saved (round trip through the script's own load and save)
# ----------------------------------------------------------------------------------------------
def state_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def resume_and_stop_at_once(monkeypatch, tmp_path, script: str, checkpoint_path: str, extra=()):
    module = importlib.import_module(module_of(script))
    restore = runs.Run.restore

    def restore_with_a_sigterm_received(self, *args, **kwargs):  # the resumed loop saves what it loaded, exits 143
        checkpoint = restore(self, *args, **kwargs)
        self.stop = signal.SIGTERM
        return checkpoint

    monkeypatch.setattr(runs.Run, "restore", restore_with_a_sigterm_received)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, "--resume", checkpoint_path, *extra])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    return exit_info.value.code


def saved_replay_buffer(model_path: str, global_step: int) -> dict | None:
    """The buffer file (or, after a kill mid-save, the pending one) that belongs to the checkpoint's step."""
    for path in (model_path + ".replay_buffer", model_path + ".replay_buffer.pending"):
        try:
            state = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - missing, or cut short by the kill
            continue
        if state["global_step"] == global_step:
            return state
    return None


class _Buffer:
    """The shape of the scripts' replay buffers: storage tensors, position, size, buffer_size."""

    def __init__(self, buffer_size: int = 8):
        self.obs, self.rewards = torch.zeros(buffer_size, 3), torch.zeros(buffer_size)
        self.position, self.size, self.buffer_size = 0, 0, buffer_size

    def add(self, value: float) -> None:
        self.obs[self.position], self.rewards[self.position] = value, value
        self.position, self.size = (self.position + 1) % self.buffer_size, min(self.size + 1, self.buffer_size)


@pytest.mark.parametrize("kill_at", ["buffer_written", "checkpoint_written", "never"])
def test_a_kill_anywhere_in_a_save_leaves_a_checkpoint_with_the_buffer_of_its_own_step(tmp_path, monkeypatch, kill_at):
    """A kill -9 between the writes of a save, made deterministic: every point leaves a checkpoint whose
    step's buffer loads, never a newer buffer beside an older checkpoint (what CI once caught)."""
    model_path = str(tmp_path / "run" / "agent.cleanrl_model")
    buffer = _Buffer()
    for value in range(3):
        buffer.add(float(value))
    save_checkpoint(model_path, {"global_step": 3}, buffer)
    for value in range(3, 5):
        buffer.add(float(value))

    class Killed(Exception):
        pass

    real_save, real_replace = torch.save, os.replace

    def save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        if kill_at == "buffer_written" and str(path).endswith(".pending"):
            raise Killed

    def replace(source, target):
        if kill_at == "checkpoint_written" and str(source).endswith(".pending"):
            raise Killed
        real_replace(source, target)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(runs.os, "replace", replace)
    try:
        save_checkpoint(model_path, {"global_step": 5}, buffer)
    except Killed:
        pass
    monkeypatch.undo()
    step = torch.load(model_path, weights_only=False)["global_step"]
    assert step == {"buffer_written": 3, "checkpoint_written": 5, "never": 5}[kill_at]
    restored = _Buffer()
    assert load_replay_buffer(model_path, restored, step)
    assert restored.size == step and restored.rewards[:step].tolist() == list(map(float, range(step)))
    assert not load_replay_buffer(model_path, _Buffer(), step + 1)  # a step with no buffer: refill


@pytest.mark.parametrize("script", ["diffsac.py", "peers/sdac.py"])
def test_killed_off_policy_run_resumes_with_its_buffer_optimisers_alpha_and_step(tmp_path, monkeypatch, script):
    flags = [
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        "100000",
        "--learning-starts",
        "300",
        "--batch-size",
        "64",
        "--save-model",
        "--checkpoint-frequency",
        "400",
        "--hidden-dim",
        "64",
    ]
    if script.startswith("peers"):
        flags += ["--num-diffusion-steps", "3", "--num-particles", "2", "--num-reconstructions", "4"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, script), *flags],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not glob.glob(str(tmp_path / "runs" / "*" / "*.cleanrl_model")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)
    process.kill()  # kill -9: no handler runs
    process.wait()
    model_path = glob.glob(str(tmp_path / "runs" / "*" / "*.cleanrl_model"))[0]
    saved = torch.load(model_path, weights_only=False)
    saved_buffer = saved_replay_buffer(model_path, saved["global_step"])  # the kill may fall mid-save
    assert saved["global_step"] >= 400 and saved_buffer is not None
    assert saved_buffer["size"] == saved["global_step"] and len(saved_buffer["obs"]) == saved_buffer["size"]

    code = resume_and_stop_at_once(monkeypatch, tmp_path, script, model_path)
    assert code == 128 + signal.SIGTERM
    assert glob.glob(str(tmp_path / "runs" / "*" / "*.cleanrl_model")) == [model_path]  # rewritten in place
    restored = torch.load(model_path, weights_only=False)
    restored_buffer = saved_replay_buffer(model_path, restored["global_step"])
    assert state_equal(restored_buffer, saved_buffer)
    saved.pop("args"), restored.pop("args")  # args differ by --resume only
    assert state_equal(restored, saved)


def test_killed_on_policy_run_resumes_with_its_normaliser_optimiser_and_step(tmp_path, monkeypatch):
    flags = [
        "--env-id",
        "Pendulum-v1",
        "--total-timesteps",
        "1024",
        "--num-steps",
        "512",
        "--save-model",
        "--checkpoint-frequency",
        "1",
        "--num-diffusion-steps",
        "2",
        "--eval-episodes",
        "1",
    ]
    result = run_script([os.path.join(REPO_ROOT, "diffppo.py"), *flags], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model_path = glob.glob(str(tmp_path / "runs" / "*" / "*.cleanrl_model"))[0]
    saved = torch.load(model_path, weights_only=False)
    code = resume_and_stop_at_once(monkeypatch, tmp_path, "diffppo.py", model_path, ["--total-timesteps", "4096"])
    assert code == 128 + signal.SIGTERM
    restored = torch.load(model_path, weights_only=False)
    assert restored["global_step"] == saved["global_step"] == 1024 and restored["iteration"] == saved["iteration"] == 2
    for name in ("agent", "optimizer", "reward_normalizer", "log_alpha", "alpha_optimizer", "obs_normalizer"):
        assert state_equal(restored[name], saved[name]), name  # the environments go on where they were: no reset


# ----------------------------------------------------------------------------------------------
# From the command line: signals, bad input, one log after kill and resume
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signal_number,times", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 2)])
def test_signal_saves_a_checkpoint_and_exits_128_plus_signal(tmp_path, signal_number, times):
    """One signal, or a second Ctrl-C right after the first (absorbed while the checkpoint is written)."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "diffsac.py"),
            "--env-id",
            "Pendulum-v1",
            "--learning-starts",
            "300",
            "--batch-size",
            "64",
            "--save-model",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not glob.glob(str(tmp_path / "runs" / "*" / "events.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    for _ in range(times):
        process.send_signal(signal_number)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number, stderr
    assert "Traceback" not in stderr
    model_path = os.path.join(single_run_dir(tmp_path), "diffsac.cleanrl_model")
    step = torch.load(model_path, weights_only=False)["global_step"]
    assert step > 0 and f"stopped by {signal.Signals(signal_number).name} at step {step}" in stderr
    assert f"--resume {os.path.relpath(model_path, tmp_path)}" in stderr


def test_resume_from_an_older_checkpoint_leaves_one_curve_in_tensorboard(tmp_path):
    """The state a kill -9 leaves, made deterministic: the folder's log runs past the checkpoint's step
    (here: the run went on to 2,000 and its checkpoint is put back to step 1,000). Resuming must drop
    the abandoned 1,000..2,000 segment; without the purge every episode step after 1,000 appears twice."""
    script = os.path.join(REPO_ROOT, "baselines/sac.py")
    flags = [
        "--env-id",
        "Pendulum-v1",
        "--learning-starts",
        "500",
        "--batch-size",
        "64",
        "--hidden-dim",
        "64",
        "--save-model",
        "--eval-episodes",
        "1",
    ]
    assert run_script([script, *flags, "--total-timesteps", "1000"], cwd=tmp_path).returncode == 0
    run_dir = single_run_dir(tmp_path)
    model_path = os.path.join(run_dir, "sac.cleanrl_model")
    saved = {path: open(path, "rb").read() for path in (model_path, model_path + ".replay_buffer")}
    time.sleep(1.1)  # event file names hold the time in seconds
    result = run_script([script, "--resume", model_path, "--total-timesteps", "2000"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for path, content in saved.items():  # back to the step-1,000 checkpoint: 1,000 steps of log abandoned
        with open(path, "wb") as file:
            file.write(content)
    steps, _ = read_scalars(run_dir, "charts/episodic_return")
    assert steps.max() == 2000 and len(steps) == 10  # the abandoned segment is in the log
    time.sleep(1.1)
    result = run_script([script, "--resume", model_path, "--total-timesteps", "1600"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    steps, _ = read_scalars(run_dir, "charts/episodic_return")
    assert steps.tolist() == list(range(200, 1800, 200)), "a step logged twice: the abandoned segment was not purged"
    assert len(glob.glob(os.path.join(run_dir, "*.cleanrl_model"))) == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_are_refused_before_any_work(tmp_path, script):
    float_flag = {
        "diffppo.py": "--learning-rate",
        "baselines/ppo.py": "--learning-rate",
        "diffreppo.py": "--learning-rate",
        "baselines/reppo.py": "--learning-rate",
    }.get(script, "--q-lr")
    # Every float flag and --eval-episodes are checked in-process above; here each script's command line.
    for flags, expected in [
        ([float_flag, "nan", "--eval-episodes", "1"], f"{float_flag} must be a finite number (got nan)"),
        (["--hidden-dim", "10000000", "--env-id", "Pendulum-v1"], "GiB available"),
    ]:
        result = run_script([os.path.join(REPO_ROOT, script), *flags], cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
        assert not os.path.exists(tmp_path / "runs"), flags


def test_a_checkpoint_of_another_script_is_refused_with_both_names(tmp_path):
    diffsac = importlib.import_module("diffsac")
    path = fake_checkpoint(tmp_path / "c.cleanrl_model", "diffsac", diffsac.Args())
    before = os.path.getmtime(path)
    for script in ["diffwpo.py", "diffppo.py", "peers/dpmd.py"]:
        result = run_script([os.path.join(REPO_ROOT, script), "--resume", path], cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"is a checkpoint of diffsac.py, not of {script}" in result.stderr
    assert os.path.getmtime(path) == before and not os.path.exists(tmp_path / "runs")


def submitit_task_pid(root_pid: int) -> int:
    """The descendant of a local submitit job's controller that runs the pickled callable."""
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"submitit.core._submit" in cmdline.read():
                return pid
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            pending += [int(child) for child in children.read().split()]
    raise AssertionError("no submitit task process found")


def test_a_resumed_grid_run_takes_its_target_and_threads_from_the_grid_command_and_nothing_else(tmp_path):
    from benchmarks import grid as benchmark
    from common.cli import CHANGEABLE_ON_RESUME

    args = benchmark.Args(
        scripts=["baselines/sac.py"],
        env_ids=["Pendulum-v1"],
        seeds=[1],
        total_timesteps=3000,
        workdir=str(tmp_path),
        extra="--learning-starts 1000 --torch-threads=2 --save-model --eval-episodes 3 --torch-threads 4",
    )
    run = benchmark.build_grid(args)[0]
    command = benchmark.resume_command(run, "runs/x/sac.cleanrl_model")
    assert command[1:] == [
        run.script,
        "--resume",
        "runs/x/sac.cleanrl_model",
        "--total-timesteps",
        "3000",
        "--torch-threads",
        "4",
        "--eval-episodes",
        "3",
    ]  # the last --torch-threads wins
    # Every carried flag is one the scripts accept on --resume (the others would be refused there).
    assert {flag[2:].replace("-", "_") for flag in benchmark.CARRIED_ON_RESUME} <= set(CHANGEABLE_ON_RESUME)


def test_preempted_submitit_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import submitit

    from benchmarks import grid as benchmark

    monkeypatch.setenv("PYTHONPATH", REPO_ROOT)
    args = benchmark.Args(
        scripts=["baselines/sac.py"],
        env_ids=["Pendulum-v1"],
        seeds=[1],
        total_timesteps=3000,
        workdir=str(tmp_path),
        executor="submitit-local",
        extra="--learning-starts 1000 --batch-size 64 --save-model --checkpoint-frequency 200 --eval-episodes 1",
    )
    run = benchmark.build_grid(args)[0]
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(benchmark.RunJob(), run)
    deadline = time.time() + 180
    while not glob.glob(str(tmp_path / "runs" / "*" / "sac.cleanrl_model")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    # What Slurm does before preempting the job: submitit's signal (USR2) to the job's task, the process
    # that runs RunJob (the local executor's own _interrupt signals its controller, which does not forward it).
    os.kill(submitit_task_pid(job._process.pid), signal.SIGUSR2)
    outcome = job.result()
    assert outcome["returncode"] == 0, open(run.log_path).read()
    log = open(run.log_path).read()
    stopped_at = int(log.split("stopped by SIGTERM at step ")[1].split(":")[0])
    assert 0 < stopped_at < 3000 and f"at step {stopped_at} with {stopped_at} transitions" in log  # resumed there
    assert log.count("$ cd ") == 2 and "--resume " in log.split("$ cd ")[2]
    assert len(glob.glob(str(tmp_path / "runs" / "*"))) == 1 and os.path.isfile(run.marker_path)
    steps, _ = read_scalars(glob.glob(str(tmp_path / "runs" / "*"))[0], "charts/episodic_return")
    assert steps.max() > 3000 - 200 and len(np.unique(steps)) == len(steps)  # 200-step episodes


# ----------------------------------------------------------------------------------------------
# A user's own environment, video, Weights and Biases
# ----------------------------------------------------------------------------------------------
def run_with_tests_importable(args, cwd, extra_env=None):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.path.join(REPO_ROOT, "tests")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        **(extra_env or {}),
    }
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_env_id_module_colon_id_imports_the_users_package_first(tmp_path):
    result = run_with_tests_importable(
        [
            os.path.join(REPO_ROOT, "diffsac.py"),
            "--env-id",
            "user_envs:UserBandit-v0",
            "--total-timesteps",
            "400",
            "--learning-starts",
            "200",
            "--batch-size",
            "32",
            "--save-model",
            "--eval-episodes",
            "2",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "(2 deterministic episodes): mean return" in result.stdout
    checkpoint = glob.glob(str(tmp_path / "runs" / "*" / "diffsac.cleanrl_model"))[0]
    evaluation = run_with_tests_importable(["-m", "common.evaluation", checkpoint, "--episodes", "2"], tmp_path)
    assert evaluation.returncode == 0 and "user_envs:UserBandit-v0" in evaluation.stdout, evaluation.stderr
    missing = run_script(
        [os.path.join(REPO_ROOT, "diffsac.py"), "--env-id", "no_such_package:UserBandit-v0"], cwd=tmp_path
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "cannot import module 'no_such_package'" in missing.stderr


def test_capture_video_on_classic_control_writes_videos(tmp_path):
    result = run_script(
        [
            os.path.join(REPO_ROOT, "baselines/ppo.py"),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "1024",
            "--num-steps",
            "1024",
            "--capture-video",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    videos = glob.glob(str(tmp_path / "videos" / "*" / "*.mp4"))
    assert videos and all(os.path.getsize(path) > 1000 for path in videos)


def test_capture_video_without_the_renderer_is_refused_before_any_folder(tmp_path, monkeypatch):
    from common.envs import make_vector_env

    monkeypatch.setitem(sys.modules, "pygame", None)  # as if pygame were not installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match="--capture-video: rendering Pendulum-v1 needs a package that is not installed"
    ):
        make_vector_env("Pendulum-v1", 1, seed=1, capture_video=True, run_name="x")
    assert not os.path.exists(tmp_path / "videos")


def test_capture_video_without_moviepy_is_one_line_naming_the_package(tmp_path, monkeypatch):
    from common.envs import make_vector_env

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "moviepy" else find_spec(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--capture-video needs the moviepy package, which is not installed: pip"):
        make_vector_env("Pendulum-v1", 1, seed=1, capture_video=True, run_name="x")
    assert not os.path.exists(tmp_path / "videos")


def test_track_logs_to_weights_and_biases_offline(tmp_path):
    result = run_with_tests_importable(
        [
            os.path.join(REPO_ROOT, "baselines/ppo.py"),
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "1024",
            "--num-steps",
            "1024",
            "--track",
            "--wandb-project-name",
            "tests",
            "--capture-video",
        ],
        tmp_path,
        {"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr
    (offline_run,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert glob.glob(os.path.join(offline_run, "files", "runs", "*", "events.out.tfevents.*"))  # TensorBoard synced
    assert glob.glob(os.path.join(offline_run, "files", "media", "videos", "*.mp4"))  # video uploaded
    with open(glob.glob(os.path.join(offline_run, "*.wandb"))[0], "rb") as log:
        content = log.read()
    assert b"wandb_project_name" in content and b"Pendulum-v1" in content  # the flags as config


def test_track_without_wandb_is_one_line_with_the_install_command(monkeypatch):
    baseline_ppo = importlib.import_module("baselines.ppo")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match="--track needs the wandb package, which is not installed: pip install wandb"):
        parse_args(baseline_ppo.Args, "baselines.ppo", baseline_ppo.CHECKS, ["--track"])


@pytest.mark.parametrize(
    "script,flags",
    [
        ("diffppo.py", ["--num-steps", "256"]),
        ("baselines/ppo.py", ["--num-steps", "256"]),
        ("diffreppo.py", ["--num-envs", "2", "--num-steps", "128"]),
        ("baselines/reppo.py", ["--num-envs", "2", "--num-steps", "128"]),
    ],
)
def test_on_policy_checkpoints_come_every_checkpoint_frequency_environment_steps(tmp_path, monkeypatch, script, flags):
    """Rollouts of 256 steps and --checkpoint-frequency 512: checkpoints at 512, 1024 and at the end, 1280 (the
    frequency counts environment steps, as in the off-policy scripts, not iterations)."""
    saved = []

    def save(self, global_step, *args, **kwargs):
        saved.append(global_step)
        self.saved_step = global_step

    module = importlib.import_module(module_of(script))
    monkeypatch.setattr(runs.Run, "save", save)
    monkeypatch.chdir(tmp_path)
    flags += ["--env-id", "Pendulum-v1", "--total-timesteps", "1280", "--checkpoint-frequency", "512", "--save-model"]
    monkeypatch.setattr(sys, "argv", [script, *flags, "--eval-frequency", "0", "--eval-episodes", "1"])
    module.main()
    assert saved == [512, 1024, 1280]


@pytest.mark.parametrize(
    "script,flags,running",
    [
        (
            "baselines/sac.py",
            ["--num-envs", "2", "--total-timesteps", "301", "--learning-starts", "200", "--batch-size", "32"],
            302,
        ),
        ("baselines/ppo.py", ["--num-envs", "2", "--num-steps", "64", "--total-timesteps", "200"], 256),
    ],
)
def test_a_budget_that_is_not_whole_vector_steps_is_rounded_up_with_a_line(
    tmp_path, monkeypatch, capsys, script, flags, running
):
    saved, finish = [], runs.Run.finish

    def finish_and_record(self, global_step, *args, **kwargs):
        saved.append(global_step)
        return finish(self, global_step, *args, **kwargs)

    monkeypatch.setattr(runs.Run, "finish", finish_and_record)
    monkeypatch.chdir(tmp_path)
    flags += ["--env-id", "Pendulum-v1", "--eval-frequency", "0", "--hidden-dim", "16"]
    monkeypatch.setattr(sys, "argv", [script, *flags])
    importlib.import_module(module_of(script)).main()
    out = capsys.readouterr().out
    assert f"--total-timesteps {flags[flags.index('--total-timesteps') + 1]}: running {running}, whole" in out
    assert saved == [running]
    progress = re.findall(r"step +(\d+)/(\d+) \|", out)  # counts to the target it announced
    assert progress and all(int(target) == running for _, target in progress) and int(progress[-1][0]) == running


def test_a_run_folder_that_cannot_be_created_is_one_line_before_training(tmp_path, monkeypatch):
    """As an unwritable runs/ (a permission error where the run folder is made): ConfigError, nothing trained."""
    module = importlib.import_module("baselines.sac")
    real_makedirs = os.makedirs

    def makedirs(path, *args, **kwargs):
        if str(path).startswith("runs"):
            raise PermissionError(13, "Permission denied", path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(runs.os, "makedirs", makedirs)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["baselines/sac.py", "--env-id", "Pendulum-v1", "--eval-frequency", "0"])
    with pytest.raises(ConfigError, match="cannot create the run folder runs/Pendulum-v1__sac__1__.*Permission denied"):
        module.main()
    assert not os.path.exists(tmp_path / "runs")


def test_an_extended_run_summarises_only_its_last_evaluation(tmp_path):
    """1200 -> 1600 -> 2000 steps by --resume with --save-model and 2 evaluation episodes: each evaluation sits at
    its own step, and the summary's final score is the last one's 2 episodes, not a mix of three policies."""
    import benchmarks.summaries as summaries

    flags = ["--env-id", "Pendulum-v1", "--learning-starts", "256", "--batch-size", "64", "--hidden-dim", "32"]
    flags += ["--save-model", "--eval-episodes", "2", "--eval-frequency", "0"]
    script = os.path.join(REPO_ROOT, "baselines/sac.py")
    assert run_script([script, *flags, "--total-timesteps", "1200"], cwd=tmp_path).returncode == 0
    model_path = os.path.join(single_run_dir(tmp_path), "sac.cleanrl_model")
    for total in ("1600", "2000"):
        time.sleep(1.1)  # event file names hold the time in seconds
        resumed = run_script([script, "--resume", model_path, "--total-timesteps", total], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    summary = summaries.summarise_run(single_run_dir(tmp_path), "baselines/sac.py", every=400, window=10, thresholds=[])
    assert sorted(summary["evaluation_at"]) == ["1200", "1600", "2000"]
    assert (
        summary["deterministic_eval_episodes"] == 2
        and summary["deterministic_eval_mean"] == summary["evaluation_at"]["2000"]
    )


@pytest.mark.parametrize(
    "flags,expected",
    [
        *[(["--exp-name", name], "must be a name: not empty, no leading dot") for name in ["", ".x", "../x", "a/b"]],
        (["--exp-name", "a\\b"], "must be a name"),
        (["--exp-name", "module:name"], "must be a name"),
        (["--torch-threads", "100000"], "--torch-threads 100000 exceeds the"),
        (["--total-timesteps", str(10**20)], "--total-timesteps must be at most 2^40"),
    ],
)
def test_the_common_rules_refuse_bad_names_threads_and_budgets(flags, expected):
    """Rules every script shares (common/cli.py's COMMON_CHECKS), so one script stands for all."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_args(importlib.import_module("diffppo").Args, "diffppo", [], flags)


def test_two_runs_of_one_name_and_seed_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = itertools.count()
    monkeypatch.setattr(runs.time, "time", lambda: 1_700_000_000.0 + next(clock) * 1e-6)  # all in one second
    flags = ["--env-id", "Pendulum-v1", "--num-steps", "64", "--num-minibatches", "2", "--total-timesteps", "64"]
    for _ in range(2):
        monkeypatch.setattr(sys, "argv", ["baselines/ppo.py", *flags, "--eval-frequency", "0", "--save-model"])
        importlib.import_module("baselines.ppo").main()
    folders = sorted(glob.glob(str(tmp_path / "runs" / "*")))
    assert len(folders) == 2 and os.path.basename(folders[1]).startswith(os.path.basename(folders[0]))
    assert all(len(glob.glob(os.path.join(folder, "*.cleanrl_model"))) == 1 for folder in folders)
