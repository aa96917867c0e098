"""`vertseg bench quality`: does the semi-supervised method beat supervised training at 25% labels?

A fixed phantom benchmark (held-out test phantoms with partial fields of view and anatomical variants): every
method trains with the same schedule, budget and seeds on the same store, then predicts and is evaluated on the
test phantoms with the VerSe-comparable metrics. Mean +- sample std over seeds, plus the diagnostics that explain
a gap (consistency weight reached, mask pass fractions, pseudo-label use). Runs are resumable: a finished run's
evaluation is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from vertseg.bench.report import markdown_table, write_section
from vertseg.config import load_config
from vertseg.io import atomic_write_json
from vertseg.steps import RESOURCES, PhantomPools
from vertseg.training.methods import get_method

LABELED_FRACTION = 0.25  # Table 2: 25% of the labeled pool keeps its labels, the rest is unlabeled
# Identification can only be learned for vertebrae some labeled scan shows: 16 "medium" scans (220-420 mm, about
# 10-16 vertebrae each) leave 4 labeled ones that together cover C1-L5 in most draws; 8 "small" scans (170-200 mm)
# left 2 that never showed the thoracic levels of the validation scans (validation ID accuracy <= 1.5 % at 8x the steps).
CPU_POOLS = PhantomPools(training=16, validation=2, unlabeled=0, test=4, seed=2026, variant_rate=0.25, size="medium")
GPU_POOLS = PhantomPools(training=32, validation=4, unlabeled=0, test=12, seed=2026, variant_rate=0.25, size="medium")
CPU_OVERRIDES = [  # demo.yaml model and data, twice its steps; the schedule keeps the paper's 40%/80% shape
    "train.schedule.epochs=20", "train.schedule.iterations_per_epoch=8", "train.schedule.e_cons=8",
    "train.schedule.e_ramp=16", "train.validate_every=4", "train.loader_workers=0",
]
GPU_OVERRIDES = [  # --full: a real GPU budget, still phantoms; 40/80 of 100 epochs as in the paper
    "data.spacing_mm=2.0", "data.patch_size=[64,48,48]", "model.base_width=16", "train.amp=true",
    "train.schedule.epochs=100", "train.schedule.iterations_per_epoch=50", "train.schedule.e_cons=40",
    "train.schedule.e_ramp=80", "train.validate_every=5", "train.loader_workers=4", "inference.localisation_spacing_mm=4.0",
]
HEADLINE = (("test_vertebra_dice", "Dice (%)"), ("test_dice", "binary Dice (%)"), ("test_id_acc", "Acc_ID (%)"),
            ("test_id_rate", "id-rate (%)"))


@dataclass(frozen=True)
class RunOutcome:
    method: str
    seed: int
    metrics: dict[str, float]
    diagnostics: dict[str, float]
    train_seconds: float


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, std


def diagnostics(history: list[dict[str, Any]], e_cons: int) -> dict[str, float]:
    """What the consistency term did: lambda reached, mean mask pass fractions and loss over the epochs it was on."""
    from vertseg.training.trainer import selection_score

    active = [h for h in history if h.get("epoch", 0) > e_cons]
    consistency = any("pass_seg" in h for h in history)  # methods without a consistency term log no mask passes
    out = {"lambda_final": float(history[-1].get("lambda_cons", math.nan)) if history and consistency else math.nan}
    for key in ("pass_seg", "pass_cls", "loss_cons_seg", "loss_cons_cls"):
        values = [float(h[key]) for h in active if key in h]
        out[key] = sum(values) / len(values) if values else math.nan
    validated = [h for h in history if "val_dice" in h]
    best = max(validated, key=selection_score, default=None)  # the trainer's rule: the checkpoint `predict` uses
    out["val_score_best"] = selection_score(best) if best else math.nan
    out["best_epoch"] = float(best["epoch"]) if best else math.nan
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if n > 1 else "")


def verdict(outcomes: list[RunOutcome], baseline: str = "fsl", method: str = "proposed") -> str:
    """One sentence per headline metric: the paired (same seed) difference and how many seeds improved."""
    base = {o.seed: o.metrics for o in outcomes if o.method == baseline}
    ours = {o.seed: o.metrics for o in outcomes if o.method == method}
    seeds = sorted(set(base) & set(ours))
    if not seeds:
        return ""
    lines = []
    for key, label in HEADLINE:
        diffs = [ours[s].get(key, math.nan) - base[s].get(key, math.nan) for s in seeds]
        mean, std = mean_std(diffs)
        if not math.isfinite(mean):
            continue
        wins = sum(d > 0 for d in diffs)
        error = std / math.sqrt(len(seeds)) if len(seeds) > 1 else math.nan  # standard error of the paired mean
        noise = 2 * error if len(seeds) > 1 else 0.0
        if mean > noise and wins > len(seeds) / 2:
            word = "beats"
        elif mean > 0 and wins > len(seeds) / 2:
            word = "is within noise (2 standard errors) of"
        else:
            word = "does not beat"
        lines.append(f"- {label.removesuffix(' (%)')}: `{method}` {word} `{baseline}`: paired difference "
                     f"{100 * mean:+.1f} points (sample std {100 * std:.1f}, standard error {100 * error:.1f}), "
                     f"better on {wins}/{len(seeds)} seeds.")
    return "\n".join(lines)


def render(outcomes: list[RunOutcome], methods: list[str], pools: PhantomPools, overrides: list[str],
           wall_seconds: float, parallel: int = 1, threads: int = 1, schedule: Any = None,
           labeled_fraction: float = LABELED_FRACTION) -> str:
    """The benchmarks.md body: headline table, per-seed table, diagnostics and the verdict."""
    rows = []
    fsl_time = mean_std([o.train_seconds for o in outcomes if o.method == "fsl"])[0]
    for method in methods:
        runs = [o for o in outcomes if o.method == method]
        cells = [_fmt(*mean_std([o.metrics.get(key, math.nan) for o in runs]), len(runs)) for key, _ in HEADLINE]
        t = mean_std([o.train_seconds for o in runs])[0]
        rows.append([method, len(runs)] + cells + [f"{t / fsl_time:.2f}" if math.isfinite(fsl_time) and fsl_time else "n/a"])
    per_seed = [[o.method, o.seed] + [f"{100 * o.metrics.get(k, math.nan):.1f}" for k, _ in HEADLINE] for o in outcomes]
    diag_keys = ("lambda_final", "pass_seg", "pass_cls", "loss_cons_seg", "loss_cons_cls", "val_score_best",
                 "student_dice")
    diag_rows = [[o.method, o.seed] + [f"{o.diagnostics.get(k, math.nan):.3f}" for k in diag_keys]
                 + [f"{o.diagnostics.get('best_epoch', math.nan):.0f}"] for o in outcomes]
    setup = (
        f"Phantoms (`vertseg/bench/quality.py`): labeled pool {pools.training} training + {pools.validation} validation "
        f"scans, {100 * labeled_fraction:g}% of the training scans keep their labels (`train.labeled_fraction`, chosen "
        f"per seed, the same for every method), the rest is the unlabeled pool; {pools.test} held-out test scans "
        f"(own patients; partial fields of view; variant rate {pools.variant_rate}); synth size `{pools.size}`. Config: "
        f"`vertseg/resources/demo.yaml` + `{' '.join(overrides)}`. Every method: same epochs, iterations, batch sizes "
        f"and seeds; single-process trainer; checkpoint = best full-volume validation (Dice, Acc_ID, id-rate of the "
        f"validation scans); test metrics from `vertseg evaluate` "
        f"(1 mm, VerSe matching). Dice = mean per-vertebra Dice; binary Dice = paper Eq. 14; Acc_ID = paper Eq. 15-17; id-rate = VerSe. "
        f"Mean ± sample std over seeds. Training time summed over runs: "
        f"{sum(o.train_seconds for o in outcomes) / 60:.1f} min ({parallel} runs at a time, {threads} torch thread(s) "
        f"each; `train time vs fsl` compares runs made side by side); this invocation: {wall_seconds / 60:.1f} min "
        f"(saved runs are reused)."
    )
    body = [
        setup, "",
        markdown_table(["method", "seeds"] + [label for _, label in HEADLINE] + ["train time vs fsl"], rows), "",
        verdict(outcomes) or "(no paired fsl/proposed runs)", "",
        "Per seed:", "", markdown_table(["method", "seed"] + [label for _, label in HEADLINE], per_seed), "",
    ]
    if diag_rows:
        body += [
            "Consistency diagnostics (means over the epochs after `e_cons`): `lambda_final` = consistency weight at the "
            "last epoch (Eq. 2), `pass_seg`/`pass_cls` = share of voxels / heatmap positions passing the confidence "
            "masks (Eq. 12-13), `loss_cons_*` = consistency losses, `val_score_best` = best validation score of the "
            "deployed weights (the EMA teacher once it was restarted at `e_cons`, else the student; validation and "
            "`vertseg predict` use the same weights), the mean of full-volume binary Dice, Acc_ID and id-rate of the "
            "validation scans that selects the checkpoint, and `best_epoch` its epoch, whose checkpoint is the one "
            "evaluated; `student_dice` = test binary Dice of that checkpoint's student weights.", "",
            markdown_table(["method", "seed", *diag_keys, "best_epoch"], diag_rows),
        ]
    student_gap = [o.diagnostics.get("student_dice", math.nan) - f.metrics.get("test_dice", math.nan)
                   for o in outcomes if o.method == "proposed" for f in outcomes if f.method == "fsl" and f.seed == o.seed]
    mean, std = mean_std(student_gap)
    if math.isfinite(mean):
        body += ["", f"Student weights of `proposed` vs `fsl`, binary Dice: paired difference {100 * mean:+.1f} ± "
                     f"{100 * std:.1f} points over {len(student_gap)} seeds (the consistency term's own effect)."]
    if schedule is not None:
        body += ["", teacher_note(schedule)]
    return "\n".join(body)


def teacher_note(schedule: Any) -> str:
    """How far the EMA teacher can move in this schedule: the teacher restarts from the student at e_cons
    (section 2.4.3 (4)); after n more steps, alpha^n of it is still that snapshot."""
    steps = (schedule.epochs - schedule.e_cons) * schedule.iterations_per_epoch
    share = schedule.ema_decay ** steps
    paper = schedule.ema_decay ** (60 * 250)
    warmup = schedule.ema_decay ** (schedule.e_cons * schedule.iterations_per_epoch)
    lean = ("so the pseudo-labels still lean on the warm-up student" if share > 0.05
            else "so, as in the paper, the teacher has left that snapshot behind")
    return (f"EMA teacher: restarted from the student at epoch {schedule.e_cons}; after the {steps} consistency steps "
            f"of this schedule {100 * share:.0f}% of its weights are still that snapshot (alpha = {schedule.ema_decay}), "
            f"against {100 * paper:.0f}% after the paper's 60 x 250 steps, {lean}. Before that restart the teacher is "
            f"still {100 * warmup:.0f}% random initialisation, so validation "
            f"(which picks the checkpoint) and `vertseg predict` use the student until then and the teacher after it.")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_one(method: str, seed: int, overrides: list[str], store: Path, test: Path, work: Path, threads: int,
            labeled_fraction: float = LABELED_FRACTION, tag: str = "") -> RunOutcome:
    """Train (or reuse the finished run), predict and evaluate one (method, seed) in this process; the outcome is
    saved for reuse under the run's name plus `tag` (which test pool scored it)."""
    import torch

    from vertseg.distributed.train import run_training
    from vertseg.evaluation.holdout import volume_validator
    from vertseg.steps import evaluate_predictions, predict_folder

    torch.set_num_threads(threads)
    name = f"{method}-seed{seed}"
    config = load_config(RESOURCES / "demo.yaml", overrides + [f"train.method={method}", f"train.seed={seed}",
                                                               f"train.labeled_fraction={labeled_fraction}"])
    run_dir = work / "runs" / name
    checkpoint, train_seconds = _finished(run_dir, config.train.schedule.epochs, work / "outcomes", name)
    if checkpoint is None:
        start = time.perf_counter()
        result = run_training(config, store, None, num_workers=0, use_gpu=torch.cuda.is_available(), run_name=name,
                              storage_path=run_dir.parent, mlflow_uri="none",
                              resume=(run_dir / "checkpoints" / "latest.pt").exists(),
                              volume_validation=partial(volume_validator, Path(store).resolve()))
        train_seconds = time.perf_counter() - start
        if result.interrupted:
            raise RuntimeError(f"{name}: training was interrupted; rerun the benchmark to resume it")
        checkpoint, run_dir = result.checkpoint_path, result.run_dir
    pred = work / "predictions" / f"{name}{tag}"
    predict_folder(checkpoint, [test], pred)
    metrics = evaluate_predictions(pred, [test], pred / "evaluation.json")
    found = diagnostics(_history(run_dir), config.train.schedule.e_cons)
    if get_method(method).uses_teacher:
        found.update(student_metrics(checkpoint, test, work / "predictions" / f"{name}{tag}-student"))
    outcome = RunOutcome(method, seed, metrics, found, round(train_seconds, 1))
    atomic_write_json(work / "outcomes" / f"{name}{tag}.json", outcome.__dict__)
    return outcome


