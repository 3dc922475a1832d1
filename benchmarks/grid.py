"""Run a grid of scripts x environments x seeds, locally or on a Slurm cluster (through submitit).

    python -m benchmarks.grid --scripts diffppo.py baselines/ppo.py \
        --env-ids InvertedPendulum-v4 Hopper-v4 --seeds 1 2 3 --total-timesteps 1000000 \
        --workdir results/ppo_pair --workers 2 --extra="--save-model"
    python -m benchmarks.evidence   # every table and figure of docs/results.md from results/*/summaries

Every run is ``python SCRIPT --env-id ENV --seed S --exp-name NAME [--total-timesteps N] [--extra ...]``
with the working directory --workdir, so its TensorBoard logs land in WORKDIR/runs/ (the
scripts' runs/{env_id}__{exp_name}__{seed}__{time} convention) and its stdout in
WORKDIR/benchmark_logs/{env_id}__{exp_name}__{seed}.log. NAME is the script's file name
without .py plus --exp-suffix (e.g. ``diffppo_k4``). A run that finishes writes a marker
``{env_id}__{exp_name}__{seed}.done.json`` (command, run folder, wall-clock seconds) beside
its log, and a summary WORKDIR/summaries/{env_id}__{exp_name}__{seed}.json (benchmarks/summaries.py:
running means every --summary-every steps, deterministic evaluation, wall-clock, versions, command)
that is small enough to commit. Running the same grid again skips every run that has a summary or a
marker, unless --rerun-finished is given (a run that another grid on the same --workdir finishes
while this one waits is skipped when its turn comes; two grids must not hold the same run at once),
and continues every unfinished run that left a checkpoint
(--save-model in --extra) with ``--resume`` instead of starting it over, taking from this command only
the target and how to run it (CARRIED_ON_RESUME: a rerun with --workers 1 --extra="--save-model
--torch-threads 2" resumes on two threads); so a grid longer than a working day is the same command
run again, in the next session, after committing the summaries.
--dry-run prints the commands and what would be skipped.
On Slurm, a job that is preempted or reaches its time limit is requeued (submitit's checkpointing):
its script is stopped with SIGTERM, saves a checkpoint at the current step, and the requeued job
continues from it.

Executors:
  local           --workers subprocesses at a time on this machine (one torch thread each).
  slurm           one Slurm job per run through submitit (job array, --slurm-array-parallelism
                  at a time); scheduler options: --slurm-partition, --timeout-min, --cpus-per-task,
                  --gpus-per-node, --mem-gb. Waits for the jobs unless --no-wait; submitit's own
                  job logs go to WORKDIR/benchmark_logs/submitit/.
  submitit-local  submitit's local executor: the slurm code path, run as local processes
                  (what the tests use; handy to check a grid before sending it to a cluster).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python benchmarks/grid.py` as well as `python -m benchmarks.grid`
    sys.path.insert(0, REPO_ROOT)

from benchmarks.summaries import project_commit  # noqa: E402
from common.cli import ConfigError, run_cli  # noqa: E402
from common.envs import check_env_id  # noqa: E402

KNOWN_SCRIPTS = [
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


@dataclass
class Args:
    scripts: list[str] = field(default_factory=lambda: ["diffppo.py", "baselines/ppo.py"])
    """training scripts, relative to the repository root (or absolute paths)"""
    env_ids: list[str] = field(default_factory=lambda: ["InvertedPendulum-v4"])
    """environment ids"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds"""
    total_timesteps: int | None = None
    """environment steps per run (default: each script's own default)"""
    extra: str = ""
    """flags passed to every script, e.g. "--num-diffusion-steps 4" (shell-quoted string)"""
    exp_suffix: str = ""
    """appended to each script's name to form --exp-name (e.g. "_k4"), so variants do not collide"""
    workdir: str = "."
    """working directory of the runs: TensorBoard logs go to WORKDIR/runs, stdout to WORKDIR/benchmark_logs"""
    executor: Literal["local", "slurm", "submitit-local"] = "local"
    """where the runs execute"""
    workers: int = 2
    """runs at a time with --executor local"""
    dry_run: bool = False
    """print the commands (and which runs are already finished) without running anything"""
    rerun_finished: bool = False
    """run again the runs that already have a .done.json marker"""
    wait: bool = True
    """with submitit executors: wait for the jobs and print their outcome (--no-wait: submit and exit)"""
    slurm_partition: str | None = None
    """Slurm partition"""
    timeout_min: int = 24 * 60
    """time limit of one job in minutes (submitit executors)"""
    cpus_per_task: int = 2
    """CPUs per job (submitit executors)"""
    gpus_per_node: int = 0
    """GPUs per job (submitit executors; the scripts use CUDA when they see it)"""
    mem_gb: float = 16.0
    """memory per job in GB (submitit executors)"""
    slurm_array_parallelism: int = 64
    """maximum number of jobs of the array running at once on Slurm"""
    summary_every: int = 5000
    """environment steps between the running means recorded in each finished run's summary"""


