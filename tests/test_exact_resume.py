"""A run stopped mid-episode by a signal and resumed ends bitwise equal to the same run uninterrupted: parameters,
optimisers, normalisers, counters and replay buffer. One script per family (on-policy, off-policy, REPPO, peers), on a
classic-control and a MuJoCo task. A signal during a long update or a long evaluation ends the run within seconds."""

import glob
import importlib
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_script

from common import runs

PPO = ["--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "2", "--num-diffusion-steps", "2"]
SAC = ["--learning-starts", "200", "--batch-size", "32", "--num-diffusion-steps", "2"]
REPPO = ["--num-envs", "2", "--num-steps", "64", "--minibatch-size", "64", "--update-epochs", "2"]
PEERS = ["--learning-starts", "200", "--batch-size", "32", "--hidden-dim", "32", "--num-particles", "2"]
CASES = [  # (script, flags, total steps, the step after which a SIGTERM arrives)
    ("diffppo.py", PPO, 512, 300),
    ("diffsac.py", SAC, 500, 150),  # during the random warm-up steps
    ("diffreppo.py", [*REPPO, "--num-diffusion-steps", "2"], 512, 300),
    ("peers/dpmd.py", [*PEERS, "--num-diffusion-steps", "3", "--num-envs", "2"], 500, 333),
]


def tensors_equal(a, b, where="") -> list[str]:
    """The paths at which two checkpoints' contents differ."""
    if isinstance(a, dict):
        keys = (a.keys() | b.keys()) - {"episode_start_times"}  # the wall-clock time of each episode's start
        return [d for key in keys for d in tensors_equal(a.get(key), b.get(key), f"{where}.{key}")]
    if isinstance(a, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in tensors_equal(x, y, f"{where}[{i}]")]
    if where.endswith("mj_data"):  # MuJoCo's state, less its profiling timers (wall-clock)
        return tensors_equal(simulator_arrays(a), simulator_arrays(b), where)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if torch.equal(a, b) else [where]
    if isinstance(a, np.ndarray):
        return [] if np.array_equal(a, b) else [where]
    return [] if a == b else [where]


def simulator_arrays(mj_data: bytes) -> dict:
    data = pickle.loads(mj_data)
    names = [name for name in dir(data) if not name.startswith("_") and name != "timer"]
    return {name: getattr(data, name) for name in names if isinstance(getattr(data, name), (np.ndarray, int, float))}


def stop_in_process(monkeypatch, tmp_path, script, argv, stop_after):
    """Run ``script`` in this process and send it a SIGTERM (as the handler records one) after ``stop_after`` steps."""
    episodes = runs.Run.episodes

    def episodes_then_a_signal(self, infos, global_step):
        episodes(self, infos, global_step)
        if global_step >= stop_after and self.stop is None:
            self.request_stop(signal.SIGTERM)

    monkeypatch.setattr(runs.Run, "episodes", episodes_then_a_signal)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    module = importlib.import_module(script[: -len(".py")].replace("/", "."))
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    monkeypatch.undo()
    return exit_info.value.code


def load(path):
    checkpoint = torch.load(path, weights_only=False)
    buffer = path + ".replay_buffer"
    replay_buffer = torch.load(buffer, weights_only=False) if os.path.exists(buffer) else None
    return {key: value for key, value in checkpoint.items() if key not in ("args", "run_name")}, replay_buffer


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v4"])
@pytest.mark.parametrize("script,flags,total,stop_after", CASES, ids=[case[0] for case in CASES])
def test_a_run_stopped_mid_episode_and_resumed_is_bitwise_the_uninterrupted_run(
    tmp_path, monkeypatch, repo_root, env_id, script, flags, total, stop_after
):
    common = ["--env-id", env_id, *flags, "--save-model", "--eval-episodes", "1", "--eval-frequency", "0"]
    common += ["--total-timesteps", str(total)]
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = run_script([os.path.join(repo_root, script), *common], cwd=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    assert stop_in_process(monkeypatch, tmp_path / "stopped", script, common, stop_after) == 128 + signal.SIGTERM
    (path,) = glob.glob(str(tmp_path / "stopped" / "runs" / "*" / "*.cleanrl_model"))
    stopped = torch.load(path, weights_only=False)
    assert stopped["global_step"] < total  # on-policy: the step at which the stopped iteration began
    time_limits = [task["wrappers"][0]["_elapsed_steps"] for task in stopped["environment"]["tasks"]]
    assert any(elapsed > 0 for elapsed in time_limits), "the stop should fall inside an episode"

    resumed = run_script([os.path.join(repo_root, script), "--resume", path], cwd=tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr
    assert "not bitwise" not in resumed.stdout
    (straight_path,) = glob.glob(str(tmp_path / "straight" / "runs" / "*" / "*.cleanrl_model"))
    assert tensors_equal(load(straight_path), load(path)) == []


def test_a_task_whose_state_cannot_be_saved_resumes_on_new_episodes_and_says_so(tmp_path, repo_root):
    """A user's environment (tests/user_envs.py): its state is not captured, so the resumed run says it starts new
    episodes and is not bitwise the uninterrupted one."""
    flags = ["--env-id", "user_envs:UserBandit-v0", *PPO, "--save-model", "--total-timesteps", "256"]
    first = run_script([os.path.join(repo_root, "diffppo.py"), *flags], cwd=tmp_path, user_envs=True)
    assert first.returncode == 0, first.stderr
    (path,) = glob.glob(str(tmp_path / "runs" / "*" / "*.cleanrl_model"))
    assert torch.load(path, weights_only=False)["environment"] is None
    resumed = run_script(
        [os.path.join(repo_root, "diffppo.py"), "--resume", path, "--total-timesteps", "512"],
        cwd=tmp_path,
        user_envs=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "continues on new episodes and is not bitwise the uninterrupted one" in resumed.stdout


def test_a_signal_during_an_update_stops_at_once_with_the_iterations_start_and_resumes_bitwise(
    tmp_path, monkeypatch, repo_root
):
    common = ["--env-id", "Pendulum-v1", *PPO, "--save-model", "--eval-frequency", "0", "--total-timesteps", "512"]
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = run_script([os.path.join(repo_root, "diffppo.py"), *common], cwd=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    runs_seen, optimiser_steps = [], []
    keep, adam_step = runs.Run.keep, torch.optim.Adam.step

    def keep_and_remember(self, global_step, **extra):
        runs_seen.append(self)
        keep(self, global_step, **extra)

    def step_then_a_signal(self, *args, **kwargs):  # the third minibatch of the second iteration: 8 per iteration
        optimiser_steps.append(1)
        if len(optimiser_steps) == 11:
            runs_seen[-1].request_stop(signal.SIGTERM)
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(runs.Run, "keep", keep_and_remember)
    monkeypatch.setattr(torch.optim.Adam, "step", step_then_a_signal)
    monkeypatch.chdir(tmp_path / "stopped")
    monkeypatch.setattr(sys, "argv", ["diffppo.py", *common])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module("diffppo").main()
    monkeypatch.undo()
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert len(optimiser_steps) == 11  # no step after the signal
    (path,) = glob.glob(str(tmp_path / "stopped" / "runs" / "*" / "*.cleanrl_model"))
    assert torch.load(path, weights_only=False)["global_step"] == 128

    resumed = run_script([os.path.join(repo_root, "diffppo.py"), "--resume", path], cwd=tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stderr
    (straight_path,) = glob.glob(str(tmp_path / "straight" / "runs" / "*" / "*.cleanrl_model"))
    assert tensors_equal(load(straight_path), load(path)) == []


def seconds_from_sigterm_to_exit(tmp_path, flags, wait_for: str, delay: float) -> tuple[float, int]:
    """Start diffppo.py, send SIGTERM ``delay`` seconds after ``wait_for`` appears in its output, time the exit."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT}/tests", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "diffppo.py"), *flags],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if wait_for in line:
            break
    time.sleep(delay)
    start = time.time()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    return time.time() - start, process.returncode


@pytest.mark.parametrize(
    "case,flags,wait_for",
    [
        ("update", ["--env-id", "Pendulum-v1", "--update-epochs", "100000", "--eval-frequency", "0"], "run folder"),
        (
            "evaluation",
            ["--env-id", "user_envs:EndlessWalk-v0", "--update-epochs", "1", "--eval-frequency", "128"],
            "run folder",
        ),
    ],
)
def test_sigterm_during_a_long_update_or_evaluation_ends_the_run_within_seconds_with_a_checkpoint(
    tmp_path, case, flags, wait_for
):
    """The update: 100,000 epochs; the evaluation (at step 128, within a second of the start): episodes without a
    time limit, each capped at 10,000 steps."""
    flags = [*flags, "--num-steps", "128", "--num-minibatches", "4", "--num-diffusion-steps", "2", "--save-model"]
    seconds, code = seconds_from_sigterm_to_exit(tmp_path, [*flags, "--total-timesteps", "1024"], wait_for, 5.0)
    assert code == 128 + signal.SIGTERM
    assert seconds < 10, f"{case}: {seconds:.1f} s from SIGTERM to exit"
    assert glob.glob(str(tmp_path / "runs" / "*" / "*.cleanrl_model"))