def _finished(run_dir: Path, epochs: int, outcomes: Path, name: str) -> tuple[Path | None, float]:
    """(best checkpoint, training seconds) of a run that trained all `epochs` and was scored before on any test
    pool (its saved outcome holds the training time), else (None, nan): scoring it on another test pool needs no
    training, and no resume (which would refuse a config whose inference defaults changed since)."""
    from vertseg.training.checkpoint import load_checkpoint

    best, latest = run_dir / "best" / "checkpoint.pt", run_dir / "checkpoints" / "latest.pt"
    scored = sorted(outcomes.glob(f"{name}.json")) + sorted(outcomes.glob(f"{name}-test*.json"))
    if not (best.exists() and latest.exists() and scored) or int(load_checkpoint(latest)["epoch"]) < epochs:
        return None, math.nan
    return best, float(json.loads(scored[0].read_text())["train_seconds"])


def student_metrics(checkpoint: Path, test: Path, pred: Path) -> dict[str, float]:
    """Test metrics of the student weights of a checkpoint whose deployed weights may be the EMA teacher, to
    separate the consistency term's effect from the teacher/student choice."""
    from vertseg.steps import evaluate_predictions, predict_folder

    predict_folder(checkpoint, [test], pred, student=True)
    metrics = evaluate_predictions(pred, [test], pred / "evaluation.json")
    return {f"student_{k}": metrics.get(f"test_{k}", math.nan) for k in ("dice", "vertebra_dice", "id_rate")}