@dataclass
class Run:
    """One cell of the grid."""

    script: str  # absolute path
    env_id: str
    seed: int
    exp_name: str
    command: list[str]
    workdir: str  # absolute
    log_path: str
    marker_path: str
    summary_path: str | None = (
        None  # WORKDIR/summaries/{key}.json, written when the run finishes (commit it); None: none
    )
    summary_every: int = 5000
    rerun: bool = False  # --rerun-finished: run it even if it has a summary or a marker

    @property
    def key(self) -> str:
        return f"{self.env_id}__{self.exp_name}__{self.seed}"


def validate_args(args: Args) -> None:
    if not args.scripts or not args.env_ids or not args.seeds:
        raise ConfigError("--scripts, --env-ids and --seeds each need at least one value.")
    for script in args.scripts:
        if not os.path.isfile(script if os.path.isabs(script) else os.path.join(REPO_ROOT, script)):
            raise ConfigError(
                f"--scripts {script!r}: no such file (relative paths are read from {REPO_ROOT}); "
                f"allowed: {', '.join(KNOWN_SCRIPTS)} or a path to another script."
            )
    for env_id in args.env_ids:
        check_env_id(env_id)
    stems = [os.path.splitext(os.path.basename(script))[0] for script in args.scripts]
    if len(set(stems)) != len(stems):
        raise ConfigError(
            f"--scripts {' '.join(args.scripts)}: two scripts share a file name; "
            "run them as separate grids with different --exp-suffix."
        )
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated.")
    if {"--exp-name", "--seed", "--env-id"} & {token.split("=")[0] for token in shlex.split(args.extra)}:
        raise ConfigError("--extra must not set --exp-name, --seed or --env-id (the grid sets them; use --exp-suffix).")
    for flag, value in [
        ("--workers", args.workers),
        ("--timeout-min", args.timeout_min),
        ("--cpus-per-task", args.cpus_per_task),
        ("--slurm-array-parallelism", args.slurm_array_parallelism),
    ]:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value}).")
    if args.summary_every < 1:
        raise ConfigError(f"--summary-every must be at least 1 (got {args.summary_every}).")
    if args.total_timesteps is not None and args.total_timesteps < 1:
        raise ConfigError(f"--total-timesteps must be at least 1 (got {args.total_timesteps}).")
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise ConfigError(f"--workdir {args.workdir} is a file; allowed: a folder (made if missing).")
    if args.executor == "slurm" and not args.dry_run and shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm needs a Slurm cluster (no sbatch here); allowed: local, submitit-local.")


