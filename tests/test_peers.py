"""peers/dpmd.py and peers/sdac.py: the DDPM maths against independent computations, the two
reweighted losses against direct formulas, best-of-N, and command-line smoke trainings."""

import math
import os

import pytest
import torch
from conftest import run_script, single_run_dir

from benchmarks.logs import read_scalars
from peers import dpmd, sdac

SMALL = [
    "--learning-starts",
    "256",
    "--batch-size",
    "64",
    "--hidden-dim",
    "32",
    "--num-hidden-layers",
    "2",
    "--num-particles",
    "4",
    "--num-diffusion-steps",
    "5",
    "--num-envs",
    "2",
]


def make_policy(module=dpmd, steps=20, scale=0.8):
    torch.manual_seed(0)
    return module.DiffusionPolicy(
        obs_dim=3,
        action_dim=2,
        num_diffusion_steps=steps,
        beta_schedule_scale=scale,
        hidden_dim=16,
        num_hidden_layers=2,
    )


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_mish_matches_torch_mish_in_value_and_gradient_with_and_without_autograd(module):
    x = torch.cat([torch.linspace(-60.0, 60.0, 24001), torch.tensor([0.0, 19.999, 20.0, 20.001, 88.0, 1e4, -1e4])])
    expected = torch.nn.functional.mish(x.double())
    with torch.no_grad():  # the in-place branch
        assert torch.allclose(module.Mish()(x).double(), expected, rtol=1e-5, atol=1e-6)
    leaf = x.clone().requires_grad_()
    value = module.Mish()(leaf)
    assert torch.allclose(value.double(), expected, rtol=1e-5, atol=1e-6)
    value.sum().backward()
    reference = x.double().requires_grad_()
    torch.nn.functional.mish(reference).sum().backward()
    assert torch.allclose(leaf.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)
    assert torch.equal(leaf.detach(), x)  # the input is never overwritten
    assert not any(isinstance(layer, torch.nn.Mish) for layer in make_policy(module).modules())


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_forward_marginal_is_the_composition_of_the_noising_kernels(module):
    policy = make_policy(module)
    betas = 0.8 * torch.linspace(1e-4, 0.999, 20, dtype=torch.float64)
    # x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z_s from x_0: x_t = coef_t x_0 + N(0, var_t), by recursion.
    coef, var = 1.0, 0.0
    for t in range(20):
        coef, var = math.sqrt(1 - betas[t]) * coef, (1 - betas[t]) * var + betas[t]
        x_0, noise = torch.tensor([[0.3, -0.7]]), torch.tensor([[1.0, 0.0]])
        x_t = policy.q_sample(torch.tensor([t]), x_0, noise)
        torch.testing.assert_close(x_t, (coef * x_0 + math.sqrt(var) * noise).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", [dpmd, sdac])  # the two scripts carry copies of the DDPM
def test_forward_marginal_samples_have_the_stated_mean_and_variance(module):
    policy, t = make_policy(module), torch.full((200000,), 7)
    x_t = policy.q_sample(t, torch.full((200000, 2), 0.5), torch.randn(200000, 2))
    abar = policy.alphas_cumprod[7]
    assert abs(x_t.mean().item() - 0.5 * abar.sqrt().item()) < 0.01
    assert abs(x_t.var().item() - (1 - abar).item()) < 0.01


@pytest.mark.parametrize("module", [dpmd, sdac])  # the two scripts carry copies of the DDPM
def test_x0_reconstruction_inverts_the_forward_noising(module):
    policy = make_policy(module)
    t, x_0, noise = torch.arange(20), torch.rand(20, 2) * 2 - 1, torch.randn(20, 2)
    torch.testing.assert_close(policy.predict_x0(t, policy.q_sample(t, x_0, noise), noise), x_0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module", [dpmd, sdac])  # the two scripts carry copies of the DDPM
def test_posterior_coefficients_are_bayes_rule_for_the_previous_step(module):
    """q(x_{t-1} | x_t, x_0) ~ N(x_t; sqrt(1-b_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1})."""
    policy = make_policy(module)
    betas = 0.8 * torch.linspace(1e-4, 0.999, 20, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    for t in range(1, 20):
        precision = (1 - betas[t]) / betas[t] + 1 / (1 - abar[t - 1])
        coef_xt = math.sqrt(1 - betas[t]) / betas[t] / precision
        coef_x0 = math.sqrt(abar[t - 1]) / (1 - abar[t - 1]) / precision
        assert policy.posterior_mean_xt[t].item() == pytest.approx(coef_xt.item(), rel=1e-5)
        assert policy.posterior_mean_x0[t].item() == pytest.approx(coef_x0.item(), rel=1e-5)
        assert policy.posterior_std[t].item() == pytest.approx(math.sqrt(1 / precision), rel=1e-5)
    assert policy.posterior_mean_x0[0].item() == pytest.approx(1.0) and policy.posterior_mean_xt[0].item() == 0.0


@pytest.mark.parametrize("module", [dpmd, sdac])  # the two scripts carry copies of the DDPM
def test_reverse_chain_with_the_oracle_noise_predictor_returns_the_data_point(module):
    """For data at one point c the exact predictor is eps(x_t, t) = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t);
    then every predicted x_0 is c and the last step (t = 0, no noise) lands on c exactly."""
    policy, c = make_policy(module), torch.tensor([0.4, -0.9])

    class Oracle(torch.nn.Module):
        def forward(self, obs, x_t, t):
            abar = policy.alphas_cumprod[t][:, None]
            return (x_t - abar.sqrt() * c) / (1 - abar).sqrt()

    policy.noise_predictor = Oracle()
    torch.testing.assert_close(policy.sample(torch.zeros(64, 3)), c.expand(64, 2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("module", [dpmd, sdac])  # the two scripts carry copies of the DDPM
def test_sampled_actions_stay_in_the_box(module):
    actions = make_policy(module).sample(torch.randn(500, 3))
    assert actions.min() >= -1 and actions.max() <= 1 and actions.std() > 0


def make_agent(module, particles=6):
    torch.manual_seed(0)
    return module.Agent(
        obs_dim=3,
        action_dim=2,
        action_low=[-2.0, 0.0],
        action_high=[2.0, 1.0],
        num_diffusion_steps=4,
        num_particles=particles,
        hidden_dim=16,
        num_hidden_layers=2,
    )


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_best_of_n_picks_the_candidate_with_the_highest_min_q(module, monkeypatch):
    agent, target = make_agent(module), torch.tensor([0.5, -0.5])
    candidates = torch.rand(4 * 6, 2) * 2 - 1
    monkeypatch.setattr(agent.acting_policy, "sample", lambda obs: candidates)
    monkeypatch.setattr(agent, "min_q", lambda obs, x: -((x - target) ** 2).sum(-1))
    chosen = agent.best_of_n(torch.zeros(4, 3))
    expected = candidates.view(4, 6, 2)[
        torch.arange(4), (-((candidates.view(4, 6, 2) - target) ** 2).sum(-1)).argmax(1)
    ]
    torch.testing.assert_close(chosen, expected)


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_act_scales_into_the_action_box_and_deterministic_has_no_exploration_noise(module, monkeypatch):
    agent = make_agent(module)
    agent.exploration_std.fill_(10.0)  # huge noise: explored actions hit the box edges
    monkeypatch.setattr(agent, "best_of_n", lambda obs, policy=None: torch.zeros(obs.shape[0], 2))
    torch.testing.assert_close(
        agent.act(torch.zeros(5, 3), deterministic=True), torch.tensor([[0.0, 0.5]]).expand(5, 2)
    )
    explored = agent.act(torch.zeros(2000, 3))
    assert explored[:, 0].min() == -2.0 and explored[:, 0].max() == 2.0 and explored[:, 1].min() == 0.0


def test_dpmd_weights_are_the_exp_of_the_clipped_standardised_q_over_alpha():
    min_q = torch.tensor([-100.0, 0.0, 2.0, 4.0, 100.0])
    weights = dpmd.dpmd_weights(min_q, q_mean=1.0, q_std=2.0, alpha=0.5, q_clip=3.0)
    direct = [math.exp(max(-3, min(3, (q - 1.0) / 2.0)) / 0.5) for q in min_q.tolist()]
    torch.testing.assert_close(weights, torch.tensor(direct))


def test_dpmd_weights_with_the_reference_normalisation_are_those_of_q_minus_mean_over_std():
    """The reference's code computes Q - mu / sigma (operator precedence); --q-normalization reference does too."""
    min_q = torch.tensor([-100.0, 0.0, 2.0, 4.0, 100.0])
    weights = dpmd.dpmd_weights(min_q, q_mean=1.0, q_std=2.0, alpha=0.5, q_clip=3.0, reference=True)
    direct = [math.exp(max(-3, min(3, q - 1.0 / 2.0)) / 0.5) for q in min_q.tolist()]
    torch.testing.assert_close(weights, torch.tensor(direct))


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_the_agent_acts_with_its_ema_policy_and_draws_targets_from_the_online_one(module, monkeypatch):
    agent = make_agent(module, particles=1)
    online, ema = torch.full((3, 2), 0.25), torch.full((3, 2), -0.75)
    monkeypatch.setattr(agent.policy, "sample", lambda obs: online)
    monkeypatch.setattr(agent.ema_policy, "sample", lambda obs: ema)
    torch.testing.assert_close(agent.act(torch.zeros(3, 3), deterministic=True), agent.scale(ema))
    torch.testing.assert_close(agent.best_of_n(torch.zeros(3, 3), agent.policy), online)
    without = module.Agent(3, 2, [-1.0, -1.0], [1.0, 1.0], 4, num_particles=1, hidden_dim=16, ema_policy=False)
    assert without.acting_policy is without.policy and not any("ema" in key for key in without.state_dict())


@pytest.mark.parametrize("name", ["dpmd", "sdac"])
def test_the_ema_policy_moves_by_tau_at_each_policy_update(tmp_path, repo_root, name):
    """With --tau 1 the EMA copy is the policy after every policy update (the policy changes only there); with
    the default tau it lags behind the policy."""
    saved = {}
    for tau in ("1.0", "0.005"):
        flags = ["--env-id", "Pendulum-v1", *SMALL, "--total-timesteps", "600", "--save-model", "--tau", tau]
        os.makedirs(tmp_path / tau)
        result = run_script([os.path.join(repo_root, "peers", f"{name}.py"), *flags], cwd=tmp_path / tau)
        assert result.returncode == 0, result.stderr
        path = os.path.join(single_run_dir(str(tmp_path / tau)), f"{name}.cleanrl_model")
        saved[tau] = torch.load(path, weights_only=False)["agent"]
    for tau, state in saved.items():
        policy = {key[len("policy.") :]: value for key, value in state.items() if key.startswith("policy.")}
        differs = [not torch.equal(state[f"ema_policy.{key}"], value) for key, value in policy.items()]
        assert (not any(differs)) if tau == "1.0" else any(differs), tau


def test_dpmd_loss_is_the_weighted_mean_squared_noise_error(monkeypatch):
    policy = make_policy(steps=4)
    obs, actions, weights = torch.randn(8, 3), torch.rand(8, 2) * 2 - 1, torch.rand(8)
    torch.manual_seed(5)
    loss = dpmd.weighted_denoising_loss(policy, obs, actions, weights)
    torch.manual_seed(5)
    t = torch.randint(0, 4, (8,))
    noise = torch.randn(8, 2)
    abar = policy.alphas_cumprod[t][:, None]
    predicted = policy.noise_predictor(obs, abar.sqrt() * actions + (1 - abar).sqrt() * noise, t)
    direct = sum(weights[i] * ((predicted[i] - noise[i]) ** 2).sum() for i in range(8)) / (8 * 2)
    torch.testing.assert_close(loss, direct)


def test_sdac_weights_sum_to_one_per_state_and_the_loss_matches_the_m_times_repeated_form():
    agent = make_agent(sdac)
    obs, actions, M = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1, 7
    torch.manual_seed(3)
    loss, weights = sdac.sdac_policy_loss(agent, obs, actions, alpha=2.0, alpha_initial=5.0, num_reconstructions=M)
    torch.testing.assert_close(weights.sum(1), torch.ones(5))
    # The reference's form: repeat everything M times, softmax of min Q * alpha_0 / alpha, mean of w * err^2.
    torch.manual_seed(3)
    policy = agent.policy
    t = torch.randint(0, 4, (5,))
    x_t = policy.q_sample(t, actions, torch.randn_like(actions))
    noise = torch.randn(5, M, 2)
    wide_t, wide_x_t, wide_obs = t.repeat_interleave(M), x_t.repeat_interleave(M, 0), obs.repeat_interleave(M, 0)
    recon = policy.predict_x0(wide_t, wide_x_t, noise.reshape(-1, 2)).clamp(-1, 1)
    q = torch.min(agent.qf1(wide_obs, recon), agent.qf2(wide_obs, recon)).view(5, M) * 5.0 / 2.0
    direct_weights = torch.exp(q) / torch.exp(q).sum(1, keepdim=True)
    predicted = policy.noise_predictor(wide_obs, wide_x_t, wide_t)
    direct_loss = (direct_weights.reshape(-1, 1) * (predicted - noise.reshape(-1, 2)) ** 2).mean()
    torch.testing.assert_close(weights, direct_weights)
    torch.testing.assert_close(loss, direct_loss)


def test_exploration_entropy_is_the_gaussian_entropy():
    entropy = torch.distributions.Normal(0.0, 0.1 * 3.0).entropy().item() * 4
    assert dpmd.exploration_entropy(3.0, 0.1, 4) == pytest.approx(entropy, rel=1e-6)


def test_policy_learning_rate_decays_linearly_between_the_reference_steps():
    args = dpmd.Args()
    assert dpmd.policy_learning_rate(args, 0) == 3e-4 and dpmd.policy_learning_rate(args, 25000) == 3e-4
    assert dpmd.policy_learning_rate(args, 50000) == pytest.approx(1.65e-4)
    assert dpmd.policy_learning_rate(args, 75000) == pytest.approx(3e-5) == dpmd.policy_learning_rate(args, 10**6)


@pytest.mark.parametrize("script", ["peers/dpmd.py", "peers/sdac.py"])
@pytest.mark.parametrize("env_id", ["Hopper-v4", "Pendulum-v1"])
def test_smoke_training_logs_every_tag(tmp_path, repo_root, script, env_id):
    result = run_script(
        [os.path.join(repo_root, script), "--env-id", env_id, "--total-timesteps", "1200", *SMALL], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "step      1200/1200" in result.stdout and "updates/s" in result.stdout
    run_dir = single_run_dir(tmp_path)
    for tag in [
        "charts/episodic_return",
        "charts/SPS",
        "charts/alpha",
        "charts/exploration_entropy",
        "losses/qf1_loss",
        "losses/qf2_loss",
        "losses/actor_loss",
    ]:
        _, values = read_scalars(run_dir, tag)
        assert len(values) > 0 and all(math.isfinite(v) for v in values), tag


@pytest.mark.parametrize("name", ["dpmd", "sdac"])
def test_save_model_then_evaluate_checkpoint_then_resume_as_a_module(tmp_path, repo_root, name):
    common = ["--env-id", "Pendulum-v1", *SMALL, "--save-model", "--eval-episodes", "2"]
    result = run_script(["-m", f"peers.{name}", *common, "--total-timesteps", "600"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mean return" in result.stdout
    checkpoint = os.path.join(single_run_dir(tmp_path), f"{name}.cleanrl_model")
    evaluation = run_script(["-m", "common.evaluation", checkpoint, "--episodes", "2"], cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "Pendulum-v1 (deterministic, 2 episodes): mean return" in evaluation.stdout
    resumed = run_script(
        [os.path.join(repo_root, "peers", f"{name}.py"), *common, "--total-timesteps", "1200", "--resume", checkpoint],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 600" in resumed.stdout and "step      1200/1200" in resumed.stdout
    other = "sdac" if name == "dpmd" else "dpmd"
    wrong = run_script([os.path.join(repo_root, "peers", f"{other}.py"), *common, "--resume", checkpoint], cwd=tmp_path)
    assert wrong.returncode == 2 and f"is a checkpoint of peers/{name}.py, not of peers/{other}.py" in wrong.stderr


@pytest.mark.parametrize("script", ["peers/dpmd.py", "peers/sdac.py"])
@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--env-id", "MountainCar-v0"], "--env-id MountainCar-v0 has a Discrete action space"),
        (["--num-diffusion-steps", "0"], "--num-diffusion-steps must be at least 1 (got 0)"),
        (["--num-particles", "0"], "--num-particles must be at least 1 (got 0)"),
        (["--alpha", "nan"], "--alpha must be a finite number (got nan)"),
        (["--beta-schedule-scale", "1.5"], "--beta-schedule-scale must be in (0, 1]"),
        (["--learning-starts", "100", "--batch-size", "256"], "--learning-starts 100 is below --batch-size 256"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, repo_root, script, flags, expected):
    result = run_script([os.path.join(repo_root, script), *flags], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_critic_target_is_the_scaled_reward_plus_the_discounted_min_target_q_without_entropy(module):
    rewards, terminations, next_min_q = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 7.0])
    target = module.critic_target(rewards, terminations, next_min_q, reward_scale=0.2, gamma=0.99)
    torch.testing.assert_close(target, torch.tensor([0.2 * 1.0 + 0.99 * 10.0, 0.2 * -2.0]))


@pytest.mark.parametrize("module", [dpmd, sdac])
def test_a_step_on_the_alpha_loss_lowers_alpha_while_the_noise_entropy_is_above_target(module):
    for entropy, direction in [(2.0, -1.0), (-4.0, 1.0)]:
        log_alpha = torch.tensor(math.log(5.0), requires_grad=True)
        optimizer = torch.optim.SGD([log_alpha], lr=0.1)
        module.alpha_loss(log_alpha, entropy, target_entropy=-1.0).backward()
        optimizer.step()
        assert direction * (log_alpha.item() - math.log(5.0)) > 0
