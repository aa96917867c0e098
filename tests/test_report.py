"""Reports from MLflow runs written with the real MLflow client (a SQLite store per module)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vertseg.reporting.aggregate import (
    LEVELS,
    RunRecord,
    comparison_rows,
    normalise_metrics,
    region_splits,
    summarize,
    variants_in_order,
)
from vertseg.tuning import tracking
from vertseg.tuning.sweep import plan_sweep

CBAM_SWEEP = """
name: cbam_placement
title: "3D-CBAM placement (Table 4)"
data: {store: nowhere.zarr}
variants:
  - {label: No CBAM, overrides: {model.cbam_placement: none}}
  - {label: CBAM in ID branch only, overrides: {model.cbam_placement: id}}
seeds: [1, 2]
"""

THRESHOLD_SWEEP = """
name: threshold
title: "Pseudo-label threshold (Figure 3)"
kind: line
x_key: train.schedule.tau_seg_end
data: {store: nowhere.zarr}
grid: {train.schedule.tau_seg_end: [0.5, 0.9, 0.7]}
seeds: [1, 2]
"""


def test_summary_is_mean_and_sample_std():
    s = summarize([0.90, 0.92, 0.94])
    assert s.n == 3 and s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02)
    assert s.percent() == "92.0 ± 2.0"
    assert summarize([0.5]).percent() == "50.0"
    assert summarize([math.nan]).percent() == "n/a"


def test_metric_keys_normalised_and_best_wins():
    assert normalise_metrics({"val/dice": 0.5, "best_val_dice": 0.7, "val_id_acc": 0.9}) == {
        "val_dice": 0.7,
        "val_id_acc": 0.9,
    }


def test_variants_follow_numeric_axis_and_regions_found():
    records = [
        RunRecord("a", "a", "tau=0.9", 1, 0.9, {"test_dice_cervical": 0.8}),
        RunRecord("b", "b", "tau=0.5", 1, 0.5, {"ctspine1k_test_id_acc_lumbar": 0.8, "loss_dice": 1.0}),
    ]
    assert variants_in_order(records) == ["tau=0.5", "tau=0.9"]
    shuffled = [RunRecord(k, k, k, 1, None, {}, order=o) for k, o in (("b", 1), ("a", 0), ("b", 3), ("c", 2))]
    assert variants_in_order(shuffled) == ["a", "b", "c"]  # sweep-file order, not the order trials finished
    assert region_splits(records) == ["test", "ctspine1k_test"]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """One MLflow SQLite store for the module (creating one costs seconds); each test seeds its own sweep."""
    return tmp_path_factory.mktemp("mlflow")


def _seed_sweep(db: Path, tmp_path: Path, text: str, metrics_of) -> tuple[str, str]:
    """A parent run and one finished, annotated child per trial, as `vertseg tune` leaves them."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(text)
    plan = plan_sweep(sweep_file, check_stores=False)
    uri = tracking.default_tracking_uri(db)
    mlflow = tracking.client(uri)
    experiment = tracking.ensure_experiment(mlflow, tracking.EXPERIMENT, db / "artifacts")
    provenance = {"data.store": "nowhere.zarr", "data.store_fingerprint": "abc123", "data.eval_split": "validation"}
    parent = tracking.start_parent(mlflow, experiment, plan, provenance)
    for trial in plan.trials:
        child = mlflow.create_run(experiment, run_name=f"{plan.sweep.name}-{trial.key}",
                                  tags={tracking.TAG_PARENT: parent})
        for step, (key, value) in enumerate(metrics_of(trial).items()):
            mlflow.log_metric(child.info.run_id, key, value, step=step)
        mlflow.set_terminated(child.info.run_id)
        tracking.annotate_child(mlflow, child.info.run_id, parent, plan.sweep.name, trial, "proposed")
    mlflow.set_terminated(parent)
    return uri, parent


