"""Checkpoint selection on what users get: full-volume Dice, Acc_ID and id-rate of the validation scans."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest

from training_phantoms import TINY, make_store
from vertseg.config import build_config
from vertseg.evaluation.holdout import volume_validator
from vertseg.training.runner import train_local
from vertseg.training.trainer import selection_score


def test_selection_prefers_full_volume_identification_over_patch_monitors():
    patch_better = {"val_dice": 0.9, "val_id_acc": 0.9, "val_volume_dice": 0.8, "val_volume_id_acc": 0.1,
                    "val_volume_id_rate": 0.1}
    volume_better = {"val_dice": 0.5, "val_id_acc": 0.1, "val_volume_dice": 0.8, "val_volume_id_acc": 0.7,
                     "val_volume_id_rate": 0.8}
    assert selection_score(volume_better) > selection_score(patch_better)
    assert selection_score({"val_dice": 0.8, "val_id_acc": 0.4}) == pytest.approx(0.6)  # no full-volume run
    assert selection_score({"val_dice": 0.8, "val_volume_id_acc": math.nan}) == pytest.approx(0.8)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("sel") / "store.zarr", {"training": 2, "validation": 1}, seed=5)


def test_volume_validator_scores_whole_validation_scans(store):
    import torch

    from vertseg.model import build_model

    config = build_config({}, TINY + ["inference.localisation=bone"])
    validate = volume_validator(store, config)
    torch.manual_seed(0)
    model = build_model(config.model)
    metrics = validate(model)
    assert set(metrics) == {f"val_volume_{k}" for k in ("dice", "vertebra_dice", "id_acc", "id_rate", "distance_mm")}
    assert 0.0 <= metrics["val_volume_dice"] <= 1.0
    assert volume_validator(store, config, split="test") is None  # no labelled test scans in this store


def test_training_picks_the_best_checkpoint_by_the_volume_metrics(store, tmp_path):
    """A scripted validator: the best checkpoint is where the full-volume score peaks, not where the patch
    monitors do, and the metrics are recorded with it."""
    config = build_config({}, TINY + ["train.method=fsl", "train.schedule.epochs=3", "train.schedule.iterations_per_epoch=1",
                                      "train.validate_every=1", "train.loader_workers=0"])
    scores = iter([0.2, 0.9, 0.4])
    calls = []

    def validation(cfg, device, rank, world):
        assert (rank, world) == (0, 1) and cfg == config

        def validate(model):
            calls.append(model.training)
            value = next(scores)
            return {"val_volume_dice": value, "val_volume_id_acc": value, "val_volume_id_rate": value}
        return validate

    result = train_local(config, store, None, tmp_path / "run", volume_validation=validation, log=lambda _: None)
    assert calls == [False, False, False]  # the deployed network is evaluated in eval mode
    best = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert best["epoch"] == 2 and best["val_volume_id_acc"] == pytest.approx(0.9)
    assert result["best"]["epoch"] == 2


def test_the_real_validator_plugs_into_training(store, tmp_path):
    config = build_config({}, TINY + ["train.method=fsl", "train.schedule.epochs=1", "train.schedule.iterations_per_epoch=1",
                                      "train.validate_every=1", "train.loader_workers=0", "inference.localisation=bone"])
    result = train_local(config, store, None, tmp_path / "run", volume_validation=partial(volume_validator, store),
                         log=lambda _: None)
    assert "val_volume_id_rate" in result["best"] and "val_id_acc" in result["best"]


def test_plateau_patience_ends_a_warm_up_once_validation_stops_improving(store, tmp_path):
    """`train.plateau_patience`: two validations without a better full-volume score end the run (saved as finished,
    so a resume does not train on); the readiness gate sees every validation."""
    from vertseg.training.checkpoint import load_checkpoint

    config = build_config({}, TINY + ["train.method=fsl", "train.schedule.epochs=8", "train.schedule.iterations_per_epoch=1",
                                      "train.validate_every=1", "train.loader_workers=0", "train.plateau_patience=2"])
    scores = iter([0.2, 0.5, 0.4, 0.5, 0.9, 0.9, 0.9, 0.9])

    def validation(cfg, device, rank, world):
        def validate(model):
            value = next(scores)
            return {"val_volume_dice": value, "val_volume_id_acc": value, "val_volume_id_rate": value}
        return validate

    result = train_local(config, store, None, tmp_path / "run", volume_validation=validation, log=lambda _: None)
    assert result["epochs"] == 4 and result["best"]["epoch"] == 2  # 0.4 and 0.5 after the best 0.5: stale twice
    latest = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert latest["plateaued"] and latest["epoch"] == 4
    again = train_local(config, store, None, tmp_path / "run", resume=True, volume_validation=validation, log=lambda _: None)
    assert again["epochs"] == 4
    full = build_config({}, TINY + ["train.method=fsl", "train.schedule.epochs=3", "train.schedule.iterations_per_epoch=1",
                                    "train.validate_every=1", "train.loader_workers=0"])
    scores = iter([0.2, 0.1, 0.1])
    assert train_local(full, store, None, tmp_path / "run0", volume_validation=validation, log=lambda _: None)["epochs"] == 3
