"""The multimodal benchmarks: environments, the target pi* ~ exp(r / alpha), mode shares, TV, the command."""

import math
import os

import gymnasium as gym
import numpy as np
import pytest
from conftest import run_script
from gymnasium.utils.env_checker import check_env

import benchmarks.multimodal_envs  # noqa: F401  (registers the ids)
from benchmarks.multimodal_envs import (
    DOUBLE_WELL_MODES,
    MULTIMODAL_ENV_IDS,
    UNEQUAL_MODES,
    UNEQUAL_WEIGHTS,
    UNEQUAL_WIDTH,
    covers_every_mode,
    covers_every_mode_strictly,
    double_well_reward,
    histogram,
    mass_near_modes,
    mode_radius,
    mode_shares,
    ring_modes,
    ring_reward,
    target_mass_near_modes,
    target_mode_shares,
    target_probabilities,
    total_variation,
    unequal_modes_reward,
    weights_match,
)


@pytest.mark.parametrize("env_id", MULTIMODAL_ENV_IDS)
def test_environments_pass_gymnasiums_checker_and_their_modes_are_the_reward_maxima(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    modes, dim = env.unwrapped.modes(), env.action_space.shape[0]
    centres = np.linspace(-1, 1, 201)
    grid = np.stack(np.meshgrid(*[centres] * dim, indexing="ij"), -1).reshape(-1, dim)
    best = env.unwrapped.reward(grid).max()
    at_modes = env.unwrapped.reward(modes)
    assert at_modes.max() == pytest.approx(1.0) and best <= 1.0 + 1e-12
    if env_id != "UnequalModesBandit-v0":
        assert np.allclose(at_modes, 1.0)  # equal modes
    # Every mode is a local maximum, and away from the modes the reward is lower than at any mode.
    for mode, value in zip(modes, at_modes):
        near = (np.linalg.norm(grid - mode, axis=-1) < 0.1) & (np.linalg.norm(grid - mode, axis=-1) > 1e-9)
        assert env.unwrapped.reward(grid[near]).max() < value
    far = np.min(np.linalg.norm(grid[:, None] - modes[None], axis=-1), axis=1) > 0.25
    assert env.unwrapped.reward(grid[far]).max() < min(0.5, at_modes.min() - 0.3)


def test_double_well_and_ring_rewards_by_hand():
    assert double_well_reward(np.array([[0.0], [0.5], [-0.5], [1.0]])).tolist() == [0.0, 1.0, 1.0, -8.0]
    assert ring_reward(np.array([[0.6, 0.0], [0.0, 0.6], [0.6 / math.sqrt(2)] * 2])) == pytest.approx([1, 1, -1])
    assert ring_reward(np.array([[0.8, 0.0]])) == pytest.approx([0.0])  # one width off the ring
    assert ring_modes(3) == pytest.approx(np.array([[0.6, 0], [-0.3, 0.3 * math.sqrt(3)], [-0.3, -0.3 * math.sqrt(3)]]))
    assert len(gym.make("RingBandit-v0", num_modes=6).unwrapped.modes()) == 6


def test_unequal_modes_target_weights_match_the_gaussian_mixture_in_closed_form():
    """At alpha = 0.2, exp(r / alpha) is proportional to sum_j w_j N(a; m_j, s^2) by construction. pi*'s mass in each
    mode's cell (nearest mode; edges at the midpoints between modes) in closed form: sum_j w_j (Phi((u - m_j)/s) -
    Phi((l - m_j)/s)), normalised by the mixture's mass in [-1, 1]. At alpha = 0.4 the target is the mixture to the
    power 1/2, whose cell masses are integrated here with a plain Riemann sum on a grid unlike the function's."""
    phi = np.vectorize(lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2))))
    means, width = UNEQUAL_MODES[:, 0], UNEQUAL_WIDTH
    edges = np.concatenate([[-1.0], (means[1:] + means[:-1]) / 2, [1.0]])

    def mass(low, high):
        return float(np.sum(UNEQUAL_WEIGHTS * (phi((high - means) / width) - phi((low - means) / width))))

    exact = np.array([mass(edges[j], edges[j + 1]) for j in range(3)]) / mass(-1.0, 1.0)
    assert target_mode_shares(unequal_modes_reward, UNEQUAL_MODES, 0.2) == pytest.approx(exact, abs=1e-4)
    assert exact == pytest.approx([0.5, 0.3, 0.2], abs=1e-4)
    grid = np.linspace(-1, 1, 100001)[:, None]
    density = np.exp(unequal_modes_reward(grid) / 0.4)
    cells = np.digitize(grid[:, 0], edges[1:-1])
    by_sum = np.bincount(cells, weights=density) / density.sum()
    assert target_mode_shares(unequal_modes_reward, UNEQUAL_MODES, 0.4) == pytest.approx(by_sum, abs=1e-3)
    assert by_sum[0] < 0.5 and by_sum[2] > 0.2  # a higher temperature evens the weights out


