"""benchmarks/chain_fit.py: the normaliser, the bound and the per-mode slack, the command."""

import math
import os
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import run_script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from chain_fit import Args, fit, log_normaliser  # noqa: E402


def test_log_normaliser_matches_closed_forms():
    """r(a) = a, alpha = 1: Z = integral of e^a over [-1, 1] = e - 1/e; r(a) = a_0 + a_1 in 2-D: Z is its square;
    alpha = 0.5 doubles the exponent: Z = (e^2 - e^-2) / 2."""
    assert log_normaliser(lambda a: a[..., 0], 1, 1.0) == pytest.approx(math.log(math.e - 1 / math.e), abs=1e-6)
    assert log_normaliser(lambda a: a.sum(-1), 2, 1.0) == pytest.approx(2 * math.log(math.e - 1 / math.e), abs=1e-5)
    assert log_normaliser(lambda a: a[..., 0], 1, 0.5) == pytest.approx(
        math.log((math.e**2 - math.e**-2) / 2), abs=1e-6
    )


class UntrainedChainTarget:
    """A target equal to the untrained chain's own marginal: a = tanh(x), x ~ N(0, 1), so at alpha = 1
    r(a) = log pi(a) = log N(atanh a; 0, 1) - log(1 - a^2) (and Z = 1). Two 'modes' split the line at 0."""

    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reward(self, action):
        a = np.clip(action[..., 0], -1 + 1e-12, 1 - 1e-12)
        x = np.arctanh(a)
        return -0.5 * x**2 - 0.5 * math.log(2 * math.pi) - np.log1p(-(a**2))

    def modes(self):
        return np.array([[-0.5], [0.5]])


def test_an_exact_chain_has_zero_bound_and_zero_slack_on_every_mode():
    """At initialisation the chain is the exact reverse process of x_0 ~ N(0, 1), so L = log pi on every path
    (method.md §2). Against a target equal to its own marginal the bound E[L - log pi*] is 0 up to the grid's
    error, the shares equal the target's, and the slack of each mode is 0."""
    args = Args(alpha=1.0, updates=0, num_diffusion_steps=4, eval_samples=20000)
    result = fit(args, seed=0, env=UntrainedChainTarget())
    assert result["bound"] == pytest.approx(0.0, abs=2e-3)
    assert result["weights"] == pytest.approx([0.5, 0.5], abs=1e-3)
    assert result["shares"] == pytest.approx([0.5, 0.5], abs=0.02)
    assert result["slack"] == pytest.approx([0.0, 0.0], abs=0.05)


class TiltedChainTarget(UntrainedChainTarget):
    """The untrained chain's marginal tilted by 2 on a > 0: pi* = pi * (1 on a < 0, 2 on a > 0) / 1.5, so pi*'s
    cells weigh 1/3 and 2/3 while the chain's shares stay 1/2 and 1/2."""

    def reward(self, action):
        return super().reward(action) + np.where(action[..., 0] > 0, math.log(2.0), 0.0)


def test_misplaced_weight_is_not_counted_as_slack():
    """The chain is exact for its own marginal (G = 0) but pi != pi*: within each cell log pi - log pi* is the
    constant log(share / weight), so E[L - log pi* | cell] = log(share / weight) and the slack is 0 on both modes,
    while the bound is KL(pi || pi*) = 0.5 log(0.5 / (1/3)) + 0.5 log(0.5 / (2/3)) = 0.5 log 1.125."""
    result = fit(Args(alpha=1.0, updates=0, num_diffusion_steps=4, eval_samples=20000), seed=0, env=TiltedChainTarget())
    assert result["weights"] == pytest.approx([1 / 3, 2 / 3], abs=1e-3)
    assert result["bound"] == pytest.approx(0.5 * math.log(1.125), abs=0.01)
    assert result["slack"] == pytest.approx([0.0, 0.0], abs=0.05)


def test_training_lowers_the_bound_on_the_double_well():
    """A short pathwise fit moves the chain toward pi*: the bound E[L - log pi*] = KL(pi || pi*) + E[G] falls
    well below that of the untrained chain (about 1.9 nats here) and stays non-negative."""
    env = gym.make("DoubleWellBandit-v0").unwrapped
    untrained = fit(Args(alpha=0.2, updates=0, num_diffusion_steps=4, eval_samples=4000, hidden_dim=64), 0, env)
    trained = fit(
        Args(alpha=0.2, updates=300, num_diffusion_steps=4, eval_samples=4000, hidden_dim=64, learning_rate=1e-3),
        0,
        env,
    )
    assert untrained["bound"] > 1.0
    assert -0.05 < trained["bound"] < 0.6 * untrained["bound"]


def test_chain_fit_command_prints_rows_and_rejects_bad_flags(tmp_path, repo_root):
    out = tmp_path / "table.md"
    result = run_script(
        [
            "benchmarks/chain_fit.py",
            "--seeds",
            "1",
            "--updates",
            "20",
            "--eval-samples",
            "500",
            "--loss",
            "log-variance",
            "--out",
            str(out),
        ],
        cwd=repo_root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = out.read_text().splitlines()[0]
    assert row.startswith("| UnequalModesBandit-v0 | --updates 20, --loss log-variance | 1 | ")
    assert row.split("|")[5].strip() == "0.50 / 0.30 / 0.20"
    for flag, value, message in [
        ("--env-id", "Hopper-v4", "allowed: DoubleWellBandit-v0"),
        ("--loss", "forward", "allowed: reverse-kl, log-variance"),
        ("--num-diffusion-steps", "0", "--num-diffusion-steps must be at least 1"),
        ("--alpha", "nan", "--alpha must be a positive number"),
    ]:
        bad = run_script(["benchmarks/chain_fit.py", flag, value], cwd=repo_root)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
