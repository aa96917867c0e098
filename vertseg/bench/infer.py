"""`vertseg bench infer`: seconds per case of `vertseg predict` on a 512x512x300 CT phantom at 1 mm.

The phantom is a NIfTI file with air, a body, a table, ribs and a column of vertebrae (body + arch), so load,
localisation, sliding window, post-processing and writing all do their real work. The network has random
weights (timing does not depend on training). The settings before issue 16, today's defaults and `--fast` run in
one process, so their ratios hold even on a shared machine; the load average is printed beside them.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from vertseg.bench.report import markdown_table, write_section
from vertseg.inference.config import FAST_OVERRIDES

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
        if (z % level) < level - level // 4:  # vertebra, then an intervertebral disc a quarter as tall
            plane[vert_body] = 350
            plane[arch] = 700
        if (z % 25) < 8 and z < 0.6 * z_n:
            plane[rib] = 600
        hu[z] = plane
    return hu


def ideal_outputs(hu_box: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """What a trained network would output on a phantom box: the column as foreground, one class per vertebra.

    Vertebrae are the runs of column slices between discs; class maps are one-hot at 1/4 resolution.
    """
    column = (hu_box == 350) | (hu_box == 700)
    fg = column.astype(np.float32)
    in_vertebra = column.any(axis=(1, 2))
    level = np.cumsum(np.diff(np.concatenate([[0], in_vertebra.astype(np.int8)])) == 1)  # 1, 2, ... per vertebra
    classes = np.where(column, np.minimum(level, num_classes)[:, None, None], 0)
    shape = [-(-s // 4) * 4 for s in classes.shape]
    padded = np.zeros(shape, np.int64)
    padded[tuple(slice(0, s) for s in classes.shape)] = classes
    z, y, x = (s // 4 for s in shape)
    onehot = np.zeros((num_classes + 1, z, y, x), np.float32)
    blocks = padded.reshape(z, 4, y, 4, x, 4)
    for k in np.unique(padded):
        onehot[k] = (blocks == k).mean(axis=(1, 3, 5))
    return fg, onehot.astype(np.float16)


def _ideal_postprocess_seconds(hu_box: np.ndarray, config) -> float:
    from vertseg.postprocess.assign import labelmap_from_predictions

    fg, maps = ideal_outputs(hu_box, config.model.num_classes)
    start = time.perf_counter()
    labels, records = labelmap_from_predictions(fg, maps, (config.data.spacing_mm,) * 3, config)
    seconds = time.perf_counter() - start
    if not records:
        raise RuntimeError("the ideal prediction of the benchmark phantom produced no vertebra")
    return seconds


def _write_phantom(path: Path, hu_zyx: np.ndarray) -> None:
    """NIfTI in RAS-ish LPS terms: the store frame (I, P, R) written as a plain 1 mm image."""
    import nibabel as nib

    affine = np.diag([1.0, -1.0, -1.0, 1.0])  # index (x, y, z) -> RAS: x right, y posterior, z inferior
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu_zyx.transpose(2, 1, 0)), affine), str(path))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# The inference settings before the laptop work of issue 16: every faster path is compared with them in one run.
BEFORE = ("inference.localisation=network", "inference.overlap=0.5", "inference.window_batch_size=2",
          "inference.window_downsample=1")
PATHS = {"before (network localisation, overlap 0.5)": BEFORE, "default": (), "--fast": FAST_OVERRIDES}
# The same windows on another runtime or precision (CPU only): is it faster, and is its labelmap the default's?
RUNTIME_PATHS = {"default, ONNX Runtime (exported network)": ((), "onnxruntime"),
                 "default, bf16 windows (inference.amp=true)": (("inference.amp=true",), "torch")}
GOALS = {"default": (20.0, 3.3), "--fast": (10.0, 6.6)}  # (seconds per 512x512x300 case on 2 idle cores, speed-up vs before)


def _load_average() -> float:
    return os.getloadavg()[0]


def _time_path(phantom: Path, device: str, base_width: int, overrides: tuple[str, ...], out: Path,
               runtime: str = "torch") -> dict:
    """One `vertseg predict` case end to end with the given inference overrides and a random-weight network.

    Random weights cannot find a spine, so a path that localises with the network has its coarse pass timed on
    its own and the case then run with the bone box (about the box a trained network gives); the localisation
    column and the total carry the network pass in place of the heuristic. Their foreground also touches every face
    of the box, which would grow it twice (`Predictor.predict_spine`); a trained network's stays inside, so the box
    is not grown here.
    """
    import nibabel as nib
    import torch

    from vertseg.config import build_config
    from vertseg.inference.cases import collect_jobs, load_job
    from vertseg.inference.model_loading import random_model
    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import predict_job

    config = build_config({"model": {"base_width": base_width}}, list(overrides))
    network_localisation = config.inference.localisation == "network"
    run_config = build_config({"model": {"base_width": base_width}}, [*overrides, "inference.localisation=bone",
                                                                         "inference.box_growth_rounds=0"])
    predictor = Predictor(random_model(run_config), run_config, device)
    export_s = None
    if runtime == "onnxruntime":
        from vertseg.inference.export import export_model
        from vertseg.inference.onnx_runtime import OnnxNetwork

        start = time.perf_counter()
        export_model(predictor.model, run_config, out / "network.onnx", "onnx")
        export_s = time.perf_counter() - start
        predictor = Predictor(OnnxNetwork(out / "network.onnx"), run_config, device)
    job = collect_jobs([phantom])[0]
    load_before = _load_average()
    network_pass = None
    if network_localisation:
        scan = load_job(job, predictor.spacing, tuple(config.data.hu_window))
        coarse = Predictor(predictor.model, config, device)
        start = time.perf_counter()
        coarse.localise(scan.image, scan.hu)
        network_pass = time.perf_counter() - start
        del scan
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    record = predict_job(predictor, job, out)
    if record["status"] != "ok":
        raise RuntimeError(f"benchmark case failed on {device}: {record['error']}")
    seconds = dict(record["seconds"])
    if network_pass is not None:
        seconds["total"] += network_pass - seconds["localisation"]
        seconds["localisation"] = network_pass
    grid_mm = predictor.spacing * predictor.config.inference.window_downsample
    labelmap = np.asarray(nib.load(next(out.rglob("*_seg.nii.gz"))).dataobj)
    return {"device": device, "width": base_width, "grid_mm": grid_mm, "seconds": seconds, "labelmap": labelmap,
            "export_s": export_s,
            "windows": record["windows"], "box": record["spine_box"], "rss_peak": _rss_mb(),
            "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            "load_average": (load_before, _load_average())}


def _warm_up(device: str, base_width: int) -> None:
    """One forward pass before any timed path: the numba scan kernel, oneDNN and CUDA set-up are paid once."""
    import torch

    from vertseg.config import build_config
    from vertseg.inference.model_loading import random_model

    config = build_config({"model": {"base_width": base_width}})
    with torch.inference_mode():
        random_model(config).to(device)(torch.zeros((1, 1, *config.data.patch_size), device=device))


def run_infer_bench(quick: bool, device: str, base_width: int | None, bench_file: Path) -> Path:
    """Every inference path of `PATHS` on the same phantom in one process, before vs now, with the load average."""
    import torch

    shape = QUICK_SHAPE if quick else FULL_SHAPE
    devices = {"cpu": ["cpu"], "cuda": ["cuda"]}.get(device, ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    with tempfile.TemporaryDirectory(prefix="vertseg-bench-infer-") as tmp:
        tmp = Path(tmp)
        phantom = tmp / "phantom.nii.gz"
        _write_phantom(phantom, spine_phantom(shape))
        for dev in devices:
            width = base_width or 16
            _warm_up(dev, width)
            paths = {name: (overrides, "torch") for name, overrides in PATHS.items()}
            paths.update(RUNTIME_PATHS if dev == "cpu" else {})
            for n, (name, (overrides, runtime)) in enumerate(paths.items()):
                results.append({"path": name, **_time_path(phantom, dev, width, overrides, tmp / "out" / dev / str(n),
                                                           runtime)})
    steps = ("load", "localisation", "sliding_window", "postprocess", "write")
    rows = []
    for r in results:
        total = r["seconds"]["total"]
        before = next(b for b in results if b["device"] == r["device"])["seconds"]["total"]
        default = next(b for b in results if b["device"] == r["device"] and b["path"] == "default")["labelmap"]
        differ = np.count_nonzero(r["labelmap"] != default) / default.size
        rows.append([r["path"], r["device"], r["width"], f"{r['grid_mm']:g}", r["windows"], f"{total:.1f}",
                     f"{before / total:.2f}x"]
                    + [f"{r['seconds'][s]:.2f}" for s in steps]
                    + ["identical" if not differ else f"{100 * differ:.3f}% of voxels differ",
                       "-" if r["export_s"] is None else f"{r['export_s']:.1f}",
                       "{:.1f} / {:.1f}".format(*r["load_average"]), f"{r['rss_peak']:.0f}",
                       "-" if r["gpu_mb"] is None else f"{r['gpu_mb']:.0f}"])
    goals = []
    for r in results:
        if r["path"] in GOALS and not quick:
            seconds, ratio = GOALS[r["path"]]
            before = next(b for b in results if b["device"] == r["device"])["seconds"]["total"]
            speedup = before / r["seconds"]["total"]
            goals.append(f"`{r['path']}` on {r['device']}: {r['seconds']['total']:.1f} s against {seconds:.0f} s, "
                         f"{speedup:.2f}x `before` against {ratio}x ({'met' if speedup >= ratio else 'not met'})")
    box = results[0]["box"]
    from vertseg.config import build_config

    hu_box = spine_phantom(shape)[tuple(slice(a, b) for a, b in zip(box["start_zyx"], box["stop_zyx"]))]
    ideal_post = _ideal_postprocess_seconds(hu_box, build_config({"model": {"base_width": base_width or 16}}))
    fast = next(r for r in results if r["path"] == "--fast")
    fast_ideal = fast["seconds"]["total"] - fast["seconds"]["postprocess"] + ideal_post
    body = "\n".join([
        f"Phantom {shape[2]}x{shape[1]}x{shape[0]} voxels at 1 mm (NIfTI, int16) through `vertseg predict`'s "
        f"per-case steps (read, localise, sliding window, post-processing, write), random-weight default network "
        f"(Mamba bottleneck) at the width shown, patch 128x64x64, no TTA; one forward pass warms up first. "
        f"Paths: `before` = the settings before the laptop work ({', '.join(BEFORE)}); `default` = today's defaults; "
        f"`--fast` = `vertseg predict --fast` ({', '.join(FAST_OVERRIDES)}). Spine box of the first path: "
        f"{box['start_zyx']} to {box['stop_zyx']} (z, y, x) of its {box['method']} localisation.",
        "",
        markdown_table(
            ["path", "device", "width", "network grid mm", "windows", "total s", "speed-up vs before", "load", "localisation",
             "sliding window", "post-processing", "writing", "labelmap vs default", "ONNX export s",
             "load average (1 min) start / end", "peak RSS MB", "peak CUDA MB"], rows),
        "",
        *([("Goals (2 idle CPU cores; the ratio to `before` is the goal that holds on a loaded machine): "
            + "; ".join(goals) + ".")] if goals else []),
        "Post-processing (threshold, components, decoder, resampling to the original grid) is "
        + ", ".join(f"{100 * r['seconds']['postprocess'] / r['seconds']['total']:.1f}% of `{r['path']}` on {r['device']}"
                    for r in results) + " (target: under 10% of `--fast`). A random network marks most of the box as "
        f"bone; on the workload of a trained one (the phantom's true column, one-hot class maps) post-processing takes "
        f"{ideal_post:.2f} s, {100 * ideal_post / fast_ideal:.1f}% of `--fast` with it in place of the random one's.",
        "Runtime rows run the default path's windows through ONNX Runtime (the network exported by `vertseg export "
        "--onnx`, export time apart) or in bf16; CPU inference keeps the fastest runtime whose labelmap is the "
        "default's, and `--fast` takes bf16 where the device computes it natively.",
        "Random weights find no spine, so a path with network localisation times its coarse pass (non-overlapping "
        "windows at `localisation_spacing_mm`) on its own and runs the case on the bone box; its localisation column "
        "and total hold the network pass. A random network marks about half the box as foreground, which inflates "
        "post-processing over a trained one.",
        "Other agents share this machine: the load average (1 min, before and after each path) says how busy it was; "
        "the speed-ups compare paths of the same run, absolute seconds only hold at the load shown.",
        "Peak RSS is the whole process (ru_maxrss), peak CUDA memory is torch.cuda.max_memory_allocated.",
    ])
    command = "vertseg bench infer" + (" --quick" if quick else "") + (f" --device {device}" if device != "auto" else "") + (
        f" --base-width {base_width}" if base_width else "")
    return write_section("infer", "Inference: seconds per case, before vs now", command, body, bench_file)


def _network_steps(device: str, base_width: int, shape: tuple[int, int, int]) -> dict:
    """Localisation, sliding window and post-processing on a phantom already in the store frame (no file I/O)."""
    import torch

    from vertseg.config import build_config
    from vertseg.inference.model_loading import random_model
    from vertseg.inference.predictor import Predictor
    from vertseg.postprocess.assign import labelmap_from_predictions

    config = build_config({"model": {"base_width": base_width}, "inference": {"localisation": "bone"}})
    network_config = config.model_copy(
        update={"inference": config.inference.model_copy(update={"localisation": "network"})})
    model = random_model(config)
    predictor, coarse = Predictor(model, config, device), Predictor(model, network_config, device)
    hu = spine_phantom(shape).astype(np.float32)
    low, high = config.data.hu_window
    image = np.clip((hu - low) / (high - low), 0.0, 1.0)
    with torch.inference_mode():  # warm-up: CUDA context, cuDNN algorithm choice
        predictor.net(torch.zeros((1, 1, *config.data.patch_size), device=predictor.device))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = {}
    start = time.perf_counter()
    box = predictor.localise(image, hu)
    times["bone localisation"] = time.perf_counter() - start
    start = time.perf_counter()
    coarse.localise(image, hu)
    times["network localisation pass"] = time.perf_counter() - start
    start = time.perf_counter()
    window = predictor.predict_box(image, box)
    times["sliding window"] = time.perf_counter() - start
    start = time.perf_counter()
    labelmap_from_predictions(window.fg_prob, window.id_prob, (predictor.spacing,) * 3, config)
    times["post-processing (store frame)"] = time.perf_counter() - start
    times["post-processing, ideal prediction"] = _ideal_postprocess_seconds(hu[box.slices], config)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"device": device, "width": base_width, "windows": window.windows, "box": box.to_dict(), "times": times,
            "gpu_mb": gpu_mb, "rss_peak": _rss_mb()}


def run_network_bench(quick: bool, device: str, base_width: int | None, bench_file: Path) -> Path:
    """The network-side steps only, on every available device: runs where no image I/O library is installed."""
    import torch

    shape = QUICK_SHAPE if quick else FULL_SHAPE
    devices = {"cpu": ["cpu"], "cuda": ["cuda"]}.get(device, ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = [_network_steps(dev, base_width or (16 if dev == "cuda" else 8), shape) for dev in devices]
    names = list(results[0]["times"])
    rows = [[r["device"], r["width"], r["windows"]] + [f"{r['times'][n]:.2f}" for n in names]
            + [f"{100 * r['times'][post] / (r['times']['bone localisation'] + r['times']['sliding window'] + r['times'][post]):.1f}%"
               for post in ("post-processing (store frame)", "post-processing, ideal prediction")]
            + [
               f"{r['rss_peak']:.0f}", "-" if r["gpu_mb"] is None else f"{r['gpu_mb']:.0f}"]
            for r in results]
    box = results[0]["box"]
    lines = [
        f"Phantom {shape[2]}x{shape[1]}x{shape[0]} at 1 mm generated directly in the store frame (no file I/O), "
        f"random-weight default network (Mamba bottleneck) at the width shown, patch 128x64x64, overlap 0.5, no TTA; "
        f"bone-heuristic box {box['start_zyx']} to {box['stop_zyx']}. Seconds per step:",
        "",
        markdown_table(["device", "width", "windows", *names, "post share (random)", "post share (ideal)", "peak RSS MB",
                        "peak CUDA MB"], rows),
        "",
        "Post share = post-processing / (bone localisation + sliding window + post-processing). The random network "
        "marks about half the box as foreground; the ideal prediction is the phantom's true column with one-hot "
        "class maps, the workload of a trained network.",
    ]
    if len(results) == 2:
        cpu, gpu = (r["times"]["sliding window"] for r in results)
        lines.append(f"Sliding window: CUDA {cpu / gpu:.0f}x faster than this machine's CPU (widths "
                     f"{results[0]['width']} vs {results[1]['width']}).")
    command = "vertseg bench infer --network-only" + (" --quick" if quick else "")
    return write_section("infer-network", "Inference: network steps per device", command, "\n".join(lines), bench_file)


# Paths whose quality is compared on labelled phantoms: the timed ones plus the levers measured on their own.
QUALITY_PATHS = {**PATHS, "default, overlap 0.5": ("inference.overlap=0.5",),
                 "default, 2x coarser windows": ("inference.window_downsample=2",)}
QUALITY_METRICS = (("test_vertebra_dice", "Dice (%)"), ("test_dice", "binary Dice (%)"), ("test_id_acc", "Acc_ID (%)"),
                   ("test_id_rate", "id-rate (%)"))


def run_infer_quality(checkpoint: Path, data: Path, bench_file: Path) -> Path:
    """Each inference path of `QUALITY_PATHS` with one trained checkpoint on labelled scans, scored by `vertseg
    evaluate`: what a faster path costs in Dice and identification against the settings before issue 16."""
    from vertseg.inference.cases import collect_jobs
    from vertseg.inference.model_loading import load_model
    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import predict_all
    from vertseg.steps import evaluate_predictions

    jobs = collect_jobs([data])
    if not jobs:
        raise ValueError(f"no scans found in {data}")
    rows, seconds, spacing = [], {}, None
    with tempfile.TemporaryDirectory(prefix="vertseg-bench-infer-quality-") as tmp:
        for name, overrides in QUALITY_PATHS.items():
            model, config, _ = load_model(checkpoint, list(overrides))
            spacing = config.data.spacing_mm
            out = Path(tmp) / str(len(rows))
            start = time.perf_counter()
            records = predict_all(Predictor(model, config, "cpu"), jobs, out)
            seconds[name] = time.perf_counter() - start
            failed = [r["case_id"] for r in records if r["status"] != "ok"]
            if failed:
                raise RuntimeError(f"path {name!r}: prediction failed for {', '.join(failed)}")
            metrics = evaluate_predictions(out, [data], out / "evaluation.json")
            rows.append([name, *(f"{100 * metrics.get(key, float('nan')):.1f}" for key, _ in QUALITY_METRICS),
                         f"{seconds[name]:.1f}"])
    before = rows[0]
    deltas = [f"`{row[0]}`: " + ", ".join(f"{label} {float(row[i + 1]) - float(before[i + 1]):+.1f}"
                                          for i, (_, label) in enumerate(QUALITY_METRICS[:3])) for row in rows[1:]]
    body = "\n".join([
        f"Checkpoint `{checkpoint}` (trained at {spacing:g} mm) on the {len(jobs)} labelled scans of `{data}`, every "
        "path through `vertseg predict`'s steps and scored by `vertseg evaluate` (1 mm, VerSe matching). The paths are "
        "those of the timing section above plus two levers on their own: a lower window overlap, and the windows "
        "run at twice the checkpoint's spacing (`inference.window_downsample=2`).",
        "",
        markdown_table(["path", *(label for _, label in QUALITY_METRICS), "seconds (all scans)"], rows),
        "",
        "Change against `before` (points; the issue's bar is 2): " + "; ".join(deltas) + ".",
    ])
    command = f"vertseg bench infer --quality-checkpoint {checkpoint} --quality-data {data}"
    return write_section("infer-quality", "Inference: quality of each path", command, body, bench_file)
