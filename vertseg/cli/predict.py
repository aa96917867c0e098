"""`vertseg predict` (full-volume inference, batch or on Ray) and `vertseg bench infer`."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import ConfigOption, SetOption, config_or_exit, console, fail


def _build_predictor(checkpoint: Path | None, config_path: Path | None, overrides: list[str], random_weights: bool,
                     seed: int, device: str):
    """The Predictor for a checkpoint, or an untrained network with --random-weights (smoke tests only)."""
    from vertseg.inference.model_loading import load_model, random_model, resolve_device
    from vertseg.inference.predictor import Predictor

    torch_device = resolve_device(device)
    if random_weights:
        config = config_or_exit(config_path, overrides)
        return Predictor(random_model(config, seed), config, torch_device), "random weights"
    model, config, key = load_model(checkpoint, overrides)
    return Predictor(model, config, torch_device), f"{checkpoint} ({key} weights)"


def _ray_records(jobs, out: Path, workers: int, build_args: tuple, on_done, gpu: bool) -> list[dict]:
    """Run jobs on a pool of Ray actors, each holding one loaded network (and one GPU when predicting on CUDA);
    joins a running cluster when there is one."""
    import os

    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address="auto" if os.environ.get("RAY_ADDRESS") else None, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class PredictWorker:
        def __init__(self, args: tuple) -> None:
            import torch

            torch.set_num_threads(1)
            self.predictor, _ = _build_predictor(*args)

        def run(self, job, out_dir: str) -> dict:
            from vertseg.inference.runner import predict_job

            return predict_job(self.predictor, job, Path(out_dir))

    actor = PredictWorker.options(num_gpus=1) if gpu else PredictWorker
    pool = ActorPool([actor.remote(build_args) for _ in range(max(1, min(workers, len(jobs))))])
    records = []
    for record in pool.map_unordered(lambda actor, job: actor.run.remote(job, str(out)), jobs):
        records.append(record)
        on_done(record)
    order = {job.case_id: n for n, job in enumerate(jobs)}
    return sorted(records, key=lambda r: order[r["case_id"]])


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        inputs: list[Path] = typer.Argument(..., help="NIfTI files, DICOM series folders, dataset folders or Zarr stores."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: <out>/<case_id>/... and summary.json."),
        checkpoint: Path = typer.Option(None, "--checkpoint", help="Training checkpoint (teacher/EMA weights are used)."),
        config: Path = ConfigOption,
        overrides: list[str] = SetOption,
        device: str = typer.Option("auto", help="auto | cpu | cuda (auto picks CUDA when present)."),
        tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation (inference.mirror_axes)."),
        use_ray: bool = typer.Option(False, "--ray", help="Run cases in parallel on Ray (joins RAY_ADDRESS when set)."),
        workers: int = typer.Option(2, min=1, help="With --ray: actors, each holding one copy of the network (and a GPU)."),
        split: str = typer.Option(None, help="For Zarr store inputs: only this split (e.g. test)."),
        random_weights: bool = typer.Option(
            False, "--random-weights", help="SMOKE TESTS ONLY: an untrained network from --config; predictions are meaningless."
        ),
        seed: int = typer.Option(0, help="Seed of the --random-weights network."),
    ) -> None:
        """Segment and identify the vertebrae of every input scan; outputs lie on each scan's original grid.

        Writes <case>_seg.nii.gz (VerSe labels), <case>_ctd.json (VerSe centroids), <case>_vertebrae.json/.csv
        (volume, confidence) and <case>_qc.png per case, and summary.json; exits 1 when any case failed.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from vertseg.inference.cases import collect_jobs
        from vertseg.inference.model_loading import CheckpointError
        from vertseg.inference.runner import predict_all, write_summary

        if (checkpoint is None) == (not random_weights):
            raise fail("give --checkpoint CKPT, or --random-weights --config C for a smoke test (not both)")
        if checkpoint is not None and config is not None:
            raise fail("--config is not used with --checkpoint (the checkpoint holds its config); use --set for inference keys")
        overrides = list(overrides or []) + (["inference.mirror_tta=true"] if tta else [])
        try:
            jobs = collect_jobs(inputs, split)
        except (ValueError, OSError, RuntimeError) as error:
            raise fail(str(error)) from None
        if not jobs:
            raise fail(f"no scans found in {', '.join(map(str, inputs))}")
        build_args = (checkpoint, config, overrides, random_weights, seed, device)
        try:
            predictor, weights = _build_predictor(*build_args)
        except (CheckpointError, ValueError) as error:
            raise fail(str(error)) from None
        console.print(f"{len(jobs)} case(s), {weights}, device {predictor.device}", highlight=False)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("predicting", total=len(jobs))

            def on_done(record: dict) -> None:
                if record["status"] != "ok":
                    progress.console.print(f"[red]failed[/] {record['case_id']}: {record['error']}", highlight=False)
                progress.advance(task)

            if use_ray:
                gpu = predictor.device.type == "cuda"
                del predictor  # each actor loads its own copy
                records = _ray_records(jobs, out, workers, build_args, on_done, gpu)
            else:
                records = predict_all(predictor, jobs, out, on_done)
        summary = write_summary(out, records, {"weights": weights, "ray": use_ray})
        console.print(f"{summary['succeeded']}/{summary['cases']} case(s) written to {out}", highlight=False)
        if summary["failed"]:
            raise typer.Exit(1)

    @bench_app.command("infer")
    def bench_infer(
        quick: bool = typer.Option(False, "--quick", help="A smaller phantom (256x256x150 at 1 mm) for a fast check."),
        device: str = typer.Option("auto", help="auto | cpu | cuda; auto also times CUDA when present."),
        base_width: int = typer.Option(None, help="Network width (default: 8 on CPU, the paper's 16 on CUDA)."),
        out: Path = typer.Option(Path("docs/benchmarks.md"), help="Benchmarks file to update."),
        network_only: bool = typer.Option(
            False, "--network-only", help="Only localisation, sliding window and post-processing on an in-memory phantom."
        ),
    ) -> None:
        """Seconds per case for a 512x512x300 phantom at 1 mm, split load / localisation / sliding window /
        post-processing / writing, and peak memory; writes the `infer` section of docs/benchmarks.md."""
        from vertseg.bench.infer import run_infer_bench, run_network_bench

        run = run_network_bench if network_only else run_infer_bench
        run(quick=quick, device=device, base_width=base_width, bench_file=out)
