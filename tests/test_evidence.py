"""benchmarks.evidence: the statistics against independent computations, the verdict rule, and the page rebuild."""

import itertools
import json
import os

import numpy as np
import pytest
from conftest import run_script

from benchmarks import evidence

REFERENCES = {"Hopper-v4": {"random": 0.0, "reference": 1000.0}, "Walker2d-v4": {"random": 100.0, "reference": 2100.0}}


def write_summary(results_dir, grid, env_id, exp_name, seed, evaluation, curve=None):
    folder = os.path.join(results_dir, grid, "summaries")
    os.makedirs(folder, exist_ok=True)
    curve = curve or {str(step): evaluation * step / 500_000 for step in range(5_000, 505_001, 5_000)}
    summary = {
        "env_id": env_id,
        "exp_name": exp_name,
        "seed": seed,
        "deterministic_eval_mean": evaluation,
        "running_mean_at": curve,
        "final_running_mean": evaluation,
        "wall_clock_s": 600.0 + seed,
        "last_step": 501_187,
    }
    with open(os.path.join(folder, f"{env_id}__{exp_name}__{seed}.json"), "w") as file:
        json.dump(summary, file)


def onpolicy_grid(results_dir, evaluations):
    """evaluations: {(env_id, exp_name): [seed 1, seed 2, seed 3]}"""
    for (env_id, exp_name), values in evaluations.items():
        for seed, value in zip((1, 2, 3), values):
            write_summary(results_dir, "onpolicy_500k", env_id, exp_name, seed, value)


def test_interquartile_mean_drops_the_top_and_bottom_quarter():
    scores = np.array([[0.0, 10.0], [1.0, 2.0], [3.0, -5.0]])  # 6 runs: the lowest (-5) and highest (10) are dropped
    assert evidence.interquartile_mean(scores) == pytest.approx(np.mean([0.0, 1.0, 2.0, 3.0]))


def test_probability_of_improvement_equals_pairwise_count_averaged_over_tasks():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) + 0.2
    y[0, 0] = x[1, 0]  # one tie, counted as one half
    by_hand = np.mean(
        [np.mean([(a > b) + 0.5 * (a == b) for a, b in itertools.product(x[:, task], y[:, task])]) for task in range(2)]
    )
    point, low, high = evidence.improvement_probability(x, y)
    assert point == pytest.approx(by_hand) and low <= point <= high


def test_pairwise_count_equals_rliables_mann_whitney_form():
    from rliable import metrics

    rng = np.random.default_rng(2)
    for _ in range(20):
        x, y = rng.integers(0, 4, size=(3, 2)).astype(float), rng.integers(0, 4, size=(5, 2)).astype(float)  # with ties
        assert evidence.pairwise_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))


def test_bootstrap_interval_covers_the_iqm_and_is_reproducible():
    scores = np.random.default_rng(1).normal(size=(5, 2))
    first = evidence.aggregate_with_intervals({"a": scores})["a"]["IQM"]
    assert first == evidence.aggregate_with_intervals({"a": scores})["a"]["IQM"]
    assert first[1] < first[0] < first[2]
    assert first[0] == pytest.approx(evidence.interquartile_mean(scores))


@pytest.mark.parametrize(
    "low,high,expected",
    [(0.6, 0.9, "**reproduced**"), (0.1, 0.4, "**refuted**"), (0.3, 0.8, "not separated"), (0.5, 1.0, "not separated")],
)
def test_verdict_rule(low, high, expected):
    assert evidence.verdict(low, high) == expected
    words = {"**reproduced**": "**X better**", "**refuted**": "**Y better**", "not separated": "not separated"}
    assert evidence.ordering(low, high) == words[expected]  # section tables: same rule, neutral words


