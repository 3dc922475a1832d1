"""Command lines and their errors: one line naming the problem and exit 2, never a traceback.

A script declares its flag checks as a table of (condition, message) rows; ``parse_args`` runs them,
with the resume rules: ``--resume PATH`` starts from the run's saved flags, and only the flags in
``CHANGEABLE_ON_RESUME`` may be given anew.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable

import tyro

# Flags that do not change what the run computes, or only where it stops: they may differ on --resume.
CHANGEABLE_ON_RESUME = "resume total_timesteps cuda torch_threads eval_episodes checkpoint_frequency".split()
CHANGEABLE_ON_RESUME += "capture_video track wandb_project_name wandb_entity".split()


class ConfigError(ValueError):
    """A flag or a combination of flags that cannot work. The message names the flag."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def run_cli(main: Callable[[], None], script_name: str) -> None:
    """Run ``main``: a ConfigError is one line and exit 2, a diverged training one line and exit 1."""
    try:
        main()
    except ConfigError as error:
        print(f"{script_name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as error:
        print(f"{script_name}: training diverged: {error}", file=sys.stderr)
        sys.exit(1)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def at_least_one(*fields: str) -> list[tuple[str, str]]:
    """Check rows: each named integer flag is at least 1."""
    return [(f"{f} >= 1", f"{flag(f)} must be at least 1 (got {{{f}}}).") for f in fields]


def positive(*fields: str) -> list[tuple[str, str]]:
    """Check rows: each named flag is above 0."""
    return [(f"{f} > 0", f"{flag(f)} must be positive (got {{{f}}}).") for f in fields]


def in_unit_interval(*fields: str, closed: bool = False) -> list[tuple[str, str]]:
    """Check rows: each named flag is in (0, 1], or [0, 1] when closed."""
    low, interval = ("0 <=", "[0, 1]") if closed else ("0 <", "(0, 1]")
    return [(f"{low} {f} <= 1", f"{flag(f)} must be in {interval} (got {{{f}}}).") for f in fields]


def check_finite(args: Any) -> None:
    """Every float flag is a number: NaN passes every comparison of the check rows."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag(field.name)} must be a finite number (got {value}).")


def check(args: Any, checks: list[tuple[str, str]]) -> None:
    """ConfigError for the first (condition, message) row whose condition is false. Both are Python expressions
    over the flags' names: the condition as written ("batch_size <= buffer_size"), the message as an f-string
    ("--batch-size {batch_size} is larger than --buffer-size {buffer_size}")."""
    names = {"__builtins__": {}, **vars(args)}
    for condition, message in checks:
        if not eval(condition, names):
            raise ConfigError(eval("f" + repr(message), names))


def resume_path_in(argv: list[str]) -> str | None:
    """The value of --resume on a command line (``--resume PATH`` or ``--resume=PATH``), else None."""
    for index, token in enumerate(argv):
        if token == "--resume" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith("--resume="):
            return token.split("=", 1)[1]
    return None


def parse_args(args_class: type, script: str, checks: list[tuple], argv: list[str] | None = None):
    """(args, checkpoint or None): the flags checked, with --resume's saved flags as the defaults.

    script is the module that writes the checkpoints ("diffsac", "peers.dpmd"); a checkpoint of another is refused.
    """
    from common.checkpoint import load_checkpoint

    argv = sys.argv[1:] if argv is None else argv
    path, checkpoint, saved = resume_path_in(argv), None, None
    names = {field.name for field in dataclasses.fields(args_class)}
    if path is not None:
        checkpoint = load_checkpoint(path)
        if checkpoint.get("script") != script:
            other = checkpoint["script"].replace(".", "/") + ".py" if checkpoint.get("script") else "an unknown script"
            this = script.replace(".", "/") + ".py"
            raise ConfigError(f"--resume {path} is a checkpoint of {other}, not of {this}; resume it with that script.")
        saved = args_class(**{key: value for key, value in checkpoint["args"].items() if key in names})
    args = tyro.cli(args_class, args=argv, default=saved)
    if getattr(args, "track", False):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("--track needs the wandb package, which is not installed: pip install wandb")
    check_finite(args)
    if checkpoint is not None:
        check_resume(args, saved, checkpoint, names)
    check(args, COMMON_CHECKS + checks)
    return args, checkpoint


def check_resume(args: Any, saved: Any, checkpoint: dict, names: set[str]) -> None:
    """--resume continues the saved run: no flag outside CHANGEABLE_ON_RESUME may differ, and the target must lie
    beyond the checkpoint's step."""
    for field in dataclasses.fields(args):
        given, kept = getattr(args, field.name), getattr(saved, field.name)
        if field.name not in CHANGEABLE_ON_RESUME and given != kept:
            allowed = ", ".join(flag(n) for n in CHANGEABLE_ON_RESUME[1:] if n in names)
            raise ConfigError(
                f"{flag(field.name)} {given} differs from the resumed run's {kept}; --resume continues "
                f"the saved run with its own flags (allowed to change: {allowed})."
            )
    if args.total_timesteps <= checkpoint["global_step"]:
        step = checkpoint["global_step"]
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is not beyond the checkpoint's step {step}; "
            f"allowed: a larger target, e.g. --total-timesteps {2 * step}."
        )


COMMON_CHECKS = at_least_one("eval_episodes", "num_envs", "checkpoint_frequency", "torch_threads", "total_timesteps")