def test_share_rule_and_weight_bar_against_unequal_targets():
    target = np.array([0.5, 0.3, 0.2])
    assert covers_every_mode(np.array([0.6, 0.2, 0.2]), target)  # 0.2 >= 0.5 * 0.3
    assert not covers_every_mode(np.array([0.69, 0.1, 0.21]), target)  # 0.1 < 0.15: the middle mode starved
    assert not covers_every_mode(np.array([0.3, 0.3, 0.4]), target)  # 0.4 > 1.5 * 0.2
    assert covers_every_mode(np.array([0.3, 0.3, 0.4]))  # ... which the equal-mode default (1/3 each) accepts
    assert weights_match(np.array([0.54, 0.27, 0.19]), target) and not weights_match(
        np.array([0.56, 0.25, 0.19]), target
    )


def test_bandits_are_one_step_and_turn_task_is_eight_steps_of_the_same_reward():
    env = gym.make("DoubleWellBandit-v0")
    env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(np.array([0.5], np.float32))
    assert reward == pytest.approx(1.0) and terminated and not truncated
    env = gym.make("TurnLeftOrRight-v0")
    obs, _ = env.reset(seed=0)
    heading = math.atan2(obs[1], obs[0])
    for step in range(8):
        obs, reward, terminated, _, _ = env.step(np.array([-0.5 if step % 2 else 0.5], np.float32))
        assert reward == pytest.approx(1.0) and terminated == (step == 7)
        heading = heading + (-0.5 if step % 2 else 0.5) * math.pi / 2
        assert obs[:2] == pytest.approx([math.cos(heading), math.sin(heading)], abs=1e-6)
        assert obs[2] == pytest.approx((7 - step) / 8)


def test_target_probabilities_match_closed_forms():
    """Constant reward: uniform bins. r(a) = a, alpha = 1: P(bin [l, u]) = (e^u - e^l) / (e - 1/e).
    Two dimensions, r(a) = a_0 + a_1: the product of the 1-D probabilities."""
    assert target_probabilities(lambda a: np.zeros(a.shape[:-1]), 1, 0.5, 4) == pytest.approx([0.25] * 4)
    edges = np.linspace(-1, 1, 5)
    exact = (np.exp(edges[1:]) - np.exp(edges[:-1])) / (math.e - 1 / math.e)
    assert target_probabilities(lambda a: a[..., 0], 1, 1.0, 4, points_per_bin=400) == pytest.approx(exact, rel=1e-5)
    joint = target_probabilities(lambda a: a.sum(-1), 2, 1.0, 4, points_per_bin=200)
    assert joint == pytest.approx(np.outer(exact, exact), rel=1e-4)
    double_well = target_probabilities(double_well_reward, 1, 0.2, 40)
    assert double_well.sum() == pytest.approx(1.0) and double_well == pytest.approx(double_well[::-1])  # symmetric


