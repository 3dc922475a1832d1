"""Benchmark environments whose maximum-entropy optimal policy is multimodal.

Registered with gymnasium when common.envs is imported (every script does), so any script
takes them through --env-id:

  DoubleWellBandit-v0  one step, 1-D action, r(a) = 1 - 16 (a^2 - 1/4)^2: two equal maxima at a = +-1/2.
  RingBandit-v0        one step, 2-D action, r(a) = cos(M theta) - ((rho - R) / w)^2 in polar
                       coordinates (rho, theta) of a: M equal maxima on the ring rho = R at
                       theta = 2 pi j / M (num_modes=M, default 4; R = 0.6, w = 0.2).
  UnequalModesBandit-v0  one step, 1-D action; three modes at a = -0.6, 0.05, 0.5 (unequal gaps 0.65 and
                       0.45) whose weights under pi* at alpha = 0.2 are 0.5, 0.3 and 0.2:
                       r(a) = 1 + 0.2 log sum_j (w_j / w_max) exp(-(a - m_j)^2 / (2 * 0.07^2)).
  TurnLeftOrRight-v0   8 steps; the agent turns its heading phi by a * pi/2 and is paid the
                       double-well reward of |a| = 1/2 at every step: turning left or right by the same
                       amount pays the same. Observation (cos phi, sin phi, steps left / 8).

For each, the target of maximum-entropy RL with temperature alpha is pi*(a|s) proportional to
exp(Q*_soft(s, a) / alpha). In all three the reward depends on the action only and the
dynamics do not change future rewards, so Q*_soft(s, a) = r(a) + (a constant per state) and
    pi*(a|s) = exp(r(a) / alpha) / Z,  the same at every state,
which target_probabilities() integrates over histogram bins on a fine grid.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

DOUBLE_WELL_MODES = np.array([[-0.5], [0.5]])


def double_well_reward(action: np.ndarray) -> np.ndarray:
    """r(a) = 1 - 16 (a^2 - 1/4)^2 over the last axis (1-D actions): 1 at a = +-1/2, 0 at a = 0, -8 at +-1."""
    return 1.0 - 16.0 * (action[..., 0] ** 2 - 0.25) ** 2


def ring_reward(action: np.ndarray, num_modes: int = 4, radius: float = 0.6, width: float = 0.2) -> np.ndarray:
    """r(a) = cos(M theta) - ((rho - R) / w)^2 for 2-D actions: 1 at the M modes, -1 between them on the ring."""
    rho = np.hypot(action[..., 0], action[..., 1])
    theta = np.arctan2(action[..., 1], action[..., 0])
    return np.cos(num_modes * theta) - ((rho - radius) / width) ** 2


def ring_modes(num_modes: int = 4, radius: float = 0.6) -> np.ndarray:
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


class DoubleWellBandit(gym.Env):
    """One step; the observation is a constant 0; r(a) = 1 - 16 (a^2 - 1/4)^2."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reward(self, action: np.ndarray) -> np.ndarray:
        return double_well_reward(action)

    def modes(self) -> np.ndarray:
        """The maximisers of r, one row per mode."""
        return DOUBLE_WELL_MODES

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64), self.action_space.low, self.action_space.high)
        return np.zeros(self.observation_space.shape, np.float32), float(self.reward(action)), True, False, {}


UNEQUAL_MODES = np.array([[-0.6], [0.05], [0.5]])
UNEQUAL_WEIGHTS = np.array([0.5, 0.3, 0.2])
UNEQUAL_WIDTH = 0.07
UNEQUAL_DESIGN_ALPHA = 0.2


def unequal_modes_reward(action: np.ndarray) -> np.ndarray:
    """r(a) = 1 + 0.2 log sum_j (w_j / w_max) exp(-(a - m_j)^2 / (2 s^2)), 1-D actions.

    At alpha = 0.2, exp(r / alpha) is proportional to the mixture sum_j w_j N(a; m_j, s^2): pi*'s modes
    then weigh w = (0.5, 0.3, 0.2) (up to the mixture's negligible mass outside [-1, 1]). At another
    alpha, pi* is proportional to the mixture to the power 0.2 / alpha (target_mode_shares computes its
    weights). r = 1 at the heaviest mode, 0.90 and 0.82 at the others, about -4 at the box's edges.
    """
    a = action[..., 0, None]
    log_terms = np.log(UNEQUAL_WEIGHTS / UNEQUAL_WEIGHTS.max()) - (a - UNEQUAL_MODES[:, 0]) ** 2 / (
        2 * UNEQUAL_WIDTH**2
    )
    peak = log_terms.max(-1)
    return 1.0 + UNEQUAL_DESIGN_ALPHA * (peak + np.log(np.exp(log_terms - peak[..., None]).sum(-1)))


