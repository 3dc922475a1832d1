"""The plumbing of a run that every training script shares: its flags, its folder, its end.

- ``parse_args``: the command line, checked before any work. With ``--resume PATH`` the run's
  saved configuration is the starting point: only the flags in ``CHANGEABLE_ON_RESUME`` may be
  given anew, any other that differs is refused with one line naming it, and so is a
  ``--total-timesteps`` at or below the saved step or a checkpoint of another script.
- ``run_paths``: the run folder and checkpoint file; a resumed run reuses both (the checkpoint
  is rewritten in place) and its TensorBoard log drops the events past the checkpoint's step.
- ``StopSignals``: SIGINT (Ctrl-C) and SIGTERM (what Slurm sends before preemption) end the run
  between two steps: a checkpoint at the current step when --save-model is set, one line, exit
  code 128 + the signal (130, 143).
- ``save_with_replay_buffer`` / ``load_replay_buffer``: the off-policy scripts' checkpoints with
  their buffers beside them, written as a pair a kill cannot split, so that a resumed run continues
  learning where it stopped.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import importlib.util
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from typing import Any

import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

from common.checkpoint import load_checkpoint, save_checkpoint
from common.envs import ConfigError

# Flags that do not change what the run computes, or only where it stops: they may differ on --resume.
CHANGEABLE_ON_RESUME = ("resume", "total_timesteps", "cuda", "torch_threads", "eval_episodes",
                        "checkpoint_frequency", "capture_video", "track", "wandb_project_name", "wandb_entity")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def resume_path_in(argv: list[str]) -> str | None:
    """The value of --resume on a command line (``--resume PATH`` or ``--resume=PATH``), else None."""
    for index, token in enumerate(argv):
        if token == "--resume" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--resume="):
            return token.split("=", 1)[1]
    return None


def check_finite_floats(args: Any) -> None:
    """Every float flag must be a number: NaN and infinity pass every range check written as a comparison."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_name(field.name)} must be a finite number (got {value}).")


def parse_args(args_class: type, script_module: str, script_name: str, argv: list[str] | None = None):
    """(args, checkpoint or None) from the command line, with the resume rules of this module's docstring.

    script_module is what the script writes as its checkpoints' "script" (e.g. "diffsac", "peers.dpmd").
    """
    argv = sys.argv[1:] if argv is None else argv
    path = resume_path_in(argv)
    checkpoint, saved = None, None
    names = {field.name for field in dataclasses.fields(args_class)}
    if path is not None:
        checkpoint = load_checkpoint(path)
        saved_script = checkpoint.get("script")
        if saved_script != script_module:
            saved_name = saved_script.replace(".", "/") + ".py" if saved_script else "an unknown script"
            raise ConfigError(f"--resume {path} is a checkpoint of {saved_name}, "
                              f"not of {script_name}; resume it with that script.")
        saved = args_class(**{key: value for key, value in checkpoint["args"].items() if key in names})
    args = tyro.cli(args_class, args=argv, default=saved)
    check_finite_floats(args)
    check_tracking_available(args)
    if args.eval_episodes < 1:
        raise ConfigError(f"--eval-episodes must be at least 1 (got {args.eval_episodes}).")
    if checkpoint is None:
        return args, None
    for field in dataclasses.fields(args_class):
        if field.name in CHANGEABLE_ON_RESUME:
            continue
        given, kept = getattr(args, field.name), getattr(saved, field.name)
        if given != kept:
            raise ConfigError(f"{flag_name(field.name)} {given} differs from the resumed run's {kept}; --resume continues "
                              f"the saved run with its own flags (allowed to change: "
                              f"{', '.join(flag_name(name) for name in CHANGEABLE_ON_RESUME[1:] if name in names)}).")
    if args.total_timesteps <= checkpoint["global_step"]:
        raise ConfigError(f"--total-timesteps {args.total_timesteps} is not beyond the checkpoint's step "
                          f"{checkpoint['global_step']}; allowed: a larger target, e.g. --total-timesteps "
                          f"{2 * checkpoint['global_step']}.")
    return args, checkpoint


def whole_rollouts(total_timesteps: int, rollout_steps: int) -> int:
    """Iterations that cover --total-timesteps; a target that is not a whole number of rollouts is rounded up, with a line."""
    iterations = -(-total_timesteps // rollout_steps)
    if iterations * rollout_steps != total_timesteps:
        print(f"--total-timesteps {total_timesteps} is not a whole number of rollouts of {rollout_steps} steps "
              f"(--num-envs x --num-steps); running {iterations * rollout_steps}.", flush=True)
    return iterations


def run_paths(args: Any, run_name: str) -> tuple[str, str]:
    """(run folder, checkpoint file): runs/{run_name}/{exp_name}.cleanrl_model, or the resumed checkpoint's own."""
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume)), args.resume
    run_dir = f"runs/{run_name}"
    return run_dir, f"{run_dir}/{args.exp_name}.cleanrl_model"


