"""Speed side by side with CleanRL: our scripts and CleanRL's, interleaved in one run, as a ratio.

    CLEANRL=/path/to/cleanrl   # holds ppo_continuous_action.py, sac_continuous_action.py, cleanrl_utils/
    python benchmarks/speed_vs_cleanrl.py --cleanrl-dir $CLEANRL --cleanrl-python /path/to/venv/bin/python \
        --scripts diffppo.py baselines/ppo.py --total-timesteps 20480 --repeats 2

Each of our scripts is paired with the CleanRL script of its family (PPO for diffppo.py and
baselines/ppo.py, SAC for the off-policy ones) and both run with the same environment, seed and
total steps, plus --common flags given to both (e.g. "--num-envs 8 --num-steps 256"). Within a
repeat the pairs run one after the other, ours first on odd repeats and CleanRL first on even
ones, so that a machine that drifts (these drift by 2x from day to day) slows both alike. The
speed of a run is the last SPS it prints (environment steps per second over the whole run); the
table gives each repeat's ratio ours / CleanRL. CleanRL runs in its own virtual environment with
its pinned versions (--cleanrl-python); one torch thread everywhere (OMP_NUM_THREADS=1).
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILY = {
    "diffppo.py": "ppo",
    "baselines/ppo.py": "ppo",
    "diffsac.py": "sac",
    "diffwpo.py": "sac",
    "baselines/sac.py": "sac",
    "baselines/wpo.py": "sac",
}


@dataclass
class Args:
    cleanrl_dir: str
    """folder with CleanRL's ppo_continuous_action.py, sac_continuous_action.py and cleanrl_utils/"""
    cleanrl_python: str = sys.executable
    """the Python of a virtual environment with CleanRL's pinned packages"""
    scripts: list[str] = field(default_factory=lambda: ["diffppo.py"])
    """our scripts to measure (each against the CleanRL script of its family)"""
    env_id: str = "Hopper-v4"
    """the environment id"""
    total_timesteps: int = 20480
    """environment steps of every run"""
    seed: int = 1
    """the seed of every run"""
    repeats: int = 2
    """interleaved repeats of every pair"""
    common: str = ""
    """flags given to both scripts of a pair (e.g. "--num-envs 8 --num-steps 256")"""
    ours_extra: str = ""
    """flags given to our scripts only"""


def last_sps(output: str) -> float:
    rates = re.findall(r"SPS:? (\d+)", output)
    if not rates:
        raise RuntimeError("no SPS line in the output:\n" + output[-2000:])
    return float(rates[-1])


def run(command: list[str], cwd: str, extra_env: dict[str, str] | None = None) -> float:
    print("running:", " ".join(command), flush=True)
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"exit code {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return last_sps(result.stdout)


def main() -> None:
    args = tyro.cli(Args)
    for script in args.scripts:
        if script not in FAMILY:
            raise SystemExit(f"--scripts {script}: allowed: {', '.join(FAMILY)}")
    flags = [
        "--env-id",
        args.env_id,
        "--seed",
        str(args.seed),
        "--total-timesteps",
        str(args.total_timesteps),
        *args.common.split(),
    ]
    scratch = tempfile.mkdtemp(prefix="speed_vs_cleanrl_")
    rows = []
    for repeat in range(1, args.repeats + 1):
        for script in args.scripts:
            cleanrl_script = os.path.join(args.cleanrl_dir, f"{FAMILY[script]}_continuous_action.py")
            ours_command = [sys.executable, os.path.join(REPO_ROOT, script), *flags, *args.ours_extra.split()]
            ours_command += ["--eval-frequency", "0"]  # CleanRL does not evaluate during training

            def ours(command=ours_command):
                return run([*command, "--exp-name", "speed"], scratch)

            def theirs(cleanrl_script=cleanrl_script):
                command = [args.cleanrl_python, cleanrl_script, *flags, "--exp-name", "speed"]
                return run(command, scratch, {"PYTHONPATH": args.cleanrl_dir})

            if repeat % 2:
                ours_sps, theirs_sps = ours(), theirs()
            else:
                theirs_sps, ours_sps = theirs(), ours()
            rows.append((script, FAMILY[script], repeat, ours_sps, theirs_sps))
    print(
        f"\n{args.env_id}, {args.total_timesteps} steps, seed {args.seed}, common flags: {args.common or '-'}, "
        f"ours only: {args.ours_extra or '-'}, torch threads 1"
    )
    print("| our script | CleanRL | repeat | ours, env steps/s | CleanRL, env steps/s | ours / CleanRL |")
    print("|---|---|---|---|---|---|")
    for script, family, repeat, ours_sps, theirs_sps in rows:
        print(
            f"| {script} | {family}_continuous_action.py | {repeat} | {ours_sps:.0f} | {theirs_sps:.0f} | "
            f"{ours_sps / theirs_sps:.2f} |"
        )


if __name__ == "__main__":
    main()