def _line(outcome: RunOutcome) -> str:
    m = outcome.metrics
    return (f"{outcome.method}-seed{outcome.seed}: Dice {100 * m.get('test_dice', math.nan):.1f}  Acc_ID "
            f"{100 * m.get('test_id_acc', math.nan):.1f}  id-rate {100 * m.get('test_id_rate', math.nan):.1f}  "
            f"({outcome.train_seconds:.0f} s training)")


def run_all(jobs: list[tuple[str, int]], overrides: list[str], store: Path, test: Path, work: Path, parallel: int,
            threads: int, echo: Callable[[str], None], e_cons: int = 0,
            labeled_fraction: float = LABELED_FRACTION, tag: str = "") -> list[RunOutcome]:
    """Every (method, seed), `parallel` at a time in separate processes; saved outcomes (of this `tag`'s test pool)
    and finished trainings are reused."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    outcomes: dict[tuple[str, int], RunOutcome] = {}
    todo = []
    for method, seed in jobs:
        saved = work / "outcomes" / f"{method}-seed{seed}{tag}.json"
        if saved.exists():  # diagnostics are re-read from the run, so a newer benchmark version reports them all
            outcome = RunOutcome(**json.loads(saved.read_text()))
            run_dir = work / "runs" / f"{method}-seed{seed}"
            found = {**outcome.diagnostics, **diagnostics(_history(run_dir), e_cons)}
            if get_method(method).uses_teacher and "student_dice" not in found:
                found.update(student_metrics(run_dir / "best" / "checkpoint.pt", test,
                                             work / "predictions" / f"{method}-seed{seed}{tag}-student"))
            outcomes[(method, seed)] = RunOutcome(outcome.method, outcome.seed, outcome.metrics, found, outcome.train_seconds)
            echo(f"reused  {_line(outcomes[(method, seed)])}")
        else:
            todo.append((method, seed))
    with ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, m, s, overrides, store, test, work, threads, labeled_fraction, tag): (m, s)
                   for m, s in todo}
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
            echo(f"done    {_line(outcomes[futures[future]])}")
    return [outcomes[job] for job in jobs]


SCHEDULE_KEYS = ("train.schedule.epochs", "train.schedule.e_cons", "train.schedule.e_ramp", "train.validate_every")


def scale_schedule(overrides: list[str], budget: int) -> list[str]:
    """`budget` times the epochs, with e_cons, e_ramp and validation scaled alike (the schedule keeps its shape)."""
    out = []
    for item in overrides:
        key, value = item.split("=", 1)
        out.append(f"{key}={int(value) * budget}" if key in SCHEDULE_KEYS else item)
    return out


def labeled_coverage(labels_by_scan: dict[str, set[int]], seeds: int, fraction: float = LABELED_FRACTION) -> str:
    """Which C1-L5 levels each seed's labeled scans show (`labels_by_scan`: the training scans of the labeled pool
    and the VerSe labels each holds): identification can only be learned for those."""
    from vertseg.labels import VERSE_NAMES
    from vertseg.training.data import split_labeled

    lines = []
    for seed in range(seeds):
        kept, _ = split_labeled(list(labels_by_scan), fraction, seed)
        shown = set().union(*(labels_by_scan[scan] for scan in kept))
        missing = [VERSE_NAMES[label] for label in range(1, 25) if label not in shown]
        lines.append(f"seed {seed}: {len(kept)} labeled scans show {24 - len(missing)}/24 of C1-L5"
                     + (f" (never: {' '.join(missing)})" if missing else ""))
    return "Labeled coverage (identification is learned only for levels a labeled scan shows): " + "; ".join(lines) + "."


def store_labels(store: Path, config: Any) -> dict[str, set[int]]:
    """VerSe labels of each training scan of the store's labeled pool, from the per-case label counts."""
    from vertseg.data.store import VertStore

    vertstore = VertStore(store, config.data.hu_window)
    return {case: {int(k) for k in vertstore.attrs(case).get("label_counts", {})} - {0}
            for case in vertstore.cases(split="training", pool="labeled")}


