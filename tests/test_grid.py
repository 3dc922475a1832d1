"""benchmarks.grid (grid runner) from the command line, and the wall-clock of a run read from its logs."""

import json
import os
import shutil
import time

import pytest
from conftest import run_script
from torch.utils.tensorboard import SummaryWriter

TINY_PPO = "--extra=--num-steps 256 --num-minibatches 4 --num-diffusion-steps 2"


def write_synthetic_run(root, env_id, algorithm, seed, returns, duration_s):
    """A run folder whose episodic returns are ``returns`` at steps 100, 200, ...; its events span duration_s."""
    run_dir = os.path.join(root, "runs", f"{env_id}__{algorithm}__{seed}__1700000000")
    writer = SummaryWriter(run_dir)
    start = time.time()
    for index, value in enumerate(returns):
        walltime = start + duration_s * index / (len(returns) - 1)
        writer.add_scalar("charts/episodic_return", value, 100 * (index + 1), walltime=walltime)
    writer.close()
    return run_dir


@pytest.fixture
def synthetic_runs(tmp_path):
    """Two algorithms on one env: diffalg seeds 1, 2 and alg seed 1 with returns known in advance."""
    write_synthetic_run(tmp_path, "Toy-v0", "diffalg", 1, list(range(20)), 120)  # last 10: 10..19, mean 14.5
    write_synthetic_run(tmp_path, "Toy-v0", "diffalg", 2, [value + 10 for value in range(20)], 240)  # mean 24.5
    write_synthetic_run(tmp_path, "Toy-v0", "alg", 1, [5.0] * 30, 30)
    return tmp_path


def test_wall_clock_of_a_resumed_run_leaves_out_the_time_between_stop_and_resume(tmp_path):
    from benchmarks.logs import wall_clock_seconds

    run_dir = tmp_path / "Toy-v0__alg__1__1700000000"
    start = time.time()
    for offset, steps in ((0, range(1, 11)), (86_400, range(11, 21))):  # 90 s, a day's pause, then 90 s more
        writer = SummaryWriter(str(run_dir))  # each process (start, resume) writes its own event file
        for index, step in enumerate(steps):
            writer.add_scalar("charts/episodic_return", 1.0, 100 * step, walltime=start + offset + 10 * index)
        writer.close()
        time.sleep(1.1)  # event file names carry the second they were opened
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    assert wall_clock_seconds(str(run_dir)) == pytest.approx(180)


def test_benchmark_dry_run_prints_commands_and_runs_nothing(tmp_path, repo_root):
    result = run_script(
        [
            "-m",
            "benchmarks.grid",
            "--scripts",
            "diffppo.py",
            "diffsac.py",
            "--env-ids",
            "Pendulum-v1",
            "Hopper-v4",
            "--seeds",
            "1",
            "2",
            "--total-timesteps",
            "1000",
            "--workdir",
            str(tmp_path),
            "--dry-run",
        ],
        cwd=repo_root,
    )
    assert result.returncode == 0, result.stderr
    assert "2 scripts x 2 envs x 2 seeds = 8 runs; 0 already finished, 8 to run" in result.stdout
    commands = [line for line in result.stdout.splitlines() if line.startswith("[run]")]
    assert len(commands) == 8
    assert (
        f"diffsac.py --env-id Hopper-v4 --seed 2 --exp-name diffsac --total-timesteps 1000 > "
        f"{tmp_path}/benchmark_logs/Hopper-v4__diffsac__2.log"
    ) in commands[-1]
    assert not os.path.exists(tmp_path / "runs") and not os.path.exists(tmp_path / "benchmark_logs")


