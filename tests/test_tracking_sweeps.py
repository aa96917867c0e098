"""A resumed sweep reuses its finished trials as they are, so it is refused when a trial's config or the store changed."""

from __future__ import annotations

import json

import pytest

from training_phantoms import make_store
from vertseg.tuning.runner import check_sweep_resume, sweep_identity
from vertseg.tuning.sweep import SweepError, plan_sweep

SWEEP = """
name: demo
base: base.yaml
data: {{store: {store}}}
variants:
  - {{label: No CBAM, overrides: {{model.cbam_placement: none}}}}
  - {{label: CBAM both, overrides: {{model.cbam_placement: both}}}}
seeds: [1]
"""


@pytest.fixture
def sweep(tmp_path):
    store = make_store(tmp_path / "s.zarr", {"training": 1})
    (tmp_path / "base.yaml").write_text("train: {optim: {lr: 0.01}}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(store=store))
    return path, store


def test_unchanged_sweep_resumes(sweep):
    path, _ = sweep
    state = sweep_identity(plan_sweep(path))
    check_sweep_resume("demo", json.loads(json.dumps(state)), sweep_identity(plan_sweep(path)))


def test_changed_trial_config_is_refused_naming_the_trials(sweep):
    path, _ = sweep
    state = sweep_identity(plan_sweep(path))
    path.write_text(path.read_text().replace("model.cbam_placement: none", "model.cbam_placement: id"))
    changed = plan_sweep(path)
    with pytest.raises(SweepError, match=r"trial\(s\) no-cbam-s1 changed") as error:
        check_sweep_resume("demo", state, sweep_identity(changed))
    assert "cbam-both" not in str(error.value)
    (path.parent / "base.yaml").write_text("train: {optim: {lr: 0.05}}\n")  # the base config: every trial changed
    with pytest.raises(SweepError, match="cbam-both"):
        check_sweep_resume("demo", state, sweep_identity(plan_sweep(path)))


def test_changed_store_is_refused(sweep):
    path, store = sweep
    state = sweep_identity(plan_sweep(path))
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["failures"].append({"case_id": "late", "error": "unreadable"})
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SweepError, match="store manifest changed"):
        check_sweep_resume("demo", state, sweep_identity(plan_sweep(path)))


def test_state_without_hashes_is_refused():
    with pytest.raises(SweepError, match="predates"):
        check_sweep_resume("demo", {"trial_keys": []}, {"store_manifest_sha256": "", "trial_config_sha256": {}})
