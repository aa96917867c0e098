"""`vertseg tune`: run an ablation sweep (sweeps/*.yaml) on Ray Tune, one Ray Train run per trial, in MLflow."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import console, fail


def tune(
    ctx: typer.Context,
    sweep_file: Path = typer.Argument(..., help="Sweep YAML, e.g. sweeps/threshold.yaml."),
    gpus_per_trial: int = typer.Option(None, "--gpus-per-trial", min=0, help="GPU workers per trial (one GPU each); 0 = CPU."),
    workers_per_trial: int = typer.Option(None, "--workers-per-trial", min=1, help="CPU workers per trial (gloo)."),
    max_concurrent: int = typer.Option(None, "--max-concurrent", min=1, help="Cap on trials running at once."),
    smoke: bool = typer.Option(False, "--smoke", help="Tiny epochs/patches/width, one seed, CPU workers: minutes on a laptop."),
    resume: bool = typer.Option(False, "--resume", help="Continue a stopped sweep; finished trials are not rerun."),
    store: Path = typer.Option(None, "--store", help="Labeled store instead of the sweep file's (drops its unlabeled store too)."),
    unlabeled: Path = typer.Option(None, "--unlabeled", help="Unlabeled store instead of the sweep file's."),
    out: Path = typer.Option(Path("runs"), "--out", help="Runs folder: MLflow db + OUT/sweeps/NAME (Tune state, checkpoints)."),
    mlflow_uri: str = typer.Option(None, "--mlflow-uri", help="Tracking URI; default sqlite:///OUT/mlflow.db."),
    address: str = typer.Option(None, "--address", help="Ray cluster to join (auto, ray://...); default local."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the trials, run nothing."),
) -> None:
    """Run an ablation sweep on Ray Tune with MLflow.

    Run an ablation sweep: every trial validated first, then trained on Ray, tracked under one MLflow parent."""
    from vertseg.tuning.sweep import SweepError, plan_sweep

    try:
        plan = plan_sweep(sweep_file, smoke=smoke, store=store, unlabeled=unlabeled, check_stores=not dry_run)
    except SweepError as error:
        raise fail(str(error)) from None
    console.print(f"sweep [bold]{plan.sweep.name}[/]: {len(plan.trials)} trials{' (smoke)' if smoke else ''}")
    if dry_run:
        for trial in plan.trials:
            typer.echo(f"{trial.key}\t{trial.variant}\tseed={trial.seed}")
        return
    # A smoke run is for a CPU machine: CPU workers unless GPUs are asked for explicitly.
    use_gpu = (False if smoke else None) if gpus_per_trial is None else gpus_per_trial > 0
    workers = gpus_per_trial if gpus_per_trial else workers_per_trial
    from vertseg.tuning.runner import STATE_FILE, run_sweep, sweep_folder

    try:
        outcome = run_sweep(plan, root=out, mlflow_uri=mlflow_uri, resume=resume, max_concurrent=max_concurrent,
                            workers=workers, use_gpu=use_gpu, address=address)
    except SweepError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Ray Tune started
        started = (sweep_folder(out, plan.sweep.name) / STATE_FILE).exists()
        raise _interrupted(ctx, plan.sweep.name, started) from None
    counts = f"{outcome.finished} trials finished, {outcome.failed} failed"
    if outcome.interrupted:
        counts += f", {outcome.interrupted} interrupted or not started"
    console.print(f"{counts}; MLflow parent run {outcome.parent_run_id} at {outcome.mlflow_uri}")
    for key, message in outcome.errors.items():
        console.print(f"[red]{key}[/]: {message}", highlight=False)
    if outcome.interrupted:
        raise _interrupted(ctx, plan.sweep.name)
    console.print(f"report: vertseg report --sweep {plan.sweep.name} --mlflow-uri '{outcome.mlflow_uri}' --out DIR")
    if outcome.failed:
        raise typer.Exit(1)


def _interrupted(ctx: typer.Context, name: str, started: bool = True) -> typer.Exit:
    """Exit 130 (SIGINT's convention), with the command that continues the sweep."""
    from vertseg.cli.resume import resume_command

    advice = (f"resume it with: {resume_command(ctx, ['--resume'], drop=('resume',))}" if started
              else "it had not started; nothing to resume")
    console.print(f"sweep {name} interrupted; {advice}", highlight=False)
    return typer.Exit(130)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("tune")(tune)
