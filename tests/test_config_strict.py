"""Config values are taken as written: no silent coercion, and cross-field rules are checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from vertseg.config import ConfigError, VertsegConfig, build_config, load_config
from vertseg.config_base import ConfigModel
from vertseg.labels import TransitionalPolicy
from vertseg.tuning.sweep import SweepError, load_sweep


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"schedule": {"epochs": True}}}, "train.schedule.epochs"),  # was read as 1
        ({"train": {"amp": "yes"}}, "train.amp"),  # was read as True
        ({"train": {"schedule": {"epochs": 2.5}}}, "train.schedule.epochs"),
        ({"train": {"schedule": {"epochs": "10"}}}, "train.schedule.epochs"),
        ({"train": {"optim": {"lr": True}}}, "train.optim.lr"),
        ({"model": {"identification_branch": 1}}, "model.identification_branch"),
        ({"data": {"patch_size": [True, 64, 64]}}, "data.patch_size.0"),
        ({"data": {"patch_size": [128.0, 64, 64]}}, "data.patch_size.0"),
        ({"inference": {"mirror_axes": ["2"]}}, "inference.mirror_axes.0"),
    ],
)
def test_coercible_values_are_refused_naming_key_and_file(tmp_path, raw, key):
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and f"  {key}:" in str(caught.value)


def test_what_yaml_cannot_say_otherwise_is_accepted(tmp_path):
    config = load_config(_write(tmp_path, {
        "train": {"optim": {"lr": 1}, "augment": {"gamma_range": [1, 2]}},
        "data": {"patch_size": [64, 32, 32], "transitional_policy": "ignore"},
        "inference": {"mirror_axes": [0, 2]},
    }), ["train.schedule.epochs=7", "train.schedule.e_cons=2", "train.schedule.e_ramp=5"])
    assert config.train.optim.lr == 1.0 and isinstance(config.train.optim.lr, float)
    assert config.data.patch_size == (64, 32, 32) and config.inference.mirror_axes == (0, 2)
    assert config.train.augment.gamma_range == (1.0, 2.0)
    assert config.data.transitional_policy is TransitionalPolicy.ignore
    assert config.train.schedule.epochs == 7
    assert VertsegConfig.model_validate(config.model_dump(mode="json")) == config  # checkpoints store JSON


def test_exponent_floats_are_numbers_as_in_yaml_1_2(tmp_path):
    """PyYAML reads `1e-3` as a string; a strict float would refuse what the README's own table shows (`3e-05`)."""
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  optim:\n    lr: 1e-3\n    weight_decay: 3e-05\n")
    config = load_config(path, ["train.loss.eps=1E-7"])
    assert (config.train.optim.lr, config.train.optim.weight_decay, config.train.loss.eps) == (1e-3, 3e-5, 1e-7)


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"train": {"schedule": {"epochs": 10}}}, "train.schedule.e_ramp (80) must not exceed train.schedule.epochs (10)"),
        ({"train": {"schedule": {"e_cons": 5, "e_ramp": 5}}}, "e_ramp (5) must be greater than schedule.e_cons (5)"),
        ({"train": {"schedule": {"tau_seg_end": 1.2}}}, "train.schedule.tau_seg_end"),
        ({"train": {"schedule": {"tau_cls_start": -0.1}}}, "train.schedule.tau_cls_start"),
        ({"train": {"augment": {"gamma_p": 1.5}}}, "train.augment.gamma_p"),
        ({"train": {"augment": {"median_p": -0.5}}}, "train.augment.median_p"),
        ({"train": {"augment": {"scale_range": [1.2, 0.8]}}}, "augment.scale_range [1.2, 0.8]"),
        ({"inference": {"peak_threshold": 2.0}}, "inference.peak_threshold"),
        ({"inference": {"mirror_axes": [3]}}, "inference.mirror_axes [3]"),
        ({"data": {"hu_window": [1500, -500]}}, "data.hu_window"),
        ({"data": {"patch_size": [100, 64, 64]}}, "data.patch_size [100, 64, 64] must be divisible by 8"),
        ({"data": {"patch_size": [128, 72, 64]}, "model": {"num_stages": 5}}, "must be divisible by 16"),
    ],
)
def test_cross_field_rules_are_checked_at_load(raw, needle):
    with pytest.raises(ConfigError, match="x.yaml") as caught:
        build_config(raw, source="x.yaml")
    assert needle in str(caught.value)


def test_the_ramp_rule_binds_only_methods_with_a_consistency_schedule():
    assert build_config({"train": {"method": "fsl", "schedule": {"epochs": 10}}}).train.schedule.epochs == 10
    short = ["train.schedule.epochs=10", "train.schedule.e_cons=4", "train.schedule.e_ramp=8"]
    assert build_config({}, short).train.schedule.e_ramp == 8


def _sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _sections(field.annotation)
    return found


def test_every_config_section_is_strict():
    sections = _sections(VertsegConfig)
    assert len(sections) >= 9
    assert [s.__name__ for s in sections if not issubclass(s, ConfigModel)] == []


def test_sweep_files_are_strict_too(tmp_path):
    path = tmp_path / "sweep.yaml"
    sweep = {"name": "s", "data": {"store": "stores/a.zarr"}, "variants": [{"label": "a"}],
             "resources": {"use_gpu": "yes"}}
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SweepError) as caught:
        load_sweep(path)
    assert str(path) in str(caught.value) and "resources.use_gpu" in str(caught.value)
    sweep["resources"] = {"use_gpu": False}
    path.write_text(yaml.safe_dump(sweep))
    assert load_sweep(path).data.store == Path("stores/a.zarr")


@pytest.mark.parametrize("override, message", [
    ("train.optim.lr=.inf", "train.optim.lr: Input should be a finite number (got inf) [from --set]"),
    ("data.hu_window=[.nan, 1]", "data.hu_window.0: Input should be a finite number"),
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0 (got -1) [from --set]"),
    ("train.optim.lr=[unclosed", "--set 'train.optim.lr=[unclosed': the value is not valid YAML"),
    ("train.optim.lr=!!python/object/apply:os.system [true]", "the value is not valid YAML (could not determine a constructor"),
])
def test_non_finite_negative_seed_and_unparsable_overrides_are_refused_naming_the_set(tmp_path, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, {"train": {"schedule": {"epochs": 2}}}), [override])
    assert message in str(caught.value)


def test_config_files_that_are_no_yaml_mapping_are_refused_clearly(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  optim:\n    lr: 0.01\n    lr: 0.5\n")  # the last one used to win silently
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        load_config(twice)
    with pytest.raises(ConfigError, match="is a folder; give a YAML file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  method: fsl # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(latin)
