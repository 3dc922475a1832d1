"""The evidence: every generated table and figure of docs/results.md, rebuilt from committed run summaries.

    python -m benchmarks.evidence            # rewrite the generated blocks of the docs and README, and the figures
    python -m benchmarks.evidence --check    # exit 1, naming the blocks, if a page differs from what the summaries give

The experiments are declared below (EXPERIMENTS): each is one grid of benchmarks/grid.py whose finished runs
left summaries in results/NAME/summaries/ (a K ablation also reads its K = 8 runs from the main grids). A
run's score is the mean return of the deterministic evaluation episodes at its end (the noise-free chain or
the Gaussian mean, observation statistics frozen: --save-model), normalised per task as
(return - random) / (reference - random) with benchmarks/reference_scores.json. The statistics are
rliable's (Agarwal et al., 2021): interquartile mean (IQM) and mean over all runs of all tasks, 95%
stratified-bootstrap confidence intervals (seeds resampled within each task), performance profiles, and
the probability of improvement P(X > Y) (the Mann-Whitney statistic per task, averaged over tasks) with
its bootstrap interval. Sample-efficiency curves use the training episodes' 10-episode running mean at
fixed steps (the summaries' running_mean_at), normalised the same way, IQM over runs with the same
bootstrap band. Bootstrap draws are seeded, so a rebuild of unchanged summaries rewrites identical text.

A claim's verdict follows one rule: "reproduced" when the 95% interval of the probability of
improvement lies above 0.5, "refuted" when it lies below, "not separated" otherwise (too few seeds or
too small a difference to tell at this budget), and "not measured yet" with the command when its runs
are missing. The comparison tables inside each section apply the same rule in neutral words ("X better",
"Y better", "not separated"), since most of their pairs are diagnostics, not claims.
Blocks in the page are delimited by <!-- generated:NAME --> ... <!-- /generated:NAME -->.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import tyro

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from common.cli import ConfigError, run_cli  # noqa: E402

REFERENCE_SCORES = os.path.join(REPO_ROOT, "benchmarks", "reference_scores.json")
BOOTSTRAP_REPS = 5000  # stratified-bootstrap draws for the IQM, mean and P(X > Y) intervals (curves and profiles: 1000)
LABELS = {
    "diffppo": "DiffPPO",
    "ppo": "PPO",
    "diffreppo": "DiffREPPO",
    "reppo": "REPPO",
    "diffsac": "DiffSAC",
    "sac": "SAC",
    "diffwpo": "DiffWPO",
    "wpo": "WPO",
    "dpmd": "DPMD",
    "sdac": "SDAC",
}


def label(name: str) -> str:
    """diffppo -> DiffPPO, diffppo_k4 -> DiffPPO K=4, diffwpo_nofisher -> DiffWPO (nofisher)."""
    stem, _, suffix = name.partition("_")
    if re.fullmatch(r"k\d+", suffix):
        return f"{LABELS.get(stem, stem)} K={suffix[1:]}"
    if re.fullmatch(r"\w+_k\d+", suffix):  # a cell of a factorial over K: diffppo_langevin_k8 -> DiffPPO K=8 (langevin)
        variant, k = suffix.rsplit("_k", 1)
        return f"{LABELS.get(stem, stem)} K={k} ({variant})"
    return LABELS.get(stem, stem) + (f" ({suffix})" if suffix else "")


@dataclass(frozen=True)
class Experiment:
    name: str  # results/NAME/summaries, the page's generated:NAME blocks and docs/evidence_NAME.png
    title: str
    algorithms: tuple[str, ...]  # exp names (script stem + grid --exp-suffix)
    pairs: tuple[tuple[str, str], ...]  # (challenger, baseline) for the probability of improvement
    env_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: tuple[int, ...]  # training running-mean columns of the runs table
    commands: tuple[str, ...]  # what makes the runs on a 2-core CPU machine
    cluster_command: str  # the same study at paper scale
    # exp name here -> (experiment, exp name there) or (experiment, exp name there, only these tasks)
    borrowed: dict[str, tuple] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)  # an ablation: exp name -> what differs (one table row each)


ONPOLICY = Experiment(
    "onpolicy_500k",
    "On-policy pairs, 500k environment steps",
    ("diffppo", "ppo", "diffreppo", "reppo"),
    (("diffppo", "ppo"), ("diffreppo", "reppo"), ("diffreppo", "diffppo"), ("diffreppo", "ppo")),
    ("Hopper-v4", "Walker2d-v4"),
    (1, 2, 3),
    (100_000, 250_000, 500_000),
    (
        "python -m benchmarks.grid --scripts diffreppo.py baselines/reppo.py diffppo.py baselines/ppo.py "
        "--env-ids Hopper-v4 Walker2d-v4 --seeds 1 2 3 --total-timesteps 501760 --workdir results/onpolicy_500k "
        '--workers 2 --extra="--save-model"',
    ),
    "python -m benchmarks.grid --scripts diffreppo.py baselines/reppo.py diffppo.py baselines/ppo.py --env-ids "
    "Hopper-v4 Walker2d-v4 HalfCheetah-v4 Humanoid-v4 InvertedPendulum-v4 --seeds 1 2 3 4 5 --total-timesteps 1000000 "
    "--workdir results/onpolicy_1m --executor slurm --slurm-partition <partition> --gpus-per-node 1 "
    '--extra="--save-model"',
)
OFFPOLICY = Experiment(
    "offpolicy_100k",
    "Off-policy pairs and the peers, 100k environment steps",
    ("diffsac", "sac", "diffwpo", "wpo", "dpmd", "sdac"),
    (("diffsac", "sac"), ("diffwpo", "wpo"), ("dpmd", "sac"), ("sdac", "sac")),
    ("Hopper-v4", "Walker2d-v4"),
    (1, 2, 3),
    (25_000, 50_000, 100_000),
    tuple(
        f"python -m benchmarks.grid --scripts {scripts} --env-ids Hopper-v4 Walker2d-v4 --seeds 1 2 3 "
        '--total-timesteps 100000 --workdir results/offpolicy_100k --workers 2 --extra="--save-model"'
        for scripts in ("diffsac.py baselines/sac.py diffwpo.py baselines/wpo.py", "peers/dpmd.py peers/sdac.py")
    ),
    "python -m benchmarks.grid --scripts diffsac.py baselines/sac.py diffwpo.py baselines/wpo.py peers/dpmd.py "
    "peers/sdac.py --env-ids Hopper-v4 Walker2d-v4 HalfCheetah-v4 Humanoid-v4 InvertedPendulum-v4 --seeds 1 2 3 4 5 "
    "--total-timesteps 1000000 --workdir results/offpolicy_1m --executor slurm --slurm-partition <partition> "
    '--gpus-per-node 1 --extra="--save-model"',
    borrowed={"diffwpo": ("diffwpo_hopper", "diffwpo_rolled", ("Hopper-v4",))},
)
K_ABLATION = Experiment(
    "k_ablation",
    "Number of diffusion steps K, Hopper-v4",
    ("diffppo_k1", "diffppo_k2", "diffppo_k4", "diffppo_k8", "diffppo_k16", "diffsac_k1", "diffsac_k4", "diffsac_k8"),
    (
        ("diffppo_k8", "diffppo_k1"),
        ("diffppo_k16", "diffppo_k8"),
        ("diffsac_k8", "diffsac_k1"),
        ("diffsac_k4", "diffsac_k1"),
        ("diffsac_k8", "diffsac_k4"),
    ),
    ("Hopper-v4",),
    (1, 2, 3),
    (100_000, 250_000, 500_000),
    tuple(
        f"python -m benchmarks.grid --scripts diffppo.py --env-ids Hopper-v4 --seeds 1 2 3 --total-timesteps 501760 "
        f'--workdir results/k_ablation --exp-suffix _k{k} --workers 2 --extra="--save-model --num-diffusion-steps {k}"'
        for k in (1, 2, 4, 16)
    )
    + tuple(
        f"python -m benchmarks.grid --scripts diffsac.py --env-ids Hopper-v4 --seeds 1 2 3 --total-timesteps 100000 "
        f'--workdir results/k_ablation --exp-suffix _k{k} --workers 2 --extra="--save-model --num-diffusion-steps {k}"'
        for k in (1, 4)
    ),
    "the same commands with --total-timesteps 1000000, the five tasks of the grids above and --executor slurm",
    borrowed={"diffppo_k8": ("onpolicy_500k", "diffppo"), "diffsac_k8": ("offpolicy_100k", "diffsac")},
    variants={
        f"{script}_k{k}": f"{label(script)}, K = {k}" + (" (default)" if k == 8 else "")
        for script, ks in (("diffppo", (1, 2, 4, 8, 16)), ("diffsac", (1, 4, 8)))
        for k in ks
    },
)
WPO_ABLATION = Experiment(
    "diffwpo_hopper",
    "Why DiffWPO was slow on Hopper-v4",
    (
        "diffsac",
        "diffwpo_innercritics",
        "diffwpo_rollout",
        "diffwpo_last256",
        "diffwpo_allsteps",
        "diffwpo_k1",
        "diffwpo_nofisher",
        "diffwpo_rollout_nofisher",
        "diffwpo_rolled",
        "diffwpo",
        "wpo",
        "sac",
    ),
    (
        ("diffsac", "diffwpo_innercritics"),
        ("diffwpo_rollout", "diffwpo_innercritics"),
        ("diffsac", "diffwpo_rollout"),
        ("diffwpo_last256", "diffwpo_innercritics"),
        ("diffsac", "diffwpo_last256"),
        ("diffwpo_allsteps", "diffwpo_innercritics"),
        ("diffsac", "diffwpo_allsteps"),
        ("diffwpo_k1", "diffwpo_innercritics"),
        ("diffsac", "diffwpo_k1"),
        ("diffwpo_nofisher", "diffwpo_innercritics"),
        ("diffwpo_rollout_nofisher", "diffwpo_rollout"),
        ("diffwpo_rollout_nofisher", "diffwpo_nofisher"),
        ("diffsac", "diffwpo_rollout_nofisher"),
        ("diffwpo_rolled", "diffwpo_innercritics"),
        ("diffsac", "diffwpo_rolled"),
        ("diffsac", "diffwpo"),
        ("sac", "wpo"),
    ),
    ("Hopper-v4",),
    (1, 2, 3),
    (25_000, 50_000, 100_000),
    tuple(
        f"python -m benchmarks.grid --scripts diffwpo.py --env-ids Hopper-v4 --seeds 1 2 3 --total-timesteps 100000 "
        f'--workdir results/diffwpo_hopper --exp-suffix {suffix} --workers 2 --extra="--save-model {flags}"'
        for suffix, flags in (
            ("_rollout", "--inner-velocity rollout"),
            ("_last256", "--last-step-samples 224"),
            ("_allsteps", "--actor-all-steps"),
            ("_k1", "--num-diffusion-steps 1"),
            ("_nofisher", "--no-fisher-preconditioner"),
            ("_rollout_nofisher", "--inner-velocity rollout --no-fisher-preconditioner"),
            ("_rolled", "--rolled-out-velocity"),
        )
    )
    + (
        "python -m benchmarks.grid --scripts diffwpo.py --env-ids Hopper-v4 --seeds 1 2 3 --total-timesteps 100000 "
        '--workdir results/diffwpo_hopper --workers 2 --extra="--save-model"',
    ),
    "the same commands with --total-timesteps 1000000 and --executor slurm",
    borrowed={
        "diffwpo_innercritics": ("diffwpo_inner_critics", "diffwpo"),
        **{name: ("offpolicy_100k", name) for name in ("diffsac", "wpo", "sac")},
    },
    variants={
        "diffsac": "DiffSAC, K = 8 (the bar)",
        "diffwpo_innercritics": "DiffWPO, K = 8, first form: learned inner critics Q_k, one drawn step per chain",
        "diffwpo_rollout": "first form, --inner-velocity rollout: inner steps follow a roll-out's gradient, not Q_k's",
        "diffwpo_last256": "first form, --last-step-samples 224: the k = 1 critic sees 256 rewarded samples per update",
        "diffwpo_allsteps": "first form, --actor-all-steps: each kernel's actor step sees the whole batch, not 1/K",
        "diffwpo_k1": "first form, K = 1: one kernel, every critic sample carries a reward",
        "diffwpo_nofisher": "first form, --no-fisher-preconditioner",
        "diffwpo_rollout_nofisher": "first form, --inner-velocity rollout --no-fisher-preconditioner",
        "diffwpo_rolled": "--rolled-out-velocity, now the default: every step follows one roll-out to the k = 1 "
        "critic, critics at k = 1 only",
        "diffwpo": "DiffWPO, K = 8, the current script: the same update, other random streams",
        "wpo": "WPO (Gaussian twin)",
        "sac": "SAC (Gaussian)",
    },
)
HUMANOID_K = Experiment(
    "humanoid_k",
    "Diffusion steps K on Humanoid-v4, 1M environment steps",
    ("diffppo_k1", "diffppo_k4", "diffppo_k8", "diffppo_k16", "ppo"),
    (("diffppo_k8", "diffppo_k1"), ("diffppo_k16", "diffppo_k8"), ("diffppo_k4", "diffppo_k1"), ("diffppo_k8", "ppo")),
    ("Humanoid-v4",),
    (1, 2, 3),
    (250_000, 500_000, 1_000_000),
    tuple(
        "python -m benchmarks.grid --scripts diffppo.py --env-ids Humanoid-v4 --seeds 1 2 3 "
        f'--workdir results/humanoid_k --exp-suffix _k{k} --workers 2 --extra="--save-model --num-diffusion-steps {k}"'
        for k in (1, 4, 8, 16)
    )
    + (
        "python -m benchmarks.grid --scripts baselines/ppo.py --env-ids Humanoid-v4 --seeds 1 2 3 "
        '--workdir results/humanoid_k --workers 2 --extra="--save-model"',
    ),
    "for k in 1 4 8 16; do python -m benchmarks.grid --scripts diffsac.py diffwpo.py --env-ids Humanoid-v4 "
    "--seeds 1 2 3 4 --workdir results/humanoid_k_offpolicy --exp-suffix _k$k --executor slurm "
    '--slurm-partition <partition> --gpus-per-node 1 --extra="--save-model --num-diffusion-steps $k"; done; '
    "python -m benchmarks.grid --scripts "
    "baselines/sac.py baselines/wpo.py --env-ids Humanoid-v4 --seeds 1 2 3 4 --workdir results/humanoid_k_offpolicy "
    '--executor slurm --slurm-partition <partition> --gpus-per-node 1 --extra="--save-model"',
)


def diffreppo_variant(
    name: str,
    title: str,
    suffix: str,
    flags: str,
    variants: dict[str, str],
    env_ids: tuple[str, ...] = ("Hopper-v4",),
    with_twin: bool = False,
) -> Experiment:
    """A DiffREPPO variant at the on-policy grid's budget, beside that grid's DiffREPPO and REPPO; with_twin: also
    the Gaussian twin with the same flags (baselines/reppo.py, exp name reppo + suffix), compared first."""
    challenger, twin = f"diffreppo{suffix}", f"reppo{suffix}"
    scripts = ("diffreppo.py", "baselines/reppo.py") if with_twin else ("diffreppo.py",)
    return Experiment(
        name,
        title,
        ("diffreppo", challenger, "reppo") + ((twin,) if with_twin else ()),
        (((challenger, twin),) if with_twin else ())
        + ((challenger, "diffreppo"), ("diffreppo", "reppo"), (challenger, "reppo")),
        env_ids,
        (1, 2, 3),
        (100_000, 250_000, 500_000),
        tuple(
            f"python -m benchmarks.grid --scripts {script} --env-ids {' '.join(env_ids)} --seeds 1 2 3 "
            f"--total-timesteps 501760 --workdir results/{name} --exp-suffix {suffix} --workers 2 "
            f'--extra="--save-model {flags}"'
            for script in scripts
        ),
        f"the same command{'s' if len(scripts) > 1 else ''} with --total-timesteps 1000000, the five tasks of the "
        "grids above and --executor slurm",
        borrowed={algorithm: ("onpolicy_500k", algorithm) for algorithm in ("diffreppo", "reppo")},
        variants=variants,
    )


REPPO_LAMBDA = diffreppo_variant(
    "reppo_lambda",
    "DiffREPPO's lambda: per augmented step or per environment step, Hopper-v4",
    "_lambdaenv",
    "--lambda-per-env-step",
    {
        "diffreppo": "DiffREPPO, lambda at every augmented step: lambda^K per environment step (the authors')",
        "diffreppo_lambdaenv": "DiffREPPO, --lambda-per-env-step: lambda^(1/K) at each augmented step",
        "reppo": "REPPO (Gaussian twin): lambda per environment step",
    },
)
DAMDP_WPO = diffreppo_variant(
    "damdp_wpo",
    "DA-MDP: WPO on the REPPO pipeline, 500k environment steps",
    "_wpo",
    "--actor-loss wpo",
    {
        "diffreppo": "DiffREPPO: the pathwise actor (DA-MDP: REPPO)",
        "diffreppo_wpo": "DiffREPPO --actor-loss wpo: DA-MDP: WPO as the authors run it",
        "reppo": "REPPO (Gaussian twin)",
        "reppo_wpo": "REPPO --actor-loss wpo: the Gaussian twin of DA-MDP: WPO",
    },
    env_ids=("Hopper-v4", "Walker2d-v4"),
    with_twin=True,
)
AUTHORS_DISCOUNTING = "--gamma 0.999 --gae-lambda 0.98 --chain-gamma 0.999 --chain-gae-lambda 0.98"
FACTORIAL_CELLS = {  # suffix: (the flags that differ from diffppo.py's defaults, what the row says)
    "default": ("", "diffppo.py's defaults"),
    "minibatch256": (
        "--minibatch-size 256",
        "--minibatch-size 256: a fixed minibatch (the authors' 8 per rollout at K = 1), so optimiser steps grow with K",
    ),
    "langevin": ("--chain langevin", "--chain langevin: the authors' chain"),
    "discount": (AUTHORS_DISCOUNTING, "gamma 0.999 and lambda 0.98 at every augmented step (the authors')"),
    "alpha0": ("--alpha 0", "--alpha 0: no entropy term (the authors' entropy_coef 0)"),
    "authors": (
        f"--chain langevin --minibatch-size 256 {AUTHORS_DISCOUNTING} --alpha 0 --learning-rate 1e-4 --no-anneal-lr "
        "--update-epochs 12",
        "the authors' choices together: chain, minibatch rule, discounting, no entropy term, constant lr 1e-4, "
        "12 epochs",
    ),
}
HUMANOID_FACTORIAL = Experiment(
    "humanoid_factorial",
    "What makes more diffusion steps hurt: DiffPPO at K = 1 and K = 8 on Humanoid-v4, 400k environment steps",
    tuple(f"diffppo_{name}_k{k}" for name in FACTORIAL_CELLS for k in (1, 8)),
    (
        ("diffppo_default_k8", "diffppo_default_k1"),
        ("diffppo_minibatch256_k8", "diffppo_minibatch256_k1"),
        ("diffppo_minibatch256_k8", "diffppo_default_k8"),
        ("diffppo_minibatch256_k1", "diffppo_default_k1"),
        ("diffppo_langevin_k8", "diffppo_langevin_k1"),
        ("diffppo_langevin_k8", "diffppo_default_k8"),
        ("diffppo_langevin_k1", "diffppo_default_k1"),
        ("diffppo_discount_k8", "diffppo_discount_k1"),
        ("diffppo_discount_k8", "diffppo_default_k8"),
        ("diffppo_alpha0_k8", "diffppo_alpha0_k1"),
        ("diffppo_authors_k8", "diffppo_authors_k1"),
        ("diffppo_authors_k8", "diffppo_default_k8"),
        ("diffppo_authors_k1", "diffppo_default_k1"),
    ),
    ("Humanoid-v4",),
    (1, 2),
    (100_000, 250_000, 400_000),
    tuple(
        "python -m benchmarks.grid --scripts diffppo.py --env-ids Humanoid-v4 --seeds 1 2 --total-timesteps 400000 "
        f"--workdir results/humanoid_factorial --exp-suffix _{name}_k{k} --workers 2 "
        f'--extra="--save-model --num-diffusion-steps {k}{" " + flags if flags else ""}"'
        for name, (flags, _) in FACTORIAL_CELLS.items()
        for k in (1, 8)
    ),
    "for k in 1 4 8 16; do python -m benchmarks.grid --scripts diffppo.py --env-ids Humanoid-v4 --seeds 1 2 3 4 "
    "--total-timesteps 1000000 --workdir results/humanoid_authors_1m --exp-suffix _authors_k$k --executor slurm "
    '--slurm-partition <partition> --gpus-per-node 1 --extra="--save-model --num-diffusion-steps $k '
    f'{FACTORIAL_CELLS["authors"][0]}"; done',
    variants={
        f"diffppo_{name}_k{k}": f"K = {k}, {text}" for name, (_, text) in FACTORIAL_CELLS.items() for k in (1, 8)
    },
)
EXPERIMENTS = (ONPOLICY, OFFPOLICY, K_ABLATION, HUMANOID_K, HUMANOID_FACTORIAL, WPO_ABLATION, REPPO_LAMBDA, DAMDP_WPO)


# ---------------------------------------------------------------- data
def load_runs(results_dir: str, experiment: Experiment) -> dict[tuple[str, str, int], dict]:
    """{(env_id, exp_name, seed): summary} of the experiment's finished runs (borrowed ones renamed)."""
    runs = {}
    sources = [(experiment.name, None)] + [
        (source, (here, there, *only)) for here, (source, there, *only) in experiment.borrowed.items()
    ]
    for source, rename in sources:
        for path in sorted(glob.glob(os.path.join(results_dir, source, "summaries", "*.json"))):
            with open(path) as file:
                summary = json.load(file)
            name = summary["exp_name"]
            if rename is not None:
                if name != rename[1] or (len(rename) > 2 and summary["env_id"] not in rename[2]):
                    continue
                name = rename[0]
            if (
                name in experiment.algorithms
                and summary["env_id"] in experiment.env_ids
                and summary["seed"] in experiment.seeds
            ):
                runs[(summary["env_id"], name, summary["seed"])] = summary
    return runs


