"""diffppo.py --whole-chain-minibatches: minibatches of whole chains, with the observation's part of each first layer
computed once per chain (method.md §4.1), give the same log-probabilities, values and losses as the per-sample
computation on the same samples."""

import os

import pytest
import torch
from conftest import run_script, single_run_dir

import diffppo
from benchmarks.logs import read_scalars


@pytest.mark.parametrize("chain", ["ddpm", "langevin"])
@pytest.mark.parametrize("num_diffusion_steps", [1, 5])
def test_whole_chain_log_prob_and_value_equal_the_per_sample_computation(chain, num_diffusion_steps):
    torch.manual_seed(0)
    obs_dim, action_dim, batch = 7, 3, 6
    low, high = [-2.0] * action_dim, [1.0] * action_dim
    agent = diffppo.Agent(obs_dim, action_dim, low, high, num_diffusion_steps, 16, chain=chain).double()
    if chain == "langevin":  # step sizes and frictions away from their initial values
        with torch.no_grad():
            agent.actor.dt_parameter.uniform_(-3.0, -1.0)
            agent.actor.friction_parameter.uniform_(-1.5, 0.5)
    with torch.no_grad():
        agent.actor.mean_net[-1].weight.normal_(0, 0.5)  # away from the near-zero initial output layer
    obs = torch.randn(batch, obs_dim, dtype=torch.float64)
    chain_samples = torch.randn(batch, num_diffusion_steps + 1, action_dim, dtype=torch.float64)

    log_q, value = diffppo.whole_chain_log_prob_and_value(agent, obs, chain_samples)

    flat_obs, x_k, k, x_previous = diffppo.augmented_samples(obs[None], chain_samples[None], agent.actor.step_k)
    per_sample_log_q = agent.actor.log_prob(flat_obs, x_k, k, x_previous).view(batch, num_diffusion_steps)
    per_sample_value = agent.critic(flat_obs, x_k, k).view(batch, num_diffusion_steps)
    torch.testing.assert_close(log_q, per_sample_log_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, per_sample_value, rtol=1e-12, atol=1e-12)
    gradients = torch.autograd.grad((log_q.sum() + value.sum()), list(agent.parameters()), allow_unused=True)
    reference = torch.autograd.grad(
        (per_sample_log_q.sum() + per_sample_value.sum()), list(agent.parameters()), allow_unused=True
    )
    for gradient, expected in zip(gradients, reference):
        if expected is not None:
            torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)


def test_one_minibatch_of_whole_chains_gives_the_per_sample_losses(tmp_path, repo_root):
    """With one minibatch per epoch both modes see the same samples, so the losses agree up to rounding."""
    losses = {}
    for mode in ("--whole-chain-minibatches", "--no-whole-chain-minibatches"):
        (tmp_path / mode.strip("-")).mkdir()
        result = run_script(
            [
                os.path.join(repo_root, "diffppo.py"),
                "--env-id",
                "Pendulum-v1",
                "--num-diffusion-steps",
                "4",
                "--num-steps",
                "128",
                "--num-minibatches",
                "1",
                "--update-epochs",
                "3",
                "--total-timesteps",
                "128",
                mode,
            ],
            cwd=tmp_path / mode.strip("-"),
        )
        assert result.returncode == 0, result.stderr
        run_dir = single_run_dir(tmp_path / mode.strip("-"))
        losses[mode] = [read_scalars(run_dir, f"losses/{name}")[1][-1] for name in ("policy_loss", "value_loss")]
    assert losses["--whole-chain-minibatches"] == pytest.approx(losses["--no-whole-chain-minibatches"], rel=1e-4)
    assert abs(losses["--whole-chain-minibatches"][0]) > 1e-6  # the last epoch's policy loss is not trivially zero