def open_writer(run_dir: str, args: Any, checkpoint: dict | None) -> SummaryWriter:
    """TensorBoard writer; a resumed run purges the events logged after its checkpoint (one curve, no overlap).
    With --track, Weights and Biases is started first, so that it mirrors this writer."""
    if getattr(args, "track", False):
        start_tracking(args, os.path.basename(os.path.normpath(run_dir)), resumed=checkpoint is not None)
    writer = SummaryWriter(run_dir, purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    print(f"run folder: {run_dir}  (tensorboard --logdir {os.path.dirname(run_dir) or '.'})", flush=True)
    return writer


def check_tracking_available(args: Any) -> None:
    """--track needs wandb: one line with the install command when it is missing (checked before any work)."""
    if getattr(args, "track", False) and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--track needs the wandb package, which is not installed: pip install wandb")


def start_tracking(args: Any, run_name: str, resumed: bool) -> None:
    """wandb.init the CleanRL way (TensorBoard synced, the flags as config); the run's videos are uploaded at exit.

    The wandb run id is derived from the run name, so a resumed run continues the same wandb run.
    """
    import wandb

    wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
               config=dataclasses.asdict(args), name=run_name, id=re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[-64:],
               resume="allow" if resumed else None, save_code=True)

    def upload_videos_and_finish() -> None:
        for path in sorted(glob.glob(os.path.join("videos", run_name, "*.mp4"))):
            wandb.log({"videos": wandb.Video(path, format="mp4")})
        wandb.finish()

    atexit.register(upload_videos_and_finish)


class StopSignals:
    """SIGINT and SIGTERM request a stop that the training loop reads between steps; a second SIGINT stops at once."""

    def __init__(self):
        self.signal_number: int | None = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signal_number, self._handle)

    def _handle(self, signal_number, frame) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def exit(self, script_name: str, global_step: int, model_path: str | None) -> None:
        """One line (where the checkpoint is, if one was written), then exit 128 + the signal's number."""
        name = signal.Signals(self.signal_number).name
        saved = f"checkpoint at step {global_step} saved to {model_path}; continue with --resume {model_path}" \
            if model_path else "no checkpoint (run with --save-model to keep one)"
        print(f"{script_name}: stopped by {name} at step {global_step}: {saved}", file=sys.stderr, flush=True)
        sys.exit(128 + self.signal_number)


# ----------------------------------------------------------------------------------------------
# Replay buffers (the off-policy scripts): the filled rows, beside the checkpoint
# ----------------------------------------------------------------------------------------------
def replay_fields(buffer: Any) -> list[str]:
    """The buffer's storage tensors (obs, next_obs, actions or chains, rewards, terminations)."""
    return [name for name, value in vars(buffer).items() if isinstance(value, torch.Tensor)]


def replay_buffer_path(model_path: str) -> str:
    return f"{model_path}.replay_buffer"


def replay_buffer_bytes(buffer_size: int, obs_dim: int, action_values: int) -> int:
    """Bytes of a full buffer of float32 rows (s, s', a, r, terminated), a of action_values numbers: in memory and on disk."""
    return 4 * buffer_size * (2 * obs_dim + action_values + 2)


def pending_replay_buffer_path(model_path: str) -> str:
    """Where a new buffer waits, complete, until its checkpoint is in place (see ``save_with_replay_buffer``)."""
    return f"{replay_buffer_path(model_path)}.pending"


def save_with_replay_buffer(model_path: str, state: dict, buffer: Any, global_step: int) -> None:
    """Write the checkpoint and the buffer's filled rows as one pair that a kill -9 cannot split.

    The buffer (tagged with its step) is written in full under its pending name, then the checkpoint
    replaces the old one atomically, then the buffer takes its place. Killed before the checkpoint is
    replaced, the old pair is untouched; killed after it, the checkpoint's buffer is the pending file,
    which ``replay_buffer_state`` reads. Writing the buffer first and the checkpoint second, the
    earlier order, left a newer buffer beside an older checkpoint when the kill fell in between."""
    rows = {"global_step": global_step, "position": buffer.position, "size": buffer.size,
            "buffer_size": buffer.buffer_size,
            **{name: getattr(buffer, name)[: buffer.size].cpu().clone() for name in replay_fields(buffer)}}
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    torch.save(rows, pending_replay_buffer_path(model_path))
    save_checkpoint(model_path, state)
    os.replace(pending_replay_buffer_path(model_path), replay_buffer_path(model_path))