def load_reference_scores(path: str = REFERENCE_SCORES) -> dict[str, dict]:
    with open(path) as file:
        return {key: value for key, value in json.load(file).items() if not key.startswith("_")}


def normalise(value: float, env_id: str, references: dict[str, dict]) -> float:
    scale = references.get(env_id)
    if scale is None or scale.get("reference") is None:
        raise ConfigError(
            f"{env_id}: no random and reference score in {os.path.relpath(REFERENCE_SCORES, REPO_ROOT)}; add them "
            "(python -m benchmarks.evidence --measure-random-scores prints the random ones)."
        )
    return (value - scale["random"]) / (scale["reference"] - scale["random"])


def complete_tasks(runs: dict, experiment: Experiment, algorithms: tuple[str, ...]) -> list[str]:
    """Tasks on which every algorithm has every seed with a deterministic evaluation."""
    return [
        env_id
        for env_id in experiment.env_ids
        if all(
            runs.get((env_id, algorithm, seed), {}).get("deterministic_eval_mean") is not None
            for algorithm in algorithms
            for seed in experiment.seeds
        )
    ]


def score_matrix(runs: dict, experiment: Experiment, algorithm: str, tasks: list[str], references: dict) -> np.ndarray:
    """Normalised final scores, shape (seeds, tasks)."""
    return np.array(
        [
            [
                normalise(runs[(env_id, algorithm, seed)]["deterministic_eval_mean"], env_id, references)
                for env_id in tasks
            ]
            for seed in experiment.seeds
        ]
    )


