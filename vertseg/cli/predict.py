"""`vertseg predict` (full-volume inference, batch or on Ray) and `vertseg bench infer`."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from vertseg.cli.common import ConfigOption, MessageConsole, config_or_exit, console, fail, writable_folder_problem


def _build_predictor(checkpoint: Path | None, config_path: Path | None, overrides: list[str], random_weights: bool,
                     seed: int, device: str, onnx: Path | None = None):
    """The Predictor for a checkpoint, an exported ONNX model (ONNX Runtime, CPU), or an untrained network with
    --random-weights (smoke tests only)."""
    from vertseg.inference.model_loading import load_model, random_model, resolve_device
    from vertseg.inference.predictor import Predictor

    if onnx is not None:
        from vertseg.inference.onnx_runtime import load_onnx

        network, config = load_onnx(onnx, overrides)
        return Predictor(network, config, "cpu"), f"{onnx} (ONNX Runtime, CPU)"
    torch_device = resolve_device(device)
    if random_weights:
        config = config_or_exit(config_path, overrides)
        return Predictor(random_model(config, seed), config, torch_device), "random weights"
    model, config, key = load_model(checkpoint, overrides)
    return Predictor(model, config, torch_device), f"{checkpoint} ({key} weights)"


def _ray_records(jobs, out: Path, workers: int, build_args: tuple, on_done, gpu: bool, options,
                 quiet: bool) -> list[dict]:
    """Run jobs on a pool of Ray actors, each holding one loaded network (and one GPU when predicting on CUDA);
    joins a running cluster when there is one. `quiet`: Ray's own start-up lines are not printed either."""
    import os

    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address="auto" if os.environ.get("RAY_ADDRESS") else None, log_to_driver=False,
                 logging_level="error" if quiet else "info")

    @ray.remote(num_cpus=1)
    class PredictWorker:
        def __init__(self, args: tuple) -> None:
            import torch

            torch.set_num_threads(1)
            self.predictor, _ = _build_predictor(*args)

        def run(self, job, out_dir: str, options) -> dict:
            from vertseg.inference.runner import predict_job

            return predict_job(self.predictor, job, Path(out_dir), options)

    actor = PredictWorker.options(num_gpus=1) if gpu else PredictWorker
    pool = ActorPool([actor.remote(build_args) for _ in range(max(1, min(workers, len(jobs))))])
    records = []
    for record in pool.map_unordered(lambda actor, job: actor.run.remote(job, str(out), options), jobs):
        records.append(record)
        on_done(record)
    order = {job.case_id: n for n, job in enumerate(jobs)}
    return sorted(records, key=lambda r: order[r["case_id"]])


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        inputs: list[Path] = typer.Argument(
            None, help="Scans: NIfTI / NRRD / MetaImage files, DICOM series folders or .zip, dataset folders, Zarr stores.",
            show_default=False,
        ),
        input_options: list[Path] = typer.Option(None, "--input", "-i", help="A scan (as the arguments); repeatable.",
                                                 show_default=False),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: <out>/<case_id>/... and summary.json."),
        checkpoint: Path = typer.Option(
            None, "--checkpoint",
            help="Training checkpoint (teacher/EMA weights are used); default: the registered default model, else the bundled one.",
        ),
        onnx: Path = typer.Option(None, "--onnx", help="An ONNX model from `vertseg export --onnx`, run by ONNX Runtime on CPU."),
        config: Path = ConfigOption,
        overrides: list[str] = typer.Option(None, "--set", "-s", help="Override an inference setting, e.g. --set "
                                            "inference.overlap=0.5 (the model fixes every other section)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (or gpu) | mps (auto picks CUDA when present)."),
        statistics: bool = typer.Option(
            False, "--statistics",
            help="Also write statistics (JSON and CSV): per vertebra the volume, mean and median HU of the body and of "
                 "the whole vertebra, RAS centroid, confidence, border flag.",
        ),
        roi_subset: list[str] = typer.Option(
            None, "--roi-subset",
            help="Write only these vertebrae, e.g. T12,L1,L2 (or vertebrae_L1); the whole spine is still predicted.",
            show_default=False,
        ),
        per_vertebra: bool = typer.Option(
            False, "--per-vertebra", help="Also one 0/1 mask file per vertebra in <case>/vertebrae/ (L1.nii.gz, ...)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print errors only (exit codes unchanged)."),
        output_type: str = typer.Option(
            "nifti", "--output-type", help="nifti (+ Slicer/ITK-SNAP label tables) | dicom-seg (DICOM inputs only)."
        ),
        label_numbering: str = typer.Option(
            "verse", "--labels", help="Numbering of the written labelmap: verse (1-28) | totalseg (TotalSegmentator v2 ids)."
        ),
        fast: bool = typer.Option(
            False, "--fast", help="Faster inference: window overlap 0.25, bone-threshold localisation, and bf16 windows on a CPU or GPU that computes bf16 natively."
        ),
        tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation (inference.mirror_axes)."),
        use_ray: bool = typer.Option(False, "--ray", help="Run cases in parallel on Ray (joins RAY_ADDRESS when set)."),
        workers: int = typer.Option(2, min=1, help="With --ray: actors, each holding one copy of the network (and a GPU)."),
        split: str = typer.Option(None, help="For Zarr store inputs: only this split (e.g. test)."),
        random_weights: bool = typer.Option(
            False, "--random-weights", help="SMOKE TESTS ONLY: an untrained network from --config; predictions are meaningless."
        ),
        seed: int = typer.Option(0, help="Seed of the --random-weights network."),
        threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for the network (default: all cores)."),
        allow_irregular: bool = typer.Option(
            False, "--allow-irregular",
            help="DICOM series with uneven slice positions (a missing slice): resample onto a uniform grid instead of refusing.",
        ),
    ) -> None:
        """Segment and name the vertebrae of CT scans.

        Segment and identify the vertebrae of every input scan; outputs lie on each scan's original grid.

        `vertseg predict -i ct.nii.gz -o out/`, or several scans at once:
        `vertseg predict scan1 scan2 -o out/ --roi-subset T12,L1 --statistics`.

        Writes per case, in out/<case>/:
        <case>_seg.nii.gz, the labelmap (VerSe labels, or TotalSegmentator ids
        with --labels totalseg), with its label tables <case>_seg.ctbl (3D Slicer)
        and <case>_seg_itksnap.txt (ITK-SNAP); <case>_seg.dcm instead with
        --output-type dicom-seg;
        <case>_ctd.json (VerSe centroids), <case>_vertebrae.json and .csv (volume,
        confidence), <case>_qc.png;
        with --statistics, <case>_statistics.json and .csv (volume, body and
        whole-vertebra HU, centroid);
        with --per-vertebra, one 0/1 mask per vertebra: vertebrae/L1.nii.gz, ...
        (vertebrae/vertebrae_L1.nii.gz, ... with --labels totalseg).
        --roi-subset keeps only the named vertebrae in all of these but the QC
        image, which shows the whole spine their names rest on.
        And out/summary.json. --quiet prints errors only. Exits 1 when any case
        failed.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from vertseg.inference.cases import collect_jobs, unread_images
        from vertseg.inference.model_loading import CheckpointError
        from vertseg.inference.progress import CaseWindows
        from vertseg.inference.runner import predict_all, stage_line, write_summary
        from vertseg.inference.writers import OutputOptions
        from vertseg.labels import vertebra_labels

        inputs = list(inputs or []) + list(input_options or [])
        if not inputs:
            raise fail("give the scans to predict: vertseg predict -i SCAN -o OUT (or as arguments)")
        problem = writable_folder_problem(out)
        if problem:
            raise fail(f"--out {out}: {problem}")
        if output_type not in ("nifti", "dicom-seg"):
            raise fail(f"--output-type must be nifti or dicom-seg, not {output_type!r}")
        if label_numbering not in ("verse", "totalseg"):
            raise fail(f"--labels must be verse or totalseg, not {label_numbering!r}")
        if output_type == "dicom-seg" and label_numbering != "verse":
            raise fail("--labels applies to NIfTI output; DICOM-SEG segments are named and coded per vertebra")
        try:
            subset = vertebra_labels(roi_subset) if roi_subset else None
        except ValueError as error:
            raise fail(f"--roi-subset: {error}") from None
        options = OutputOptions(output_type=output_type, labels=label_numbering, statistics=statistics,
                                roi_subset=subset, per_vertebra=per_vertebra)
        talk = MessageConsole(stderr=True, quiet=True) if quiet else console  # everything but errors
        unpack_dir = out / ".unpacked"

        if (checkpoint is not None) + (onnx is not None) + random_weights > 1:
            raise fail("give one of --checkpoint CKPT, --onnx MODEL or --random-weights --config C (smoke tests)")
        if not random_weights and config is not None:
            raise fail("--config is not used with --checkpoint/--onnx (the model holds its config); use --set for inference keys")
        if checkpoint is None and onnx is None and not random_weights:
            from vertseg.weights import Registry, RegistryError

            try:
                checkpoint, ref = Registry().default_checkpoint()
            except RegistryError as error:
                raise fail(str(error)) from None
            talk.print(f"no --checkpoint: using the default model {ref}", highlight=False)
        from vertseg.inference.config import FAST_OVERRIDES

        foreign = [o for o in overrides or [] if not o.strip().startswith("inference.")]
        if foreign and not random_weights and config is None:
            raise fail(f"--set {foreign[0]}: predict takes inference.* settings only; the model fixes the data, model "
                       "and training sections it was trained with")
        overrides = list(overrides or []) + (["inference.mirror_tta=true"] if tta else [])
        overrides += list(FAST_OVERRIDES) if fast else []
        try:
            jobs = collect_jobs(inputs, split, unpack_dir=unpack_dir, allow_irregular=allow_irregular)
        except (ValueError, OSError, RuntimeError) as error:
            raise fail(str(error)) from None
        if not jobs:
            raise fail(f"no scans found in {', '.join(map(str, inputs))}")
        skipped = unread_images(inputs)
        if skipped:
            talk.print(f"[yellow]note[/] {len(skipped)} NRRD/MetaImage file(s) inside input folders are not read "
                       f"(e.g. {skipped[0]}); pass each as its own -i", highlight=False)
        for job in jobs:
            if job.renamed_from is not None:
                talk.print(f"[yellow]note[/] two inputs are named {job.renamed_from!r}: {job.origin} is written as "
                           f"{job.case_id!r}", highlight=False)
        not_dicom = [job.origin for job in jobs if job.source is None or not Path(job.source.image).is_dir()]
        if output_type == "dicom-seg" and not_dicom:
            raise fail(f"--output-type dicom-seg needs DICOM series inputs to reference; not DICOM: {', '.join(not_dicom[:3])}")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        build_args = (checkpoint, config, overrides, random_weights, seed, device, onnx)
        try:
            predictor, weights = _build_predictor(*build_args)
        except (CheckpointError, ValueError) as error:
            raise fail(str(error)) from None
        talk.print(f"{len(jobs)} case(s), {weights}, device {predictor.device}", highlight=False)

        # --quiet: no bars at all (a disabled display, which also leaves stderr alone for the error lines)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=quiet) as progress:
            task = progress.add_task("predicting", total=len(jobs))
            windows = CaseWindows(progress)
            predictor.on_progress = windows.update

            def on_done(record: dict) -> None:
                windows.finish()
                if record["status"] != "ok":
                    console.print(f"[red]failed[/] {record['case_id']}: {record['error']}", highlight=False)
                for note in record.get("notes", []):  # e.g. DICOM-SEG UIDs derived for an anonymised series
                    talk.print(f"[yellow]note[/] {record['case_id']}: {note}", highlight=False)
                talk.print(stage_line(record), highlight=False)
                progress.advance(task)

            if use_ray:
                gpu = predictor.device.type == "cuda"
                del predictor  # each actor loads its own copy
                records = _ray_records(jobs, out, workers, build_args, on_done, gpu, options, quiet)
            else:
                records = predict_all(predictor, jobs, out, on_done, options)
        shutil.rmtree(unpack_dir, ignore_errors=True)
        summary = write_summary(out, records, {"weights": weights, "ray": use_ray})
        talk.print(f"{summary['succeeded']}/{summary['cases']} case(s) written to {out}", highlight=False)
        if summary["failed"]:
            raise typer.Exit(1)

    @bench_app.command("infer")
    def bench_infer(
        quick: bool = typer.Option(False, "--quick", help="A smaller phantom (256x256x150 at 1 mm) for a fast check."),
        device: str = typer.Option("auto", help="auto | cpu | cuda; auto also times CUDA when present."),
        base_width: int = typer.Option(None, help="Network width (default: the paper's 16)."),
        out: Path = typer.Option(Path("docs/benchmarks.md"), help="Benchmarks file to update."),
        network_only: bool = typer.Option(
            False, "--network-only", help="Only localisation, sliding window and post-processing on an in-memory phantom."
        ),
        quality_checkpoint: Path = typer.Option(
            None, "--quality-checkpoint", help="Instead of timing: score each path with this trained checkpoint ..."
        ),
        quality_data: Path = typer.Option(None, "--quality-data", help="... on these labelled scans (`infer-quality` section)."),
    ) -> None:
        """Inference seconds per case and peak memory.

        Seconds per case for a 512x512x300 phantom at 1 mm with the earlier settings (network localisation,
        overlap 0.5), the defaults and --fast in one run (load average beside them), split load / localisation / sliding window /
        post-processing / writing, and peak memory; writes the `infer` section of docs/benchmarks.md."""
        from vertseg.bench.infer import run_infer_bench, run_infer_quality, run_network_bench

        if (quality_checkpoint is None) != (quality_data is None):
            raise fail("--quality-checkpoint and --quality-data go together")
        if quality_checkpoint is not None:
            run_infer_quality(quality_checkpoint, quality_data, out)
            return

        run = run_network_bench if network_only else run_infer_bench
        run(quick=quick, device=device, base_width=base_width, bench_file=out)
