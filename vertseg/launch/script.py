"""Render the sbatch script that runs one vertseg command on a Ray cluster spanning a Slurm allocation.

Everything a user types ends up either in an `#SBATCH` line (validated: Slurm parses those, not bash) or in the
command array (each word shell-quoted), so names and paths cannot inject shell code.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

SUBCOMMANDS = ("train", "tune", "preprocess", "predict")
COMMENT = "vertseg"  # marks our jobs in squeue/scontrol so `vertseg jobs` finds them
TEMPLATE = "ray-cluster.sbatch"

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIRECTIVE_VALUE = re.compile(r"[^\s\"'\\]+")  # Slurm splits #SBATCH lines on blanks and strips quotes
_GRES_GPU = re.compile(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class LaunchError(ValueError):
    """Options that cannot make a valid job script; the message names the option and the value."""


@dataclass(frozen=True)
class SlurmOptions:
    job_name: str
    log_dir: Path
    nodes: int = 1
    cpus_per_task: int = 8
    gpus_per_node: int = 0
    gres: str | None = None  # e.g. "gpu:a100:4", for sites that only accept --gres
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_seconds: int = 300  # USR1 this long before the time limit: time to checkpoint and requeue
    requeue: bool = True
    node_wait_s: int = 300
    ray_start_attempts: int = 3  # a Ray node that times out while starting on a loaded machine gets another try
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)  # extra raw `--key=value` options


@dataclass(frozen=True)
class Command:
    subcommand: str
    args: tuple[str, ...] = ()
    python: str = sys.executable


def template_text() -> str:
    return (resources.files("vertseg") / "resources" / "slurm" / TEMPLATE).read_text()


def ray_executable(python: str) -> str:
    """The `ray` entry point installed beside the interpreter that runs vertseg."""
    return str(Path(python).with_name("ray"))


def gpus_per_node(options: SlurmOptions) -> int:
    """GPUs Ray may schedule on each node, from --gpus-per-node or the count in a gpu --gres spec."""
    if options.gres is None:
        return options.gpus_per_node
    counts = [int(match.group(1)) for match in _GRES_GPU.finditer(options.gres)]
    return sum(counts)


def validate(options: SlurmOptions, command: Command) -> None:
    if not _JOB_NAME.fullmatch(options.job_name):
        raise LaunchError(
            f"--job-name {options.job_name!r}: use 1-64 letters, digits, '.', '_' or '-' (it also names the run)"
        )
    if command.subcommand not in SUBCOMMANDS:
        raise LaunchError(f"cannot submit {command.subcommand!r}: choose one of {', '.join(SUBCOMMANDS)}")
    for name, value, low in (("--nodes", options.nodes, 1), ("--cpus-per-task", options.cpus_per_task, 1),
                             ("--gpus-per-node", options.gpus_per_node, 0), ("--signal", options.signal_seconds, 0),
                             ("--node-wait", options.node_wait_s, 1),
                             ("--ray-start-attempts", options.ray_start_attempts, 1)):
        if value < low:
            raise LaunchError(f"{name} must be at least {low}, got {value}")
    if options.gres is not None and options.gpus_per_node:
        raise LaunchError("give either --gpus-per-node or --gres, not both")
    for name in ("gres", "mem", "time", "partition", "account", "qos", "constraint"):
        value = getattr(options, name)
        if value is not None and not _DIRECTIVE_VALUE.fullmatch(value):
            raise LaunchError(f"--{name} {value!r}: no blanks, quotes or backslashes allowed")
    for extra in options.sbatch_args:
        if not extra.startswith("--") or not _DIRECTIVE_VALUE.fullmatch(extra):
            raise LaunchError(f"--sbatch-arg {extra!r}: give one `--option=value` without blanks or quotes")
    text = str(options.log_dir)
    if not options.log_dir.is_absolute() or any(bad in text for bad in ('"', "\\", "\n", "\r")):
        raise LaunchError(f"--log-dir {text!r}: needs an absolute path without double quotes or backslashes")


def log_pattern(options: SlurmOptions) -> str:
    """The --output pattern; '%' in the directory is escaped because Slurm expands %j, %x, ... in it."""
    return str(options.log_dir).replace("%", "%%") + "/%x-%j.out"


def log_path(log_dir: Path, job_name: str, job_id: str) -> Path:
    """Where Slurm writes the log of `log_pattern`."""
    return log_dir / f"{job_name}-{job_id}.out"


def directives(options: SlurmOptions) -> list[str]:
    lines = [
        f"--job-name={options.job_name}",
        f"--comment={COMMENT}",
        f'--output="{log_pattern(options)}"',
        "--open-mode=append",  # a requeued job appends to the same log
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={options.cpus_per_task}",
    ]
    if options.gres is not None:
        lines.append(f"--gres={options.gres}")
    elif options.gpus_per_node:
        lines.append(f"--gpus-per-node={options.gpus_per_node}")
    for name in ("mem", "time", "partition", "account", "qos", "constraint"):
        value = getattr(options, name)
        if value is not None:
            lines.append(f"--{name}={value}")
    if options.signal_seconds:
        lines.append(f"--signal=B:USR1@{options.signal_seconds}")
    lines.append("--requeue" if options.requeue else "--no-requeue")
    lines.extend(options.sbatch_args)
    return [f"#SBATCH {line}" for line in lines]


def command_words(options: SlurmOptions, command: Command) -> list[str]:
    """The argv run on the head node; training gets the job name as its run name so a requeue resumes it."""
    words = [command.python, "-m", "vertseg", command.subcommand, *command.args]
    if command.subcommand == "train" and not _has_option(command.args, "--name"):
        words += ["--name", options.job_name]
    return words


def render(options: SlurmOptions, command: Command, workdir: Path) -> str:
    """The complete sbatch script; raises LaunchError for options Slurm or bash would misread."""
    validate(options, command)
    resume_flag = {"train": "--auto-resume", "tune": "--resume"}.get(command.subcommand)
    resume = resume_flag is not None and not _has_option(command.args, "--resume")
    values = {
        "directives": "\n".join(directives(options)),
        "workdir": shlex.quote(str(workdir)),
        "python": shlex.quote(command.python),
        "ray": shlex.quote(ray_executable(command.python)),
        "command": " ".join(shlex.quote(word) for word in command_words(options, command)),
        "resume_on_requeue": "1" if resume else "0",
        "resume_flag": resume_flag or "",
        "requeue_on_warning": "1" if options.requeue else "0",
        "num_cpus": str(options.cpus_per_task),
        "num_gpus": str(gpus_per_node(options)),
        "node_wait_s": str(options.node_wait_s),
        "ray_start_attempts": str(options.ray_start_attempts),
    }
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template_text())


def _has_option(args: tuple[str, ...], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args)