def test_mode_shares_total_variation_and_coverage_on_known_samples():
    modes = np.array([[-0.5], [0.5]])
    actions = np.array([[-0.6], [-0.1], [0.05], [0.9]])  # nearest: -, -, +, +
    assert mode_shares(actions, modes).tolist() == [0.5, 0.5]
    assert mode_shares(ring_modes(4) * 0.5, ring_modes(4)).tolist() == [0.25] * 4
    assert total_variation(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5])) == 0.5
    assert histogram(np.array([[-0.99], [-0.01], [0.01], [0.99]]), 2).tolist() == [0.5, 0.5]
    assert covers_every_mode(np.array([0.5, 0.5])) and covers_every_mode(np.array([0.26, 0.74]))
    assert not covers_every_mode(np.array([0.24, 0.76])) and not covers_every_mode(np.array([1.0, 0.0]))
    assert covers_every_mode(np.array([0.125, 0.375, 0.25, 0.25])) and not covers_every_mode(
        np.array([0.1, 0.4, 0.25, 0.25])
    )
    assert not covers_every_mode(np.array([0.4, 0.2, 0.2, 0.2]))  # one mode above 1.5/M, none below 0.5/M


def test_multimodal_command_trains_and_writes_plot_and_numbers(tmp_path, repo_root):
    command = [
        "-m",
        "benchmarks.multimodal",
        "--script",
        "diffsac.py",
        "--env-id",
        "DoubleWellBandit-v0",
        "--seeds",
        "1",
        "--total-timesteps",
        "600",
        "--samples",
        "500",
        "--workdir",
        str(tmp_path),
        "--out-dir",
        str(tmp_path / "out"),
        "--exp-suffix=-short",
        "--extra=--learning-starts 256 --batch-size 64 --hidden-dim 64 --num-diffusion-steps 2",
    ]
    result = run_script(command, cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--no-autotune" in result.stdout and "--alpha 0.2" in result.stdout
    row = (tmp_path / "out" / "DoubleWellBandit-v0__diffsac-short.md").read_text().splitlines()[2]
    assert row.startswith("| DoubleWellBandit-v0 | diffsac-short | 1 | ")
    cells = row.split("|")
    assert cells[4].strip().endswith("(pi*: 0.50, 0.50)")
    shares = [float(share) for share in cells[4].split("(")[0].split(",")]
    assert len(shares) == 2 and sum(shares) == pytest.approx(1.0, abs=0.011)
    assert cells[5].strip() in ("yes", "no") and cells[6].strip().endswith("(pi*: 0.42 each)")
    assert cells[7].strip() in ("yes", "no") and cells[8].strip() in ("yes", "no") and 0 <= float(cells[9]) <= 1
    assert os.path.getsize(tmp_path / "out" / "DoubleWellBandit-v0__diffsac-short.png") > 10000
    assert os.path.getsize(tmp_path / "out" / "DoubleWellBandit-v0__diffsac-short__chain.png") > 10000
    # The same command again analyses the finished run without training it; other flags under the same name are refused.
    again = run_script(command, cwd=repo_root)
    assert (
        again.returncode == 0
        and "[done] DoubleWellBandit-v0__diffsac-short__1" in again.stdout
        and "[run]" not in again.stdout
    )
    assert (tmp_path / "out" / "DoubleWellBandit-v0__diffsac-short.md").read_text().splitlines()[2] == row
    changed = run_script([*command, "--alpha", "0.3"], cwd=repo_root)
    assert (
        changed.returncode == 2
        and "finished before with other flags" in changed.stderr
        and "--exp-suffix" in changed.stderr
    )


def test_multimodal_command_rejects_other_envs(tmp_path, repo_root):
    result = run_script(["-m", "benchmarks.multimodal", "--env-id", "Pendulum-v1"], cwd=repo_root)
    assert result.returncode == 2 and "not a multimodal benchmark; allowed: DoubleWellBandit-v0" in result.stderr
    result = run_script(["-m", "benchmarks.multimodal", "--exp-suffix", "a/b"], cwd=repo_root)
    assert result.returncode == 2 and "--exp-suffix" in result.stderr


def test_mass_near_modes_matches_gaussian_closed_forms():
    # pi* ~ exp(-|a|^2 / (2 alpha)) is N(0, alpha I) (truncation at +-1 negligible for alpha = 0.01, sigma = 0.1):
    # mass within r of the mode 0 is erf(r / (sigma sqrt 2)) in 1-D and 1 - exp(-r^2 / (2 sigma^2)) in 2-D.
    sigma, radius = 0.1, 0.15
    one_d = target_mass_near_modes(lambda a: -(a**2).sum(-1) / 2, np.zeros((1, 1)), sigma**2, radius, points=4000)
    assert one_d[0] == pytest.approx(math.erf(radius / (sigma * math.sqrt(2))), abs=1e-4)
    two_d = target_mass_near_modes(lambda a: -(a**2).sum(-1) / 2, np.zeros((1, 2)), sigma**2, radius, points=800)
    assert two_d[0] == pytest.approx(1 - math.exp(-(radius**2) / (2 * sigma**2)), abs=2e-3)
    actions = np.array([[0.0], [0.05], [0.15], [-0.45], [0.6]])  # 0.15: outside the radius 0.1
    assert mass_near_modes(actions, np.array([[0.0], [-0.5]]), 0.1).tolist() == [0.4, 0.2]
    assert mode_radius(DOUBLE_WELL_MODES) == pytest.approx(0.125)
    assert mode_radius(ring_modes(4)) == pytest.approx(0.6 * math.sqrt(2) / 8)


def test_strict_coverage_rejects_a_broad_bump_that_the_share_rule_accepts():
    rng = np.random.default_rng(0)
    modes, alpha = DOUBLE_WELL_MODES, 0.2
    radius = mode_radius(modes)
    target_near = target_mass_near_modes(double_well_reward, modes, alpha, radius)
    # Exact samples of pi* (rejection from uniform): both rules pass.
    proposals = rng.uniform(-1, 1, (200000, 1))
    exact = proposals[rng.uniform(size=len(proposals)) < np.exp((double_well_reward(proposals) - 1) / alpha)]
    assert covers_every_mode_strictly(mode_shares(exact, modes), mass_near_modes(exact, modes, radius), target_near)
    # A broad Gaussian bump centred between the wells: even shares, but its mass sits in the valley.
    bump = np.clip(rng.normal(0.0, 0.4, (20000, 1)), -1, 1)
    shares = mode_shares(bump, modes)
    assert covers_every_mode(shares)
    assert not covers_every_mode_strictly(shares, mass_near_modes(bump, modes, radius), target_near)
    # One well only fails both.
    one_well = exact[exact[:, 0] > 0]
    assert not covers_every_mode_strictly(
        mode_shares(one_well, modes), mass_near_modes(one_well, modes, radius), target_near
    )


def test_every_script_gets_flags_that_fix_the_temperature_on_the_raw_reward():
    from benchmarks.multimodal import fixed_temperature_flags

    assert fixed_temperature_flags("diffsac.py", 0.2) == ["--no-autotune"]
    assert fixed_temperature_flags("baselines/ppo.py", 0.2) == ["--no-norm-reward"]
    reppo = fixed_temperature_flags("diffreppo.py", 0.2)
    assert "--no-norm-reward" in reppo and "--no-autotune" in reppo and "--v-min" in reppo
    # the peers: rewards scaled by 1/alpha, so that SDAC's softmax of Q * alpha_0 / alpha (alpha = alpha_0)
    # is exp(r / alpha)
    for script in ("peers/sdac.py", "peers/dpmd.py"):
        flags = fixed_temperature_flags(script, 0.25)
        assert flags[:1] == ["--no-autotune"] and float(flags[flags.index("--reward-scale") + 1]) == 4.0
