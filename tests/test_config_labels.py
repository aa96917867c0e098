"""Config validation, overrides, the generated reference, labels and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vertseg import labels
from vertseg.config import ConfigError, build_config, load_config
from vertseg.config_reference import readme_with_reference
from vertseg.io import atomic_path, atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_values():
    config = load_config()
    assert config.data.patch_size == (128, 64, 64)
    assert config.data.hu_window == (-500.0, 1500.0)
    assert config.train.schedule.e_cons == 40 and config.train.schedule.e_ramp == 80
    assert config.train.loss.lambda_cons == 0.5 and config.train.loss.temperature == 0.5
    assert config.train.schedule.ema_decay == 0.99 and config.train.optim.lr == 0.01
    assert config.model.num_classes == 24


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  method: fsl\n  schedule:\n    epochs: 7\n")
    config = load_config(path, ["train.schedule.epochs=9", "model.bottleneck=transformer"])
    assert config.train.method == "fsl" and config.train.schedule.epochs == 9
    assert config.model.bottleneck == "transformer"


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"train": {"optim": {"lr": -1}}}, "train.optim.lr"),
        ({"model": {"bottleneck": "lstm"}}, "model.bottleneck"),
        ({"trian": {}}, "trian"),
        ({"train": {"schedule": {"e_cons": 50, "e_ramp": 40}}}, "e_ramp"),
        ({"data": {"protocol": "extended"}}, "num_classes"),
    ],
)
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(raw, source="x.yaml")


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_seg_only_drops_identification_branch():
    assert build_config({"train": {"method": "seg_only"}}).model.identification_branch is False


def test_readme_config_reference_is_current():
    readme = REPO / "README.md"
    assert readme_with_reference(readme) == readme.read_text(), "run: vertseg config reference --readme README.md"


def test_verse_table_and_regions():
    assert labels.VERSE_NAMES[1] == "C1" and labels.VERSE_NAMES[8] == "T1" and labels.VERSE_NAMES[24] == "L5"
    assert labels.VERSE_NAMES[25] == "L6" and labels.VERSE_NAMES[28] == "T13"
    assert labels.region_of(7) == "cervical" and labels.region_of(19) == "thoracic" and labels.region_of(20) == "lumbar"
    assert labels.C1_L5.num_classes == 24 and labels.EXTENDED.num_classes == 26
    assert labels.anatomical_rank(labels.T13) == pytest.approx(19.5)


def test_transitional_policies():
    gt = np.array([19, 28, 24, 25, 26, 0], dtype=np.uint8)
    merged = labels.apply_policy(gt, labels.C1_L5, labels.TransitionalPolicy.merge)
    np.testing.assert_array_equal(merged, [19, 19, 24, 24, 0, 0])
    ignored = labels.apply_policy(gt, labels.C1_L5, labels.TransitionalPolicy.ignore)
    np.testing.assert_array_equal(ignored, [19, 0, 24, 0, 0, 0])
    kept = labels.apply_policy(gt, labels.EXTENDED, labels.TransitionalPolicy.keep)
    np.testing.assert_array_equal(kept, [19, 28, 24, 25, 0, 0])
    classes = labels.EXTENDED.class_lut()[gt]
    np.testing.assert_array_equal(classes, [19, 20, 25, 26, 0, 0])


def test_label_converters():
    total_v2 = labels.LABEL_FORMATS["totalseg_v2"]
    np.testing.assert_array_equal(total_v2.to_verse(np.array([27, 50, 41, 26, 5])), [24, 1, 10, 26, 0])
    np.testing.assert_array_equal(labels.LABEL_FORMATS["ctspine1k"].to_verse(np.array([1, 24, 25, 26])), [1, 24, 25, 0])


def test_atomic_write_keeps_old_version_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "group"
    for content in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "data").write_text(content)
    assert (target / "data").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group"]
