"""`vertseg submit`, `vertseg jobs`, `vertseg logs`: run pipeline commands as Slurm jobs on a Ray cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from vertseg.cli.common import console, fail

SUBMIT_HELP = """Run a vertseg command as a Slurm job.

Runs `train`, `tune`, `preprocess` or `predict` as a Slurm job on a Ray cluster over the allocation.

Put the vertseg command after `--`, e.g. `vertseg submit --nodes 2 --gpus-per-node 4 -- train --store s.zarr`.
Training runs are named after the job, and a requeued job (preemption, time limit) resumes the same run.
"""


def _target_options(app: typer.Typer, subcommand: str) -> set[str]:
    """The option names the target command accepts, or an error when it is not installed."""
    group = typer.main.get_command(app)
    target = getattr(group, "commands", {}).get(subcommand)
    if target is None:
        raise fail(f"`vertseg {subcommand}` is not available in this installation")
    return {name for param in target.params for name in getattr(param, "opts", [])}


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command(help=SUBMIT_HELP, no_args_is_help=True)
    def submit(
        command: list[str] = typer.Argument(..., help="After `--`: train|tune|preprocess|predict and its arguments."),
        nodes: int = typer.Option(1, help="Nodes; the first runs the Ray head and the command."),
        gpus_per_node: int = typer.Option(0, help="GPUs per node (sbatch --gpus-per-node)."),
        gres: Optional[str] = typer.Option(None, help="Generic resources instead of --gpus-per-node, e.g. gpu:a100:4."),
        cpus_per_task: int = typer.Option(8, help="CPUs per node for Ray (one task per node)."),
        mem: Optional[str] = typer.Option(None, help="Memory per node, e.g. 64G."),
        time_limit: Optional[str] = typer.Option(None, "--time", help="Time limit, e.g. 24:00:00."),
        partition: Optional[str] = typer.Option(None),
        account: Optional[str] = typer.Option(None),
        qos: Optional[str] = typer.Option(None),
        constraint: Optional[str] = typer.Option(None),
        signal: int = typer.Option(300, help="Seconds before the time limit to checkpoint and requeue (0: off)."),
        requeue: bool = typer.Option(True, help="Requeue after the warning signal (and on node failure or preemption)."),
        node_wait: int = typer.Option(300, help="Seconds to wait for every node to join the Ray cluster."),
        ray_start_attempts: int = typer.Option(3, help="Tries to bring the Ray cluster up (each with fresh ports)."),
        sbatch_arg: Optional[list[str]] = typer.Option(None, help="Extra sbatch option, e.g. --sbatch-arg=--exclusive."),
        job_name: Optional[str] = typer.Option(None, help="Job name (and training run name); default vs-CMD-TIME."),
        log_dir: Path = typer.Option(Path("slurm-logs"), help="Where the job script and its log go."),
        python: str = typer.Option(sys.executable, show_default=False, help="Python with vertseg installed, as seen "
                                   "from the nodes (default: the Python running vertseg)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the job script; submit nothing."),
    ) -> None:
        from vertseg.launch import script, slurm

        subcommand, args = command[0], list(command[1:])
        if subcommand not in script.SUBCOMMANDS:
            raise fail(f"cannot submit {subcommand!r}: choose one of {', '.join(script.SUBCOMMANDS)}")
        if "--address" in _target_options(app, subcommand) and not any(a.startswith("--address") for a in args):
            args += ["--address", "auto"]
        name = job_name or f"vs-{subcommand}-{time.strftime('%m%d-%H%M%S')}"
        options = script.SlurmOptions(
            job_name=name, log_dir=log_dir.expanduser().absolute(), nodes=nodes, cpus_per_task=cpus_per_task,
            gpus_per_node=gpus_per_node, gres=gres, mem=mem, time=time_limit, partition=partition, account=account,
            qos=qos, constraint=constraint, signal_seconds=signal, requeue=requeue, node_wait_s=node_wait,
            ray_start_attempts=ray_start_attempts, sbatch_args=tuple(sbatch_arg or ()),
        )
        try:
            text = script.render(options, script.Command(subcommand, tuple(args), python), Path.cwd())
        except script.LaunchError as error:
            raise fail(str(error)) from None
        if dry_run:
            typer.echo(text, nl=False)
            return
        script_path = options.log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
        try:
            record = slurm.submit(text, script_path, name, options.log_dir, " ".join([subcommand, *args]))
        except slurm.SlurmError as error:
            raise fail(str(error), code=1) from None
        typer.echo(f"Submitted job {record.job_id} ({name})")
        typer.echo(f"  log:    {record.log}")
        typer.echo(f"  script: {record.script}")
        typer.echo(f"  follow: vertseg logs {record.job_id} --follow")

    @bench_app.command("slurm")
    def bench_slurm(
        cases: int = typer.Option(2, min=1, help="Phantom scans to preprocess."),
        cpus: int = typer.Option(2, min=1, help="--cpus-per-task of the job."),
    ) -> None:
        """Overhead of running a command as a Slurm job.

        Overhead of a Slurm job (queue, Ray start-up, teardown) relative to running the command directly."""
        from vertseg.bench.slurm import run_slurm_bench
        from vertseg.launch.slurm import SlurmError

        try:
            path = run_slurm_bench(cases=cases, cpus=cpus)
        except SlurmError as error:
            raise fail(f"{error} (start one with slurm/local-slurm.sh)", code=1) from None
        console.print(f"wrote {path}", highlight=False)

    @app.command()
    def jobs() -> None:
        """List your vertseg Slurm jobs.

        List your vertseg Slurm jobs with their state (finished ones from the controller or jobcomp file)."""
        from rich.console import Console
        from rich.table import Table

        from vertseg.launch import slurm

        try:
            rows = slurm.jobs()
        except slurm.SlurmError as error:
            raise fail(str(error), code=1) from None
        if not rows:
            console.print("no vertseg jobs")
            return
        table = Table("job", "name", "state", "elapsed", "nodes", "reason")
        table.add_column("log", overflow="fold")
        for job in rows:
            table.add_row(job.job_id, job.name, job.state, job.elapsed, job.nodes, job.reason, job.log)
        Console(soft_wrap=True).print(table)

    @app.command()
    def logs(
        job_id: str = typer.Argument(..., help="Slurm job id."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job finishes."),
    ) -> None:
        """Print a vertseg job's log (with --follow, as it grows)."""
        from vertseg.launch import slurm

        if not job_id.isdigit():
            raise fail(f"job id must be a number, got {job_id!r}")
        try:
            path = slurm.log_file(job_id)
            if not follow:
                if not path.exists():
                    raise fail(f"job {job_id} has no log yet at {path} (still pending?)", code=1)
                sys.stdout.write(path.read_text(errors="replace"))  # verbatim: typer.echo would strip colours
                return
            for chunk in slurm.follow(path, job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except slurm.SlurmError as error:
            raise fail(str(error), code=1) from None