def test_cbam_report_from_mlflow(db, tmp_path):
    from vertseg.reporting.collect import from_sweep
    from vertseg.reporting.render import build_report, log_to_parent, write_report

    def metrics(trial):
        cbam = trial.variant == "CBAM in ID branch only"
        base = {"val_dice": 0.912 + 0.004 * cbam + 0.002 * (trial.seed - 1), "val_id_acc": 0.964 + 0.011 * cbam}
        regions = {"test_dice": base["val_dice"] + 0.004, "test_id_acc": base["val_id_acc"]}
        regions |= {f"test_dice_{r}": 0.9 + 0.01 * i for i, r in enumerate(("cervical", "thoracic", "lumbar"))}
        regions |= {"ctspine1k_test_dice_cervical": 0.86, "ctspine1k_test_dice": 0.874, "ctspine1k_test_id_acc": 0.9}
        levels = {f"val_dice_{level}": 0.85 + 0.005 * i + 0.01 * trial.seed for i, level in enumerate(LEVELS)}
        return base | regions | levels

    uri, parent = _seed_sweep(db, tmp_path, CBAM_SWEEP, metrics)
    source = from_sweep(tracking.client(uri), "cbam_placement")
    assert source.parent_run_id == parent and len(source.records) == 4
    rows = comparison_rows(source.records, "val")
    assert [r.variant for r in rows] == ["No CBAM", "CBAM in ID branch only"]
    # seeds 1 and 2: Dice 0.912/0.914 -> mean 91.3, std 0.1414 -> "91.3 ± 0.1"
    assert rows[0].dice.percent() == "91.3 ± 0.1" and rows[1].id_acc.percent() == "97.5 ± 0.0"

    report, figs = build_report(source, "val", uri)
    paths = write_report(report, figs, tmp_path / "report")
    log_to_parent(uri, parent, tmp_path / "report")
    markdown = paths["report.md"].read_text()
    assert "| No CBAM | labeled + unlabeled | 91.3 ± 0.1 | 96.4 ± 0.0 | 2 |" in markdown
    assert "Per-region results on `test`" in markdown and "Per-region results on `ctspine1k_test`" in markdown
    assert "| CBAM in ID branch only | Overall | 92.1 ± 0.1 | 97.5 ± 0.0 |" in markdown
    assert "|  | Cervical (C1-C7) | 86.0 ± 0.0 | n/a |" in markdown
    assert "abc123" in markdown and parent in markdown
    for stem in ("main_bars", "level_dice"):
        png = paths[f"{stem}.png"].read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert paths[f"{stem}.svg"].read_text().lstrip().startswith("<?xml")
    page = paths["report.html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "src='figures/" not in page
    logged = {f.path for f in tracking.client(uri).list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged


def test_threshold_line_report_via_cli(db, tmp_path):
    from typer.testing import CliRunner

    from vertseg.cli.main import app

    peak = {0.5: 0.890, 0.7: 0.905, 0.9: 0.916}
    uri, parent = _seed_sweep(
        db, tmp_path, THRESHOLD_SWEEP,
        lambda t: {"best_val_dice": peak[t.x] + 0.001 * t.seed, "val_dice": 0.1, "best_val_id_acc": 0.95 + t.x / 50},
    )
    out = tmp_path / "threshold-report"
    result = CliRunner().invoke(app, ["report", "--sweep", "threshold", "--out", str(out), "--mlflow-uri", uri])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    # best_ values win over the last logged ones; rows follow tau, not the grid's order.
    assert markdown.index("tau_seg_end=0.5") < markdown.index("tau_seg_end=0.7") < markdown.index("tau_seg_end=0.9")
    assert "| tau_seg_end=0.9 | labeled + unlabeled | 91.8 ± 0.1 |" in markdown
    assert (out / "figures" / "main_line.png").stat().st_size > 5000

    missing = CliRunner().invoke(app, ["report", "--sweep", "nope", "--out", str(out), "--mlflow-uri", uri])
    assert missing.exit_code == 2 and "no MLflow sweep run named 'nope'" in missing.output
    neither = CliRunner().invoke(app, ["report", "--out", str(out), "--mlflow-uri", uri])
    assert neither.exit_code == 2
    children = [r.info.run_id for r in tracking.client(uri).search_runs(
        [tracking.client(uri).get_run(parent).info.experiment_id], f"tags.`{tracking.TAG_PARENT}` = '{parent}'")]
    picked = CliRunner().invoke(app, ["report", "--runs", ",".join(children[:2]), "--runs", children[2],
                                      "--out", str(tmp_path / "picked"), "--mlflow-uri", uri])
    assert picked.exit_code == 0, picked.output
    assert "3 runs" in picked.output and "Selected runs" in (tmp_path / "picked" / "report.md").read_text()


def test_report_from_explicit_runs(db, tmp_path):
    from vertseg.reporting.collect import ReportError, from_runs

    text = CBAM_SWEEP.replace("name: cbam_placement", "name: cbam_copy")
    uri, parent = _seed_sweep(db, tmp_path, text, lambda t: {"val_dice": 0.9, "val_id_acc": 0.95})
    mlflow = tracking.client(uri)
    source = from_runs(mlflow, [parent])
    assert len(source.records) == 4 and source.params["data.store_fingerprint"] == "abc123"
    one = from_runs(mlflow, [source.records[0].run_id])
    assert [r.variant for r in one.records] == ["No CBAM"]
    with pytest.raises(ReportError, match="does not exist"):
        from_runs(mlflow, ["0" * 32])