def curve_value(run: dict, step: int) -> float | None:
    """A run's learning curve at ``step``: its last deterministic evaluation at or before it where the run evaluated
    during training (summaries with evaluation_at), else its training running mean there."""
    evaluations = {int(at): value for at, value in (run.get("evaluation_at") or {}).items()}
    if len(evaluations) > 1:  # more than the final evaluation alone
        before = [at for at in evaluations if at <= step]
        return evaluations[max(before)] if before else None
    return run["running_mean_at"].get(str(step))


def curve_tensor(
    runs: dict, experiment: Experiment, algorithm: str, tasks: list[str], references: dict, steps: list[int]
) -> np.ndarray:
    """Normalised learning curves (``curve_value``) at ``steps``, shape (seeds, tasks, steps)."""
    return np.array(
        [
            [
                [
                    normalise(curve_value(runs[(env_id, algorithm, seed)], step) or np.nan, env_id, references)
                    for step in steps
                ]
                for env_id in tasks
            ]
            for seed in experiment.seeds
        ]
    )


# ---------------------------------------------------------------- statistics (rliable)
def _rliable():
    warnings.filterwarnings("ignore", category=FutureWarning)  # arch's notice about RandomState
    from rliable import library, metrics

    return library, metrics


def interquartile_mean(scores: np.ndarray) -> float:
    return float(_rliable()[1].aggregate_iqm(scores))