def build_grid(args: Args) -> list[Run]:
    """The runs in grid order: environment, then script, then seed."""
    workdir = os.path.abspath(args.workdir)
    log_dir = os.path.join(workdir, "benchmark_logs")
    runs = []
    for env_id in args.env_ids:
        for script in args.scripts:
            script_path = script if os.path.isabs(script) else os.path.join(REPO_ROOT, script)
            exp_name = os.path.splitext(os.path.basename(script))[0] + args.exp_suffix
            for seed in args.seeds:
                command = [sys.executable, script_path, "--env-id", env_id, "--seed", str(seed), "--exp-name", exp_name]
                if args.total_timesteps is not None:
                    command += ["--total-timesteps", str(args.total_timesteps)]
                command += shlex.split(args.extra)
                key = f"{env_id}__{exp_name}__{seed}"
                runs.append(
                    Run(
                        script_path,
                        env_id,
                        seed,
                        exp_name,
                        command,
                        workdir,
                        os.path.join(log_dir, f"{key}.log"),
                        os.path.join(log_dir, f"{key}.done.json"),
                        os.path.join(workdir, "summaries", f"{key}.json"),
                        args.summary_every,
                        args.rerun_finished,
                    )
                )
    return runs


def is_finished(run: Run) -> bool:
    """Its summary exists (committed from an earlier session, say), or a marker whose run folder is still there."""
    if run.summary_path is not None and os.path.isfile(run.summary_path):
        return True
    if not os.path.isfile(run.marker_path):
        return False
    with open(run.marker_path) as marker:
        return os.path.isdir(os.path.join(run.workdir, json.load(marker)["run_dir"]))


def portable_command(command: list[str]) -> str:
    """The run's command as a user types it: `python SCRIPT ...` with the script relative to the repository."""
    script = command[1]
    relative = os.path.relpath(script, REPO_ROOT)
    return shlex.join(["python", script if relative.startswith("..") else relative, *command[2:]])


def write_summary(run: Run, every: int) -> str | None:
    """Write the run's summary (benchmarks/summaries.py) from the folder its marker names; returns its path."""
    from benchmarks.summaries import summarise_run

    with open(run.marker_path) as marker:
        outcome = json.load(marker)
    run_dir = os.path.join(run.workdir, outcome["run_dir"])
    if not os.path.isdir(run_dir):
        return None
    summary = summarise_run(run_dir, os.path.relpath(run.script, REPO_ROOT), every=every, window=10, thresholds=[])
    if "project" in outcome:  # the commit that ran it, which may be older than the one writing the summary
        summary["versions"]["project"] = outcome["project"]
    summary.update(
        command=portable_command(run.command),
        grid_wall_clock_s=outcome["wall_clock_s"],
        finished_at=outcome.get("finished_at"),
        resumed=" --resume " in f" {outcome['command']} ",
    )
    os.makedirs(os.path.dirname(run.summary_path), exist_ok=True)
    temporary = run.summary_path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(summary, file, indent=1)
    os.replace(temporary, run.summary_path)
    return run.summary_path


def newest_run_dir(run: Run, started: float) -> str | None:
    """The run folder runs/{key}__{time} created by this run (time >= its start, newest)."""
    runs_root = os.path.join(run.workdir, "runs")
    if not os.path.isdir(runs_root):
        return None
    candidates = []
    for name in os.listdir(runs_root):
        prefix, _, stamp = name.rpartition("__")
        if prefix == run.key and stamp.isdigit() and int(stamp) >= int(started) - 1:
            candidates.append((int(stamp), name))
    return os.path.join("runs", max(candidates)[1]) if candidates else None


def latest_checkpoint(run: Run) -> str | None:
    """The checkpoint an unfinished earlier attempt of this run left (its newest run folder holding one), if any."""
    runs_root = os.path.join(run.workdir, "runs")
    if not os.path.isdir(runs_root):
        return None
    attempts = []
    for name in os.listdir(runs_root):
        prefix, _, stamp = name.rpartition("__")
        if prefix == run.key and stamp.isdigit():
            attempts.append((int(stamp), name))
    for _, name in sorted(attempts, reverse=True):
        path = os.path.join(runs_root, name, f"{run.exp_name}.cleanrl_model")
        if os.path.isfile(path):
            return path
    return None


# Flags a resumed run takes from this grid's command (the script restores every other flag from its checkpoint):
# the target, and how to run rather than what to compute, e.g. --extra="--save-model --torch-threads 2" on a rerun.
CARRIED_ON_RESUME = ("--total-timesteps", "--torch-threads", "--eval-episodes", "--checkpoint-frequency")


