"""`vertseg bench ssl`: does semi-supervision pay? A branch protocol that fits two CPU cores.

Per (labelled fraction, seed): one supervised warm-up on the labelled part, trained until its full-volume
validation score plateaus (the paper's warm-up: the first 40 of 100 epochs; a teacher is only worth copying once
it names vertebrae), saved once. Every row then branches from that checkpoint for the same extra steps: `fsl`
continues on labels alone, each semi-supervised row adds the unlabelled pool (the held-back training scans, whose
labels are read for the diagnostics only). Each branch is scored on held-out test phantoms with `vertseg evaluate`;
the table gives paired (same warm-up) differences against `fsl` with their standard errors, and every run's
diagnostics: confidence-mask pass rates, pseudo-label accuracy against the hidden labels, class-map spread.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from vertseg.bench.quality import CPU_POOLS, GPU_POOLS, HEADLINE, mean_std
from vertseg.bench.report import markdown_table, write_section
from vertseg.config import load_config
from vertseg.io import atomic_write_json
from vertseg.steps import RESOURCES, PhantomPools

PAPER = ["train.ssl.ready_acc_id=0", "train.ssl.pseudo_labels=argmax", "train.ssl.class_thresholds=global",
         "train.ssl.distribution_alignment=false"]  # Eq. 9-13 as written
GATE = "train.ssl.ready_acc_id=0.5"
SEQUENCE = "train.ssl.pseudo_labels=sequence"
ADAPTIVE = "train.ssl.class_thresholds=adaptive"
ALIGN = "train.ssl.distribution_alignment=true"


@dataclass(frozen=True)
class Row:
    """One table row: a method and the settings it adds to the branch config."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    about: str = ""


ROWS = {row.name: row for row in (
    Row("fsl", "fsl", (), "labels alone, same extra steps"),
    Row("proposed-paper", "proposed", tuple(PAPER), "Eq. 9-13 as written"),
    Row("paper+all", "proposed", (GATE, SEQUENCE, ADAPTIVE, ALIGN), "all four switches"),
    Row("paper+gate", "proposed", (*PAPER, GATE), "readiness gate alone"),
    Row("paper+sequence", "proposed", (*PAPER, SEQUENCE), "sequence-consistent pseudo-labels alone"),
    Row("paper+adaptive", "proposed", (*PAPER, ADAPTIVE), "per-class adaptive thresholds alone"),
    Row("paper+align", "proposed", (*PAPER, ALIGN), "distribution alignment alone"),
    Row("mean_teacher", "mean_teacher", (), "Tarvainen & Valpola 2017"),
    Row("ua_mt", "ua_mt", (), "Yu et al. 2019"),
    Row("cps", "cps", (), "Chen et al. 2021"),
    Row("unimatch", "unimatch", tuple(PAPER), "Yang et al. 2023, pseudo-labels as Eq. 11-12"),
)}
DEFAULT_ROWS = list(ROWS)
FRACTIONS = (0.1, 0.25)
POOLS = replace(CPU_POOLS, training=48)  # 10 % = 5 labelled scans, 25 % = 12; the rest is the unlabelled pool
CPU_BASE = ["train.loader_workers=0", "train.validate_every=10"]
GPU_BASE = ["data.spacing_mm=2.0", "data.patch_size=[64,48,48]", "model.base_width=16", "train.amp=true",
            "train.loader_workers=4", "train.validate_every=10", "inference.localisation_spacing_mm=4.0"]
DIAGNOSTICS = ("pass_seg", "pass_cls", "pseudo_acc", "pseudo_cover", "class_entropy", "class_top2", "cls_gate")


