"""Read scalars back from TensorBoard event files under runs/."""

from __future__ import annotations

import glob
import os

import numpy as np


def read_scalars(run_dir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag`` over every event file in ``run_dir``, sorted by step.

    The files are read in order as one log, so a resumed run's purge (SummaryWriter's purge_step:
    the events an interrupted run logged after its last checkpoint) is applied: one curve.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        return np.asarray([], dtype=np.int64), np.asarray([], dtype=np.float64)
    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars(tag) if tag in accumulator.Tags()["scalars"] else []
    steps = np.asarray([event.step for event in events], dtype=np.int64)
    values = np.asarray([event.value for event in events], dtype=np.float64)
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (of fewer at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def wall_clock_seconds(run_dir: str) -> float:
    """Seconds the run's processes spent training: each TensorBoard file is written by one process (a resumed
    run adds a file), so this sums first-to-last event per file, leaving out the time between a stop and
    its resume (which may be a day)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    spans = []
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(path).Load() if event.HasField("summary")]
        if times:  # a file's own header event is left out: it has no scalar and its time is the file's opening
            spans.append(max(times) - min(times))
    return float(sum(spans)) if spans else float("nan")
