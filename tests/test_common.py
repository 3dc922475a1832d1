"""common/: normalisation statistics, checkpoints, evaluation with frozen statistics, env checks."""

import os

import gymnasium as gym
import numpy as np
import pytest

import diffppo
from common.checkpoint import load_checkpoint, save_checkpoint
from common.envs import ConfigError, check_env_id
from common.evaluation import evaluate, load_agent
from common.normalization import ObservationNormalizer, RewardNormalizer, RunningMeanStd


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 50, 3)]
    rms = RunningMeanStd((4,), epsilon=0.0)
    for batch in batches:
        rms.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, everything.mean(0))
    np.testing.assert_allclose(rms.var, everything.var(0))
    assert rms.count == len(everything)


def test_observation_normalizer_state_round_trips_and_identity_is_identity():
    normalizer = ObservationNormalizer((3,))
    normalizer.update(np.random.default_rng(1).normal(5.0, 3.0, size=(100, 3)))
    copy = ObservationNormalizer((3,))
    copy.load_state_dict(normalizer.state_dict())
    obs = np.array([[1.0, 5.0, 100.0]])
    np.testing.assert_allclose(copy(obs), normalizer(obs))
    assert normalizer(obs).max() == 10.0  # clipped
    identity = ObservationNormalizer.identity((3,))
    np.testing.assert_allclose(identity(obs), obs)


def test_reward_normalizer_scales_by_discounted_return_std_and_restarts_after_done():
    normalizer = RewardNormalizer(num_envs=2, gamma=0.5)
    normalizer(np.array([1.0, 1.0]), np.array([False, True]))
    np.testing.assert_allclose(normalizer.discounted_return, [1.0, 0.0])
    normalizer(np.array([1.0, 1.0]), np.array([False, False]))
    np.testing.assert_allclose(normalizer.discounted_return, [1.5, 1.0])


def test_checkpoint_save_is_atomic_and_bad_paths_are_config_errors(tmp_path):
    path = str(tmp_path / "sub" / "model.pt")
    state = dict(format=2, script="diffppo", args={}, run_name="r", global_step=1, agent_kwargs={}, agent={})
    save_checkpoint(path, {**state, "obs_normalizer": {}})
    assert load_checkpoint(path) == {**state, "obs_normalizer": {}} and not os.path.exists(path + ".tmp")
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "garbage.pt"))


def test_evaluation_uses_checkpoint_statistics_and_leaves_them_frozen(tmp_path):
    """The agent sees (obs - mean)/std with the checkpoint's statistics; evaluation never updates them."""
    agent = diffppo.Agent(3, 1, [-2.0], [2.0], num_diffusion_steps=2)
    normalizer = ObservationNormalizer((3,))
    normalizer.update(np.random.default_rng(2).normal([1.0, -1.0, 4.0], [0.5, 2.0, 3.0], size=(500, 3)))
    path = str(tmp_path / "diffppo.cleanrl_model")
    save_checkpoint(
        path,
        {
            "script": "diffppo",
            "agent_kwargs": dict(obs_dim=3, action_dim=1, action_low=[-2.0], action_high=[2.0], num_diffusion_steps=2),
            "agent": agent.state_dict(),
            "obs_normalizer": normalizer.state_dict(),
            "args": {"env_id": "Pendulum-v1"},
            "format": 2,
            "run_name": "r",
            "global_step": 0,
        },
    )
    loaded_agent, loaded_normalizer, _ = load_agent(path)
    seen = []
    original_act = loaded_agent.act

    def recording_act(obs, deterministic=False):
        seen.append(obs.clone())
        return original_act(obs, deterministic)

    loaded_agent.act = recording_act
    before = loaded_normalizer.state_dict()
    returns = evaluate(loaded_agent, loaded_normalizer, "Pendulum-v1", episodes=1, seed=3)
    assert len(returns) == 1 and len(seen) == 200
    after = loaded_normalizer.state_dict()
    np.testing.assert_array_equal(before["mean"], after["mean"])
    assert before["count"] == after["count"]
    first_obs, _ = gym.make("Pendulum-v1").reset(seed=3)
    np.testing.assert_allclose(seen[0][0].numpy(), normalizer(first_obs[None])[0], rtol=1e-6)


def test_unknown_env_id_suggests_close_matches():
    with pytest.raises(ConfigError, match="Did you mean: Humanoid-v5"):
        check_env_id("Humanoid-v55")


def test_reward_normalizer_disabled_returns_raw_rewards():
    """--no-norm-reward: the PPO scripts see the raw reward, so alpha acts on its scale (pi* ~ exp(r / alpha))."""
    normalizer = RewardNormalizer(num_envs=2, gamma=0.99, enabled=False)
    for _ in range(3):
        rewards = normalizer(np.array([5.0, -20.0]), np.array([False, True]))
    assert rewards.dtype == np.float32 and rewards.tolist() == [5.0, -20.0]