@dataclass(frozen=True)
class Budget:
    """Epochs of 8 steps: the warm-up's and every branch's. The warm-up runs all its epochs by default: judged on two
    validation scans, `patience` 5 stopped two of three 25 % warm-ups at epochs 60 and 70 on a lucky early score
    (validation Acc_ID 4 and 8 %), while the others still improved at epoch 150-160."""

    warmup_epochs: int = 160
    branch_epochs: int = 18
    iterations_per_epoch: int = 8
    patience: int = 0  # validations without a better score that end a warm-up early (0: run them all; see below)
    branch_lr: float = 0.005  # poly decay from here: a continuation, not a restart at the paper's 0.01

    def warmup(self) -> list[str]:
        return [f"train.schedule.epochs={self.warmup_epochs}", f"train.schedule.iterations_per_epoch={self.iterations_per_epoch}",
                "train.schedule.e_cons=0", "train.schedule.e_ramp=1", f"train.plateau_patience={self.patience}"]

    def branch(self) -> list[str]:
        """Consistency from the first branch step; weight and thresholds ramp over the first half (Eq. 2, 12-13)."""
        return [f"train.schedule.epochs={self.branch_epochs}", f"train.schedule.iterations_per_epoch={self.iterations_per_epoch}",
                "train.schedule.e_cons=0", f"train.schedule.e_ramp={max(1, self.branch_epochs // 2)}",
                f"train.optim.lr={self.branch_lr}"]


@dataclass(frozen=True)
class Branch:
    fraction: float
    seed: int
    row: str
    metrics: dict[str, float]
    diagnostics: dict[str, float]
    train_seconds: float


def _tag(fraction: float, seed: int) -> str:
    return f"f{round(100 * fraction)}-seed{seed}"


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_diagnostics(history: list[dict[str, Any]]) -> dict[str, float]:
    """Means over a branch's epochs of every consistency diagnostic it logged, and its best validation epoch."""
    out: dict[str, float] = {}
    for key in DIAGNOSTICS:
        values = [float(h[key]) for h in history if key in h and math.isfinite(float(h[key]))]
        out[key] = sum(values) / len(values) if values else math.nan
    validated = [h for h in history if "val_volume_id_acc" in h]
    if validated:
        out["val_id_acc_last"] = float(validated[-1]["val_volume_id_acc"])
    return out


def _train(config: Any, store: Path, run_dir: Path, init_from: Path | None) -> tuple[Path, float]:
    """Train (or reuse a finished) run in this process; (best checkpoint, training seconds)."""
    import torch

    from vertseg.distributed.train import run_training
    from vertseg.evaluation.holdout import volume_validator
    from vertseg.training.checkpoint import load_checkpoint

    done = run_dir / "done.json"
    if done.exists():
        return run_dir / "best" / "checkpoint.pt", float(json.loads(done.read_text())["train_seconds"])
    latest = run_dir / "checkpoints" / "latest.pt"
    resume = latest.exists()
    start = time.perf_counter()
    result = run_training(config, store, None, num_workers=0, use_gpu=torch.cuda.is_available(), run_name=run_dir.name,
                          storage_path=run_dir.parent, mlflow_uri="none", resume=resume,
                          init_from=None if resume else init_from,
                          volume_validation=partial(volume_validator, Path(store).resolve()))
    if result.interrupted:
        raise RuntimeError(f"{run_dir.name}: training was interrupted; rerun the benchmark to resume it")
    seconds = time.perf_counter() - start
    epochs = int(load_checkpoint(latest)["epoch"])
    atomic_write_json(done, {"train_seconds": round(seconds, 1), "epochs": epochs})
    return result.checkpoint_path, seconds


def _config(overrides: list[str]):
    return load_config(RESOURCES / "demo.yaml", overrides)


def warm_up(fraction: float, seed: int, base: list[str], budget: Budget, store: Path, work: Path, threads: int
            ) -> dict[str, Any]:
    """The supervised warm-up of one (fraction, seed), trained until its validation plateaus."""
    import torch

    torch.set_num_threads(threads)
    config = _config(base + budget.warmup() + ["train.method=fsl", f"train.seed={seed}",
                                               f"train.labeled_fraction={fraction}"])
    run_dir = work / "warmup" / _tag(fraction, seed)
    checkpoint, seconds = _train(config, store, run_dir, None)
    history = _history(run_dir)
    best = json.loads((run_dir / "best" / "metrics.json").read_text())
    return {"checkpoint": str(checkpoint), "seconds": seconds, "epochs": history[-1]["epoch"] if history else 0,
            "best_epoch": best.get("epoch"), "val_id_acc": best.get("val_volume_id_acc", math.nan),
            "val_dice": best.get("val_volume_dice", math.nan)}


