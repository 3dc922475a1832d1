"""benchmarks/summaries.py: the summary of a run equals what its event file says."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("summaries", os.path.join(ROOT, "benchmarks", "summaries.py"))
summaries = importlib.util.module_from_spec(spec)
sys.modules["summaries"] = summaries  # dataclasses look their module up there
spec.loader.exec_module(summaries)


@pytest.fixture
def fake_run(tmp_path):
    run_dir = tmp_path / "Hopper-v4__algo_check__3__123"
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n|seed|3|\n|learning_rate|0.0003|")
    returns = np.arange(1, 31, dtype=float) * 10.0  # episode i (1..30) ends at step 10,000 i with return 10 i
    for index, value in enumerate(returns, start=1):
        writer.add_scalar("charts/episodic_return", value, 10_000 * index)
    for step, values in [(100_000, [10.0, 20.0]), (200_000, [500.0, 700.0]), (300_000, [990.0, 1000.0])]:
        for value in values:  # the episodes of one evaluation share its step
            writer.add_scalar("eval/episodic_return", value, step)
    writer.close()
    return str(run_dir), returns


def test_running_means_at_steps_and_first_crossing_match_a_direct_computation(fake_run):
    run_dir, returns = fake_run
    summary = summaries.summarise_run(run_dir, "algo.py", every=50_000, window=10, thresholds=[100.0, 1e9])
    # the 10-episode mean at 50k is that of episodes 1..5 (fewer than 10 so far), at 150k of episodes 6..15.
    assert summary["running_mean_at"]["50000"] == pytest.approx(np.mean(returns[:5]))
    assert summary["running_mean_at"]["150000"] == pytest.approx(np.mean(returns[5:15]))
    assert summary["final_running_mean"] == pytest.approx(np.mean(returns[-10:]))
    # mean of episodes max(1, i-9)..i reaches 100 first at i = 15 (mean of 60..150 = 105).
    assert summary["first_step_reaching"] == {"100": 150_000, "1e+09": None}
    assert (summary["env_id"], summary["exp_name"], summary["seed"]) == ("Hopper-v4", "algo_check", 3)
    assert summary["flags"] == {"seed": "3", "learning_rate": "0.0003"}
    assert summary["episodes"] == 30 and summary["last_step"] == 300_000
    assert summary["deterministic_eval_mean"] == 995.0 and summary["deterministic_eval_episodes"] == 2  # the last
    assert summary["evaluation_at"] == {"100000": 15.0, "200000": 600.0, "300000": 995.0}
    assert summary["last_three_evaluations_mean"] == pytest.approx((15.0 + 600.0 + 995.0) / 3, abs=0.05)
    assert summary["stochastic_eval_mean"] is None and summary["stochastic_evaluation_at"] == {}  # none logged


def test_stochastic_evaluations_are_summarised_apart_from_the_deterministic_ones(fake_run):
    run_dir, _ = fake_run
    writer = SummaryWriter(run_dir)
    for step, values in [(100_000, [1.0, 3.0]), (300_000, [40.0, 60.0, 80.0])]:
        for value in values:
            writer.add_scalar("eval/stochastic_episodic_return", value, step)
    writer.close()
    summary = summaries.summarise_run(run_dir, "algo.py", every=50_000, window=10, thresholds=[])
    assert summary["stochastic_eval_mean"] == 60.0 and summary["stochastic_evaluation_at"] == {
        "100000": 2.0,
        "300000": 60.0,
    }
    assert summary["deterministic_eval_mean"] == 995.0  # unchanged by the stochastic episodes


def test_table_shows_each_seed_and_the_mean_over_seeds(fake_run, tmp_path):
    run_dir, _ = fake_run
    paths = []
    for seed, shift in [(1, 0.0), (2, 10.0)]:
        summary = summaries.summarise_run(run_dir, "algo.py", every=100_000, window=10, thresholds=[])
        summary["seed"] = seed
        summary["running_mean_at"] = {k: v + shift for k, v in summary["running_mean_at"].items()}
        path = tmp_path / f"{seed}.json"
        path.write_text(json.dumps(summary))
        paths.append(str(path))
    text = summaries.table(paths, [100_000])
    rows = [line for line in text.splitlines() if "algo_check" in line]
    assert [row.split("|")[3].strip() for row in rows] == ["1", "2", "mean"]
    assert rows[0].split("|")[4].strip() == "55.0" and rows[1].split("|")[4].strip() == "65.0"
    assert rows[2].split("|")[4].strip() == "**60.0**"
    assert rows[0].split("|")[6].strip() == "995.0"  # the deterministic evaluation column
