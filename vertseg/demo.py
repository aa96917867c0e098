"""`vertseg demo`: phantoms -> Zarr -> 2-worker Ray training of `proposed` -> predict -> evaluate -> the bundled
phantom-trained reference model on fresh phantoms -> HTML report.

Each stage writes `OUT/.stages/<stage>.json` (atomically) when it succeeds; a rerun skips stages with a marker and
redoes everything after the first one without. Stage output (including Ray workers) goes to `OUT/logs/<stage>.log`,
so the console shows only progress, and a failure names the stage and its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from vertseg.config import VertsegConfig, load_config
from vertseg.io import atomic_write_json
from vertseg.steps import RESOURCES, PhantomPools

DEMO_CONFIG = RESOURCES / "demo.yaml"
STAGES = ("data", "preprocess", "train", "predict", "evaluate", "reference", "report")
MARKERS = ".stages"
RUN_PREFIX = "demo-proposed"
FULL = PhantomPools(training=6, validation=2, unlabeled=6, test=3, seed=0)
QUICK = PhantomPools(training=3, validation=1, unlabeled=2, test=1, seed=0)
QUICK_OVERRIDES = [  # `--quick` (the end-to-end test): same stages, a few steps; consistency still runs in epoch 3
    "train.schedule.epochs=3", "train.schedule.iterations_per_epoch=2", "train.schedule.e_cons=1",
    "train.schedule.e_ramp=2", "train.validate_every=3", "model.base_width=4",
]
# The demo trains for minutes, which teaches bone but not vertebra names; this model trained 4,800 steps (23 min on
# 2 cores) on phantoms of the quality bench's size, and names vertebrae of fresh ones of that size.
REFERENCE = RESOURCES / "weights" / "phantom-fsl.pt"
REFERENCE_POOLS = PhantomPools(training=0, validation=0, unlabeled=0, test=3, seed=11, variant_rate=0.25, size="medium")
_EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) \| (.*)")


class DemoError(RuntimeError):
    """A stage failed; the message names the stage and its log file."""


@dataclass
class DemoContext:
    out: Path
    config: VertsegConfig
    pools: PhantomPools
    workers: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    @property
    def tracking_uri(self) -> str:
        from vertseg.distributed.tracking import default_tracking_uri

        return default_tracking_uri(self.runs_dir)


def _looks_like_demo(out: Path) -> bool:
    return not out.exists() or (out.is_dir() and (not any(out.iterdir()) or (out / MARKERS).is_dir()))


def prepare_out(out: Path, fresh: bool) -> None:
    """Refuse a folder that is not an earlier demo output; `fresh` removes an earlier one."""
    if not _looks_like_demo(out):
        raise DemoError(f"{out} exists and is not a `vertseg demo` output (no {MARKERS}/); choose another --out")
    if fresh and out.exists():
        shutil.rmtree(out)
    (out / MARKERS).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def captured_output(log: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (Python and file-descriptor level, so Ray's too) to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            handle.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _tail_epochs(log: Path, on_line: Callable[[int, int, str], None], stop: threading.Event) -> None:
    """Follow the training log (written by the Ray workers) and report each `epoch i/n | ...` line."""
    position = 0
    while not stop.wait(0.5):
        if not log.exists():
            continue
        with open(log, errors="replace") as handle:
            handle.seek(position)
            chunk = handle.read()
            position = handle.tell()
        for match in _EPOCH_LINE.finditer(chunk):
            on_line(int(match[1]), int(match[2]), match[3].strip())


# Stages: each takes the context and a progress callback (completed, total, text) and returns its marker payload.

Advance = Callable[[int | None, int | None, str], None]


def stage_data(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    from vertseg.steps import make_phantom_pools

    total = ctx.pools.training + ctx.pools.validation + ctx.pools.unlabeled + ctx.pools.test
    advance(0, total, "writing phantoms")
    folders = make_phantom_pools(ctx.out / "data", ctx.pools)
    advance(total, total, f"{total} phantoms")
    return {"folders": {k: str(v) for k, v in folders.items()}, "token": secrets.token_hex(3), "pools": ctx.pools.__dict__}


def stage_preprocess(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    from vertseg.data.parallel import run_preprocess
    from vertseg.steps import pool_sources

    folders = ctx.results["data"]["folders"]
    sources = pool_sources([Path(folders["labeled"]), Path(folders["unlabeled"])])
    store = ctx.out / "store.zarr"
    done = [0]

    def on_result(result: dict[str, Any]) -> None:
        done[0] += 1
        advance(done[0], len(sources), f"{result['case_id']} {result['status']}")

    summary = run_preprocess(sources, store, ctx.config.data, "auto", False, None, ctx.workers, on_result)
    if summary.failures:
        raise RuntimeError("; ".join(f"{f['file']}: {f['problem']}" for f in summary.failures))
    return {"store": str(store), "cases": len(summary.manifest["cases"])}


def stage_train(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    from vertseg.distributed.train import ray_checkpoints, run_training
    from vertseg.evaluation.holdout import volume_validator

    run_name = f"{RUN_PREFIX}-{ctx.results['data']['token']}"
    resume = bool(ray_checkpoints(ctx.runs_dir / run_name))  # an interrupted demo continues its training
    epochs = ctx.config.train.schedule.epochs
    advance(0, epochs, "resuming" if resume else "starting Ray Train")
    stop = threading.Event()
    log = ctx.out / "logs" / "train.log"
    watcher = threading.Thread(target=_tail_epochs, args=(log, lambda i, n, text: advance(i, n, text), stop), daemon=True)
    watcher.start()
    try:
        result = run_training(ctx.config, Path(ctx.results["preprocess"]["store"]), None, num_workers=ctx.workers,
                              use_gpu=False, run_name=run_name, storage_path=ctx.runs_dir, mlflow_uri=None, resume=resume,
                              volume_validation=partial(volume_validator, Path(ctx.results["preprocess"]["store"]).resolve()))
    finally:
        stop.set()
        watcher.join()
    if result.interrupted or result.checkpoint_path is None:
        raise RuntimeError(f"training stopped before it finished (run {result.run_dir}); rerun the demo to resume it")
    advance(epochs, epochs, f"{result.epochs} epochs")
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint_path), "mlflow_run_id": result.mlflow_run_id,
            "best_metrics": result.best_metrics, "epochs": result.epochs}


HEADLINE = ("test_dice", "test_vertebra_dice", "test_id_acc", "test_id_rate")


def headline(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def percent(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('test_')} {100 * v:.1f}%" for k, v in metrics.items())


def _predict(checkpoint: Path, test: Path, out: Path, cases: int, advance: Advance) -> dict[str, Any]:
    from vertseg.steps import predict_folder

    count = [0]

    def on_done(record: dict[str, Any]) -> None:
        count[0] += 1
        advance(count[0], cases, f"{record['case_id']} {record['status']}")

    advance(0, cases, "loading the network")
    return predict_folder(checkpoint, [test], out, on_done)


def stage_predict(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    out = ctx.out / "predictions"
    summary = _predict(Path(ctx.results["train"]["checkpoint"]), Path(ctx.results["data"]["folders"]["test"]), out,
                       ctx.pools.test, advance)
    qc = sorted(str(p) for p in out.glob("*/*_qc.png"))
    return {"predictions": str(out), "cases": summary["cases"], "qc_images": qc}


def stage_evaluate(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    from vertseg.steps import evaluate_predictions

    advance(None, None, "VerSe metrics")
    out_json = ctx.out / "evaluation" / "evaluation.json"
    metrics = evaluate_predictions(Path(ctx.results["predict"]["predictions"]),
                                   [Path(ctx.results["data"]["folders"]["test"])], out_json)
    run_id = ctx.results["train"]["mlflow_run_id"]
    if run_id:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        MlflowClient(tracking_uri=ctx.tracking_uri).log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    shown = headline(metrics)
    advance(1, 1, percent(shown))
    return {"evaluation": str(out_json), "metrics": shown}


def reference_sha256() -> str:
    return json.loads(REFERENCE.with_suffix(".json").read_text())["sha256"]


def stage_reference(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    """The bundled reference model (checksum verified) on fresh phantoms it never saw, through the same
    predict and evaluate as the trained model."""
    from dataclasses import replace

    from vertseg.steps import evaluate_predictions, make_phantom_pools
    from vertseg.weights.fetch import sha256_of

    expected = reference_sha256()
    if sha256_of(REFERENCE) != expected:
        raise RuntimeError(f"{REFERENCE} does not match its sha256 in {REFERENCE.with_suffix('.json')}; reinstall vertseg")
    pools = replace(REFERENCE_POOLS, test=1) if ctx.pools == QUICK else REFERENCE_POOLS
    out = ctx.out / "reference"
    advance(0, pools.test, "writing fresh phantoms")
    test = make_phantom_pools(out / "data", pools)["test"]
    _predict(REFERENCE, test, out / "predictions", pools.test, advance)
    metrics = headline(evaluate_predictions(out / "predictions", [test], out / "evaluation" / "evaluation.json"))
    advance(pools.test, pools.test, percent(metrics))
    return {"checkpoint": str(REFERENCE), "sha256": expected, "cases": pools.test, "predictions": str(out / "predictions"),
            "evaluation": str(out / "evaluation" / "evaluation.json"), "metrics": metrics}


def stage_report(ctx: DemoContext, advance: Advance) -> dict[str, Any]:
    from vertseg.reporting.collect import from_runs
    from vertseg.reporting.render import build_report, write_report
    from vertseg.tuning.tracking import client

    run_id = ctx.results["train"]["mlflow_run_id"]
    if not run_id:
        raise RuntimeError("the training run has no MLflow run id; the report is built from MLflow")
    advance(None, None, "tables and figures from MLflow")
    built, figs = build_report(from_runs(client(ctx.tracking_uri), [run_id]), "test", ctx.tracking_uri)
    paths = write_report(built, figs, ctx.out / "report")
    return {"html": str(paths["report.html"]), "markdown": str(paths["report.md"])}


STAGE_FUNCTIONS: dict[str, Callable[[DemoContext, Advance], dict[str, Any]]] = {
    "data": stage_data, "preprocess": stage_preprocess, "train": stage_train,
    "predict": stage_predict, "evaluate": stage_evaluate, "reference": stage_reference, "report": stage_report,
}


def _marker(out: Path, stage: str) -> Path:
    return out / MARKERS / f"{stage}.json"


def _ensure_ray(workers: int) -> bool:
    """Join RAY_ADDRESS when set (a shared cluster, the test session), else start a local instance; True if started."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=True)
        return False
    ray.init(num_cpus=max(workers + 2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
    return True


def stale(stage: str, saved: dict[str, Any], ctx: DemoContext) -> bool:
    """Whether a finished stage's saved result no longer describes this run: `--quick` and the full demo use
    different phantoms, and an upgraded bundled model has not been scored yet."""
    if stage == "data":
        return saved.get("pools") != ctx.pools.__dict__
    return stage == "reference" and saved.get("sha256") != reference_sha256()


def run_demo(out: Path, fresh: bool = False, quick: bool = False, workers: int = 2) -> dict[str, dict[str, Any]]:
    """Run (or resume) every stage; returns each stage's marker payload (with its `seconds`)."""
    out = Path(out).resolve()
    prepare_out(out, fresh)
    config = load_config(DEMO_CONFIG, QUICK_OVERRIDES if quick else [])
    ctx = DemoContext(out, config, QUICK if quick else FULL, workers)
    ray_started = False
    redo = False
    columns = (SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}", table_column=Column(width=10, no_wrap=True)),
               BarColumn(bar_width=16), MofNCompleteColumn(table_column=Column(width=5, no_wrap=True)),
               TimeElapsedColumn(table_column=Column(width=7, no_wrap=True)),
               TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")))
    terminal = open(os.dup(2), "w", buffering=1)  # progress keeps the real stderr while stages write to their logs
    try:
        with Progress(*columns, console=Console(file=terminal), redirect_stdout=False, redirect_stderr=False) as progress:
            for stage in STAGES:
                marker = _marker(out, stage)
                saved = json.loads(marker.read_text()) if marker.exists() else None
                if saved is not None and not redo and not stale(stage, saved, ctx):
                    ctx.results[stage] = saved
                    progress.add_task("reused (--fresh to redo)", stage=stage, total=1, completed=1)
                    continue
                redo = True
                marker.unlink(missing_ok=True)
                for later in STAGES[STAGES.index(stage) + 1:]:
                    _marker(out, later).unlink(missing_ok=True)
                task = progress.add_task("", stage=stage, total=None)

                def advance(completed: int | None, total: int | None, text: str, task=task) -> None:
                    progress.update(task, completed=completed or 0, total=total, description=text)

                log = out / "logs" / f"{stage}.log"
                start = time.perf_counter()
                try:
                    with captured_output(log):
                        if stage in ("preprocess", "train") and not ray_started:
                            ray_started = _ensure_ray(workers)
                        payload = STAGE_FUNCTIONS[stage](ctx, advance)
                except Exception as error:
                    with open(log, "a") as handle:
                        handle.write(traceback.format_exc())
                    progress.update(task, description=f"[red]failed[/]: {error}")
                    raise DemoError(f"stage '{stage}' failed: {type(error).__name__}: {error}\n  log: {log}") from error
                payload["seconds"] = round(time.perf_counter() - start, 1)
                atomic_write_json(marker, payload)
                ctx.results[stage] = payload
                progress.update(task, total=1, completed=1)
    finally:
        terminal.close()
        if ray_started:
            import ray

            ray.shutdown()
    return ctx.results


def summary_lines(out: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """Where everything is, and how to look at it."""
    from vertseg.distributed.tracking import default_tracking_uri

    out = Path(out).resolve()
    tracking_uri = default_tracking_uri(out / "runs")
    reference = results["reference"]
    lines = [
        "test metrics: " + percent(results["evaluate"]["metrics"]) + " (the model trained here, minutes)",
        "reference model: " + percent(reference["metrics"]) + f" (bundled {Path(reference['checkpoint']).name}: "
        f"4,800 training steps on phantoms; {reference['cases']} phantoms it never saw)",
        "stage seconds: " + ", ".join(f"{s} {results[s].get('seconds', 0):.0f}" for s in STAGES),
        f"outputs:     {out}",
        f"predictions: {results['predict']['predictions']}  (<case>/<case>_seg.nii.gz, _ctd.json, _vertebrae.csv)",
        "QC images:   " + (", ".join(results["predict"]["qc_images"]) or "none"),
        f"evaluation:  {results['evaluate']['evaluation']}",
        f"reference:   {reference['predictions']}, {reference['evaluation']}",
        f"report:      {results['report']['html']}",
        f"checkpoint:  {results['train']['checkpoint']}",
        f"MLflow UI:   mlflow ui --backend-store-uri {tracking_uri}",
    ]
    return lines
