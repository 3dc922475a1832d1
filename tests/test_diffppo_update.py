"""The PPO side of DiffPPO: augmented-sample flattening, per-step importance ratios, augmented GAE."""

import numpy as np
import torch

from diffppo import Agent, augmented_gae, augmented_samples


def test_per_step_ratio_is_one_before_any_update():
    """Before an update the new policy is the old one, so every per-diffusion-step ratio
    q_new(x_{k-1}|x_k,s) / q_old(x_{k-1}|x_k,s) is 1. This goes through the same flattening
    as the update, so a sample paired with the wrong step k or the wrong x_k would break it."""
    torch.manual_seed(0)
    num_steps, num_envs, obs_dim, action_dim, num_diffusion_steps = 5, 3, 4, 2, 6
    agent = Agent(obs_dim, action_dim, [-1.0] * action_dim, [1.0] * action_dim, num_diffusion_steps)
    with torch.no_grad():
        agent.actor.mean_net[-1].weight.normal_(0, 0.5)  # a policy that depends on s, x_k and k
        agent.actor.log_std.uniform_(-2.0, -0.5)
    obs = torch.randn(num_steps, num_envs, obs_dim)
    chain = torch.zeros(num_steps, num_envs, num_diffusion_steps + 1, action_dim)
    log_q = torch.zeros(num_steps, num_envs, num_diffusion_steps)
    for t in range(num_steps):
        with torch.inference_mode():
            chain_t, log_q_t = agent.actor.sample_chain(obs[t])
        chain[t], log_q[t] = chain_t, log_q_t
    b_obs, b_x_k, b_k, b_x_previous = augmented_samples(obs, chain, agent.actor.step_k)
    assert b_obs.shape == (num_steps * num_envs * num_diffusion_steps, obs_dim)
    new_log_q = agent.actor.log_prob(b_obs, b_x_k, b_k, b_x_previous)
    ratio = (new_log_q - log_q.reshape(-1)).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    # A sample paired with the wrong diffusion step is not at ratio 1: the check has teeth.
    wrong_k = agent.actor.log_prob(b_obs, b_x_k, b_k.flip(0), b_x_previous)
    assert (wrong_k - log_q.reshape(-1)).abs().max() > 0.1


def test_augmented_gae_matches_hand_computation():
    """T = 2 env steps, N = 1 env, K = 2 diffusion steps, gamma = 0.5, gae_lambda = 0.5, chain lambda = 1.

    rewards r[t][j] = [[1, 2], [3, 4]], values V[t][j] = [[10, 20], [30, 40]], V(after) = 50.
    Backwards: (t=1, j=1) env step: delta = 4 + 0.5*50 - 40 = -11, A = -11.
               (t=1, j=0) chain:    delta = 3 + 40 - 30 = 13,       A = 13 + 1*1*(-11) = 2.
               (t=0, j=1) env step: delta = 2 + 0.5*30 - 20 = -3,   A = -3 + 0.5*0.5*2 = -2.5.
               (t=0, j=0) chain:    delta = 1 + 20 - 10 = 11,       A = 11 - 2.5 = 8.5.
    With the episode ending at t = 0: (t=0, j=1): delta = 2 - 20 = -18 = A; (t=0, j=0): A = 11 - 18 = -7.
    With chain lambda 0.5 (no done): A(1,0) = 13 - 0.5*11 = 7.5; A(0,1) = -3 + 0.25*7.5 = -1.125;
               A(0,0) = 11 + 0.5*(-1.125) = 10.4375.
    """
    rewards = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])
    values = np.array([[[10.0, 20.0]], [[30.0, 40.0]]])
    next_value = np.array([50.0])
    no_done = np.zeros((2, 1))
    advantages, returns = augmented_gae(rewards, values, no_done, next_value, 0.5, 0.5, 1.0)
    np.testing.assert_allclose(advantages[:, 0], [[8.5, -2.5], [2.0, -11.0]])
    np.testing.assert_allclose(returns[:, 0], [[18.5, 17.5], [32.0, 29.0]])

    done_first = np.array([[1.0], [0.0]])
    advantages, _ = augmented_gae(rewards, values, done_first, next_value, 0.5, 0.5, 1.0)
    np.testing.assert_allclose(advantages[:, 0], [[-7.0, -18.0], [2.0, -11.0]])

    advantages, _ = augmented_gae(rewards, values, no_done, next_value, 0.5, 0.5, 0.5)
    np.testing.assert_allclose(advantages[:, 0], [[10.4375, -1.125], [7.5, -11.0]])