def extended_test_pool(work: Path, pools: PhantomPools, cases: int) -> Path:
    """A test pool of `cases` phantoms from the same seed as the default one (whose scans it starts with), in its own
    folder, so finished trainings can be scored on more scans than the pool they were benchmarked with."""
    from vertseg.data.synth.dataset import RECORD_NAME
    from vertseg.steps import make_phantom_pools

    folder = work / "data" / f"test-{cases}"
    if not (folder / "test" / RECORD_NAME).exists():  # written last: an interrupted pool is written again
        make_phantom_pools(folder, replace(pools, training=0, validation=0, unlabeled=0, test=cases))
    return folder / "test"


@dataclass(frozen=True)
class QualityLayout:
    """Where one quality-bench invocation keeps its phantoms and runs, and the section it writes: every setting
    that changes what is trained (pools, budget, labelled share, overrides) gets its own folder and section, so a
    saved run is only ever reused for the settings that trained it."""

    pools: PhantomPools
    overrides: list[str]
    work: Path
    runs: Path
    key: str
    title: str
    command: str
    tag: str  # which test pool scores the runs: "" the benchmarked one, "-testN" an extended one


def quality_layout(methods: list[str], seeds: int, full: bool, workdir: Path, budget: int = 1,
                   labeled_fraction: float = LABELED_FRACTION, extra_overrides: list[str] | None = None,
                   test_cases: int | None = None, training_cases: int | None = None) -> QualityLayout:
    pools, overrides = (GPU_POOLS, GPU_OVERRIDES) if full else (CPU_POOLS, CPU_OVERRIDES)
    pools = replace(pools, training=training_cases or pools.training)
    extra = list(extra_overrides or [])
    fingerprint = hashlib.sha1(json.dumps(asdict(pools), sort_keys=True).encode()).hexdigest()[:8]
    variant = hashlib.sha1(json.dumps([labeled_fraction, extra]).encode()).hexdigest()[:6]
    work = Path(workdir) / (("full" if full else "cpu") + (f"-x{budget}" if budget != 1 else "") + f"-{fingerprint}")
    runs = work if (labeled_fraction == LABELED_FRACTION and not extra) else work / f"variant-{variant}"
    tag = f"-test{test_cases}" if test_cases is not None and test_cases != pools.test else ""
    command = "vertseg bench quality" + (" --full" if full else "") + (f" --seeds {seeds}" if seeds != 3 else "") + (
        f" --methods {','.join(methods)}" if methods != ["fsl", "proposed"] else "") + (
        f" --budget {budget}" if budget != 1 else "") + (
        f" --labeled-fraction {labeled_fraction:g}" if labeled_fraction != LABELED_FRACTION else "") + "".join(
        f" --set {o}" for o in extra) + (f" --test-cases {test_cases}" if tag else "") + (
        f" --training-cases {training_cases}" if training_cases else "")
    key, title = "quality", f"Model quality at {100 * labeled_fraction:g}% labels on phantoms: {' vs '.join(methods)}"
    if budget != 1:
        key, title = f"quality-x{budget}", f"{title} ({budget}x the training steps)"
    if runs != work:
        key, title = f"{key}-{variant}", f"{title}, {', '.join(extra) or 'defaults'}"
    if training_cases:
        key, title = f"{key}-train{training_cases}", f"{title}, {training_cases} training phantoms"
    if tag:
        key, title = f"{key}{tag}", f"{title}, scored on {test_cases} test phantoms"
    return QualityLayout(pools, scale_schedule(overrides, budget) + extra, work, runs, key, title, command, tag)


