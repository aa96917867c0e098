"""`vertseg report`: paper-style tables and figures from runs read back from MLflow."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import console, fail


def report(
    out: Path = typer.Option(..., "--out", help="Folder for report.md, report.html, summary.json and figures/."),
    sweep: str = typer.Option(None, "--sweep", help="Sweep name (the newest sweep run of that name)."),
    runs: list[str] = typer.Option(
        None, "--runs", help="MLflow run ids, repeated or comma-separated (a sweep parent stands for its trials)."
    ),
    mlflow_uri: str = typer.Option(None, "--mlflow-uri", help="Tracking URI; default sqlite:///runs/mlflow.db."),
    split: str = typer.Option(
        None, "--split",
        help="Metric prefix of the headline numbers: test/validation (full-volume held-out evaluation) or val "
             "(patch-level, during training). Default: the sweep's evaluation split if logged, else test, validation, val.",
    ),
    log: bool = typer.Option(True, "--log/--no-log", help="Log the report back to the sweep's parent MLflow run."),
) -> None:
    """Paper-style tables and figures from a sweep.

    Tables like the paper's Tables 3-5 and figures like its Figs. 2-5 (per-level Dice), with their provenance."""
    if bool(sweep) == bool(runs):
        raise fail("give exactly one of --sweep NAME or --runs ID...")
    from vertseg.reporting.collect import ReportError, from_runs, from_sweep
    from vertseg.reporting.render import build_report, log_to_parent, write_report
    from vertseg.tuning.tracking import client, default_tracking_uri

    uri = mlflow_uri or default_tracking_uri(Path("runs"))
    try:
        ids = [run_id.strip() for item in runs or [] for run_id in item.split(",") if run_id.strip()]
        source = from_sweep(client(uri), sweep) if sweep else from_runs(client(uri), ids)
    except ReportError as error:
        raise fail(f"{error} (tracking URI {uri})") from None
    from vertseg.reporting.aggregate import headline_split

    split = split or headline_split(source.records, source.params.get("data.eval_split"))
    built, figs = build_report(source, split, uri)
    paths = write_report(built, figs, out)
    if log and source.parent_run_id:
        log_to_parent(uri, source.parent_run_id, out)
    console.print(f"{len(source.records)} runs -> {paths['report.html']} and {paths['report.md']}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("report")(report)