@pytest.mark.parametrize("executor", ["local", "submitit-local"])
def test_benchmark_runs_grid_then_resume_skips_finished_runs(tmp_path, repo_root, executor):
    grid = [
        "-m",
        "benchmarks.grid",
        "--scripts",
        "diffppo.py",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "2",
        "--total-timesteps",
        "512",
        TINY_PPO,
        "--workdir",
        str(tmp_path),
        "--executor",
        executor,
    ]
    result = run_script(grid, cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("[done] Pendulum-v1__diffppo__") == 2
    for seed in (1, 2):
        marker = json.loads((tmp_path / "benchmark_logs" / f"Pendulum-v1__diffppo__{seed}.done.json").read_text())
        assert marker["returncode"] == 0 and os.path.isdir(tmp_path / marker["run_dir"])
        assert marker["run_dir"].startswith(f"runs/Pendulum-v1__diffppo__{seed}__")
        assert "step       512/512" in (tmp_path / "benchmark_logs" / f"Pendulum-v1__diffppo__{seed}.log").read_text()

        summary = json.loads((tmp_path / "summaries" / f"Pendulum-v1__diffppo__{seed}.json").read_text())
        assert (
            summary["seed"] == seed
            and summary["flags"]["total_timesteps"] == "512"
            and summary["script"] == "diffppo.py"
        )
        assert summary["command"].startswith(
            f"python diffppo.py --env-id Pendulum-v1 --seed {seed} --exp-name diffppo "
            "--total-timesteps 512 --num-steps 256"
        )
        assert summary["flags"]["num_diffusion_steps"] == "2" and not summary["resumed"]
        assert set(summary["versions"]) == {"torch", "numpy", "gymnasium", "mujoco", "project"}
        assert summary["machine"]["processor"] and summary["machine"]["cores"] >= 1

    again = run_script(grid + ["--seeds", "1", "2", "3", "--dry-run"], cwd=repo_root)
    assert "3 runs; 2 already finished, 1 to run" in again.stdout
    assert again.stdout.count("[skip, finished]") == 2 and "[run] " in again.stdout

    # The next session: a fresh checkout holds only the committed summaries, and the grid still skips those runs.
    for folder in ("runs", "benchmark_logs"):
        shutil.rmtree(tmp_path / folder)
    next_session = run_script(grid + ["--seeds", "1", "2", "3", "--dry-run"], cwd=repo_root)
    assert "3 runs; 2 already finished, 1 to run" in next_session.stdout, next_session.stdout


def test_benchmark_writes_missing_summaries_of_runs_finished_earlier(tmp_path, repo_root):
    grid = [
        "-m",
        "benchmarks.grid",
        "--scripts",
        "diffppo.py",
        "--env-ids",
        "Pendulum-v1",
        "--seeds",
        "1",
        "--total-timesteps",
        "512",
        TINY_PPO,
        "--workdir",
        str(tmp_path),
        "--summary-every",
        "256",
    ]
    assert run_script(grid, cwd=repo_root).returncode == 0
    summary_path = tmp_path / "summaries" / "Pendulum-v1__diffppo__1.json"
    written = json.loads(summary_path.read_text())
    assert list(written["running_mean_at"]) == ["256", "512"]
    summary_path.unlink()  # as if the run had finished under a version that wrote no summaries
    dry = run_script(grid + ["--dry-run"], cwd=repo_root)
    assert f"[summary, would write] {summary_path}" in dry.stdout and not summary_path.exists()
    again = run_script(grid, cwd=repo_root)
    assert f"[summary] {summary_path}" in again.stdout and "0 to run" in again.stdout
    rewritten = json.loads(summary_path.read_text())
    assert rewritten["running_mean_at"] == written["running_mean_at"]
    marker = json.loads((tmp_path / "benchmark_logs" / "Pendulum-v1__diffppo__1.done.json").read_text())
    assert rewritten["versions"]["project"] == marker["project"]  # the commit that ran it


def test_benchmark_reports_a_failed_run_and_writes_no_marker(tmp_path, repo_root):
    result = run_script(
        [
            "-m",
            "benchmarks.grid",
            "--scripts",
            "diffppo.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "--extra=--num-diffusion-steps 0",
            "--workdir",
            str(tmp_path),
        ],
        cwd=repo_root,
    )
    assert result.returncode == 1
    assert "[FAILED (exit 2)] Pendulum-v1__diffppo__1" in result.stdout
    assert (
        "--num-diffusion-steps must be at least 1"
        in (tmp_path / "benchmark_logs" / "Pendulum-v1__diffppo__1.log").read_text()
    )
    assert not (tmp_path / "benchmark_logs" / "Pendulum-v1__diffppo__1.done.json").exists()


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--scripts", "nope.py"], "--scripts 'nope.py': no such file"),
        (["--env-ids", "Hopper-v9"], "--env-id 'Hopper-v9' is not a registered gymnasium environment"),
        (["--seeds", "1", "1"], "a seed is repeated"),
        (["--extra=--seed 3"], "--extra must not set --exp-name, --seed or --env-id"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workdir", "README.md"], "--workdir README.md is a file; allowed: a folder"),
        (["--executor", "slurm"], "--executor slurm needs a Slurm cluster (no sbatch here)"),
    ],
)
def test_benchmark_bad_input_gives_one_clear_line(tmp_path, repo_root, flags, expected):
    workdir = [] if "--workdir" in flags else ["--workdir", str(tmp_path)]
    result = run_script(["-m", "benchmarks.grid", "--scripts", "diffppo.py", *flags, *workdir], cwd=repo_root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("benchmarks.grid: error:") and expected in result.stderr, result.stderr


def test_run_finished_by_another_grid_meanwhile_is_skipped_unless_rerun(tmp_path):
    from benchmarks.grid import Run, describe, run_one

    # A run whose marker and folder appeared after this grid listed its pending runs; its command would fail if run.
    (tmp_path / "runs" / "Toy-v0__alg__1__1700000000").mkdir(parents=True)
    marker = tmp_path / "Toy-v0__alg__1.done.json"
    marker.write_text(json.dumps({"run_dir": "runs/Toy-v0__alg__1__1700000000"}))
    run = Run(
        str(tmp_path / "missing.py"),
        "Toy-v0",
        1,
        "alg",
        ["python", str(tmp_path / "missing.py")],
        str(tmp_path),
        str(tmp_path / "Toy-v0__alg__1.log"),
        str(marker),
        summary_path=None,
    )
    outcome = run_one(run)
    assert outcome["skipped"] and outcome["returncode"] == 0 and not (tmp_path / "Toy-v0__alg__1.log").exists()
    assert describe(outcome).startswith("[skip, finished meanwhile] Toy-v0__alg__1")

    run.rerun = True  # --rerun-finished runs it again (and here fails: the script does not exist)
    assert run_one(run)["returncode"] != 0
