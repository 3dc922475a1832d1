"""A training run's plumbing behind one object, so that a script shows only its algorithm: flags, seeding, device and
envs (``Run``), networks that fit in memory (``build``), resume and the run folder (``restore``), the progress line
(``show``), the NaN stop, checkpoints, signals and the final evaluation (``finish``). SIGINT and SIGTERM set
``run.stop``: the loop ends between steps, and ``finish`` checkpoints (--save-model) and exits 128 + the signal."""

import atexit
import copy
import dataclasses
import datetime
import glob
import os
import random
import re
import signal
import sys
import threading
import time
from collections import deque

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from common.checkpoint import FORMAT as CHECKPOINT_FORMAT
from common.checkpoint import load_replay_buffer, save_checkpoint
from common.cli import ConfigError, TrainingDiverged, parse_args
from common.envs import environment_state, finished_episodes, make_vector_env, restore_environment_state


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
    """episodes of each deterministic evaluation (frozen observation normalisation)"""
    eval_frequency: int | None = None
    """environment steps between evaluations during training (default: 5% of --total-timesteps; 0: none)"""


class Run:
    def __init__(self, args_class: type, script: str, checks: list[tuple], argv: list[str] | None = None):
        self.args, self.checkpoint = args, checkpoint = parse_args(args_class, script, checks, argv)
        self.script, self.stop, self.saved_step, self.recent_returns = script, None, None, deque(maxlen=10)
        self.kept = None  # the state that a stop inside an on-policy iteration saves (``keep``)
        self.target = args.total_timesteps  # the progress line's target, rounded up to whole rollouts (``iterations``)
        env_name = args.env_id.rpartition(":")[2].replace("/", "-")  # module:Namespace/EnvId
        name = f"{env_name}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.name = checkpoint["run_name"] if checkpoint else name
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

    def build(self, networks, flags: str, buffer_bytes: int = 0) -> list[torch.nn.Module]:
        """The modules ``networks()`` returns, on the device; first counted on the meta device and refused with one
        line naming ``flags`` when they (16 bytes a parameter with gradients and Adam's moments) and buffer_bytes
        exceed the memory available."""
        with torch.device("meta"):
            count = sum(parameter.numel() for module in networks() for parameter in module.parameters())
        if self.device.type == "cuda":
            available = torch.cuda.mem_get_info(self.device)[0]
        elif os.path.exists("/proc/meminfo"):  # Linux: MemAvailable, in kB
            available = 1024 * int(re.search(r"MemAvailable:\s+(\d+)", open("/proc/meminfo").read()).group(1))
        else:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        if 16 * count + buffer_bytes > available:
            raise ConfigError(
                f"{count / 1e6:.0f}M network parameters and {buffer_bytes / 2**30:.1f} GiB of buffers need about "
                f"{(16 * count + buffer_bytes) / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available "
                f"on {self.device.type}; lower {flags}."
            )
        return [module.to(self.device) for module in networks()]

    def iterations(self, rollout_steps: int, unit: str = "rollouts of {} steps (--num-envs x --num-steps)") -> int:
        """Iterations that cover --total-timesteps, rounded up to whole rollouts (with a line when rounded)."""
        iterations = -(-self.args.total_timesteps // rollout_steps)
        self.target = iterations * rollout_steps  # what the progress line counts to
        if iterations * rollout_steps != self.args.total_timesteps:
            whole = f"whole {unit.format(rollout_steps)}"
            print(f"--total-timesteps {self.args.total_timesteps}: running {iterations * rollout_steps}, {whole}.")
        return iterations

    def restore(self, state: dict, replay_buffer=None, **kwargs) -> dict:
        """Name what a checkpoint holds (modules, optimisers, normalisers: state_dict; tensors: values; None: an
        unused part), the replay buffer saved beside it and the constructor arguments it must match; on --resume
        load them. Opens the run folder. Returns the checkpoint or {}."""
        self.state, self.kwargs, checkpoint, args = state, kwargs, self.checkpoint or {}, self.args
        missing = [name for name in [*state, *kwargs] if checkpoint and name not in checkpoint]
        if missing:
            raise ConfigError(f"--resume {args.resume} lacks {', '.join(missing)}, which {self.script} saves.")
        for name, value in kwargs.items() if checkpoint else ():
            if checkpoint[name] != value:
                raise ConfigError(
                    f"--resume {args.resume}: the checkpoint's env or network ({checkpoint[name]}) differs "
                    f"from the flags given ({value}); allowed: the same --env-id and network flags."
                )
        for name, item in state.items() if checkpoint else ():
            try:
                if isinstance(item, torch.Tensor):
                    with torch.no_grad():
                        item.copy_(torch.as_tensor(checkpoint[name]))
                elif item is not None:
                    item.load_state_dict(checkpoint[name])
            except (TypeError, RuntimeError, KeyError, ValueError, AttributeError) as error:
                problem = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                raise ConfigError(f"--resume {args.resume}: its {name} does not fit {self.script}'s ({problem}).")
        self.start_step, self.refill_buffer = checkpoint.get("global_step", 0), False
        if checkpoint:
            note = f" (iteration {checkpoint['iteration']})" if "iteration" in checkpoint else ""
            if replay_buffer is not None:  # a buffer that does not load refills before the updates resume
                self.refill_buffer = not load_replay_buffer(args.resume, replay_buffer, self.start_step)
                note = f" with {replay_buffer.size} transitions in the replay buffer"
            print(f"resumed {self.name} at step {self.start_step}{note}")
        self.run_dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume else f"runs/{self.name}"
        try:
            os.makedirs(self.run_dir, exist_ok=bool(args.resume))
        except FileExistsError:  # a run of the same name and seed started in the same second: a folder of its own
            self.name = f"{self.name}__{os.getpid()}"
            self.run_dir = f"runs/{self.name}"
            os.makedirs(self.run_dir)
        except OSError as error:
            raise ConfigError(
                f"cannot create the run folder {self.run_dir} ({error.strerror}); run from a writable folder."
            )
        self.model_path = args.resume or f"runs/{self.name}/{args.exp_name}.cleanrl_model"
        if args.track:
            start_tracking(args, self.name, resumed=bool(checkpoint))
        self.writer = SummaryWriter(self.run_dir, purge_step=self.start_step + 1 if checkpoint else None)
        if not checkpoint:
            table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        self.folder_line = f"run folder: {self.run_dir}  (tensorboard --logdir {os.path.dirname(self.run_dir) or '.'})"
        print(self.folder_line, flush=True)
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, self.request_stop)
                atexit.register(signal.signal, number, signal.SIG_IGN)  # a late signal must not kill the exit
        self.start_time = time.time()
        self.rate_origin, self.evaluated_step = (self.start_step, self.start_time), None
        return checkpoint

    def reset_envs(self, obs_normalizer=None) -> np.ndarray:
        """The observations the loop starts from. A fresh run resets the envs from --seed (and updates obs_normalizer,
        if given, on them). --resume puts back the random streams and the saved environments, so that the run goes
        on bitwise as if it had not stopped; where a task's state cannot be saved, it says so and starts new
        episodes."""
        checkpoint = self.checkpoint or {}
        if "random_state" in checkpoint:
            random.setstate(checkpoint["random_state"]["python"])
            np.random.set_state(checkpoint["random_state"]["numpy"])
            torch.set_rng_state(checkpoint["random_state"]["torch"])
            if "cuda" in checkpoint["random_state"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(checkpoint["random_state"]["cuda"], self.device)
        if checkpoint.get("environment"):
            return restore_environment_state(self.envs, checkpoint["environment"])
        if checkpoint:
            print(
                f"{self.args.env_id}: its state was not saved (only MuJoCo and classic-control tasks' is), so the "
                "resumed run continues on new episodes and is not bitwise the uninterrupted one"
            )
        obs, _ = self.envs.reset(seed=self.args.seed)
        if obs_normalizer is not None:
            obs_normalizer.update(obs)
        return obs

    def request_stop(self, number: int, frame=None) -> None:
        self.stop = number  # the loop ends at the end of its step; a second signal changes nothing

    def learning_starts(self, learning_starts: int) -> int:
        """The step after which updates start: --learning-starts, or on resume at once if the replay buffer loaded,
        else after --learning-starts more steps of the loaded policy refill it. Says so when the budget is rounded
        up to whole steps of every environment."""
        self.iterations(self.args.num_envs, "steps of all {} environments (--num-envs)")
        return self.start_step + learning_starts if self.refill_buffer else learning_starts

    def episodes(self, infos: dict, global_step: int) -> None:
        """Log the episodes that ended at this step; evaluate the policy when an evaluation is due."""
        self.evaluate(global_step)
        for episode_return, episode_length in finished_episodes(infos):
            self.recent_returns.append(episode_return)
            self.writer.add_scalar("charts/episodic_return", episode_return, global_step)
            self.writer.add_scalar("charts/episodic_length", episode_length, global_step)
        self.check_stop(global_step)

    def log(self, global_step: int, prefix: str, **scalars) -> None:
        """TensorBoard scalars PREFIX/NAME (charts/..., losses/...) at this step."""
        for name, value in scalars.items():
            value = value.item() if isinstance(value, torch.Tensor) else value
            self.writer.add_scalar(f"{prefix}/{name}", value, global_step)

    def show(self, global_step: int, text: str, learning_starts: int = 0) -> None:
        """Log SPS and print the progress line: step, recent return, ``text``, SPS, and the time left at the mean rate
        since learning began (the random steps before ``learning_starts`` run far faster than learning ones)."""
        now, total = time.time(), self.target
        sps = int((global_step - self.start_step) / (now - self.start_time))
        self.writer.add_scalar("charts/SPS", sps, global_step)
        if global_step <= learning_starts:
            self.rate_origin = (global_step, now)
        rate = (global_step - self.rate_origin[0]) / max(now - self.rate_origin[1], 1e-9)
        left = f"{datetime.timedelta(seconds=int(max(total - global_step, 0) / rate))} left" if rate > 0 else ""
        left = left if global_step > learning_starts else f"time left known after step {learning_starts}"
        recent = f"{np.mean(self.recent_returns):9.1f}" if self.recent_returns else "      n/a"
        episodes = f"return (last {len(self.recent_returns)} episodes) {recent}"
        print(f"step {global_step:>9d}/{total} | {episodes} | {text} | SPS {sps} | {left}", flush=True)

    def evaluate(self, global_step: int, final: bool = False) -> None:
        """Every --eval-frequency steps (and with ``final``): --eval-episodes deterministic episodes, logged as
        eval/episodic_return at this step, and as many of the policy as it acts in training (stochastic), logged as
        eval/stochastic_episodic_return. The training's random streams are left as they were."""
        frequency = self.args.eval_frequency
        frequency = max(self.args.total_timesteps // 20, 1) if frequency is None else frequency
        due = frequency > 0 and global_step // frequency > (self.evaluated_step or self.start_step) // frequency
        if not (due or final) or global_step == self.evaluated_step:
            return
        from common.evaluation import evaluate

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            args, start = self.args, time.time()
            agent, obs_normalizer = self.state["agent"], self.state["obs_normalizer"]
            episodes = (agent, obs_normalizer, args.env_id, args.eval_episodes, args.seed)
            returns = evaluate(*episodes, device=self.device, stop=lambda: self.stop is not None)
            stochastic_returns = evaluate(
                *episodes, deterministic=False, device=self.device, stop=lambda: self.stop is not None
            )
        if self.stop is not None:  # cut short by a signal: nothing to log
            return
        for episodic_return in returns:
            self.writer.add_scalar("eval/episodic_return", episodic_return, global_step)
        for episodic_return in stochastic_returns:
            self.writer.add_scalar("eval/stochastic_episodic_return", episodic_return, global_step)
        self.writer.add_scalar("eval/seconds", time.time() - start, global_step)
        self.evaluated_step = global_step
        means = f"mean return {np.mean(returns):.2f}, stochastic policy {np.mean(stochastic_returns):.2f}"
        print(f"evaluation at step {global_step} ({len(returns)} deterministic episodes): {means}", flush=True)

    def check_finite(self, what: str, loss: torch.Tensor, global_step: int, detail: str = "") -> None:
        if not torch.isfinite(loss):
            saved = "No checkpoint was written" + ("" if self.args.save_model else "; use --save-model to keep them")
            saved = f"Last checkpoint: {self.model_path}" if self.saved_step is not None or self.checkpoint else saved
            raise TrainingDiverged(f"{what} is {loss.item()} at step {global_step}{detail}. {saved}.")

    def state_to_save(self, global_step: int, **extra) -> dict:
        """The checkpoint's contents now, copied: the run's state, random streams and environments."""
        state = dict(script=self.script, args=dataclasses.asdict(self.args), run_name=self.name, **self.kwargs)
        for name, item in self.state.items():
            state[name] = (
                item.detach().clone() if isinstance(item, torch.Tensor) else copy.deepcopy(item and item.state_dict())
            )
        streams = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
        if self.device.type == "cuda":
            streams["cuda"] = torch.cuda.get_rng_state(self.device)
        state.update(random_state=streams, environment=environment_state(self.envs), format=CHECKPOINT_FORMAT)
        return dict(state, global_step=global_step, **extra)

    def save(self, global_step: int, replay_buffer=None, **extra) -> None:
        save_checkpoint(self.model_path, self.state_to_save(global_step, **extra), replay_buffer)
        self.saved_step = global_step

    def keep(self, global_step: int, **extra) -> None:
        """At the start of each on-policy iteration (with --save-model): the state that a stop inside the iteration
        saves, so that the stopped run resumes bitwise from here."""
        if self.args.save_model:
            self.kept = self.state_to_save(global_step, **extra)

    def check_stop(self, global_step: int) -> None:
        """Inside an on-policy iteration (rollout and update): after SIGINT or SIGTERM, save the state kept at the
        iteration's start (with --save-model) and exit, so that a stop comes within seconds."""
        if self.stop is not None and (self.kept is not None or not self.args.save_model):
            if self.kept is not None:
                save_checkpoint(self.model_path, self.kept)
                self.saved_step = global_step = self.kept["global_step"]
            self.finish(global_step)

    def finish(self, global_step: int, replay_buffer=None, **extra) -> None:
        """Close; checkpoint; after a signal exit 128 + its number, else evaluate the saved model."""
        print(self.folder_line, flush=True)
        if self.args.save_model and self.saved_step != global_step:
            self.save(global_step, replay_buffer, **extra)
        self.envs.close()
        if self.stop is None and self.args.save_model:
            print(f"model saved to {self.model_path}")
        if self.stop is None:  # a signal during this evaluation cuts it short
            self.evaluate(global_step, final=self.args.save_model)
        self.writer.close()
        if self.stop is not None:
            path, name, script = self.model_path, signal.Signals(self.stop).name, self.script.replace(".", "/")
            saved = f"checkpoint at step {global_step} saved to {path}; continue with --resume {path}"
            saved = saved if self.args.save_model else "no checkpoint (run with --save-model to keep one)"
            print(f"{script}.py: stopped by {name} at step {global_step}: {saved}", file=sys.stderr, flush=True)
            sys.exit(128 + self.stop)


def start_tracking(args, run_name: str, resumed: bool) -> None:
    """wandb the CleanRL way (TensorBoard synced, flags as config, videos at exit); a resumed run continues its own."""
    import wandb

    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[-64:]
    options = dict(name=run_name, id=run_id, resume="allow" if resumed else None, save_code=True, sync_tensorboard=True)
    wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=dataclasses.asdict(args), **options)

    def upload_videos_and_finish() -> None:
        for path in sorted(glob.glob(f"videos/{run_name}/*.mp4")):
            wandb.log({"videos": wandb.Video(path, format="mp4")})
        wandb.finish()

    atexit.register(upload_videos_and_finish)
