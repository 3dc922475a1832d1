"""Helpers for running the scripts as a user would: a subprocess from a scratch folder."""

import glob
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(args: list[str], cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python <args>`` with the repository importable; returns the finished process (text output)."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def single_run_dir(cwd: str) -> str:
    runs = glob.glob(os.path.join(cwd, "runs", "*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT
