"""How close a training script runs to the machine's arithmetic limit: its matrix products alone.

    python benchmarks/matmul_ceiling.py diffsac.py --env-id Hopper-v4 --total-timesteps 6000 --learning-starts 5000

Runs the training script in this process (same flags, so the same operations as a normal run)
under a torch dispatch mode that records the shape of every matrix product (mm, addmm, bmm,
baddbmm, and linear itself under inference mode: the nn.Linear layers forward and backward), then
times each distinct shape on its own, plain and contiguous, on the same machine and thread count.
It prints one JSON line:

- flops: 2 m n k summed over every product of the run (multiply-adds counted as two);
- matmul_seconds: the time those products take back to back with nothing else;
- split into "acting" (products run forward, without gradient, on a batch of --num-envs rows:
  choosing actions during the rollout) and "learning" (everything else: targets, losses, backward;
  the peers' acting, N candidates per environment, falls here too).

benchmarks/throughput.py divides these by a normal run's wall-clock: flops / seconds is the
achieved floating-point rate, matmul_seconds / seconds the share of the run that is arithmetic.
The recording run itself is slower (a Python call per tensor operation) and is not timed.
"""

from __future__ import annotations

import collections
import json
import os
import runpy
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
aten = torch.ops.aten


def product_shape(func, args) -> tuple[int, int, int, int] | None:
    """(batch, m, k, n) of a matrix product, None for any other operation."""
    if func is aten.linear.default:  # reaches the mode undecomposed under torch.inference_mode
        rows = args[0].numel() // args[0].shape[-1]
        return 1, rows, args[1].shape[1], args[1].shape[0]
    if func in (aten.mm.default, aten.addmm.default):
        left, right = (args[0], args[1]) if func is aten.mm.default else (args[1], args[2])
        return 1, left.shape[0], left.shape[1], right.shape[1]
    if func in (aten.bmm.default, aten.baddbmm.default):
        left, right = (args[0], args[1]) if func is aten.bmm.default else (args[1], args[2])
        return left.shape[0], left.shape[1], left.shape[2], right.shape[2]
    return None


class MatmulRecorder(TorchDispatchMode):
    """Counts the matrix products by shape, split into acting and learning (see the module docstring)."""

    def __init__(self, acting_rows: int):
        super().__init__()
        self.acting_rows = acting_rows
        self.counts = {"acting": collections.Counter(), "learning": collections.Counter()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shape = product_shape(func, args)
        if shape is not None:
            in_backward = torch._C._current_graph_task_id() != -1
            acting = not in_backward and not torch.is_grad_enabled() and shape[1] == self.acting_rows
            self.counts["acting" if acting else "learning"][shape] += 1
        return func(*args, **(kwargs or {}))


def seconds_per_product(shape: tuple[int, int, int, int], repeats: int = 200) -> float:
    """The mean time, warm, of one plain product of this shape over `repeats` calls."""
    batch, m, k, n = shape
    left, right = torch.randn(batch, m, k), torch.randn(batch, k, n)
    product = (lambda: torch.mm(left[0], right[0])) if batch == 1 else (lambda: torch.bmm(left, right))
    for _ in range(10):
        product()
    start = time.perf_counter()
    for _ in range(repeats):
        product()
    return (time.perf_counter() - start) / repeats


def summarise(counts: dict[str, collections.Counter]) -> dict:
    timing = {shape: seconds_per_product(shape) for part in counts.values() for shape in part}
    result = {}
    for part, counter in counts.items():
        result[part] = {
            "flops": sum(2 * b * m * k * n * c for (b, m, k, n), c in counter.items()),
            "matmul_seconds": sum(timing[shape] * c for shape, c in counter.items()),
            "products": sum(counter.values()),
        }
    parts = list(result.values())
    result["flops"] = sum(part["flops"] for part in parts)
    result["matmul_seconds"] = sum(part["matmul_seconds"] for part in parts)
    return result


def flag_value(argv: list[str], flag: str, default: int) -> int:
    return int(argv[argv.index(flag) + 1]) if flag in argv else default


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python benchmarks/matmul_ceiling.py SCRIPT [the script's flags]")
    script, script_flags = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    recorder = MatmulRecorder(acting_rows=flag_value(script_flags, "--num-envs", 1))
    sys.argv = [script, *script_flags, "--eval-frequency", "0"]  # the training's products alone
    sys.path.insert(0, REPO_ROOT)
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # the script's own progress lines
    try:
        with recorder:
            runpy.run_path(os.path.join(REPO_ROOT, script), run_name="__main__")
    except SystemExit as exit_code:
        if exit_code.code not in (0, None):
            raise
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    print(json.dumps(summarise(recorder.counts)))


if __name__ == "__main__":
    main()