def run_branch(fraction: float, seed: int, row_name: str, base: list[str], budget: Budget, store: Path, test: Path,
               work: Path, threads: int, warmup: Path) -> Branch:
    """Train one row from the warm-up, predict and evaluate the test phantoms; saved for reuse."""
    import torch

    from vertseg.steps import evaluate_predictions, predict_folder

    torch.set_num_threads(threads)
    row = ROWS[row_name]
    name = f"{_tag(fraction, seed)}-{row.name}"
    saved = work / "outcomes" / f"{name}.json"
    if saved.exists():
        return Branch(**json.loads(saved.read_text()))
    config = _config(base + budget.branch() + list(row.overrides) + [
        f"train.method={row.method}", f"train.seed={seed}", f"train.labeled_fraction={fraction}"])
    run_dir = work / "branches" / name
    checkpoint, seconds = _train(config, store, run_dir, warmup)
    pred = work / "predictions" / name
    predict_folder(checkpoint, [test], pred)
    metrics = evaluate_predictions(pred, [test], pred / "evaluation.json")
    branch = Branch(fraction, seed, row.name, metrics, run_diagnostics(_history(run_dir)), round(seconds, 1))
    atomic_write_json(saved, branch.__dict__)
    return branch


def _warmup_outcome(fraction: float, seed: int, work: Path, test: Path) -> Branch:
    """The warm-up checkpoint itself, scored like a branch (the row every branch starts from)."""
    from vertseg.steps import evaluate_predictions, predict_folder

    name = f"{_tag(fraction, seed)}-warmup"
    saved = work / "outcomes" / f"{name}.json"
    if saved.exists():
        return Branch(**json.loads(saved.read_text()))
    run_dir = work / "warmup" / _tag(fraction, seed)
    pred = work / "predictions" / name
    predict_folder(run_dir / "best" / "checkpoint.pt", [test], pred)
    metrics = evaluate_predictions(pred, [test], pred / "evaluation.json")
    seconds = float(json.loads((run_dir / "done.json").read_text())["train_seconds"])
    branch = Branch(fraction, seed, "warm-up", metrics, run_diagnostics(_history(run_dir)), round(seconds, 1))
    atomic_write_json(saved, branch.__dict__)
    return branch


def run_protocol(fractions: list[float], seeds: int, rows: list[str], base: list[str], budget: Budget, store: Path,
                 test: Path, work: Path, parallel: int, threads: int, echo: Callable[[str], None]
                 ) -> tuple[list[Branch], dict[str, dict[str, Any]]]:
    """Warm-ups first, each (fraction, seed)'s branches as soon as its warm-up is saved; `parallel` processes."""
    warmups: dict[str, dict[str, Any]] = {}
    branches: list[Branch] = []
    with ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=get_context("spawn")) as pool:
        pending: dict[Future, tuple[str, float, int, str]] = {}
        for fraction in fractions:
            for seed in range(seeds):
                future = pool.submit(warm_up, fraction, seed, base, budget, store, work, threads)
                pending[future] = ("warmup", fraction, seed, "")
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, fraction, seed, row = pending.pop(future)
                result = future.result()
                if kind == "warmup":
                    warmups[_tag(fraction, seed)] = result
                    echo(f"warm-up {_tag(fraction, seed)}: {result['epochs']} epochs, best epoch {result['best_epoch']}, "
                         f"validation Acc_ID {100 * result['val_id_acc']:.1f} % ({result['seconds']:.0f} s)")
                    for name in rows:
                        job = pool.submit(run_branch, fraction, seed, name, base, budget, store, test, work, threads,
                                          Path(result["checkpoint"]))
                        pending[job] = ("branch", fraction, seed, name)
                else:
                    branches.append(result)
                    m = result.metrics
                    echo(f"branch  {_tag(fraction, seed)}-{row}: binary Dice {100 * m.get('test_dice', math.nan):.1f}  "
                         f"Acc_ID {100 * m.get('test_id_acc', math.nan):.1f}  ({result.train_seconds:.0f} s)")
    for fraction in fractions:
        for seed in range(seeds):
            branches.append(_warmup_outcome(fraction, seed, work, test))
    return branches, warmups


def paired(branches: list[Branch], fraction: float, row: str, key: str, baseline: str = "fsl"
           ) -> tuple[float, float, int, int]:
    """(mean paired difference, its standard error, seeds, seeds better) of `row` minus `baseline` on `key`."""
    base = {b.seed: b.metrics.get(key, math.nan) for b in branches if b.fraction == fraction and b.row == baseline}
    ours = {b.seed: b.metrics.get(key, math.nan) for b in branches if b.fraction == fraction and b.row == row}
    diffs = [ours[s] - base[s] for s in sorted(set(base) & set(ours)) if math.isfinite(ours[s] - base[s])]
    mean, std = mean_std(diffs)
    error = std / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return mean, error, len(diffs), sum(d > 0 for d in diffs)