def test_a_pair_that_wins_every_seed_on_every_task_is_reproduced_and_the_reverse_refuted(tmp_path):
    onpolicy_grid(
        tmp_path,
        {
            ("Hopper-v4", "diffppo"): [900, 950, 1000],
            ("Hopper-v4", "ppo"): [100, 200, 300],
            ("Walker2d-v4", "diffppo"): [1900, 2000, 2100],
            ("Walker2d-v4", "ppo"): [500, 600, 700],
            ("Hopper-v4", "diffreppo"): [10, 20, 30],
            ("Hopper-v4", "reppo"): [500, 600, 700],
            ("Walker2d-v4", "diffreppo"): [110, 120, 130],
            ("Walker2d-v4", "reppo"): [900, 1000, 1100],
        },
    )
    runs = evidence.load_runs(str(tmp_path), evidence.ONPOLICY)
    text, results = evidence.aggregate_table(runs, evidence.ONPOLICY, REFERENCES)
    assert results[("diffppo", "ppo")][0] == (1.0, 1.0, 1.0)
    assert results[("diffreppo", "reppo")][0] == (0.0, 0.0, 0.0)
    assert "| DiffPPO vs PPO | Hopper, Walker2d | 1.00 [1.00, 1.00] | **X better** |" in text
    assert "| DiffREPPO vs REPPO | Hopper, Walker2d | 0.00 [0.00, 0.00] | **Y better** |" in text
    # The IQM row of DiffPPO: normalised scores 0.9, 0.95, 1.0 (Hopper) and 0.9, 0.95, 1.0 (Walker2d).
    assert "| DiffPPO | Hopper, Walker2d | 6 | 0.95 [" in text


def test_rebuild_fills_the_page_reports_missing_runs_and_is_stable(tmp_path, repo_root):
    results = tmp_path / "results"
    onpolicy_grid(results, {("Hopper-v4", "diffppo"): [900, 950, 1000], ("Hopper-v4", "ppo"): [100, 200, 300]})
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n<!-- generated:claims -->\nold\n<!-- /generated:claims -->\n\ntext kept\n\n"
        "<!-- generated:onpolicy_500k -->\n<!-- /generated:onpolicy_500k -->\n"
    )
    command = ["-m", "benchmarks.evidence", "--pages", str(page), "--results-dir", str(results)]
    assert run_script(command + ["--check"], cwd=repo_root).returncode == 1  # out of date before the first rebuild
    first = run_script(command, cwd=repo_root)
    assert first.returncode == 0, first.stderr
    text = page.read_text()
    assert "text kept" in text and "old" not in text
    assert "6 of 24 runs finished." in text
    assert "| Hopper-v4 | DiffPPO | 3 of 3 | 950.0 (900, 950, 1000) |" in text
    assert "| Walker2d-v4 | DiffPPO | 0 of 3 | not run yet |" in text
    # Hopper alone is complete, and the verdict says it covers Hopper alone.
    assert (
        "DiffPPO vs PPO: P(X > Y) = 1.00 [1.00, 1.00], **reproduced** (Hopper only; Walker2d not measured yet)" in text
    )
    assert "DiffREPPO vs REPPO: not measured yet" in text
    assert "--workdir results/onpolicy_500k" in text
    assert (tmp_path / "evidence_onpolicy_500k.png").stat().st_size > 10_000
    assert run_script(command + ["--check"], cwd=repo_root).returncode == 0
    assert run_script(command, cwd=repo_root).returncode == 0 and page.read_text() == text  # a rebuild changes nothing

    write_summary(results, "onpolicy_500k", "Hopper-v4", "ppo", 1, 2000)  # a new result makes the page out of date
    check = run_script(command + ["--check"], cwd=repo_root)
    assert check.returncode == 1 and f"out of date: {page}: claims, onpolicy_500k" in check.stderr, check.stderr


def test_sample_efficiency_curve_uses_the_recorded_steps_and_has_no_gaps(tmp_path):
    onpolicy_grid(tmp_path, {("Hopper-v4", "diffppo"): [900, 950, 1000], ("Hopper-v4", "ppo"): [100, 200, 300]})
    runs = evidence.load_runs(str(tmp_path), evidence.ONPOLICY)
    steps = evidence.curve_steps(runs, evidence.ONPOLICY, ["diffppo", "ppo"], ["Hopper-v4"])
    assert steps[0] == 5_000 and steps[-1] <= 500_000 and len(steps) >= 30 and all(step % 5_000 == 0 for step in steps)
    curves = evidence.curve_tensor(runs, evidence.ONPOLICY, "diffppo", ["Hopper-v4"], REFERENCES, steps)
    assert curves.shape == (3, 1, len(steps)) and not np.isnan(curves).any()
    assert curves[1, 0, -1] == pytest.approx(950 * steps[-1] / 500_000 / 1000)  # (return - 0) / (1000 - 0)