def test_augmented_gae_with_one_diffusion_step_is_ordinary_gae():
    """K = 1: the augmented MDP is the environment MDP, so the result is CleanRL's GAE."""
    rng = np.random.default_rng(0)
    num_steps, num_envs, gamma, lam = 7, 2, 0.9, 0.8
    rewards, values = rng.normal(size=(num_steps, num_envs)), rng.normal(size=(num_steps, num_envs))
    dones = (rng.random((num_steps, num_envs)) < 0.3).astype(float)
    next_value = rng.normal(size=num_envs)
    expected = np.zeros_like(rewards)
    last = np.zeros(num_envs)
    for t in reversed(range(num_steps)):
        following = next_value if t == num_steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * (1 - dones[t]) - values[t]
        last = delta + gamma * lam * (1 - dones[t]) * last
        expected[t] = last
    advantages, _ = augmented_gae(rewards[..., None], values[..., None], dones, next_value, gamma, lam, 0.3)
    np.testing.assert_allclose(advantages[..., 0], expected)


class ValueOfObservation(torch.nn.Module):
    """A stand-in critic: V(s, x_k, k) = 10 * s."""

    def forward(self, obs, x_k, k):
        return 10.0 * obs[:, 0]


class UnitRewards:
    """A stand-in reward normaliser that leaves rewards as they are."""

    def __call__(self, reward, done):
        return reward.astype(np.float32)


def rewards_over_episode(env_id, steps, gamma=0.9):
    from common.envs import make_vector_env
    from common.normalization import ObservationNormalizer
    from diffppo import augmented_rewards, step_with_bootstrap

    agent = Agent(1, 1, [-1.0], [1.0], num_diffusion_steps=2)
    agent.critic = ValueOfObservation()
    envs = make_vector_env(env_id, num_envs=1, seed=0)
    envs.reset(seed=0)
    last_rewards, dones = [], []
    for _ in range(steps):
        chain = torch.zeros(1, 3, 1)
        _, env_reward, bootstrap, done, _ = step_with_bootstrap(
            envs, agent, chain, ObservationNormalizer.identity((1,)), UnitRewards(), gamma
        )
        zeros = torch.zeros(1, 2)
        augmented = augmented_rewards(zeros, zeros[:, 0], zeros[:, 0], 0.5, env_reward[None], bootstrap[None])
        last_rewards.append(augmented[0, 0, -1])
        dones.append(bool(done[0]))
        assert augmented[0, 0, 0] == 0.0  # only the last augmented step gets the environment's reward
    return last_rewards, dones


def test_time_limit_is_bootstrapped_from_the_final_observation():
    """Time limit 3: the third step's reward is 1 + gamma * V(final obs 3) = 1 + 0.9 * 30, not
    V of the reset observation (0); the episode still counts as done for GAE."""
    rewards, dones = rewards_over_episode("tests/CountingTruncated-v0", 4)
    np.testing.assert_allclose(rewards, [1.0, 1.0, 1.0 + 0.9 * 30.0, 1.0])
    assert dones == [False, False, True, False]


def test_termination_is_not_bootstrapped():
    rewards, dones = rewards_over_episode("tests/CountingTerminated-v0", 3)
    np.testing.assert_allclose(rewards, [1.0, 1.0, 1.0])
    assert dones == [False, True, False]


def test_soft_rewards_are_minus_alpha_times_the_step_terms_and_sum_to_minus_alpha_l():
    """r~_k = -alpha l_k, with -alpha log N(x_K; 0, I) at k = K (time index 0) and +alpha log|da/dx_0| at k = 1
    (the last), so that sum_k r~_k = -alpha L; the env reward and the bootstrap join the last step."""
    from diffppo import augmented_rewards

    step_log_ratio, log_prior, squash = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([-3.0]), torch.tensor([0.25])
    rewards = augmented_rewards(step_log_ratio, log_prior, squash, 0.2, np.array([[1.0]]), np.array([[0.5]]))
    expected = [-0.2 * 0.5 + 0.2 * 3.0, -0.2 * -1.0, -0.2 * 2.0 + 0.2 * 0.25 + 1.0 + 0.5]
    np.testing.assert_allclose(rewards[0, 0], expected, rtol=1e-6)
    path_log_ratio = log_prior + step_log_ratio.sum(1) - squash
    np.testing.assert_allclose(rewards.sum() - 1.5, -0.2 * path_log_ratio.item(), rtol=1e-6)