def interval(score_dict: dict, function, reps: int = BOOTSTRAP_REPS) -> tuple[dict, dict]:
    """rliable's stratified bootstrap (percentile, 95%), seeded so that a rebuild is reproducible."""
    library, _ = _rliable()
    np.random.seed(0)
    return library.get_interval_estimates(score_dict, function, reps=reps, random_state=np.random.RandomState(0))


_AGGREGATES: dict = {}  # the tables and the figure ask for the same intervals


def aggregate_with_intervals(scores: dict[str, np.ndarray]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{algorithm: {"IQM": (point, low, high), "mean": (...)}} over all runs of all tasks."""
    key = tuple((name, matrix.shape, matrix.tobytes()) for name, matrix in scores.items())
    if key not in _AGGREGATES:
        _AGGREGATES[key] = _aggregate_with_intervals(scores)
    return _AGGREGATES[key]


def _aggregate_with_intervals(scores: dict[str, np.ndarray]) -> dict[str, dict[str, tuple[float, float, float]]]:
    _, metrics = _rliable()
    points, intervals = interval(scores, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]))
    return {
        name: {
            metric: (float(points[name][i]), float(intervals[name][0][i]), float(intervals[name][1][i]))
            for i, metric in enumerate(("IQM", "mean"))
        }
        for name in scores
    }


def pairwise_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's metrics.probability_of_improvement (the Mann-Whitney U / (n m) per task, ties counting one
    half, averaged over tasks) computed by counting pairs: the same number, 10 times faster inside a bootstrap."""
    wins = (x[:, None, :] > y[None, :, :]) + 0.5 * (x[:, None, :] == y[None, :, :])
    return float(wins.mean(axis=(0, 1)).mean())


def improvement_probability(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """P(X > Y) averaged over tasks, with its 95% stratified-bootstrap interval (seeds of X and of Y resampled
    independently within each task: rliable's StratifiedIndependentBootstrap)."""
    points, intervals = interval({"pair": (x, y)}, pairwise_improvement)
    low, high = np.ravel(intervals["pair"])
    return float(points["pair"]), float(low), float(high)


def verdict(low: float, high: float, words: tuple[str, str] = ("**reproduced**", "**refuted**")) -> str:
    return words[0] if low > 0.5 else words[1] if high < 0.5 else "not separated"


def ordering(low: float, high: float) -> str:
    """verdict()'s rule in words for a comparison table that is not itself a claim."""
    return verdict(low, high, ("**X better**", "**Y better**"))


# ---------------------------------------------------------------- text
def fmt(value, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def commands_block(experiment: Experiment) -> str:
    return "```bash\n" + "\n".join(experiment.commands) + "\n```"


def runs_table(runs: dict, experiment: Experiment) -> str:
    lines = [
        "| environment | algorithm | seeds | deterministic eval, mean (per seed) | last three evaluations | "
        + " | ".join(f"training mean at {step // 1000}k" for step in experiment.steps)
        + " | wall-clock per run |",
        "|---|---|---|---|---|" + "---|" * len(experiment.steps) + "---|",
    ]
    for env_id in experiment.env_ids:
        for algorithm in experiment.algorithms:
            found = [runs[(env_id, algorithm, seed)] for seed in experiment.seeds if (env_id, algorithm, seed) in runs]
            if not found:
                lines.append(
                    f"| {env_id} | {label(algorithm)} | 0 of {len(experiment.seeds)} | not run yet | |"
                    + " |" * len(experiment.steps)
                    + " |"
                )
                continue
            evaluations = [run.get("deterministic_eval_mean") for run in found]
            known = [value for value in evaluations if value is not None]
            evaluation = (
                f"{fmt(np.mean(known))} ({', '.join(fmt(value, 0) for value in evaluations)})" if known else "–"
            )
            last_three = [run.get("last_three_evaluations_mean") for run in found]  # runs that evaluated while training
            last_three = fmt(np.mean(last_three)) if None not in last_three else "–"
            at = [[run["running_mean_at"].get(str(step)) for run in found] for step in experiment.steps]
            columns = [fmt(np.mean(values)) if None not in values else "–" for values in at]
            minutes = [run["wall_clock_s"] / 60 for run in found]
            spread = (
                f"{min(minutes):.0f}"
                if round(min(minutes)) == round(max(minutes))
                else f"{min(minutes):.0f}–{max(minutes):.0f}"
            )
            lines.append(
                f"| {env_id} | {label(algorithm)} | {len(found)} of {len(experiment.seeds)} | {evaluation} | "
                + f"{last_three} | "
                + " | ".join(columns)
                + f" | {spread} min |"
            )
    return "\n".join(lines)


def task_names(env_ids) -> str:
    """ "Hopper, Walker2d" for Hopper-v4 and Walker2d-v4."""
    return ", ".join(env_id.split("-")[0] for env_id in env_ids)


def aggregate_table(
    runs: dict, experiment: Experiment, references: dict, per_algorithm: bool = True
) -> tuple[str, dict]:
    """IQM / mean with intervals per algorithm and P(X > Y) per pair; returns the text and the pair results."""
    pair_results = {}
    lines = []
    available = [algorithm for algorithm in experiment.algorithms if complete_tasks(runs, experiment, (algorithm,))]
    if available and per_algorithm:
        lines += ["| algorithm | tasks | runs | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|---|"]
        for algorithm in available:
            own_tasks = complete_tasks(runs, experiment, (algorithm,))
            result = aggregate_with_intervals(
                {algorithm: score_matrix(runs, experiment, algorithm, own_tasks, references)}
            )[algorithm]
            lines.append(
                f"| {label(algorithm)} | {task_names(own_tasks)} | "
                f"{len(own_tasks) * len(experiment.seeds)} | "
                + " | ".join(f"{p:.2f} [{lo:.2f}, {hi:.2f}]" for p, lo, hi in result.values())
                + " |"
            )
        lines.append("")
    lines += ["| comparison (X vs Y) | tasks | P(X > Y) [95% CI] | result |", "|---|---|---|---|"]
    for x, y in experiment.pairs:
        pair_tasks = complete_tasks(runs, experiment, (x, y))
        if not pair_tasks:
            lines.append(f"| {label(x)} vs {label(y)} | – | – | not measured yet |")
            continue
        result = improvement_probability(
            score_matrix(runs, experiment, x, pair_tasks, references),
            score_matrix(runs, experiment, y, pair_tasks, references),
        )
        pair_results[(x, y)] = (result, pair_tasks)
        lines.append(
            f"| {label(x)} vs {label(y)} | {task_names(pair_tasks)} | "
            f"{result[0]:.2f} [{result[1]:.2f}, {result[2]:.2f}] | {ordering(result[1], result[2])} |"
        )
    return "\n".join(lines), pair_results


def curve_steps(
    runs: dict, experiment: Experiment, algorithms: list[str], tasks: list[str], points: int = 40
) -> list[int]:
    """The steps every run recorded a running mean at, up to the budget, thinned to about ``points``."""
    recorded = set.intersection(
        *(
            set(map(int, runs[(env_id, a, seed)]["running_mean_at"]))
            for a in algorithms
            for env_id in tasks
            for seed in experiment.seeds
        )
    )
    steps = sorted(step for step in recorded if step <= max(experiment.steps))
    return steps[:: max(1, len(steps) // points)]


def save_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_title(experiment: Experiment, tasks: list[str]) -> str:
    """'title: tasks, seeds 1, 2, 3', naming only the tasks the title does not name already."""
    named = [task for task in tasks if task not in experiment.title]
    return f"{experiment.title}: {', '.join(named + ['seeds ' + ', '.join(map(str, experiment.seeds))])}"


def figure(runs: dict, experiment: Experiment, references: dict, path: str | None) -> bool:
    """IQM with intervals, performance profile and sample-efficiency curves written to ``path`` (None: only
    say whether there is one); False when no task is complete."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    available = [a for a in experiment.algorithms if complete_tasks(runs, experiment, (a,))]
    tasks = complete_tasks(runs, experiment, tuple(available))
    if not available or not tasks:
        return False
    if path is None:
        return True
    library, metrics = _rliable()
    scores = {a: score_matrix(runs, experiment, a, tasks, references) for a in available}
    bases = list(dict.fromkeys(a[len("diff") :] if a.startswith("diff") else a for a in available))
    colours = {a: plt.cm.tab10(bases.index(a[len("diff") :] if a.startswith("diff") else a)) for a in available}
    fig, (ax_iqm, ax_profile, ax_curve) = plt.subplots(1, 3, figsize=(16, 4.2))
    result = {a: aggregate_with_intervals({a: scores[a]})[a] for a in available}
    for row, a in enumerate(available):
        point, low, high = result[a]["IQM"]
        ax_iqm.errorbar(point, row, xerr=[[point - low], [high - point]], fmt="o", color=colours[a], capsize=4)
    ax_iqm.set_yticks(range(len(available)), [label(a) for a in available])
    ax_iqm.set_xlabel("IQM of normalised final score (95% CI)")
    taus = np.linspace(
        min(0.0, min(s.min() for s in scores.values())), max(1.0, max(s.max() for s in scores.values())), 41
    )
    np.random.seed(0)
    profiles, profile_intervals = library.create_performance_profile(scores, taus, reps=1000)
    for a in available:
        ax_profile.plot(
            taus, profiles[a], color=colours[a], label=label(a), linestyle="-" if a.startswith("diff") else "--"
        )
        ax_profile.fill_between(taus, profile_intervals[a][0], profile_intervals[a][1], color=colours[a], alpha=0.15)
    ax_profile.set_xlabel("normalised score τ")
    ax_profile.set_ylabel("fraction of runs with score > τ")
    ax_profile.legend(fontsize=8)
    steps = curve_steps(runs, experiment, available, tasks)
    for a in available:
        curves = curve_tensor(runs, experiment, a, tasks, references, steps)
        points, intervals = interval(
            {a: curves}, lambda x: np.array([metrics.aggregate_iqm(x[..., i]) for i in range(x.shape[-1])]), reps=1000
        )
        ax_curve.plot(
            steps, points[a], color=colours[a], label=label(a), linestyle="-" if a.startswith("diff") else "--"
        )
        ax_curve.fill_between(steps, intervals[a][0], intervals[a][1], color=colours[a], alpha=0.15)
    ax_curve.set_xlabel("environment steps")
    evaluated = all(len(run.get("evaluation_at") or {}) > 1 for run in runs.values())
    ax_curve.set_ylabel(f"IQM of normalised {'evaluation' if evaluated else 'training'} return")
    fig.suptitle(figure_title(experiment, tasks))
    save_figure(fig, path)
    return True


def variants_table(runs: dict, experiment: Experiment) -> str:
    """An ablation: one row per variant (per environment and variant when it spans several), its return at the fixed
    budget and its wall-clock (mean over seeds)."""
    several = len(experiment.env_ids) > 1
    stochastic = any(run.get("stochastic_eval_mean") is not None for run in runs.values())  # summaries that have it
    columns = "| variant | seeds | deterministic eval, mean (per seed) |" + (
        " stochastic eval, mean (per seed) |" if stochastic else ""
    )
    columns += " training mean at the budget | wall-clock per run |"
    lines = [("| environment " if several else "") + columns, "|---" * (5 + several + stochastic) + "|"]
    for env, algorithm in itertools.product(experiment.env_ids, experiment.algorithms):
        found = [runs[(env, algorithm, seed)] for seed in experiment.seeds if (env, algorithm, seed) in runs]
        name = f"| {env} | {experiment.variants[algorithm]}" if several else f"| {experiment.variants[algorithm]}"
        if not found:
            lines.append(f"{name} | 0 of {len(experiment.seeds)} | not run yet | | |" + (" |" if stochastic else ""))
            continue
        means = ""
        for key in ("deterministic_eval_mean", "stochastic_eval_mean")[: 1 + stochastic]:
            evaluations = [run.get(key) for run in found]
            known = [value for value in evaluations if value is not None]
            means += f"{fmt(np.mean(known)) if known else '–'} ({', '.join(fmt(v, 0) for v in evaluations)}) | "
        minutes = [run["wall_clock_s"] / 60 for run in found]
        lines.append(
            f"{name} | {len(found)} of {len(experiment.seeds)} | {means}"
            f"{fmt(np.mean([run['final_running_mean'] for run in found]))} | {np.mean(minutes):.0f} min |"
        )
    return "\n".join(lines)


def k_figure(runs: dict, experiment: Experiment, path: str | None) -> bool:
    """An ablation over K (exp names NAME_kK): the deterministic evaluation at the budget against K, and against the
    wall-clock per run, one line per script; written to ``path`` (None: only say whether there is one); False when
    no script has two values of K measured."""
    families: dict[str, dict[int, list[dict]]] = {}
    for algorithm in experiment.algorithms:
        match = re.fullmatch(r"(\w+)_k(\d+)", algorithm)
        found = [
            runs[(env, algorithm, seed)]
            for env in experiment.env_ids
            for seed in experiment.seeds
            if (env, algorithm, seed) in runs
            and runs[(env, algorithm, seed)].get("deterministic_eval_mean") is not None
        ]
        if match and found:
            families.setdefault(match.group(1), {})[int(match.group(2))] = found
    families = {name: by_k for name, by_k in families.items() if len(by_k) >= 2}
    if not families:
        return False
    if path is None:
        return True
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_k, ax_clock) = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, (name, by_k) in enumerate(families.items()):
        colour, ks = plt.cm.tab10(index), sorted(by_k)
        budget = max(run["last_step"] for found in by_k.values() for run in found)
        evaluations = {k: [run["deterministic_eval_mean"] for run in by_k[k]] for k in ks}
        minutes = {k: np.mean([run["wall_clock_s"] / 60 for run in by_k[k]]) for k in ks}
        for k in ks:
            ax_k.scatter([k] * len(evaluations[k]), evaluations[k], color=colour, alpha=0.4, s=18)
            ax_clock.scatter([minutes[k]] * len(evaluations[k]), evaluations[k], color=colour, alpha=0.4, s=18)
            ax_clock.annotate(
                f"K={k}",
                (minutes[k], np.mean(evaluations[k])),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
                color=colour,
            )
        means = [np.mean(evaluations[k]) for k in ks]
        ax_k.plot(
            ks, means, "o-", color=colour, label=f"{label(name)} at {round(budget / 1000)}k steps (mean; dots: seeds)"
        )
        ax_clock.plot([minutes[k] for k in ks], means, "o-", color=colour, label=label(name))
    ax_k.set_xscale("log", base=2)
    every_k = sorted({k for by_k in families.values() for k in by_k})
    ax_k.set_xticks(every_k, [str(k) for k in every_k])
    ax_k.set_xlabel("number of diffusion steps K")
    ax_k.set_ylabel("deterministic evaluation return at the budget")
    ax_k.legend(fontsize=8)
    ax_clock.set_xlabel("wall-clock per run, minutes (runs sharing two cores; see the table)")
    ax_clock.set_ylabel("deterministic evaluation return at the budget")
    fig.suptitle(f"{experiment.title}: seeds {', '.join(map(str, experiment.seeds))}")
    save_figure(fig, path)
    return True


def anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


CLAIMS = (  # (claim, paper, the comparisons that decide it, the experiment (section) that backs it)
    (
        "Diffusion beats its Gaussian twin (on-policy)",
        "Sanokowski et al.",
        (("diffppo", "ppo"), ("diffreppo", "reppo")),
        ONPOLICY,
    ),
    (
        "Diffusion beats its Gaussian twin (DA-MDP: WPO, the authors' form)",
        "Sanokowski et al., DA-MDP version",
        (("diffreppo_wpo", "reppo_wpo"),),
        DAMDP_WPO,
    ),
    (
        "Diffusion beats its Gaussian twin (off-policy)",
        "Sanokowski et al.",
        (("diffsac", "sac"), ("diffwpo", "wpo")),
        OFFPOLICY,
    ),
    (
        "More diffusion steps help",
        "Sanokowski et al.",
        (
            ("diffppo_k8", "diffppo_k1"),
            ("diffppo_k16", "diffppo_k8"),
            ("diffsac_k8", "diffsac_k1"),
            ("diffsac_k4", "diffsac_k1"),
        ),
        K_ABLATION,
    ),
    (
        "More diffusion steps help (Humanoid-v4)",
        "Sanokowski et al.",
        (("diffppo_k8", "diffppo_k1"), ("diffppo_k16", "diffppo_k8"), ("diffppo_k4", "diffppo_k1")),
        HUMANOID_K,
    ),
    (
        "More steps help, authors' settings (Humanoid-v4)",
        "Sanokowski et al.",
        (
            ("diffppo_authors_k8", "diffppo_authors_k1"),
            ("diffppo_langevin_k8", "diffppo_langevin_k1"),
            ("diffppo_default_k8", "diffppo_default_k1"),
        ),
        HUMANOID_FACTORIAL,
    ),
    (
        "DA-MDP: REPPO is the strongest variant",
        "Sanokowski et al., DA-MDP version",
        (("diffreppo", "diffppo"), ("diffreppo", "ppo"), ("diffreppo", "reppo")),
        ONPOLICY,
    ),
    ("DPMD and SDAC beat SAC", "Ma et al.", (("dpmd", "sac"), ("sdac", "sac")), OFFPOLICY),
)
MULTIMODAL_CLAIM = (
    "The max-entropy objective keeps several modes",
    "Sanokowski et al.",
    "**partly reproduced**: with default flags the diffusion scripts keep one or two of four ring modes and "
    "starve the middle one of three unequal modes; DiffREPPO spreads over both wells where its Gaussian twin "
    "mostly collapses onto one; a mass-covering actor loss (`diffsac.py --actor-loss log-variance`, "
    "`diffppo.py --behaviour-noise-scale 1.5`) gives every mode its weight",
)


def budget(experiment: Experiment) -> str:
    """'100k steps, 3 seeds, Hopper, Walker2d': the experiment's steps (from its title), seeds and tasks."""
    steps = {"k_ablation": "500k steps (DiffPPO), 100k (DiffSAC)"}.get(
        experiment.name, experiment.title.split(", ")[-1].replace("environment steps", "steps")
    )
    return f"{steps}, {len(experiment.seeds)} seeds, {task_names(experiment.env_ids)}"


def claims_table(pair_results: dict, short: bool = False) -> str:  # pair_results[(experiment, x, y)]
    """One row per claim: the comparisons that decide it, our result and the verdict. ``short``: the README's
    version in plain words (yes, no, can't tell; the budget; a link into docs/results.md)."""

    def result(x, y, experiment):
        if (experiment.name, x, y) not in pair_results:  # each claim is decided by its own experiment's runs
            return f"{label(x)} vs {label(y)}: not measured yet"
        (point, low, high), tasks = pair_results[(experiment.name, x, y)]
        missing = [task for task in experiment.env_ids if task not in tasks]
        # A verdict from part of the grid says so: "Hopper only; Walker2d not measured yet".
        scope = f" ({task_names(tasks)} only; {task_names(missing)} not measured yet)" if missing else ""
        if short:
            answer = verdict(low, high, ("**yes**", "**no**")).replace("not separated", "can't tell")
            return f"{label(x)} beats {label(y)}: {answer} ({point:.2f} [{low:.2f}, {high:.2f}]){scope}"
        return f"{label(x)} vs {label(y)}: P(X > Y) = {point:.2f} [{low:.2f}, {high:.2f}], {verdict(low, high)}{scope}"

    if short:
        lines = ["| claim | answer (P, 95% interval) | budget |", "|---|---|---|"]
        lines += [
            f"| [{claim}](docs/results.md#{anchor(experiment.title)}) ({paper}) | "
            f"{'<br>'.join(result(x, y, experiment) for x, y in pairs)} | {budget(experiment)} |"
            for claim, paper, pairs, experiment in CLAIMS
        ]
        claim, paper, text = MULTIMODAL_CLAIM
        partly = "partly: the default actor losses keep some modes, the mass-covering ones every mode"
        return "\n".join(
            lines + [f"| [{claim}](docs/multimodal.md) ({paper}) | {partly} | bandits and a sequential task, 3 seeds |"]
        )
    lines = [
        "| claim | paper | our result (probability of improvement over seeds and tasks, 95% CI) | backed by |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {claim} | {paper} | {'<br>'.join(result(x, y, experiment) for x, y in pairs)} | "
        f"[{experiment.title}](#{anchor(experiment.title)}) |"
        for claim, paper, pairs, experiment in CLAIMS
    ]
    claim, paper, text = MULTIMODAL_CLAIM
    return "\n".join(
        lines + [f"| {claim} | {paper} | {text} | [docs/multimodal.md](multimodal.md) (not from these summaries) |"]
    )


# ---------------------------------------------------------------- the page
def build_blocks(results_dir: str, docs_dir: str | None, references: dict) -> dict[str, str]:
    """Every block's text; the figures are written to docs_dir (None: not written)."""
    blocks, pair_results = {}, {}
    for experiment in EXPERIMENTS:
        runs = load_runs(results_dir, experiment)
        total = len(experiment.env_ids) * len(experiment.algorithms) * len(experiment.seeds)
        finished = f"{len(runs)} of {total} runs finished."
        if experiment.variants:
            text, results = aggregate_table(runs, experiment, references, per_algorithm=False)
            body = variants_table(runs, experiment) + "\n\n" + text
        else:
            body = runs_table(runs, experiment)
            text, results = aggregate_table(runs, experiment, references)
            body += "\n\nNormalised final scores over all runs of the complete tasks, and each comparison:\n\n" + text
        pair_results.update({(experiment.name, *pair): result for pair, result in results.items()})
        image = os.path.join(docs_dir, f"evidence_{experiment.name}.png") if docs_dir else None
        if not experiment.variants and figure(runs, experiment, references, image):
            body += f"\n\n![{experiment.title}](evidence_{experiment.name}.png)"
        elif experiment.variants and k_figure(runs, experiment, image):
            body += (
                f"\n\n![{experiment.title}: return against K and against wall-clock](evidence_{experiment.name}.png)"
            )
        reused = "".join(
            f" {label(here)}{' on ' + ', '.join(only[0]) if only else ''} is the {source} grid's {label(there)}."
            for here, (source, there, *only) in experiment.borrowed.items()
        )
        blocks[experiment.name] = (
            f"{finished}{reused} Commands (2 CPU cores):\n\n{commands_block(experiment)}\n\n"
            f"At paper scale: `{experiment.cluster_command}`\n\n{body}"
        )
    blocks["claims"] = claims_table(pair_results)
    blocks["claims_short"] = claims_table(pair_results, short=True)
    return blocks


BLOCK = re.compile(r"(<!-- generated:(?P<name>\w+) -->\n)(?P<body>.*?)\n?(<!-- /generated:(?P=name) -->)", re.S)


def replace_blocks(page: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """The page with each marked block's body replaced; and the names whose body changed."""
    names_in_page = [match.group("name") for match in BLOCK.finditer(page)]
    unknown = sorted(set(names_in_page) - set(blocks))
    if unknown:
        raise ConfigError(
            f"the page has generated blocks this command does not make: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(blocks))})"
        )
    changed = []

    def substitute(match):
        body = blocks[match.group("name")]
        if body != match.group("body"):
            changed.append(match.group("name"))
        return match.group(1) + body + "\n" + match.group(4)

    return BLOCK.sub(substitute, page), changed


@dataclass
class Args:
    pages: list[str] = field(
        default_factory=lambda: [os.path.join(REPO_ROOT, "docs", "results.md"), os.path.join(REPO_ROOT, "README.md")]
    )
    """the pages whose <!-- generated:NAME --> blocks are rewritten; the figures go beside the first"""
    results_dir: str = os.path.join(REPO_ROOT, "results")
    """where the grids' summaries are (results/NAME/summaries/*.json)"""
    check: bool = False
    """write nothing; exit 1 if any block differs from what the summaries give"""
    measure_random_scores: bool = False
    """print the mean return of uniform random actions (100 episodes) per task of reference_scores.json, and exit"""


def random_score(env_id: str, episodes: int = 100) -> float:
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(0)
    totals = []
    for episode in range(episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        totals.append(total)
    return float(np.mean(totals))


def check_summaries(results_dir: str) -> None:
    """ConfigError, before any page is written, where the folder holds no summaries or some cannot be read as one
    (JSON with env_id, exp_name and seed), naming those files."""
    paths = sorted(glob.glob(os.path.join(results_dir, "*", "summaries", "*.json")))
    if not paths:
        raise ConfigError(f"--results-dir {results_dir} holds no summaries (NAME/summaries/*.json); nothing written")
    unreadable = []
    for path in paths:
        try:
            with open(path) as file:
                summary = json.load(file)
            if not {"env_id", "exp_name", "seed"} <= set(summary):
                unreadable.append(path)
        except (OSError, ValueError, TypeError):
            unreadable.append(path)
    if unreadable:
        shown = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        raise ConfigError(f"unreadable summaries: {shown}; nothing written (restore them, e.g. git checkout)")


def main() -> None:
    args = tyro.cli(Args)
    if args.measure_random_scores:
        for env_id in load_reference_scores():
            print(f"{env_id}: {random_score(env_id):.1f}")
        return
    for page in args.pages:
        if not os.path.isfile(page):
            raise ConfigError(f"--pages {page}: no such file")
    if not os.path.isdir(args.results_dir):  # an empty grid would rewrite every table as "not run yet"
        raise ConfigError(f"--results-dir {args.results_dir}: no such folder (it holds NAME/summaries/*.json)")
    check_summaries(args.results_dir)
    docs_dir = None if args.check else os.path.dirname(os.path.abspath(args.pages[0]))
    blocks = build_blocks(args.results_dir, docs_dir, load_reference_scores())
    stale = []
    for page in args.pages:
        with open(page) as file:
            new_text, changed = replace_blocks(file.read(), blocks)
        if args.check:
            stale += [f"{page}: {', '.join(changed)}"] if changed else []
            continue
        with open(page, "w") as file:
            file.write(new_text)
        print(f"{page}: rewrote {', '.join(changed) if changed else 'nothing (up to date)'}")
    if args.check:
        if stale:
            print(f"out of date: {'; '.join(stale)} (run python -m benchmarks.evidence)", file=sys.stderr)
            sys.exit(1)
        print("up to date: " + ", ".join(args.pages))


if __name__ == "__main__":
    run_cli(main, "benchmarks.evidence")