def test_a_block_the_command_does_not_make_is_refused(tmp_path, repo_root):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated:nonsense -->\n<!-- /generated:nonsense -->\n")
    write_summary(str(tmp_path), "onpolicy_500k", "Hopper-v4", "ppo", 1, 100.0)
    result = run_script(
        ["-m", "benchmarks.evidence", "--pages", str(page), "--results-dir", str(tmp_path)], cwd=repo_root
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "generated blocks this command does not make: nonsense" in result.stderr


def test_k_ablation_borrows_the_k8_runs_of_the_main_grids(tmp_path):
    onpolicy_grid(tmp_path, {("Hopper-v4", "diffppo"): [900, 950, 1000]})
    for seed in (1, 2, 3):
        write_summary(tmp_path, "k_ablation", "Hopper-v4", "diffppo_k1", seed, 100.0 * seed)
    runs = evidence.load_runs(str(tmp_path), evidence.K_ABLATION)
    assert runs[("Hopper-v4", "diffppo_k8", 2)]["deterministic_eval_mean"] == 950
    text, results = evidence.aggregate_table(runs, evidence.K_ABLATION, REFERENCES, per_algorithm=False)
    assert results[("diffppo_k8", "diffppo_k1")][0][0] == 1.0
    table = evidence.variants_table(runs, evidence.K_ABLATION)
    assert "| DiffPPO, K = 4 | 0 of 3 | not run yet |" in table
    assert "| DiffPPO, K = 8 (default) | 3 of 3 | 950.0 (900, 950, 1000) |" in table


def test_a_borrow_limited_to_some_tasks_takes_only_those_tasks_runs_of_the_borrowed_name(tmp_path):
    """The off-policy grid's DiffWPO on Hopper-v4 is the WPO ablation's rolled-out runs; on Walker2d-v4 its own."""
    for seed in (1, 2, 3):
        write_summary(tmp_path, "diffwpo_hopper", "Hopper-v4", "diffwpo_rolled", seed, 100.0 * seed)
        write_summary(tmp_path, "diffwpo_hopper", "Walker2d-v4", "diffwpo_rolled", seed, 7.0)  # not borrowed
        write_summary(tmp_path, "diffwpo_hopper", "Hopper-v4", "diffwpo_k1", seed, 9.0)  # another name
        write_summary(tmp_path, "offpolicy_100k", "Walker2d-v4", "diffwpo", seed, 1000.0 + seed)
    runs = evidence.load_runs(str(tmp_path), evidence.OFFPOLICY)
    assert {key: run["deterministic_eval_mean"] for key, run in runs.items()} == {
        **{("Hopper-v4", "diffwpo", seed): 100.0 * seed for seed in (1, 2, 3)},
        **{("Walker2d-v4", "diffwpo", seed): 1000.0 + seed for seed in (1, 2, 3)},
    }


def test_a_figure_title_names_each_task_once():
    humanoid = evidence.figure_title(evidence.HUMANOID_K, ["Humanoid-v4"])
    assert humanoid == "Diffusion steps K on Humanoid-v4, 1M environment steps: seeds 1, 2, 3"
    offpolicy = evidence.figure_title(evidence.OFFPOLICY, ["Hopper-v4", "Walker2d-v4"])
    assert offpolicy.endswith(": Hopper-v4, Walker2d-v4, seeds 1, 2, 3")


def test_a_variant_table_over_two_environments_has_one_row_per_environment_and_variant(tmp_path):
    grid = {(env, name): [1000, 2000, 3000] for env in ("Hopper-v4", "Walker2d-v4") for name in ("diffreppo", "reppo")}
    onpolicy_grid(tmp_path, grid)
    for seed in (1, 2, 3):
        write_summary(tmp_path, "damdp_wpo", "Hopper-v4", "diffreppo_wpo", seed, 500.0 * seed)
    table = evidence.variants_table(evidence.load_runs(str(tmp_path), evidence.DAMDP_WPO), evidence.DAMDP_WPO)
    rows = table.splitlines()
    assert rows[0].startswith("| environment | variant |") and len(rows) == 2 + 2 * 4  # 2 tasks x 4 variants
    assert "| Hopper-v4 | REPPO --actor-loss wpo: the Gaussian twin of DA-MDP: WPO | 0 of 3 | not run yet" in table
    assert evidence.DAMDP_WPO.pairs[0] == ("diffreppo_wpo", "reppo_wpo")  # the twin comparison comes first
    assert (
        "| Hopper-v4 | DiffREPPO --actor-loss wpo: DA-MDP: WPO as the authors run it | 3 of 3 | 1000.0 (500," in table
    )
    assert (
        "| Walker2d-v4 | DiffREPPO --actor-loss wpo: DA-MDP: WPO as the authors run it | 0 of 3 | not run yet" in table
    )
    assert "| Walker2d-v4 | REPPO (Gaussian twin) | 3 of 3 | 2000.0 (1000, 2000, 3000) |" in table


def test_k_figure_needs_two_values_of_k_and_plots_every_measured_one(tmp_path):
    for seed in (1, 2, 3):
        write_summary(tmp_path, "k_ablation", "Hopper-v4", "diffppo_k1", seed, 100.0 * seed)
    image = tmp_path / "k.png"
    runs = evidence.load_runs(str(tmp_path), evidence.K_ABLATION)
    assert not evidence.k_figure(runs, evidence.K_ABLATION, str(image)) and not image.exists()  # one K is no ablation
    onpolicy_grid(tmp_path, {("Hopper-v4", "diffppo"): [900, 950, 1000]})  # K = 8, borrowed from the on-policy grid
    runs = evidence.load_runs(str(tmp_path), evidence.K_ABLATION)
    assert evidence.k_figure(runs, evidence.K_ABLATION, None)
    assert evidence.k_figure(runs, evidence.K_ABLATION, str(image)) and image.stat().st_size > 10_000


def test_committed_page_is_up_to_date_with_the_committed_summaries(repo_root):
    result = run_script(["-m", "benchmarks.evidence", "--check"], cwd=repo_root)
    assert result.returncode == 0, result.stderr


def test_learning_curves_follow_the_evaluations_where_a_run_evaluated_during_training():
    run = {"running_mean_at": {"5000": 1.0, "10000": 2.0}, "evaluation_at": {"5000": 10.0, "10000": 20.0}}
    assert evidence.curve_value(run, 7000) == 10.0 and evidence.curve_value(run, 10000) == 20.0
    assert evidence.curve_value(run, 4000) is None  # nothing evaluated yet
    final_only = {"running_mean_at": {"5000": 1.0, "10000": 2.0}, "evaluation_at": {"10000": 20.0}}
    assert evidence.curve_value(final_only, 5000) == 1.0  # an older run: the training curve


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--results-dir", "no_such_folder"], "--results-dir no_such_folder: no such folder"),
        (["--pages", "missing.md"], "--pages missing.md: no such file"),
        (["--pages", "."], "--pages .: no such file"),
        (["--no-such-flag"], "Unrecognized options"),
        (["--results-dir", "empty"], "--results-dir empty holds no summaries (NAME/summaries/*.json); nothing written"),
        (["--results-dir", "broken"], "unreadable summaries: broken/grid/summaries/cut_short.json, broken/grid/sum"),
    ],
)
def test_bad_input_to_the_evidence_builder_is_refused_before_any_page_is_written(tmp_path, flags, expected):
    pages = {path: open(path).read() for path in (os.path.join(evidence.REPO_ROOT, "docs", "results.md"),)}
    (tmp_path / "empty" / "grid" / "summaries").mkdir(parents=True)
    write_summary(str(tmp_path / "broken"), "grid", "Hopper-v4", "ppo", 1, 100.0)
    (tmp_path / "broken" / "grid" / "summaries" / "cut_short.json").write_text('{"env_id": "Hop')
    (tmp_path / "broken" / "grid" / "summaries" / "list.json").write_text("[1, 2]")
    result = run_script(["-m", "benchmarks.evidence", *flags], cwd=str(tmp_path))
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert all(open(path).read() == text for path, text in pages.items())
