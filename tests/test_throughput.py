"""benchmarks/matmul_ceiling.py and benchmarks/throughput.py: the products are counted, classified
and timed as documented, and the table's columns are the stated ratios."""

import importlib.util
import json
import os
import sys

import torch
from conftest import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ceiling, throughput = load("matmul_ceiling"), load("throughput")


def test_recorder_counts_a_linear_layer_forward_and_backward_with_their_shapes():
    layer = torch.nn.Linear(5, 7)
    recorder = ceiling.MatmulRecorder(acting_rows=1)
    with recorder:
        layer(torch.randn(3, 5)).sum().backward()  # learning: forward, grad of input (none: leaf), grad of weight
        with torch.no_grad():
            layer(torch.randn(1, 5))  # acting: no gradient, one row per environment
            layer(torch.randn(4, 5))  # no gradient but a batch: a target computation, learning
        with torch.inference_mode():
            layer(torch.randn(1, 5))  # acting too: linear reaches the mode undecomposed here
    learning, acting = recorder.counts["learning"], recorder.counts["acting"]
    assert acting == {(1, 1, 5, 7): 2}
    # forward [3,5]@[5,7]; weight gradient [7,3]@[3,5]; the no-grad batch [4,5]@[5,7]
    assert learning == {(1, 3, 5, 7): 1, (1, 7, 3, 5): 1, (1, 4, 5, 7): 1}
    summary = ceiling.summarise(recorder.counts)
    assert summary["learning"]["flops"] == 2 * (3 * 5 * 7 + 7 * 3 * 5 + 4 * 5 * 7)
    assert summary["acting"]["flops"] == 2 * 2 * 5 * 7
    assert summary["flops"] == summary["learning"]["flops"] + summary["acting"]["flops"]
    assert summary["matmul_seconds"] > 0


def test_recorder_sees_batched_products_and_gradients_of_inputs():
    left = torch.randn(2, 3, 4, requires_grad=True)
    recorder = ceiling.MatmulRecorder(acting_rows=1)
    with recorder:
        torch.bmm(left, torch.randn(2, 4, 5)).sum().backward()
    assert recorder.counts["learning"] == {(2, 3, 4, 5): 1, (2, 3, 5, 4): 1}


def test_ceiling_columns_are_rate_rate_and_share():
    profile = {"flops": 4e9, "matmul_seconds": 0.5}
    assert throughput.ceiling_columns(profile, run_seconds=2.0) == "2.0 | 8.0 | 25%"
    assert throughput.ceiling_columns(None, run_seconds=2.0) == "- | - | -"


def test_every_diffusion_script_has_an_existing_gaussian_twin():
    for script, twin in throughput.TWIN.items():
        assert os.path.isfile(os.path.join(ROOT, script)) and os.path.isfile(os.path.join(ROOT, twin))


def test_matmul_ceiling_of_a_short_run_counts_one_acting_pass_per_policy_step(tmp_path):
    # 300 steps, the first 256 random: 44 steps act through the policy, and every update learns.
    result = run_script(
        [
            os.path.join(ROOT, "benchmarks", "matmul_ceiling.py"),
            "baselines/sac.py",
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "300",
            "--learning-starts",
            "256",
            "--batch-size",
            "64",
            "--hidden-dim",
            "32",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["acting"]["products"] > 0 and summary["acting"]["products"] % 44 == 0
    assert summary["learning"]["flops"] > 100 * summary["acting"]["flops"]