def resume_command(run: Run, checkpoint: str) -> list[str]:
    """Continue a run from its checkpoint with the CARRIED_ON_RESUME flags of the grid's command (last one wins)."""
    carried = {}
    for index, token in enumerate(run.command):
        name, equals, value = token.partition("=")
        if name in CARRIED_ON_RESUME and (equals or index + 1 < len(run.command)):
            carried[name] = value if equals else run.command[index + 1]
    return [sys.executable, run.script, "--resume", checkpoint] + [part for item in carried.items() for part in item]


def run_one(run: Run, job: "RunJob | None" = None) -> dict:
    """Execute one run (blocking), write its marker when it succeeds; returns the outcome.

    A run that an earlier attempt left unfinished with a checkpoint (--save-model) continues from it
    (--resume) instead of starting over; its log is appended to. Module-level so that submitit can
    pickle it by reference on any executor; ``job`` (a RunJob) is told the process so that it can
    stop it on preemption.
    """
    if not run.rerun and is_finished(run):  # finished since this grid started, by another grid sharing the workdir
        return {
            "key": run.key,
            "returncode": 0,
            "wall_clock_s": 0.0,
            "run_dir": None,
            "log": run.log_path,
            "command": shlex.join(run.command),
            "skipped": True,
        }
    os.makedirs(os.path.dirname(run.log_path), exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
    }
    checkpoint = latest_checkpoint(run)
    command = resume_command(run, checkpoint) if checkpoint else run.command
    started, commit = time.time(), project_commit()  # the code that runs is the code at the start
    with open(run.log_path, "a" if checkpoint else "w") as log:
        log.write(f"$ cd {shlex.quote(run.workdir)} && {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=run.workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        if job is not None:
            job.process = process
        returncode = process.wait()
    wall_clock = time.time() - started
    run_dir = os.path.relpath(os.path.dirname(checkpoint), run.workdir) if checkpoint else newest_run_dir(run, started)
    outcome = {
        "key": run.key,
        "returncode": returncode,
        "wall_clock_s": round(wall_clock, 1),
        "run_dir": run_dir,
        "log": run.log_path,
        "command": shlex.join(command),
    }
    if returncode == 0 and outcome["run_dir"] is not None:
        temporary = run.marker_path + ".tmp"
        with open(temporary, "w") as marker:
            json.dump(
                {**outcome, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "project": commit}, marker, indent=1
            )
        os.replace(temporary, run.marker_path)
        outcome["summary"] = write_summary(run, run.summary_every) if run.summary_path is not None else None
    return outcome


class RunJob:
    """One run as a submitit job that survives preemption and timeouts.

    Slurm signals the job before it preempts or kills it; submitit then calls ``checkpoint``, which
    sends SIGTERM to the training script (it saves a checkpoint at the current step and exits 143)
    and requeues the job. The requeued job finds that checkpoint and continues the run (run_one).
    Without --save-model there is no checkpoint and the requeued run starts over.
    """

    def __init__(self):
        self.process: subprocess.Popen | None = None

    def __call__(self, run: Run) -> dict:
        outcome = run_one(run, job=self)
        if outcome["returncode"] in (130, 143):  # the scheduler's SIGTERM reached the script first:
            time.sleep(120)  # give submitit's requeue signal time to arrive (it calls checkpoint and exits)
        return outcome

    def checkpoint(self, run: Run):
        import submitit

        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)  # the script saves its checkpoint and exits
            # Popen.wait cannot be used here: this runs in a signal handler that interrupted run_one's
            # own wait, which holds the Popen's lock; reap the process directly instead.
            deadline = time.time() + 300
            while time.time() < deadline:
                try:
                    if os.waitpid(self.process.pid, os.WNOHANG)[0] != 0:
                        break
                except ChildProcessError:  # already reaped
                    break
                time.sleep(0.2)
            else:
                self.process.kill()
        return submitit.helpers.DelayedSubmission(RunJob(), run)


