"""Sweep files: schema validation (every trial's config checked before anything starts), expansion, smoke mode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vertseg.cli.main import app
from vertseg.tuning.runner import concurrency_limit
from vertseg.tuning.sweep import SMOKE_OVERRIDES, SweepError, expand, load_sweep, plan_sweep

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p.name != "base.yaml")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GOOD = """
name: demo
base: base.yaml
data: {store: s.zarr}
variants:
  - {label: No CBAM, overrides: {model.cbam_placement: none}}
  - {label: CBAM both, overrides: {model.cbam_placement: both}}
grid: {train.labeled_fraction: [0.5, 1.0]}
seeds: [1, 2]
"""


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_sweeps_validate(path):
    plan = plan_sweep(path, check_stores=False)
    grid_points = math.prod(len(values) for values in plan.sweep.grid.values())
    assert len(plan.trials) == len(plan.sweep.seeds) * max(1, len(plan.sweep.variants)) * grid_points
    assert len({t.key for t in plan.trials}) == len(plan.trials)


def test_shipped_sweeps_cover_the_paper():
    names = {load_sweep(p).name for p in SHIPPED}
    assert names == {"threshold", "mamba_placement", "cbam_placement", "mamba_vs_transformer", "modules",
                     "labeled_fraction", "ssl_baselines"}
    threshold = plan_sweep(REPO / "sweeps/threshold.yaml", check_stores=False)
    taus = sorted({t.x for t in threshold.trials})
    assert taus == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    tau_09 = next(t for t in threshold.trials if t.x == 0.9)
    config = threshold.config_for(tau_09)
    # tau = 0.9 is the paper's default Eq. 13 ramp end: that trial is the default +SSL model.
    assert config.train.schedule.tau_seg_end == 0.9 and config.train.schedule.tau_seg_start == 0.5
    assert config.train.schedule.tau_cls_end == 0.55
    baselines = plan_sweep(REPO / "sweeps/ssl_baselines.yaml", check_stores=False)
    methods = [baselines.config_for(t).train.method for t in baselines.trials if t.seed == 42]
    assert methods == ["fsl", "mean_teacher", "ua_mt", "cps", "unimatch", "proposed"]
    assert baselines.unlabeled_for(baselines.config_for(baselines.trials[0])) is None
    modules = plan_sweep(REPO / "sweeps/modules.yaml", check_stores=False)
    assert modules.config_for(modules.trials[0]).model.identification_branch is False


def test_expansion_order_keys_and_smoke(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {method: proposed}\n")
    path = _write(tmp_path, GOOD)
    plan = plan_sweep(path, check_stores=False)
    assert [t.key for t in plan.trials][:4] == [
        "no-cbam-labeled-fraction-0-5-s1", "no-cbam-labeled-fraction-0-5-s2",
        "no-cbam-labeled-fraction-1-0-s1", "no-cbam-labeled-fraction-1-0-s2",
    ]
    assert plan.trials[0].variant == "No CBAM, labeled_fraction=0.5"
    config = plan.config_for(plan.trials[-1])
    assert (config.model.cbam_placement, config.train.labeled_fraction, config.train.seed) == ("both", 1.0, 2)
    smoke = plan_sweep(path, smoke=True, check_stores=False)
    assert len(smoke.trials) == 4 and {t.seed for t in smoke.trials} == {1}
    small = smoke.config_for(smoke.trials[0])
    assert small.train.schedule.epochs == SMOKE_OVERRIDES["train.schedule.epochs"]
    assert small.model.base_width == 4 and small.data.patch_size == (32, 16, 16)
    assert [t.key for t in expand(load_sweep(path))] == [t.key for t in plan.trials]  # deterministic


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace("model.cbam_placement: none", "model.cbam_placment: none"), "cbam_placment"),
        (GOOD.replace("model.cbam_placement: none", "model.cbam_placement: everywhere"), "everywhere"),
        (GOOD.replace("[0.5, 1.0]", "[0.5, 1.5]"), "labeled_fraction"),
        (GOOD.replace("seeds: [1, 2]", "seeds: [1, 1]"), "seeds repeat"),
        (GOOD.replace("CBAM both", "No CBAM"), "labels must be unique"),
        (GOOD + "kind: line\n", "needs x_key"),
        (GOOD + "x_key: model.width\n", "not a grid key"),
        (GOOD + "entrypoint: not a function\n", "entrypoint"),
        (GOOD + "unknown_field: 1\n", "unknown_field"),
        (GOOD.replace("grid: {train.labeled_fraction: [0.5, 1.0]}", "grid: {train.seed: []}"), "has no values"),
        ("name: x\ndata: {store: s.zarr}\n", "needs `variants` or `grid`"),
        ("- just a list\n", "mapping"),
    ],
)
def test_invalid_sweeps_fail_before_anything_starts(tmp_path, text, message):
    (tmp_path / "base.yaml").write_text("{}\n")
    with pytest.raises(SweepError, match=message) as error:
        plan_sweep(_write(tmp_path, text), check_stores=False)
    assert "sweep" in str(error.value)


def test_missing_base_and_stores_are_named(tmp_path):
    with pytest.raises(SweepError, match=r"base config .*base.yaml does not exist"):
        plan_sweep(_write(tmp_path, GOOD), check_stores=False)
    (tmp_path / "base.yaml").write_text("model: {width: 3}\n")
    with pytest.raises(SweepError, match="base config is invalid"):
        plan_sweep(_write(tmp_path, GOOD), check_stores=False)
    (tmp_path / "base.yaml").write_text("{}\n")
    with pytest.raises(SweepError, match="labeled store s.zarr does not exist"):
        plan_sweep(_write(tmp_path, GOOD))


def test_concurrency_from_cluster_resources():
    assert concurrency_limit({"CPU": 16.0}, workers=2, use_gpu=False, requested=None) == 8
    assert concurrency_limit({"CPU": 16.0}, workers=2, use_gpu=False, requested=3) == 3
    assert concurrency_limit({"CPU": 64.0, "GPU": 8.0}, workers=2, use_gpu=True, requested=None) == 4
    with pytest.raises(SweepError, match="one trial needs"):
        concurrency_limit({"CPU": 64.0}, workers=1, use_gpu=True, requested=None)


def test_cli_dry_run_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["tune", str(REPO / "sweeps/cbam_placement.yaml"), "--smoke", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "no-cbam-s42\tNo CBAM\tseed=42" in result.output and "3 trials (smoke)" in result.output
    (tmp_path / "base.yaml").write_text("{}\n")
    bad = _write(tmp_path, GOOD.replace("model.cbam_placement: none", "model.cbam: none"))
    result = runner.invoke(app, ["tune", str(bad)])
    assert result.exit_code == 2 and "model.cbam" in result.output


def test_run_sweep_refuses_bad_store_and_missing_state_before_writing(tmp_path):
    from vertseg.tuning.runner import run_sweep

    (tmp_path / "base.yaml").write_text("{}\n")
    (tmp_path / "s.zarr").mkdir()
    path = _write(tmp_path, GOOD.replace("s.zarr", str(tmp_path / "s.zarr")))
    plan = plan_sweep(path)
    with pytest.raises(SweepError, match="not a vertseg store"):
        run_sweep(plan, root=tmp_path / "runs")
    with pytest.raises(SweepError, match="nothing to resume"):
        run_sweep(plan, root=tmp_path / "runs", resume=True)
    assert not (tmp_path / "runs").exists()  # no MLflow parent, no state: a corrected rerun starts cleanly


@pytest.mark.parametrize("started", [True, False])
def test_second_ctrl_c_exits_130_with_the_resume_command(tmp_path, monkeypatch, started):
    """A Ctrl-C that escapes Ray Tune (a second one, or one before Tune runs) still says how to resume the sweep,
    with the options given; one before the sweep wrote its state says there is nothing to resume."""
    import vertseg.tuning.runner as runner

    def interrupted(plan, *, root, **_):
        if started:
            runner.sweep_folder(root, plan.sweep.name).mkdir(parents=True)
            (runner.sweep_folder(root, plan.sweep.name) / runner.STATE_FILE).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_sweep", interrupted)
    (tmp_path / "base.yaml").write_text("{}\n")
    (tmp_path / "s.zarr").mkdir()
    path = _write(tmp_path, GOOD.replace("s.zarr", str(tmp_path / "s.zarr")))
    args = ["tune", str(path), "--smoke", "--out", str(tmp_path / "my runs"), "--workers-per-trial", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    if started:
        assert (f"sweep demo interrupted; resume it with: vertseg tune {path} --workers-per-trial 2 --smoke --out "
                f"'{tmp_path / 'my runs'}' --resume") in text
    else:
        assert "sweep demo interrupted; it had not started; nothing to resume" in text


def test_store_options_replace_the_sweep_files_stores(tmp_path):
    (tmp_path / "base.yaml").write_text("{}\n")
    path = _write(tmp_path, GOOD.replace("{store: s.zarr}", "{store: s.zarr, unlabeled: u.zarr}"))
    assert plan_sweep(path, check_stores=False).sweep.data.unlabeled == Path("u.zarr")
    swapped = plan_sweep(path, store=Path("p.zarr"), check_stores=False).sweep.data
    assert (swapped.store, swapped.unlabeled) == (Path("p.zarr"), None)
    both = plan_sweep(path, unlabeled=Path("v.zarr"), check_stores=False).sweep.data
    assert (both.store, both.unlabeled) == (Path("s.zarr"), Path("v.zarr"))
