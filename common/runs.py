"""A training run's plumbing behind one object, so that a script shows only its algorithm.

    run = Run(Args, "diffsac", CHECKS)      # flags checked, seeded, device, vector envs
    checkpoint = run.restore({"agent": agent, ...}, agent_kwargs=...)   # --resume loads; run folder, writer
    run.episodes(infos, global_step); run.check_finite("critic loss", loss, global_step); run.show(global_step, "...")
    run.save(global_step); run.finish(global_step, agent, obs_normalizer)  # checkpoint, signal exit, evaluation

SIGINT (Ctrl-C) and SIGTERM (Slurm's preemption) set ``run.stop``; the loop ends between steps and ``finish``
writes a checkpoint (with --save-model) and exits with 128 + the signal's number.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections import deque

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from common.checkpoint import save_checkpoint
from common.cli import ConfigError, TrainingDiverged, parse_args
from common.envs import finished_episodes, make_vector_env
from common.replay_buffer import load_replay_buffer, save_with_replay_buffer


@dataclasses.dataclass
class RunArgs:
    """The flags every training script shares (CleanRL's), before its own."""

    exp_name: str = "run"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    torch_threads: int = 1
    """CPU threads for torch (1 is fastest for these small networks)"""
    capture_video: bool = False
    """whether to capture videos of the agent (see the `videos` folder)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (pip install wandb)"""
    wandb_project_name: str = "diffusion-maxent-rl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """save a checkpoint every --checkpoint-frequency and at the end, then evaluate it"""
    resume: str | None = None
    """path of a checkpoint to continue: its run, flags and folder (only --total-timesteps and the like may change)"""
    eval_episodes: int = 10
    """episodes of deterministic evaluation of the saved model at the end"""


class Run:
    def __init__(self, args_class: type, script: str, checks: list[tuple], argv: list[str] | None = None):
        self.args, self.checkpoint = parse_args(args_class, script, checks, argv)
        self.script, args = script, self.args
        name = f"{args.env_id.rpartition(':')[2]}__{args.exp_name}__{args.seed}__{int(time.time())}"  # module:EnvId
        self.name = self.checkpoint["run_name"] if self.checkpoint else name
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = args.torch_deterministic
        torch.set_num_threads(args.torch_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        self.envs = make_vector_env(args.env_id, args.num_envs, args.seed, args.capture_video, self.name)
        low, high = self.envs.single_action_space.low.tolist(), self.envs.single_action_space.high.tolist()
        self.obs_dim, self.action_dim = self.envs.single_observation_space.shape[0], len(low)
        # The agents' environment arguments, saved in checkpoints so that common.evaluation can rebuild them.
        self.space = dict(obs_dim=self.obs_dim, action_dim=self.action_dim, action_low=low, action_high=high)
        self.recent_returns, self.saved_step = deque(maxlen=10), None

    def restore(self, state: dict, replay_buffer=None, **kwargs) -> dict:
        """Name what a checkpoint holds (modules, optimisers, normalisers: state_dict; tensors: values; None: an
        unused part), the replay buffer saved beside it and the constructor arguments it must match; on --resume
        load them. Opens the run folder. Returns the checkpoint or {}."""
        self.state, self.kwargs, checkpoint, args = state, kwargs, self.checkpoint, self.args
        for name, value in kwargs.items() if checkpoint else ():
            if checkpoint[name] != value:
                raise ConfigError(
                    f"--resume {args.resume}: the checkpoint's env or network ({checkpoint[name]}) differs "
                    f"from the flags given ({value}); allowed: the same --env-id and network flags."
                )
        for name, item in state.items() if checkpoint else ():
            if item is None:
                continue
            if isinstance(item, torch.Tensor):
                with torch.no_grad():
                    item.copy_(torch.as_tensor(checkpoint[name]))
            else:
                item.load_state_dict(checkpoint[name])
        self.refill_buffer = False  # a resumed run whose buffer did not load refills it before updating again
        if checkpoint:
            note = f" (iteration {checkpoint['iteration']})" if "iteration" in checkpoint else ""
            if replay_buffer is not None:
                loaded = load_replay_buffer(args.resume, replay_buffer, checkpoint["global_step"])
                note, self.refill_buffer = f" with {replay_buffer.size} transitions in the replay buffer", not loaded
            print(f"resumed {self.name} at step {checkpoint['global_step']}{note}")
        self.run_dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume else f"runs/{self.name}"
        self.model_path = args.resume or f"runs/{self.name}/{args.exp_name}.cleanrl_model"
        if args.track:
            start_tracking(args, self.name, resumed=checkpoint is not None)
        self.writer = SummaryWriter(self.run_dir, purge_step=checkpoint["global_step"] + 1 if checkpoint else None)
        if not checkpoint:
            table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        print(f"run folder: {self.run_dir}  (tensorboard --logdir {os.path.dirname(self.run_dir) or '.'})", flush=True)
        self.stop = StopSignals()
        self.start_step = checkpoint["global_step"] if checkpoint else 0
        self.start_time, self.progress = time.time(), Progress(args.total_timesteps, self.start_step)
        return checkpoint or {}

    def learning_starts(self, learning_starts: int) -> int:
        """The step after which updates start: --learning-starts, or on resume at once if the replay buffer loaded,
        else after --learning-starts more steps of the loaded policy refill it."""
        return self.start_step + learning_starts if self.refill_buffer else learning_starts

    def episodes(self, infos: dict, global_step: int) -> None:
        for episode_return, episode_length in finished_episodes(infos):
            self.recent_returns.append(episode_return)
            self.writer.add_scalar("charts/episodic_return", episode_return, global_step)
            self.writer.add_scalar("charts/episodic_length", episode_length, global_step)

    def log(self, global_step: int, prefix: str, **scalars) -> None:
        """TensorBoard scalars PREFIX/NAME (charts/..., losses/...) at this step."""
        for name, value in scalars.items():
            value = value.item() if isinstance(value, torch.Tensor) else value
            self.writer.add_scalar(f"{prefix}/{name}", value, global_step)

    def show(self, global_step: int, text: str, learning_starts: int = 0) -> None:
        """Log SPS; the progress line: step, recent return, ``text``, SPS, time left."""
        sps = int((global_step - self.start_step) / (time.time() - self.start_time))
        self.writer.add_scalar("charts/SPS", sps, global_step)
        recent = f"{np.mean(self.recent_returns):9.1f}" if self.recent_returns else "      n/a"
        self.progress.learning_starts = learning_starts
        episodes = f"return (last {len(self.recent_returns)} episodes) {recent}"
        self.progress.show(
            global_step, f"step {global_step:>9d}/{self.args.total_timesteps} | {episodes} | {text} | SPS {sps}"
        )

    def check_finite(self, what: str, loss: torch.Tensor, global_step: int, detail: str = "") -> None:
        if not torch.isfinite(loss):
            saved = (
                f"Last checkpoint: {self.model_path}" if self.saved_step is not None else "No checkpoint was written"
            )
            saved += "" if self.saved_step is not None or self.args.save_model else "; use --save-model to keep them"
            raise TrainingDiverged(f"{what} is {loss.item()} at step {global_step}{detail}. {saved}.")

    def save(self, global_step: int, replay_buffer=None, **extra) -> None:
        state = dict(script=self.script, args=dataclasses.asdict(self.args), run_name=self.name, **self.kwargs)
        for name, item in self.state.items():
            state[name] = item.detach().clone() if isinstance(item, torch.Tensor) else item and item.state_dict()
        state.update(global_step=global_step, **extra)
        if replay_buffer is None:
            save_checkpoint(self.model_path, state)
        else:
            save_with_replay_buffer(self.model_path, state, replay_buffer, global_step)
        self.saved_step = global_step

    def finish(self, global_step: int, agent, obs_normalizer, replay_buffer=None, **extra) -> None:
        """Close; checkpoint; on a signal exit 128 + its number, else evaluate the saved model."""
        self.progress.close(self.run_dir)
        self.envs.close()
        if self.args.save_model and self.saved_step != global_step:
            self.save(global_step, replay_buffer, **extra)
        if self.stop.requested:
            self.writer.close()
            self.stop.exit(self.script.replace(".", "/") + ".py", global_step, self.args.save_model and self.model_path)
        if self.args.save_model:
            from common.evaluation import evaluate

            print(f"model saved to {self.model_path}")
            args = self.args
            returns = evaluate(agent, obs_normalizer, args.env_id, args.eval_episodes, args.seed, device=self.device)
            for index, episodic_return in enumerate(returns):
                self.writer.add_scalar("eval/episodic_return", episodic_return, index)
            print(f"evaluation ({self.args.eval_episodes} deterministic episodes): mean return {np.mean(returns):.2f}")
        self.writer.close()


def start_tracking(args, run_name: str, resumed: bool) -> None:
    """wandb.init the CleanRL way (TensorBoard synced, flags as config, videos at exit); a resumed run continues
    the wandb run of the same name."""
    import wandb

    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[-64:]
    options = dict(name=run_name, id=run_id, resume="allow" if resumed else None, save_code=True)
    wandb.init(
        project=args.wandb_project_name,
        entity=args.wandb_entity,
        sync_tensorboard=True,
        **options,
        config=dataclasses.asdict(args),
    )

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
        name = signal.Signals(self.signal_number).name
        saved = f"checkpoint at step {global_step} saved to {model_path}; continue with --resume {model_path}"
        saved = saved if model_path else "no checkpoint (run with --save-model to keep one)"
        print(f"{script_name}: stopped by {name} at step {global_step}: {saved}", file=sys.stderr, flush=True)
        sys.exit(128 + self.signal_number)


def check_memory(parameter_count: int, buffer_bytes: int, device: torch.device, flags: str) -> None:
    """ConfigError when the parameters (with gradients and Adam's moments: 16 bytes each) and buffers exceed the
    memory available now; ``flags`` names what to lower. Count the parameters with ``count_parameters`` before
    building the networks, so that networks too large to build are refused with one line too."""
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        meminfo = open("/proc/meminfo").read() if os.path.exists("/proc/meminfo") else ""
        found = re.search(r"MemAvailable:\s+(\d+)", meminfo)
        available = int(found.group(1)) * 1024 if found else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    needed = 16 * parameter_count + buffer_bytes
    if needed > available:
        sizes = f"{parameter_count / 1e6:.0f}M network parameters and {buffer_bytes / 2**30:.1f} GiB of buffers"
        raise ConfigError(
            f"{sizes} need about {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB "
            f"available on {device.type}; lower {flags}."
        )


def count_parameters(build) -> int:
    """Parameters of the modules that ``build()`` returns, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return sum(parameter.numel() for module in build() for parameter in module.parameters())


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """The training line with the time left at the current rate: one live line in a terminal, plain lines in a
    log. Off-policy scripts' random first steps run far faster than learning ones, so until ``learning_starts``
    the line names the step the estimate waits for."""

    def __init__(self, total_timesteps: int, start_step: int, stream=None, learning_starts: int = 0):
        self.stream = stream or sys.stdout
        self.total_timesteps, self.live, self.learning_starts = total_timesteps, self.stream.isatty(), learning_starts
        self.last_time, self.last_step = time.time(), start_step

    def show(self, global_step: int, line: str) -> None:
        now = time.time()
        rate = (global_step - self.last_step) / max(now - self.last_time, 1e-9)  # steps/s since the last line
        self.last_time, self.last_step = now, global_step
        left = (self.total_timesteps - global_step) / rate if rate > 0 else math.inf
        time_left = f"{format_duration(left)} left"
        time_left = (
            f"time left known after step {self.learning_starts}" if global_step <= self.learning_starts else time_left
        )
        if self.live:  # what matters first, the rest as the width allows
            rest = line.split(" | ", 1)[1] if line.startswith("step ") and " | " in line else line
            text = f"step {global_step}/{self.total_timesteps} | {rate:.0f} steps/s | {time_left} | {rest}"
            self.stream.write("\r" + text[: shutil.get_terminal_size().columns - 1] + "\x1b[K")
            self.stream.flush()
        else:
            print(f"{line} | {time_left}", file=self.stream, flush=True)

    def close(self, run_dir: str) -> None:
        if self.live:
            self.stream.write("\n")
        logdir = os.path.dirname(run_dir) or "."
        print(f"run folder: {run_dir}  (tensorboard --logdir {logdir})", file=self.stream, flush=True)


def whole_rollouts(total_timesteps: int, rollout_steps: int) -> int:
    """Iterations that cover --total-timesteps, rounded up to whole rollouts (with a line when rounded)."""
    iterations = -(-total_timesteps // rollout_steps)
    if iterations * rollout_steps != total_timesteps:
        print(
            f"--total-timesteps {total_timesteps} is not a whole number of rollouts of {rollout_steps} steps "
            f"(--num-envs x --num-steps); running {iterations * rollout_steps}.",
            flush=True,
        )
    return iterations