class UnequalModesBandit(DoubleWellBandit):
    """One step; 1-D action; three modes of unequal weight (0.5, 0.3, 0.2 at alpha 0.2) and unequal spacing."""

    def reward(self, action: np.ndarray) -> np.ndarray:
        return unequal_modes_reward(action)

    def modes(self) -> np.ndarray:
        return UNEQUAL_MODES


class RingBandit(DoubleWellBandit):
    """One step; 2-D action; M equal modes on a ring of radius 0.6."""

    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, num_modes: int = 4):
        if num_modes < 1:
            raise ValueError(f"num_modes must be at least 1 (got {num_modes})")
        self.num_modes = num_modes

    def reward(self, action: np.ndarray) -> np.ndarray:
        return ring_reward(action, self.num_modes)

    def modes(self) -> np.ndarray:
        return ring_modes(self.num_modes)


class TurnLeftOrRight(gym.Env):
    """Turn the heading by a * pi/2 for 8 steps; the reward r(a) = 1 - 16 (a^2 - 1/4)^2 pays a = +-1/2 alike."""

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    episode_length = 8

    def reward(self, action: np.ndarray) -> np.ndarray:
        return double_well_reward(action)

    def modes(self) -> np.ndarray:
        return DOUBLE_WELL_MODES

    def _observation(self) -> np.ndarray:
        remaining = (self.episode_length - self.t) / self.episode_length
        return np.array([math.cos(self.heading), math.sin(self.heading), remaining], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.heading, self.t = float(self.np_random.uniform(-math.pi, math.pi)), 0
        return self._observation(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64), self.action_space.low, self.action_space.high)
        self.heading = (self.heading + float(action[0]) * math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
        self.t += 1
        return self._observation(), float(self.reward(action)), self.t >= self.episode_length, False, {}


MULTIMODAL_ENV_IDS = ["DoubleWellBandit-v0", "RingBandit-v0", "TurnLeftOrRight-v0", "UnequalModesBandit-v0"]


def register() -> None:
    """Register the benchmark ids with gymnasium (idempotent)."""
    # No time limit: every episode terminates by itself (after 1 step, or 8), never by truncation.
    for env_id, entry_point in [
        ("DoubleWellBandit-v0", DoubleWellBandit),
        ("RingBandit-v0", RingBandit),
        ("TurnLeftOrRight-v0", TurnLeftOrRight),
        ("UnequalModesBandit-v0", UnequalModesBandit),
    ]:
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"{__name__}:{entry_point.__name__}")


def bin_edges(action_dim: int, bins: int) -> list[np.ndarray]:
    return [np.linspace(-1.0, 1.0, bins + 1)] * action_dim