def replay_buffer_state(model_path: str, global_step: int) -> dict | None:
    """The saved buffer that belongs to the checkpoint at ``global_step``, or None when there is none."""
    found = None
    for path in (replay_buffer_path(model_path), pending_replay_buffer_path(model_path)):
        if not os.path.isfile(path):
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a pending file cut short by a kill belongs to no checkpoint
            continue
        if state["global_step"] == global_step:
            return state
        found = found or state
    if found is not None:
        print(f"the replay buffer beside {model_path} belongs to step {found['global_step']}, not {global_step}")
    return None


def load_replay_buffer(model_path: str, buffer: Any, global_step: int) -> bool:
    """Fill ``buffer`` from the file beside the checkpoint; False (with a line) when it is missing or of another step."""
    state = replay_buffer_state(model_path, global_step)
    if state is None or state["buffer_size"] != buffer.buffer_size:
        print(f"no replay buffer of step {global_step} beside {model_path}: "
              "it refills with the loaded policy before updates resume")
        return False
    for name in replay_fields(buffer):
        getattr(buffer, name)[: state["size"]] = state[name].to(getattr(buffer, name).device)
    buffer.position, buffer.size = state["position"], state["size"]
    return True


def resume_replay_buffer(args: Any, buffer: Any, global_step: int, learning_starts: int, run_name: str) -> int:
    """Load the buffer beside the resumed checkpoint; the step after which updates start: at once when it
    loaded, else after --learning-starts more steps with the loaded policy to refill it."""
    loaded = load_replay_buffer(args.resume, buffer, global_step)
    print(f"resumed {run_name} at step {global_step} with {buffer.size} transitions in the replay buffer")
    return learning_starts if loaded else global_step + args.learning_starts


# ----------------------------------------------------------------------------------------------
# Memory: refuse up front what cannot fit, instead of an allocator traceback later
# ----------------------------------------------------------------------------------------------
def count_parameters(build) -> int:
    """Parameters of the modules that ``build()`` returns, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        modules = build()
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(parameter_count: int, buffer_bytes: int, device: torch.device, flags: str) -> None:
    """ConfigError when the parameters (with gradients and Adam's two moments: 16 bytes each) and buffers
    exceed the memory available now; ``flags`` names what the user can lower."""
    needed, available = 16 * parameter_count + buffer_bytes, available_memory_bytes(device)
    if needed > available:
        raise ConfigError(f"{parameter_count / 1e6:.0f}M network parameters and {buffer_bytes / 2**30:.1f} GiB of buffers "
                          f"need about {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available "
                          f"on {device.type}; lower {flags}.")


# ----------------------------------------------------------------------------------------------
# Progress: one live line in a terminal, plain lines in a cluster log
# ----------------------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """The training line (steps, return, SPS, ...) with the time left at the current rate. In a terminal it
    rewrites one live line; when stdout is not a terminal (a file, a cluster log) each update is a plain line.
    Off-policy scripts pass learning_starts: their random steps run hundreds of times faster than the learning
    ones, so until then the line names the step the estimate waits for instead of a time that would be wrong."""

    def __init__(self, total_timesteps: int, start_step: int, stream=None, learning_starts: int = 0):
        self.stream = stream or sys.stdout
        self.total_timesteps, self.live = total_timesteps, self.stream.isatty()
        self.last_time, self.last_step = time.time(), start_step
        self.learning_starts = learning_starts

    def show(self, global_step: int, line: str) -> None:
        now = time.time()
        rate = (global_step - self.last_step) / max(now - self.last_time, 1e-9)  # steps/s since the last line
        self.last_time, self.last_step = now, global_step
        left = (self.total_timesteps - global_step) / rate if rate > 0 else math.inf
        time_left = (f"time left known after step {self.learning_starts}" if global_step <= self.learning_starts
                     else f"{format_duration(left)} left")
        if self.live:  # what matters first, the rest as the width allows
            rest = line.split(" | ", 1)[1] if line.startswith("step ") and " | " in line else line
            text = f"step {global_step}/{self.total_timesteps} | {rate:.0f} steps/s | {time_left} | {rest}"
            width = shutil.get_terminal_size().columns
            self.stream.write("\r" + text[: width - 1] + "\x1b[K")
            self.stream.flush()
        else:
            print(f"{line} | {time_left}", file=self.stream, flush=True)

    def close(self, run_dir: str) -> None:
        """End the live line; say where the run is (the same line as at the start)."""
        if self.live:
            self.stream.write("\n")
        print(f"run folder: {run_dir}  (tensorboard --logdir {os.path.dirname(run_dir) or '.'})", file=self.stream, flush=True)