def _diff_cell(mean: float, error: float, n: int, wins: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    beyond = n > 1 and math.isfinite(error) and abs(mean) > 2 * error
    return f"{100 * mean:+.1f} ± {100 * error:.1f} ({wins}/{n}){' *' if beyond else ''}"


GOALS = {0.25: (("test_id_acc", 0.05), ("test_dice", 0.01)), 0.1: (("test_id_acc", 0.10),)}  # issue 30


def goal_lines(branches: list[Branch], fraction: float, row: str = "proposed") -> list[str]:
    """The issue's goal for `row` at this fraction: each paired gain above its threshold and two standard errors."""
    lines = []
    for key, target in GOALS.get(round(fraction, 2), ()):
        mean, error, n, _ = paired(branches, fraction, row, key)
        if not math.isfinite(mean):
            continue
        met = n >= 3 and mean >= target and mean > 2 * error
        label = dict(HEADLINE)[key].removesuffix(" (%)")
        lines.append(f"- `{row}`, goal {label} >= +{100 * target:g} points beyond 2 standard errors over >= 3 seeds: "
                     f"{'met' if met else 'not met'} ({100 * mean:+.1f} ± {100 * error:.1f} over {n} seeds; "
                     f"distance {100 * max(target - mean, 2 * error - mean, 0):.1f} points).")
    return lines


def _own(row: Row) -> list[str]:
    """The settings a row adds to Eq. 9-13 as written (what its name says), for the table's legend."""
    return [o for o in row.overrides if o not in PAPER or not set(PAPER) <= set(row.overrides)]


def render(branches: list[Branch], warmups: dict[str, dict[str, Any]], fractions: list[float], rows: list[str],
           budget: Budget, base: list[str], pools: PhantomPools, wall: float, parallel: int, threads: int) -> str:
    keys = [key for key, _ in HEADLINE]
    body = [
        f"Protocol (`vertseg/bench/ssl.py`): {pools.training} training + {pools.validation} validation phantoms "
        f"(synth size `{pools.size}`, variant rate {pools.variant_rate}), {pools.test} held-out test phantoms. Per "
        f"labelled fraction and seed: a supervised warm-up on the labelled scans ({budget.warmup_epochs} epochs of "
        f"{budget.iterations_per_epoch} steps" + (f", stopped after {budget.patience} validations without a better "
                                                  "full-volume score" if budget.patience else "") +
        f"), then every row branches from its best checkpoint for {budget.branch_epochs} "
        f"epochs ({budget.branch_epochs * budget.iterations_per_epoch} steps; consistency weight and thresholds "
        f"ramp over the first half); the unlabelled pool is the held-back training scans. Config: "
        f"`vertseg/resources/demo.yaml` + `{' '.join(base)}`. Checkpoint = best full-volume validation; metrics "
        f"from `vertseg evaluate` on the test phantoms. Differences are paired (same warm-up, same seed): mean ± "
        f"standard error (seeds better); * = beyond two standard errors. Training summed over runs: "
        f"{sum(b.train_seconds for b in branches) / 60:.0f} min ({parallel} at a time, {threads} thread(s) each); "
        f"this invocation {wall / 60:.0f} min (saved runs are reused).",
        "",
        f"Rows (`paper` = `{' '.join(PAPER)}`): " + "; ".join(
            f"`{name}` = {ROWS[name].about}" + (f" (`{' '.join(_own(ROWS[name]))}`)" if _own(ROWS[name]) else "")
            for name in rows) + ".",
    ]
    for fraction in fractions:
        present = [b for b in branches if b.fraction == fraction]
        if not present:
            continue
        table = []
        for name in ["warm-up", *rows]:
            runs = [b for b in present if b.row == name]
            if not runs:
                continue
            cells = []
            for key in keys:
                mean, std = mean_std([b.metrics.get(key, math.nan) for b in runs])
                cells.append("n/a" if not math.isfinite(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}")
            diffs = [_diff_cell(*paired(branches, fraction, name, key)) if name not in ("fsl", "warm-up") else ""
                     for key in ("test_dice", "test_id_acc", "test_id_rate")]
            table.append([name, len(runs), *cells, *diffs])
        body += ["", f"### {100 * fraction:g} % labels", "",
                 markdown_table(["row", "seeds", *[label for _, label in HEADLINE], "Δ binary Dice vs fsl",
                                 "Δ Acc_ID vs fsl", "Δ id-rate vs fsl"], table), ""]
        body += [line for row in ("proposed-paper", "paper+all") for line in goal_lines(branches, fraction, row)]
        ready = [w for tag, w in warmups.items() if tag.startswith(f"f{round(100 * fraction)}-")]
        if ready:
            body += ["", "Warm-ups: " + "; ".join(
                f"{tag}: {w['epochs']} epochs, best {w['best_epoch']}, validation Acc_ID {100 * w['val_id_acc']:.1f} %"
                for tag, w in sorted(warmups.items()) if tag.startswith(f"f{round(100 * fraction)}-")) + "."]
        diag = [[b.row, b.seed, *[f"{b.diagnostics.get(k, math.nan):.3f}" for k in DIAGNOSTICS]]
                for b in sorted(present, key=lambda b: (rows.index(b.row) if b.row in rows else -1, b.seed))
                if b.row not in ("fsl", "warm-up")]
        if diag:
            body += ["", "Diagnostics (means over the branch's epochs): `pass_*` = share of positions passing the "
                     "confidence masks; `pseudo_acc` = share of taught vertebra positions whose pseudo-class is the "
                     "hidden true class; `pseudo_cover` = share of true vertebra positions taught; `class_entropy` = "
                     "entropy of the teacher's class histogram over its foreground / ln K; `class_top2` = share of "
                     "the two most frequent classes; `cls_gate` = share of steps with the class term on.", "",
                     markdown_table(["row", "seed", *DIAGNOSTICS], diag)]
    return "\n".join(body)


def run_ssl_bench(fractions: list[float], seeds: int, rows: list[str], budget: Budget, full: bool, workdir: Path,
                  output: Path, parallel: int = 2, threads: int = 1, echo: Callable[[str], None] = print,
                  extra: list[str] | None = None) -> Path:
    """Phantoms and store once, then the protocol; writes the `ssl` section of `output`."""
    from vertseg.steps import make_phantom_pools, pool_sources, preprocess_in_process

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown bench ssl row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if "fsl" not in rows:
        rows = ["fsl", *rows]
    start = time.perf_counter()
    pools = replace(GPU_POOLS, training=48) if full else POOLS
    base = (GPU_BASE if full else CPU_BASE) + list(extra or [])
    work = Path(workdir) / ("full" if full else "cpu")
    store = work / "store.zarr"
    config = _config(base)
    if not (store / "manifest.json").exists():
        echo(f"writing {pools} phantoms and the store under {work}")
        folders = make_phantom_pools(work / "data", pools)
        preprocess_in_process(pool_sources([folders["labeled"]]), store, config)
    test = work / "data" / "test"
    fingerprint = hashlib.sha1(json.dumps([base, asdict(budget)]).encode()).hexdigest()[:8]
    runs = work / f"runs-{fingerprint}"  # other settings, other runs: a saved run is reused only for its own
    branches, warmups = run_protocol(fractions, seeds, rows, base, budget, store, test, runs, parallel, threads, echo)
    body = render(branches, warmups, fractions, rows, budget, base, pools, time.perf_counter() - start, parallel,
                  threads)
    command = "vertseg bench ssl" + (" --full" if full else "") + (
        f" --fractions {','.join(f'{f:g}' for f in fractions)}" if tuple(fractions) != FRACTIONS else "") + (
        f" --seeds {seeds}" if seeds != 3 else "") + (f" --rows {','.join(rows)}" if rows != DEFAULT_ROWS else "") + (
        f" --warmup-epochs {budget.warmup_epochs}" if budget.warmup_epochs != Budget.warmup_epochs else "") + (
        f" --branch-epochs {budget.branch_epochs}" if budget.branch_epochs != Budget.branch_epochs else "") + "".join(
        f" --set {o}" for o in extra or [])
    return write_section("ssl", "Semi-supervision on the branch protocol: every method vs fsl at 10 % and 25 % labels",
                         command, body, output)