def target_density_on_grid(reward_fn, action_dim: int, alpha: float, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints of a regular grid with `points` per axis on [-1, 1]^d, and exp(r / alpha) there (max scaled to 1)."""
    centres = -1.0 + (np.arange(points) + 0.5) * (2.0 / points)
    grid = np.stack(np.meshgrid(*[centres] * action_dim, indexing="ij"), axis=-1)
    log_density = reward_fn(grid) / alpha
    return grid, np.exp(log_density - log_density.max())


def target_probabilities(reward_fn, action_dim: int, alpha: float, bins: int, points_per_bin: int = 20) -> np.ndarray:
    """P*(bin) of pi*(a) proportional to exp(r(a) / alpha) on [-1, 1]^d, by the midpoint rule on a fine grid.

    Returns an array of shape [bins] * d that sums to 1.
    """
    _, density = target_density_on_grid(reward_fn, action_dim, alpha, bins * points_per_bin)
    for axis in range(action_dim):  # sum each bin's fine points
        shape = density.shape[:axis] + (bins, points_per_bin) + density.shape[axis + 1 :]
        density = density.reshape(shape).sum(axis=axis + 1)
    return density / density.sum()


def histogram(actions: np.ndarray, bins: int) -> np.ndarray:
    """Share of the sampled actions [N, d] in each bin of [-1, 1]^d."""
    counts, _ = np.histogramdd(actions, bins=bin_edges(actions.shape[1], bins))
    return counts / len(actions)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """TV(p, q) = 1/2 sum |p - q| over bins."""
    return 0.5 * float(np.abs(p - q).sum())


def mode_shares(actions: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Share of the actions [N, d] nearest to each mode [M, d] (Euclidean)."""
    distances = np.linalg.norm(actions[:, None, :] - modes[None, :, :], axis=-1)
    return np.bincount(distances.argmin(1), minlength=len(modes)) / len(actions)


def covers_every_mode(shares: np.ndarray, target_shares: np.ndarray | None = None) -> bool:
    """Each mode holds between 0.5 and 1.5 times pi*'s share of the samples (1/M each for equal modes)."""
    target = np.full(len(shares), 1.0 / len(shares)) if target_shares is None else np.asarray(target_shares)
    return bool(np.all((shares >= 0.5 * target) & (shares <= 1.5 * target)))


def target_mode_shares(reward_fn, modes: np.ndarray, alpha: float, points: int | None = None) -> np.ndarray:
    """pi*'s share of each mode's cell (the actions nearest to it, as mode_shares counts them), midpoint rule
    with `points` per axis (default 4000 in 1-D, 400 per axis in 2-D)."""
    points = points or (4000 if modes.shape[1] == 1 else 400)
    grid, density = target_density_on_grid(reward_fn, modes.shape[1], alpha, points)
    grid, density = grid.reshape(-1, modes.shape[1]), density.ravel() / density.sum()
    nearest = np.linalg.norm(grid[:, None, :] - modes[None, :, :], axis=-1).argmin(1)
    return np.bincount(nearest, weights=density, minlength=len(modes))


def weights_match(shares: np.ndarray, target_shares: np.ndarray, tolerance: float = 0.05) -> bool:
    """Every mode's share within `tolerance` of pi*'s share (the mode-weight bar)."""
    return bool(np.all(np.abs(np.asarray(shares) - np.asarray(target_shares)) <= tolerance))


def mode_radius(modes: np.ndarray) -> float:
    """An eighth of the smallest distance between two modes (0.125 for a single mode).

    About 1.6 standard deviations of a mode of pi* at alpha = 0.2 in both bandits: a ball holds most of a
    target mode's mass (0.42 of 0.5 on the double well, 0.18 of 0.25 on the ring) but little of a broad
    bump spread over the valley between modes.
    """
    if len(modes) < 2:
        return 0.125
    distances = np.linalg.norm(modes[:, None, :] - modes[None, :, :], axis=-1)
    return 0.125 * float(distances[~np.eye(len(modes), dtype=bool)].min())


def mass_near_modes(actions: np.ndarray, modes: np.ndarray, radius: float) -> np.ndarray:
    """Share of the actions [N, d] within `radius` of each mode [M, d]."""
    distances = np.linalg.norm(actions[:, None, :] - modes[None, :, :], axis=-1)
    return (distances <= radius).mean(0)


def target_mass_near_modes(reward_fn, modes: np.ndarray, alpha: float, radius: float, points: int = 800) -> np.ndarray:
    """pi*'s mass within `radius` of each mode, pi* proportional to exp(r / alpha) on [-1, 1]^d (midpoint rule)."""
    grid, density = target_density_on_grid(reward_fn, modes.shape[1], alpha, points)
    grid, density = grid.reshape(-1, modes.shape[1]), density.ravel() / density.sum()
    near = np.linalg.norm(grid[:, None, :] - modes[None, :, :], axis=-1) <= radius  # [points^d, M]
    return density @ near


def covers_every_mode_strictly(
    shares: np.ndarray, mass_near: np.ndarray, target_mass_near: np.ndarray, target_shares: np.ndarray | None = None
) -> bool:
    """The share rule, and every mode holds at least half of pi*'s mass within the radius around it.

    The share rule alone passes a broad unimodal bump centred between symmetric modes (it splits the
    samples evenly while putting them in the valley); the second condition does not.
    """
    return covers_every_mode(shares, target_shares) and bool(np.all(mass_near >= 0.5 * target_mass_near))


register()  # importing this module is how a script asks for these ids: --env-id benchmarks.multimodal_envs:EnvId
