"""`vertseg train`, `vertseg bench train` and `vertseg bench scale`."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import ConfigOption, SetOption, config_or_exit, console, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("train")
    def train(
        ctx: typer.Context,
        store: Path = typer.Option(..., "--store", help="Labeled store (STORE.zarr) from `vertseg preprocess`."),
        unlabeled: Path = typer.Option(None, "--unlabeled", help="Extra store whose cases are used as unlabeled data."),
        config: Path = ConfigOption,
        overrides: list[str] = SetOption,
        gpus: int = typer.Option(None, "--gpus", min=1, help="N GPU workers (DDP over NCCL)."),
        cpu_workers: int = typer.Option(None, "--cpu-workers", min=0, help="N CPU workers (DDP over gloo); 0 = this process, no Ray."),
        address: str = typer.Option(None, "--address", help="Ray cluster to join: 'auto' or ray://host:10001."),
        name: str = typer.Option(None, "--name", help="Run name, a folder under --out (default: deterministic from method, config and store). A fresh run "
                                                          "always gets a new MLflow run, even if an earlier one has this name."),
        mlflow_uri: str = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI (default sqlite:///RUNS_DIR/mlflow.db; 'none' = off)."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the run of this name from its latest checkpoint and its MLflow run; refused "
                                    "when the config or the store manifest changed since the run started."),
        auto_resume: bool = typer.Option(
            False, "--auto-resume", help="Continue the run when it has a checkpoint, else start it (requeued batch jobs)."
        ),
        init_from: Path = typer.Option(
            None, "--init-from", metavar="CKPT",
            help="Fine-tune: start from this checkpoint's weights (every tensor whose name and shape match; the rest, "
                 "e.g. the identification head of another class count, stays fresh and is reported), teacher = "
                 "student, fresh optimiser and schedule. Ignored when resuming.",
        ),
        out: Path = typer.Option(Path("runs"), "--out", help="Runs directory (checkpoints, MLflow database)."),
        evaluate: str = typer.Option(
            None, "--evaluate", metavar="SPLIT",
            help="After training, predict every case of this store split (test, validation; auto = test if present) "
                 "from the best checkpoint, log full-volume metrics to the MLflow run and print them.",
        ),
    ) -> None:
        """Train a model on a store (one process or Ray DDP).

        Train on a store: single process (--cpu-workers 0) or Ray Train DDP on N GPUs / CPU workers."""
        if gpus is not None and cpu_workers is not None:
            raise fail("give either --gpus or --cpu-workers, not both")
        settings = config_or_exit(config, overrides)
        for path, flag in ((store, "--store"), (unlabeled, "--unlabeled")):
            if path is not None and not (path / "manifest.json").exists():
                raise fail(f"{flag} {path} is not a vertseg store (no manifest.json); run `vertseg preprocess` first")
        if init_from is not None and not init_from.is_file():
            raise fail(f"--init-from {init_from} does not exist")
        import torch

        from vertseg.distributed.run_identity import RunMismatchError
        from functools import partial

        from vertseg.distributed.train import RunExistsError, default_run_name, run_training
        from vertseg.evaluation.holdout import volume_validator
        from vertseg.training.checkpoint import CheckpointError

        use_gpu = gpus is not None or (cpu_workers is None and torch.cuda.is_available())
        workers = gpus if gpus is not None else (cpu_workers if cpu_workers is not None else (torch.cuda.device_count() if use_gpu else 0))
        run_name = name or default_run_name(settings, store)
        if workers > 0 and address is not None:
            import ray

            ray.init(address=address, log_to_driver=True)
        if gpus is not None:  # Ray would wait forever for GPUs that are not there
            available = torch.cuda.device_count() if address is None else int(ray.cluster_resources().get("GPU", 0))
            if available < gpus:
                where = f"the Ray cluster at {address}" if address is not None else "this machine"
                raise fail(f"--gpus {gpus}: {where} has {available} GPU(s); use fewer, or --cpu-workers N for CPU training")
        console.print(f"run [bold]{run_name}[/] -> {out / run_name} ({workers or 'no'} {'GPU' if use_gpu else 'CPU'} workers)", highlight=False)
        try:
            result = run_training(settings, store, unlabeled, num_workers=workers, use_gpu=use_gpu, run_name=run_name,
                                  storage_path=out, mlflow_uri=mlflow_uri, resume="auto" if auto_resume else resume,
                                  init_from=init_from, volume_validation=partial(volume_validator, Path(store).resolve()))
        except (RunExistsError, RunMismatchError, FileNotFoundError, CheckpointError, ValueError) as error:
            raise fail(str(error)) from None
        except KeyboardInterrupt:  # Ctrl-C outside the training loop, which itself stops after a step and checkpoints
            raise _interrupted(ctx, run_name, "--auto-resume") from None
        except Exception as error:  # noqa: BLE001 - Ray wraps a worker's error in its own types
            cause = _non_finite_cause(error)
            if cause is None:
                raise
            raise fail(f"training stopped on non-finite numbers: {cause}. The last good checkpoint is kept in "
                       f"{out / run_name}; resume from it with a lower train.optim.lr (--set) or check the data",
                       code=1) from None
        state = "stopped" if result.interrupted else "finished"
        console.print(f"{state} after {result.epochs} epochs; best {result.best_metrics and {k: round(v, 4) for k, v in result.best_metrics.items() if k.startswith('val_')}}; "
                      f"checkpoint {result.checkpoint_path}; MLflow run {result.mlflow_run_id}", highlight=False)
        if result.interrupted:
            raise _interrupted(ctx, run_name, "--resume")
        if evaluate:
            _evaluate_run(result, store, evaluate, mlflow_uri, out)

    def _interrupted(ctx: typer.Context, run_name: str, flag: str) -> typer.Exit:
        """Exit 130 (SIGINT's convention; SIGTERM stops a run the same way), with the command that continues the
        run from its last checkpoint: this command line under the run's name, with --resume (--auto-resume where
        there may be no checkpoint yet)."""
        from vertseg.cli.resume import resume_command

        command = resume_command(ctx, ["--name", run_name, flag], drop=("name", "resume", "auto_resume"))
        console.print(f"run {run_name} stopped before its last epoch; resume it with: {command}", highlight=False)
        return typer.Exit(130)

    def _non_finite_cause(error: BaseException) -> BaseException | None:
        """The NonFiniteLossError behind `error` (raised directly, or wrapped by Ray Train), else None."""
        from vertseg.training.trainer import NonFiniteLossError

        seen = error
        while seen is not None:
            if isinstance(seen, NonFiniteLossError):
                return seen
            seen = seen.__cause__ or seen.__context__
        return None

    def _evaluate_run(result, store: Path, split: str, mlflow_uri: str | None, out: Path) -> None:
        """Full-volume held-out metrics of the best checkpoint, logged to the training's MLflow run."""
        from vertseg.cli.evaluate import _print_summary
        from vertseg.evaluation.holdout import HoldoutError, default_split, evaluate_checkpoint
        from vertseg.tuning.holdout import log_holdout
        from vertseg.tuning.tracking import default_tracking_uri

        if result.checkpoint_path is None:
            raise fail("--evaluate: the run wrote no checkpoint")
        split = default_split(store) if split == "auto" else split
        folder = result.run_dir / "evaluation" / split
        console.print(f"evaluating {result.checkpoint_path} on the {split!r} cases of {store}", highlight=False)
        try:
            held_out = evaluate_checkpoint(result.checkpoint_path, store, split, out_dir=folder)
        except (HoldoutError, ValueError) as error:
            raise fail(f"--evaluate: {error}") from None
        _print_summary(held_out.summary, by_region=True)
        for case_id, problem in held_out.failed.items():
            console.print(f"[yellow]failed[/] {case_id}: {problem}", highlight=False)
        uri = None if mlflow_uri == "none" else (mlflow_uri or default_tracking_uri(out))
        if uri and result.mlflow_run_id:
            log_holdout(uri, result.mlflow_run_id, held_out, result.epochs)
        console.print(f"{len(held_out.cases)} {split} cases -> {folder}; metrics {split}_* in MLflow run "
                      f"{result.mlflow_run_id}", highlight=False)

    @bench_app.command("train")
    def bench_train(
        quick: bool = typer.Option(False, "--quick", help="Smaller patches and fewer steps (a minute on a laptop)."),
        steps: int = typer.Option(None, help="Timed steps per method."),
        cpu_speed: bool = typer.Option(
            False, "--cpu-speed", help="Instead: fsl and proposed steps/s on this CPU per setting tried (bf16 autocast), "
            "with the loss curve against float32."),
    ) -> None:
        """Training step time and memory per method.

        Step time and peak memory per method relative to fsl; augmentation throughput vs the step rate."""
        from vertseg.bench.train import run_cpu_speed_bench, run_train_bench

        path = run_cpu_speed_bench(steps or 3) if cpu_speed else run_train_bench(quick=quick, steps=steps)
        console.print(f"wrote {path}", highlight=False)

    @bench_app.command("scale")
    def bench_scale(
        quick: bool = typer.Option(False, "--quick", help="Tiny model and patches (a few minutes on 2 cores)."),
    ) -> None:
        """Distributed training throughput.

        Samples/s with 1 vs 2 CPU workers, loader patch rate vs consumption, one-GPU throughput when present."""
        from vertseg.bench.scale import run_scale_bench

        path = run_scale_bench(quick=quick)
        console.print(f"wrote {path}", highlight=False)