def run_quality_bench(methods: list[str], seeds: int, full: bool, workdir: Path, output: Path, parallel: int = 2,
                      threads: int = 1, echo: Callable[[str], None] = print, budget: int = 1,
                      labeled_fraction: float = LABELED_FRACTION, extra_overrides: list[str] | None = None,
                      test_cases: int | None = None, training_cases: int | None = None) -> Path:
    """Phantoms + store once, then every (method, seed) run; writes the `quality` section of `output`
    (`quality-xN` for a longer budget, so the default table stays; `-testN` for another test pool size; `-trainN`
    for another training pool size, whose phantoms and store are their own)."""
    from vertseg.steps import make_phantom_pools, pool_sources, preprocess_in_process

    start = time.perf_counter()
    layout = quality_layout(methods, seeds, full, workdir, budget, labeled_fraction, extra_overrides, test_cases,
                            training_cases)
    pools, overrides, work = layout.pools, layout.overrides, layout.work
    config = load_config(RESOURCES / "demo.yaml", overrides)
    store = work / "store.zarr"
    if not (store / "manifest.json").exists():
        echo(f"writing {pools} phantoms and the store under {work}")
        folders = make_phantom_pools(work / "data", pools)
        preprocess_in_process(pool_sources([folders["labeled"]]), store, config)
    test = extended_test_pool(work, pools, test_cases) if layout.tag else work / "data" / "test"
    jobs = [(method, seed) for seed in range(seeds) for method in methods]
    outcomes = run_all(jobs, overrides, store, test, layout.runs, parallel, threads, echo,
                       config.train.schedule.e_cons, labeled_fraction, layout.tag)
    scored = replace(pools, test=test_cases or pools.test)
    body = render(outcomes, methods, scored, overrides, time.perf_counter() - start, parallel, threads,
                  config.train.schedule, labeled_fraction) + "\n\n" + labeled_coverage(store_labels(store, config), seeds,
                                                                          labeled_fraction)
    return write_section(layout.key, layout.title, layout.command, body, output)
