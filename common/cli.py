"""Command lines and their errors: one line naming the problem and exit 2 (a diverged run: exit 1), never a traceback.
A script declares its flag checks as (condition, message) rows; ``parse_args`` runs them, with the resume rules."""

import dataclasses
import importlib.util
import math
import os
import sys

import tyro

# Flags that do not change what the run computes, or only where it stops: they may differ on --resume.
CHANGEABLE_ON_RESUME = "resume total_timesteps cuda torch_threads eval_episodes checkpoint_frequency".split()
CHANGEABLE_ON_RESUME += "eval_frequency capture_video track wandb_project_name wandb_entity".split()


class ConfigError(ValueError):  # a flag or a combination of flags that cannot work; the message names the flag
    pass


class TrainingDiverged(RuntimeError):  # a loss became NaN or infinite
    pass


def run_cli(main, script_name: str) -> None:
    """Run ``main``: a ConfigError is one line and exit 2, a diverged training one line and exit 1."""
    try:
        main()
    except (ConfigError, TrainingDiverged) as error:
        kind, code = ("error", 2) if isinstance(error, ConfigError) else ("training diverged", 1)
        print(f"{script_name}: {kind}: {error}", file=sys.stderr)
        sys.exit(code)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def at_least_one(*fields: str) -> list[tuple[str, str]]:  # Check rows: each named integer flag is at least 1.
    return [(f"{f} >= 1", f"{flag(f)} must be at least 1 (got {{{f}}}).") for f in fields]


def positive(*fields: str) -> list[tuple[str, str]]:  # Check rows: each named flag is above 0.
    return [(f"{f} > 0", f"{flag(f)} must be positive (got {{{f}}}).") for f in fields]


def in_unit_interval(*fields: str, closed: bool = False) -> list[tuple[str, str]]:
    """Check rows: each named flag is in (0, 1], or [0, 1] when closed."""
    low, interval = ("0 <=", "[0, 1]") if closed else ("0 <", "(0, 1]")
    return [(f"{low} {f} <= 1", f"{flag(f)} must be in {interval} (got {{{f}}}).") for f in fields]


def between(field: str, low: float, high: float) -> list[tuple[str, str]]:  # Check row: low <= flag <= high.
    return [(f"{low} <= {field} <= {high}", f"{flag(field)} must be in [{low}, {high}] (got {{{field}}}).")]


def check(args, checks: list[tuple[str, str]], **names) -> None:
    """ConfigError for the first (condition, message) row whose condition is false. Both are Python expressions
    over the flags' names: the condition as written ("batch_size <= buffer_size"), the message as an f-string
    ("--batch-size {batch_size} is larger than --buffer-size {buffer_size}"); ``names`` adds names to them."""
    names = {"__builtins__": {}, **vars(args), **names}
    for condition, message in checks:
        if not eval(condition, names):
            raise ConfigError(eval("f" + repr(message), names))


def parse_args(args_class: type, script: str, checks: list[tuple], argv: list[str] | None = None):
    """(args, checkpoint or None): the flags checked, with --resume's saved flags as the defaults. ``script`` is the
    module that writes the checkpoints ("diffsac", "peers.dpmd"); a checkpoint of another is refused."""
    from common.checkpoint import load_checkpoint

    argv = sys.argv[1:] if argv is None else argv
    path = next((value for option, value in zip(argv, argv[1:]) if option == "--resume"), None)
    path = next((token.split("=", 1)[1] for token in argv if token.startswith("--resume=")), path)
    checkpoint = saved = None
    names = [field.name for field in dataclasses.fields(args_class)]
    if path is not None:
        checkpoint = load_checkpoint(path)
        if checkpoint.get("script") != script:
            other = f"{checkpoint['script'].replace('.', '/')}.py" if checkpoint.get("script") else "an unknown script"
            this = script.replace(".", "/") + ".py"
            raise ConfigError(f"--resume {path} is a checkpoint of {other}, not of {this}; resume it with that script.")
        saved = args_class(**{key: value for key, value in checkpoint["args"].items() if key in names})
    args = tyro.cli(args_class, args=argv, default=saved)
    if getattr(args, "track", False) and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--track needs the wandb package, which is not installed: pip install wandb")
    for name, value in vars(args).items():  # NaN passes every comparison of the check rows
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag(name)} must be a finite number (got {value}).")
    for name in names if checkpoint else ():  # --resume continues the saved run
        if name not in CHANGEABLE_ON_RESUME and getattr(args, name) != getattr(saved, name):
            allowed = ", ".join(flag(n) for n in CHANGEABLE_ON_RESUME[1:] if n in names)
            raise ConfigError(
                f"{flag(name)} {getattr(args, name)} differs from the resumed run's {getattr(saved, name)}; --resume "
                f"continues the saved run with its own flags (allowed to change: {allowed})."
            )
    cores = os.cpu_count() or 1
    check(args, COMMON_CHECKS + checks, resumed_step=checkpoint and checkpoint["global_step"], cores=cores)
    return args, checkpoint


COMMON_CHECKS = [
    (
        "not resumed_step or total_timesteps > resumed_step",
        "--total-timesteps {total_timesteps} is not beyond the checkpoint's step {resumed_step}; allowed: a larger "
        "target, e.g. --total-timesteps {2 * resumed_step}.",
    ),
    *at_least_one("eval_episodes", "num_envs", "checkpoint_frequency", "torch_threads", "total_timesteps"),
    ("0 <= seed < 2**32", "--seed must be in [0, 2^32) (got {seed})."),
    ("total_timesteps <= 2**40", "--total-timesteps must be at most 2^40 (got {total_timesteps})."),
    ("torch_threads <= cores", "--torch-threads {torch_threads} exceeds the {cores} CPU cores here."),
    (
        "exp_name and exp_name[0] != '.' and '/' not in exp_name and '\\\\' not in exp_name and ':' not in exp_name",
        "--exp-name {exp_name!r} must be a name: not empty, no leading dot, no / \\ or : (it names the run folder).",
    ),
    ("num_envs <= total_timesteps", "--num-envs {num_envs} exceeds --total-timesteps {total_timesteps}."),
    ("eval_frequency is None or eval_frequency >= 0", "--eval-frequency must be >= 0 (got {eval_frequency})."),
]
