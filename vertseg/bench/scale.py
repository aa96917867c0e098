"""`vertseg bench scale`: Ray Train samples/s with 1 vs 2 CPU workers, data-loader patch rate vs what training
consumes (target >= 3x), and, when a GPU is present, samples/s and peak memory on one GPU at the default config."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vertseg.bench.report import markdown_table, write_section

SMALL = ["model.base_width=8", "data.patch_size=[64,32,32]", "data.spacing_mm=2.0", "train.loader_workers=1",
         "train.schedule.iterations_per_epoch=4", "train.schedule.epochs=2", "train.schedule.e_cons=0",
         "train.schedule.e_ramp=1", "train.validate_every=100", "train.method=proposed"]
QUICK = ["model.base_width=4", "data.patch_size=[32,16,16]", "data.spacing_mm=4.0"]


def loader_rate(config, store: Path, patches: int = 48) -> float:
    """Labeled patches/s delivered by the training DataLoader (the configured number of loader processes)."""
    from vertseg.training.data import build_training_data

    data = build_training_data(config, store, loader_workers=config.train.loader_workers, uses_unlabeled=False)
    iterator = iter(data.labeled)
    next(iterator)
    started, count = time.perf_counter(), 0
    while count < patches:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(data.labeled)
            continue
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - started)


def training_rate(config, store: Path, workers: int, use_gpu: bool, runs: Path) -> dict[str, Any]:
    """Global labeled samples/s of the last epoch (the first one pays start-up costs)."""
    from vertseg.distributed.train import run_training

    result = run_training(config, store, None, num_workers=workers, use_gpu=use_gpu, run_name=f"scale-{workers}-{use_gpu}",
                          storage_path=runs, mlflow_uri="none")
    metrics = result.metrics or {}
    return {"samples_per_s": metrics.get("samples_per_s", float("nan")) * max(workers, 1),
            "gpu_peak_mb": metrics.get("gpu_peak_mb")}


def run_scale_bench(quick: bool = False) -> Path:
    import ray

    from vertseg.bench.phantoms import phantom_store
    from vertseg.config import build_config

    overrides = SMALL + (QUICK if quick else [])
    config = build_config({}, overrides)
    with tempfile.TemporaryDirectory(prefix="vertseg-scale-") as folder:
        root = Path(folder)
        store = phantom_store(root / "phantoms.zarr", 10, config.data)
        if not ray.is_initialized():
            ray.init(num_cpus=max(2, torch.get_num_threads()), include_dashboard=False, log_to_driver=False)
        rates = {n: training_rate(config, store, n, False, root / "runs") for n in (1, 2)}
        loader = loader_rate(config, store)
        gpu = None
        if torch.cuda.is_available():
            gpu_config = build_config({}, ["train.schedule.iterations_per_epoch=20", "train.schedule.epochs=2",
                                           "train.validate_every=100", "train.schedule.e_cons=0", "train.schedule.e_ramp=1"])
            gpu_store = phantom_store(root / "gpu.zarr", 6, gpu_config.data)
            gpu = training_rate(gpu_config, gpu_store, 1, True, root / "runs")
    one, two = rates[1]["samples_per_s"], rates[2]["samples_per_s"]
    # proposed consumes labeled + unlabeled patches per labeled sample
    per_sample = 1 + config.train.optim.unlabeled_batch_size / config.train.optim.labeled_batch_size
    consumption = one * per_sample
    rows = [["1 CPU worker", f"{one:.2f}", "1.00x"], ["2 CPU workers", f"{two:.2f}", f"{two / one:.2f}x"]]
    parts = [
        f"`proposed`, patch {tuple(config.data.patch_size)}, base width {config.model.base_width}, "
        f"{config.train.schedule.iterations_per_epoch} iterations/epoch, labeled samples/s of the second epoch "
        f"summed over workers. Both runs share this machine's {torch.get_num_threads()} threads.",
        markdown_table(["setup", "samples/s", "vs 1 worker"], rows),
        f"Data loader ({config.train.loader_workers} loader process(es), Zarr store, random patches): {loader:.1f} "
        f"patches/s vs {consumption:.2f} patches/s consumed by one training worker = {loader / consumption:.1f}x "
        f"(target >= 3x: {'**met**' if loader >= 3 * consumption else '**not met**'}).",
    ]
    if gpu is not None:
        parts.append(f"One GPU ({torch.cuda.get_device_name(0)}), default config: {gpu['samples_per_s']:.2f} samples/s, "
                     f"peak memory {gpu['gpu_peak_mb']:.0f} MB.")
    else:
        parts.append("No GPU on this machine: the one-GPU row is filled when the bench runs on a GPU node.")
    return write_section("scale", "Distributed training scaling", "vertseg bench scale" + (" --quick" if quick else ""),
                         "\n\n".join(parts))
