"""`vertseg bench infer`: seconds per case of `vertseg predict` on a 512x512x300 CT phantom at 1 mm.

The phantom is a NIfTI file with air, a body, a table, ribs and a column of vertebrae (body + arch), so load,
localisation, sliding window, post-processing and writing all do their real work. The network has random
weights (timing does not depend on training); on CPU a narrower network keeps the run to minutes, as reported.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from vertseg.bench.report import markdown_table, write_section

FULL_SHAPE = (300, 512, 512)  # (z, y, x) voxels at 1 mm: the paper's average spinal CT (section 2.2)
QUICK_SHAPE = (150, 256, 256)


def spine_phantom(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """int16 HU volume (z = inferior, y = posterior, x = right) with a vertebral column near the back of the body."""
    z_n, y_n, x_n = shape_zyx
    hu = np.full(shape_zyx, -1000, dtype=np.int16)
    y, x = np.ogrid[:y_n, :x_n]
    cy, cx = y_n * 0.5, x_n * 0.5
    body = ((y - cy) / (0.33 * y_n)) ** 2 + ((x - cx) / (0.42 * x_n)) ** 2 < 1
    table = (y > cy + 0.38 * y_n) & (y < cy + 0.40 * y_n)
    spine_y = cy + 0.12 * y_n
    vert_body = (y - spine_y) ** 2 + (x - cx) ** 2 < (0.04 * x_n) ** 2
    arch = (((y - spine_y - 0.07 * y_n) ** 2 + (x - cx) ** 2) < (0.05 * x_n) ** 2) & (
        ((y - spine_y - 0.07 * y_n) ** 2 + (x - cx) ** 2) > (0.03 * x_n) ** 2)
    rib = (np.abs(((y - cy) / (0.30 * y_n)) ** 2 + ((x - cx) / (0.39 * x_n)) ** 2 - 1) < 0.03) & (y < spine_y)
    body, table, vert_body, arch, rib = (np.broadcast_to(m, (y_n, x_n)) for m in (body, table, vert_body, arch, rib))
    level = max(8, z_n // 12)
    for z in range(z_n):
        plane = np.where(body, 30, -1000).astype(np.int16)
        plane[table] = 300
        if (z % level) < level - 6:  # vertebra, then an intervertebral disc of 6 mm
            plane[vert_body] = 350
            plane[arch] = 700
        if (z % 25) < 8 and z < 0.6 * z_n:
            plane[rib] = 600
        hu[z] = plane
    return hu


def _write_phantom(path: Path, hu_zyx: np.ndarray) -> None:
    """NIfTI in RAS-ish LPS terms: the store frame (I, P, R) written as a plain 1 mm image."""
    affine = np.diag([1.0, -1.0, -1.0, 1.0])  # index (x, y, z) -> RAS: x right, y posterior, z inferior
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu_zyx.transpose(2, 1, 0)), affine), str(path))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_device(phantom: Path, device: str, base_width: int, out: Path) -> dict:
    import torch

    from vertseg.config import build_config
    from vertseg.inference.cases import collect_jobs
    from vertseg.inference.model_loading import random_model
    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import predict_job

    config = build_config({"model": {"base_width": base_width}})
    predictor = Predictor(random_model(config), config, device)
    job = collect_jobs([phantom])[0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    start = time.perf_counter()
    record = predict_job(predictor, job, out / device)
    wall = time.perf_counter() - start
    if record["status"] != "ok":
        raise RuntimeError(f"benchmark case failed on {device}: {record['error']}")
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"device": device, "width": base_width, "wall": wall, "seconds": record["seconds"],
            "windows": record["windows"], "box": record["spine_box"], "rss_before": rss_before,
            "rss_peak": _rss_mb(), "gpu_mb": gpu_mb}


def run_infer_bench(quick: bool, device: str, base_width: int | None, bench_file: Path) -> Path:
    import torch

    shape = QUICK_SHAPE if quick else FULL_SHAPE
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and device in ("auto", "cuda") else [])
    if device == "cpu":
        devices = ["cpu"]
    elif device == "cuda":
        devices = ["cuda"]
    results = []
    with tempfile.TemporaryDirectory(prefix="vertseg-bench-infer-") as tmp:
        tmp = Path(tmp)
        phantom = tmp / "phantom.nii.gz"
        _write_phantom(phantom, spine_phantom(shape))
        for dev in devices:
            width = base_width or (16 if dev == "cuda" else 8)
            results.append(_time_device(phantom, dev, width, tmp / "out"))
    steps = ("load", "localisation", "sliding_window", "postprocess", "write")
    rows = []
    for r in results:
        total = r["seconds"]["total"]
        rows.append([r["device"], r["width"], r["windows"], f"{total:.1f}"]
                    + [f"{r['seconds'][s]:.2f} ({100 * r['seconds'][s] / total:.1f}%)" for s in steps]
                    + [f"{r['rss_peak']:.0f}", "-" if r["gpu_mb"] is None else f"{r['gpu_mb']:.0f}"])
    box = results[0]["box"]
    body = "\n".join([
        f"Phantom {shape[2]}x{shape[1]}x{shape[0]} voxels at 1 mm (NIfTI, int16), random-weight network with the "
        f"default architecture (Mamba bottleneck) at the width shown, patch 128x64x64, overlap 0.5, no TTA. "
        f"Spine box ({box['method']} localisation): {box['start_zyx']} to {box['stop_zyx']} (z, y, x).",
        "",
        markdown_table(
            ["device", "width", "windows", "total s", "load", "localisation", "sliding window", "post-processing",
             "writing", "peak RSS MB", "peak CUDA MB"], rows),
        "",
        "Post-processing (threshold, components, decoder, resampling to the original grid) is "
        + ", ".join(f"{100 * r['seconds']['postprocess'] / r['seconds']['total']:.1f}% of the total on {r['device']}"
                    for r in results) + " (target: under 5%).",
        *([f"CUDA is {results[0]['seconds']['total'] / results[1]['seconds']['total']:.1f}x faster per case than CPU "
           f"(different widths: {results[0]['width']} vs {results[1]['width']})."] if len(results) == 2 else []),
        "Peak RSS is the whole process (ru_maxrss), peak CUDA memory is torch.cuda.max_memory_allocated.",
    ])
    command = "vertseg bench infer" + (" --quick" if quick else "") + (f" --device {device}" if device != "auto" else "")
    return write_section("infer", "Inference: seconds per case", command, body, bench_file)
