"""`vertseg bench train`: step time and peak memory of every method relative to `fsl`, and augmentation throughput.

Each method runs in its own spawned process so its peak memory is its own (CPU: peak RSS growth over the idle
process after the model is built; CUDA: torch peak allocated). Steps run with the consistency weight at its maximum
(epoch = E_ramp), so SSL methods pay their full unlabeled cost.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from typing import Any

import torch

from vertseg.bench.report import markdown_table, write_section

METHODS = ("fsl", "seg_only", "proposed", "mean_teacher", "ua_mt", "cps", "unimatch")
QUICK = ["model.base_width=8", "data.patch_size=[64,32,32]"]
# `vertseg bench quality`'s CPU network and patch: the config every CPU experiment of this project trains with
QUALITY_CPU = ["data.spacing_mm=2.0", "data.patch_size=[64,48,48]", "model.base_width=16"]
SPEED_METHODS = ("fsl", "proposed")
# Settings tried for CPU steps/s, each against float32 on all cores in the same run
SPEED_SETTINGS = {"float32, all cores (default)": [], "bf16 autocast (train.cpu_bf16=true)": ["train.cpu_bf16=true"]}
CURVE_STEPS = 12  # steps of the loss-curve check


def synthetic_batch(batch: int, shape: tuple[int, int, int], num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """A column of box 'vertebrae' with class indices 1..n along z (shape and content of a labeled batch)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, *shape, dtype=torch.long)
    step = max(shape[0] // 6, 2)
    for k in range(min(num_classes, shape[0] // step)):
        labels[:, k * step + 1 : (k + 1) * step - 1, shape[1] // 4 : 3 * shape[1] // 4, shape[2] // 4 : 3 * shape[2] // 4] = k + 1
    mask = (labels > 0).float().unsqueeze(1)
    image = (0.2 + 0.6 * mask + 0.05 * torch.randn(mask.shape, generator=g)).clamp(0, 1)
    return {"image": image, "mask": mask, "labels": labels, "centroids": torch.full((batch, num_classes, 3), float("nan"))}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _loss_curve(method: str, overrides: list[str], seed: int, steps: int, queue: Any) -> None:
    """Losses of `steps` steps from a `seed`-initialised network on fixed phantom batches, and the steps skipped
    as non-finite."""
    from vertseg.config import build_config
    from vertseg.training.trainer import Trainer

    config = build_config({}, overrides + [f"train.method={method}", f"train.seed={seed}"])
    torch.manual_seed(seed)
    trainer = Trainer(config, torch.device("cpu"))
    trainer.epoch = config.train.schedule.e_ramp
    shape = tuple(config.data.patch_size)
    losses = []
    for step in range(steps):
        labeled = synthetic_batch(config.train.optim.labeled_batch_size, shape, config.model.num_classes, step)
        unlabeled = synthetic_batch(config.train.optim.unlabeled_batch_size, shape, config.model.num_classes, 100 + step)
        losses.append(trainer.train_step(labeled, unlabeled["image"])["loss"])
    queue.put({"losses": losses, "skipped": trainer.skipped_steps})


def _spawned(target, *args) -> dict:
    """Run `target(*args, queue)` in a fresh process: its memory, threads and oneDNN caches are its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _measure(method: str, overrides: list[str], steps: int, queue: Any) -> None:
    from vertseg.config import build_config
    from vertseg.training.trainer import Trainer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = build_config({}, overrides + [f"train.method={method}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(config, device)
    trainer.epoch = config.train.schedule.e_ramp
    shape = tuple(config.data.patch_size)
    labeled = synthetic_batch(config.train.optim.labeled_batch_size, shape, config.model.num_classes, 0)
    unlabeled = synthetic_batch(config.train.optim.unlabeled_batch_size, shape, config.model.num_classes, 1)["image"]
    base = _rss_mb()  # model, optimiser and batches built; what a step adds is the method's cost
    trainer.train_step(labeled, unlabeled)  # warm-up (allocator, autograd graph)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(labeled, unlabeled)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base, 1.0)
    queue.put({"method": method, "step_s": seconds, "peak_mb": peak})


def measure_method(method: str, overrides: list[str], steps: int) -> dict[str, float]:
    return _spawned(_measure, method, overrides, steps)


def run_cpu_speed_bench(steps: int = 3) -> Any:
    """fsl and proposed steps/s at the quality bench's config under each of `SPEED_SETTINGS`, and whether the
    faster settings keep the loss curve: their distance from float32 against the distance between two float32 seeds."""
    import os

    load_start = os.getloadavg()[0]
    rows = []
    for method in SPEED_METHODS:
        base = None
        reference = _spawned(_loss_curve, method, QUALITY_CPU, 0, CURVE_STEPS)["losses"]
        other_seed = _spawned(_loss_curve, method, QUALITY_CPU, 1, CURVE_STEPS)["losses"]
        noise = sum(abs(a - b) for a, b in zip(reference, other_seed)) / CURVE_STEPS
        for name, extra in SPEED_SETTINGS.items():
            step_s = measure_method(method, QUALITY_CPU + extra, steps)["step_s"]
            base = base or step_s
            if extra:
                curve = _spawned(_loss_curve, method, QUALITY_CPU + extra, 0, CURVE_STEPS)
                distance = sum(abs(a - b) for a, b in zip(curve["losses"], reference)) / CURVE_STEPS
                curve_cell = f"{distance:.4f} vs {noise:.4f} ({distance / noise:.2f}); {curve['skipped']} skipped"
            else:
                curve_cell = "reference"
            rows.append([method, name, f"{1 / step_s:.3f}", f"{base / step_s:.2f}x", curve_cell])
    body = "\n\n".join([
        f"Config of `vertseg bench quality` on CPU ({', '.join(QUALITY_CPU)}), batch 2 labeled + 2 unlabeled, "
        f"{steps} timed steps after one warm-up, consistency at full weight; each setting in its own process. Loss "
        f"curve: mean |loss - float32 loss| over {CURVE_STEPS} steps from the same seed and batches, against the "
        "same distance between two float32 seeds (the noise; ratio in brackets), and the steps skipped as non-finite. "
        f"Load average (1 min) at the start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        markdown_table(["method", "setting", "steps/s", "vs float32", "loss curve vs float32 (noise)"], rows),
    ])
    return write_section("train-cpu-speed", "Training steps per second on CPU: settings tried", "vertseg bench train --cpu-speed", body)


def augmentation_rate(overrides: list[str], seconds: float = 5.0) -> float:
    """Patches/s through the training views (weak geometry + photometric for labeled, weak + strong for unlabeled)."""
    from vertseg.config import build_config
    from vertseg.training.trainer import Trainer

    config = build_config({}, overrides + ["train.method=proposed"])
    trainer = Trainer(config, torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # views are built there
    trainer.epoch = config.train.schedule.e_ramp
    shape = tuple(config.data.patch_size)
    bl, bu = config.train.optim.labeled_batch_size, config.train.optim.unlabeled_batch_size
    labeled = synthetic_batch(bl, shape, config.model.num_classes, 0)
    unlabeled = synthetic_batch(bu, shape, config.model.num_classes, 1)["image"]
    ctx = trainer._context()
    trainer.make_views(labeled, unlabeled, ctx)
    started, patches = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        trainer.make_views(labeled, unlabeled, ctx)
        patches += bl + bu
    return patches / (time.perf_counter() - started)


def run_train_bench(quick: bool = False, steps: int | None = None) -> Any:
    overrides = QUICK if quick else []
    command = "vertseg bench train" + (" --quick" if quick else "") + (f" --steps {steps}" if steps else "")
    steps = steps or (3 if quick else 2)
    rows, results = [], {m: measure_method(m, overrides, steps) for m in METHODS}
    base = results["fsl"]
    for method in METHODS:
        r = results[method]
        rows.append([method, f"{r['step_s']:.2f}", f"{r['step_s'] / base['step_s']:.2f}x", f"{r['peak_mb']:.0f}",
                     f"{r['peak_mb'] / base['peak_mb']:.2f}x"])
    ratio = results["proposed"]["step_s"] / base["step_s"]
    from vertseg.config import build_config

    config = build_config({}, overrides)
    aug = augmentation_rate(overrides)
    need = (config.train.optim.labeled_batch_size + config.train.optim.unlabeled_batch_size) / results["proposed"]["step_s"]
    device = "CUDA" if torch.cuda.is_available() else "CPU"
    body = "\n\n".join([
        f"Patch {tuple(config.data.patch_size)}, base width {config.model.base_width}, batch "
        f"{config.train.optim.labeled_batch_size} labeled + {config.train.optim.unlabeled_batch_size} unlabeled, "
        f"{steps} timed steps after one warm-up, consistency at full weight, {device}. Peak memory: "
        + ("torch peak allocated." if device == "CUDA" else "peak RSS growth over the process once model and batches are built (MB)."),
        markdown_table(["method", "step (s)", "step vs fsl", "peak memory (MB)", "memory vs fsl"], rows),
        f"`proposed` step time is {ratio:.2f}x `fsl` (target <= 2.2x): "
        + ("**met**." if ratio <= 2.2 else "**not met**."),
        f"Augmentation (training views, on the {'GPU' if device == 'CUDA' else 'CPU'}): {aug:.1f} patches/s; `proposed` consumes "
        f"{need:.1f} patches/s, so augmentation runs at {aug / need:.1f}x the rate training needs.",
    ])
    key, title = ("train-cuda", "Training step cost per method (GPU)") if device == "CUDA" else ("train", "Training step cost per method (CPU)")
    return write_section(key, title, command, body)
