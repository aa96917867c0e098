"""Full-volume held-out evaluation: metrics from a store split, label-free prediction, MLflow -> report."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from vertseg.config import build_config
from vertseg.evaluation.case import CaseMetrics
from vertseg.evaluation.holdout import HoldoutError, evaluate_predictor, flat_metrics, predict_case
from vertseg.reporting.aggregate import RunRecord, headline_split, level_dice, region_splits, region_table


def _case(case_id: str, dice: dict[int, float], correct: dict[int, bool]) -> CaseMetrics:
    return CaseMetrics(case_id, 0.9, 0.8, dice, correct, {k: 0.7 for k in dice}, dict(correct),
                       {k: 2.0 for k in dice}, sorted(dice))


def test_flat_metric_names_are_what_the_report_reads():
    cases = [_case("a", {1: 0.9, 20: 0.7}, {1: True, 20: False}), _case("b", {20: 0.9, 21: 0.5}, {20: True, 21: True})]
    metrics, summary = flat_metrics(cases, "test")
    assert metrics["test_dice"] == pytest.approx(0.9) and metrics["test_vertebrae"] == 4
    assert metrics["test_id_acc"] == pytest.approx(0.75) and metrics["test_vertebra_dice"] == pytest.approx(0.75)
    assert metrics["test_dice_L1"] == pytest.approx(0.8) and metrics["test_id_acc_L1"] == pytest.approx(0.5)
    assert metrics["test_dice_cervical"] == pytest.approx(0.9) and math.isnan(metrics["test_dice_thoracic"])
    assert "test_dice_T1" not in metrics  # a level absent from every case is not a 0
    record = RunRecord("r", "r", "model", 1, None, metrics)
    assert region_splits([record]) == ["test"]
    overall, cervical, thoracic, lumbar = region_table([record], "test")
    assert overall[1].mean == pytest.approx(0.9) and lumbar[2].mean == pytest.approx(2 / 3)
    assert thoracic[1].n == 0 and sorted(level_dice([record], "test")) == ["C1", "L1", "L2"]
    patch_level = RunRecord("p", "p", "model", 1, None, {"val_dice": 0.5, "best_val_dice": 0.6})
    assert headline_split([record, patch_level]) == "test" and headline_split([patch_level]) == "val"
    assert headline_split([record], preferred="validation") == "test"  # preferred only when the runs hold it


def _levels_store(tmp_path, name: str, labeled: bool, case_ids: tuple[str, ...] = ("levels",)):
    """The three-level (L3-L5) HU-coded phantom as a store (one case per id), with or without its labels."""
    from test_inference_predict import TINY, _levels_phantom

    from vertseg.data.preprocess import preprocess_case
    from vertseg.data.store import build_manifest, init_store, write_manifest
    from vertseg.data.types import CaseSource

    config = build_config({**TINY, "inference": {**TINY["inference"], "overlap": 0.5, "min_fragment_ml": 0.1}})
    image = tmp_path / "levels.nii.gz"
    truth = _levels_phantom(image)
    mask = tmp_path / "levels_msk.nii.gz"
    nib.save(nib.Nifti1Image(truth, nib.load(str(image)).affine), str(mask))
    store = tmp_path / name
    init_store(store, config.data)
    for case_id in case_ids:
        source = CaseSource(case_id, case_id, "phantom", "test", image, mask if labeled else None)
        assert preprocess_case(source, config.data, store, "labeled" if labeled else "unlabeled")["status"] == "written"
    write_manifest(store, build_manifest(store, config.data, []))
    return store, config


def test_oracle_network_scores_perfectly_and_never_sees_the_labels(tmp_path):
    from test_inference_predict import OracleNet

    from vertseg.inference.predictor import Predictor

    labeled, config = _levels_store(tmp_path, "labeled.zarr", labeled=True)
    unlabeled, _ = _levels_store(tmp_path, "unlabeled.zarr", labeled=False)
    predictor = Predictor(OracleNet(), config, "cpu")
    with_labels, _ = predict_case(predictor, labeled, "levels")
    without_labels, _ = predict_case(predictor, unlabeled, "levels")
    np.testing.assert_array_equal(with_labels.labels, without_labels.labels)

    result = evaluate_predictor(predictor, labeled, "test", out_dir=tmp_path / "out")
    m = result.metrics
    assert m["test_cases"] == 1 and m["test_vertebrae"] == 3 and not result.failed
    assert m["test_dice"] > 0.95 and m["test_vertebra_dice"] > 0.95 and m["test_multilabel_dice"] > 0.95
    assert m["test_id_acc"] == 1.0 and m["test_id_rate"] == 1.0 and m["test_distance_mm"] < 1.5
    assert m["test_dice_lumbar"] > 0.95 and m["test_id_acc_lumbar"] == 1.0 and math.isnan(m["test_dice_cervical"])
    assert {"test_dice_L3", "test_dice_L4", "test_dice_L5"} <= set(m) and "test_dice_L2" not in m
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert saved["split"] == "test" and saved["metrics"]["test_id_acc"] == 1.0
    assert "levels" in (tmp_path / "out" / "evaluation.csv").read_text()
    assert (tmp_path / "out" / "levels" / "levels_seg.nii.gz").stat().st_size > 0
    with pytest.raises(HoldoutError, match="no labelled cases in split 'validation'"):
        evaluate_predictor(predictor, labeled, "validation")
    with pytest.raises(HoldoutError, match="no labelled cases"):
        evaluate_predictor(predictor, unlabeled, "test")


def test_a_case_that_fails_to_predict_is_scored_as_empty_not_left_out(tmp_path, monkeypatch):
    from test_inference_predict import OracleNet

    import vertseg.evaluation.holdout as holdout
    from vertseg.inference.predictor import Predictor

    store, config = _levels_store(tmp_path, "two.zarr", labeled=True, case_ids=("levels", "levels-b"))
    real = holdout.predict_case

    def out_of_memory_on_b(predictor, store, case_id):
        if case_id == "levels-b":
            raise RuntimeError("CUDA out of memory")
        return real(predictor, store, case_id)

    monkeypatch.setattr(holdout, "predict_case", out_of_memory_on_b)
    result = evaluate_predictor(Predictor(OracleNet(), config, "cpu"), store, "test")
    m = result.metrics
    assert m["test_cases"] == 2 and m["test_vertebrae"] == 6
    assert m["test_id_rate"] == pytest.approx(0.5) and m["test_dice"] < 0.5  # the perfect case alone would be ~1
    assert result.failed == {"levels-b": "scored as empty prediction: RuntimeError: CUDA out of memory"}
    assert result.summary["scored_as_empty"] == ["levels-b"]
    assert "1 of them failed predictions scored as empty" in result.summary["headline"]


@pytest.mark.slow
def test_train_evaluate_logs_test_metrics_and_report_shows_regions(tmp_path):
    """`vertseg train --evaluate auto` -> full-volume test metrics in the MLflow run -> `vertseg report` tables."""
    import mlflow

    from training_phantoms import TINY, make_store
    from vertseg.cli.main import app

    store = make_store(tmp_path / "s.zarr", {"training": 1, "test": 1})
    sets = TINY + ["train.method=fsl", "train.loader_workers=0", "train.schedule.epochs=2",
                   "train.schedule.iterations_per_epoch=1", "inference.localisation=bone"]
    args = ["train", "--store", str(store), "--cpu-workers", "0", "--out", str(tmp_path / "runs"), "--name", "ev",
            "--evaluate", "auto"] + [x for item in sets for x in ("--set", item)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Acc_ID" in result.output and "cervical" in result.output, result.output  # the summary table
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("vertseg").experiment_id])[0]
    metrics = run.data.metrics
    assert run.data.tags["vertseg.eval_split"] == "test" and metrics["test_cases"] == 1
    for key in ("test_dice", "test_vertebra_dice", "test_id_acc", "test_id_rate", "test_dice_cervical", "test_dice_C1"):
        assert math.isfinite(metrics[key]), key
    assert client.get_metric_history(run.info.run_id, "test_dice")[0].step == 2  # logged at the last epoch
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation/test")}
    assert {"evaluation/test/evaluation.json", "evaluation/test/evaluation.csv"} <= artifacts
    assert (tmp_path / "runs" / "ev" / "evaluation" / "test" / "ph-test-0" / "ph-test-0_seg.nii.gz").exists()

    report = CliRunner().invoke(app, ["report", "--runs", run.info.run_id, "--mlflow-uri", uri,
                                      "--out", str(tmp_path / "report")])  # headline split: test, found in the run
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Selected runs: test metrics" in markdown and "Per-region results on `test` (Table 5 style)" in markdown
    assert "| Cervical (C1-C7) |" in markdown and "figures/level_dice.png" in markdown
    assert (tmp_path / "report" / "figures" / "level_dice.png").read_bytes().startswith(b"\x89PNG")