def describe(outcome: dict) -> str:
    if outcome.get("skipped"):
        return f"[skip, finished meanwhile] {outcome['key']} (another grid finished it after this one started)"
    status = "done" if outcome["returncode"] == 0 else f"FAILED (exit {outcome['returncode']})"
    summary = f", summary {outcome['summary']}" if outcome.get("summary") else ""
    where = f"{outcome['run_dir']} (log {outcome['log']}{summary})"
    return f"[{status}] {outcome['key']} in {outcome['wall_clock_s']:.0f} s -> {where}"


def run_with_submitit(args: Args, pending: list[Run]) -> list[dict]:
    import submitit

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    folder = os.path.join(os.path.abspath(args.workdir), "benchmark_logs", "submitit", "%j")
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.executor == "submitit-local" else "slurm")
    executor.update_parameters(
        name="benchmark",
        timeout_min=args.timeout_min,
        cpus_per_task=args.cpus_per_task,
        gpus_per_node=args.gpus_per_node,
        mem_gb=args.mem_gb,
        slurm_partition=args.slurm_partition,
        slurm_array_parallelism=args.slurm_array_parallelism,
    )
    jobs = executor.map_array(RunJob(), pending)
    for job, run in zip(jobs, pending):
        print(f"[submitted] job {job.job_id}: {run.key}", flush=True)
    if not args.wait:
        print("not waiting (--no-wait); run the same command again later to see what is finished and resubmit the rest")
        return []
    outcomes = []
    for job, run in zip(jobs, pending):
        try:
            outcome = job.result()
        except Exception as error:  # the job itself failed (scheduler, timeout): report it, go on
            outcome = {
                "key": run.key,
                "returncode": -1,
                "wall_clock_s": 0.0,
                "run_dir": None,
                "log": run.log_path,
                "command": shlex.join(run.command),
                "error": str(error).splitlines()[-1] if str(error) else repr(error),
            }
        print(describe(outcome), flush=True)
        outcomes.append(outcome)
    return outcomes


def main() -> None:
    args = tyro.cli(Args)
    validate_args(args)
    runs = build_grid(args)
    for run in runs:  # runs finished before summaries were written at the end of each run (or by an older version)
        if not os.path.isfile(run.summary_path) and is_finished(run):
            print(
                f"[summary, would write] {run.summary_path}"
                if args.dry_run
                else f"[summary] {write_summary(run, args.summary_every)}"
            )
    pending = [run for run in runs if args.rerun_finished or not is_finished(run)]
    workdir = os.path.abspath(args.workdir)
    print(
        f"grid: {len(args.scripts)} scripts x {len(args.env_ids)} envs x {len(args.seeds)} seeds = {len(runs)} runs; "
        f"{len(runs) - len(pending)} already finished, {len(pending)} to run ({args.executor} executor)"
    )
    print(
        f"TensorBoard logs: {os.path.join(workdir, 'runs')}/   "
        f"stdout logs and markers: {os.path.join(workdir, 'benchmark_logs')}/"
    )
    for run in runs:
        tag = "run" if run in pending else "skip, finished"
        print(f"[{tag}] cd {shlex.quote(workdir)} && {shlex.join(run.command)} > {run.log_path}")
    if args.dry_run or not pending:
        return
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)

    if args.executor == "local":
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            outcomes = []
            for outcome in pool.map(run_one, pending):
                print(describe(outcome), flush=True)
                outcomes.append(outcome)
    else:
        outcomes = run_with_submitit(args, pending)

    failed = [outcome for outcome in outcomes if outcome["returncode"] != 0]
    if outcomes:
        print(
            f"{len(outcomes) - len(failed)} runs finished, {len(failed)} failed. "
            f"Summaries: {os.path.join(args.workdir, 'summaries')} (python -m benchmarks.evidence reads them)"
        )
    if failed:
        print("failed: " + ", ".join(f"{outcome['key']} (see {outcome['log']})" for outcome in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Run the importable module's main, so that submitit pickles run_one and Run by reference
    # (benchmarks.grid.run_one) rather than by value from __main__.
    from benchmarks import grid as benchmark

    run_cli(benchmark.main, "benchmarks.grid")
