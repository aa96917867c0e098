"""`--fast` (the network on a 2x coarser grid), the per-case stage line and the per-case window bar."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from vertseg.config import build_config
from vertseg.inference.cases import collect_jobs, load_job
from vertseg.inference.config import FAST_OVERRIDES
from vertseg.inference.column import block_mean
from vertseg.inference.localisation import SpineBox, grown_box, mask_bounds
from vertseg.inference.model_loading import resolve_device
from vertseg.inference.predictor import Predictor, upsample_prediction
from vertseg.inference.sliding_window import WindowPrediction
from vertseg.inference.progress import CaseWindows
from vertseg.inference.runner import STEPS, predict_job, stage_line
from test_inference_predict import OracleNet, _levels_phantom

TINY = {
    "model": {"base_width": 2, "bottleneck": "none", "cbam_placement": "none"},
    "data": {"patch_size": [16, 16, 16]},
    "inference": {"overlap": 0.5, "window_batch_size": 4, "min_fragment_ml": 0.1, "localisation": "none"},
}
LEVELS = OracleNet.LEVELS


class LevelOracle(OracleNet):
    """`OracleNet` (bone above 200 HU, its level named by its HU) that also records the window shapes it sees."""

    def __init__(self, seen: list | None = None) -> None:
        super().__init__()
        self.seen = seen if seen is not None else []

    def forward(self, x):
        self.seen += [tuple(x.shape[2:])] * x.shape[0]
        return super().forward(x)


def _predict(tmp_path: Path, overrides: list[str], name: str, seen: list | None = None) -> tuple[dict, np.ndarray]:
    predictor = Predictor(LevelOracle(seen), build_config(copy.deepcopy(TINY), overrides), "cpu")
    record = predict_job(predictor, collect_jobs([tmp_path / "levels.nii.gz"])[0], tmp_path / name)
    assert record["status"] == "ok", record.get("traceback")
    seg = nib.load(str(tmp_path / name / "levels" / "levels_seg.nii.gz"))
    assert seg.shape == (48, 44, 40)
    np.testing.assert_allclose(seg.affine, nib.load(str(tmp_path / "levels.nii.gz")).affine, atol=1e-4)
    return record, np.asarray(seg.dataobj)


def test_coarser_windows_run_the_network_on_a_2x_coarser_grid_and_write_on_the_original_one(tmp_path):
    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    full, _ = _predict(tmp_path, [], "full")
    seen: list[tuple[int, ...]] = []
    fast, seg = _predict(tmp_path, ["inference.window_downsample=2"], "fast", seen)
    assert fast["vertebrae"] == full["vertebrae"] == ["L3", "L4", "L5"]
    box = np.array(fast["spine_box"]["stop_zyx"]) - fast["spine_box"]["start_zyx"]
    assert box[0] >= 58  # the box is on the 1 mm store frame (about 60 x 35 x 43 voxels) ...
    assert len(seen) == fast["windows"] < full["windows"] and set(seen) == {(16, 16, 16)}  # ... the network on 2 mm
    for label in LEVELS:
        true_mask, pred_mask = truth == label, seg == label
        dice = 2 * np.count_nonzero(true_mask & pred_mask) / (true_mask.sum() + pred_mask.sum())
        assert dice > 0.8, (label, dice)  # 10 mm vertebrae seen through 2 mm voxels, probabilities interpolated back
    line = stage_line(fast)
    assert line.startswith("levels: ") and line.endswith(f"({fast['windows']} windows)")
    for step in STEPS:
        assert f"{step} {fast['seconds'][step]:.1f}" in line
    assert f"total {fast['seconds']['total']:.1f} s" in line


def test_fast_means_fewer_windows_on_the_bone_box_with_the_same_labels(tmp_path):
    _levels_phantom(tmp_path / "levels.nii.gz")
    full, full_seg = _predict(tmp_path, ["inference.localisation=bone"], "full")  # TINY alone: no localisation
    fast, fast_seg = _predict(tmp_path, [*FAST_OVERRIDES], "fast")
    assert fast["spine_box"] == full["spine_box"] and fast["spine_box"]["method"] == "bone"
    assert fast["windows"] < full["windows"]  # overlap 0.25 instead of TINY's 0.5
    assert fast["vertebrae"] == full["vertebrae"] == ["L3", "L4", "L5"]
    np.testing.assert_array_equal(fast_seg, full_seg)  # a pointwise network: fewer windows lose nothing


def test_a_box_that_cuts_the_spine_grows_until_the_foreground_is_inside(tmp_path):
    """A localiser that misses the upper vertebra (the bone heuristic did this to a steep upper cervical spine) must
    not cost it: the fine pass's foreground touches the box's upper face, the face moves up and the box is rerun."""
    _levels_phantom(tmp_path / "levels.nii.gz")
    config = build_config(copy.deepcopy(TINY))
    predictor = Predictor(LevelOracle(), config, "cpu")
    scan = load_job(collect_jobs([tmp_path / "levels.nii.gz"])[0], predictor.spacing, tuple(config.data.hu_window))
    bone = scan.hu > 200.0
    lo, hi = mask_bounds(bone)
    cut = SpineBox((int(lo[0] + (hi[0] - lo[0]) // 2), *map(int, lo[1:])), tuple(int(v) for v in hi), "test")
    assert bone[cut.slices].sum() < bone.sum()

    box, window = predictor.predict_spine(scan.image, cut)
    assert box.method == "test+grown"
    assert all(a <= b for a, b in zip(box.start, lo)) and all(a >= b for a, b in zip(box.stop, hi))
    assert (window.fg_prob > 0.5).sum() == bone.sum()  # the pointwise oracle's foreground is the bone, all of it

    stuck = Predictor(LevelOracle(), build_config(copy.deepcopy(TINY), ["inference.box_growth_rounds=0"]), "cpu")
    box, window = stuck.predict_spine(scan.image, cut)
    assert box == cut and (window.fg_prob > 0.5).sum() == bone[cut.slices].sum()


def test_only_touched_inner_faces_grow():
    fg = np.zeros((8, 8, 8), dtype=bool)
    box = SpineBox((4, 0, 4), (12, 8, 12), "bone")
    assert grown_box(box, fg, 2.0, (20, 20, 20)) is None
    fg[3, 0, 3] = True  # touches y = 0, which is the volume's edge: nothing beyond it
    assert grown_box(box, fg, 2.0, (20, 20, 20)) is None
    fg[0, 3, 7] = True  # touches the upper z face and the far x face
    assert grown_box(box, fg, 4.0, (20, 20, 20)) == SpineBox((0, 0, 4), (12, 8, 16), "bone+grown")


def test_upsampling_restores_the_grid_and_is_exact_for_linear_maps():
    z, y, x = np.meshgrid(np.arange(24.0), np.arange(16.0), np.arange(16.0), indexing="ij")
    fg = (0.01 * z + 0.02 * y + 0.03 * x).astype(np.float32)  # linear: block means and trilinear agree inside
    low = block_mean(fg, 8)  # the 1/4 grid of the 2x coarser grid
    coarse = WindowPrediction(block_mean(fg, 2), np.stack([1 - low, low]).astype(np.float16), windows=3)
    out = upsample_prediction(coarse, (23, 15, 13), 2)  # the box was cropped to a multiple of the factor
    assert out.fg_prob.shape == (23, 15, 13) and out.windows == 3 and out.id_prob.dtype == np.float16
    np.testing.assert_allclose(out.fg_prob[1:-1, 1:-1, 1:-1], fg[1:22, 1:14, 1:12], atol=1e-5)
    assert out.id_prob.shape == (2, 6, 4, 4)  # ceil(shape / 4) of the fine box
    np.testing.assert_allclose(out.id_prob.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    np.testing.assert_allclose(out.id_prob[1, 1:-1, 1:-1, 1:-1], block_mean(fg, 4)[1:-1, 1:-1, 1:-1], atol=2e-3)


def test_mps_is_refused_where_there_is_none():
    with pytest.raises(ValueError, match="mps"):
        resolve_device("mps")
    assert resolve_device("cpu").type == "cpu"


def test_window_bar_lives_for_one_case_and_only_on_a_terminal():
    terminal = Progress(console=Console(file=io.StringIO(), force_terminal=True))
    bar = CaseWindows(terminal)
    bar.update(0, 12)
    bar.update(4, 12)
    (task,) = terminal.tasks
    assert (task.completed, task.total) == (4, 12)
    bar.finish()
    assert terminal.tasks == []
    bar.update(1, 3)  # the next case gets a fresh bar
    assert [(t.completed, t.total) for t in terminal.tasks] == [(1, 3)]

    piped = Progress(console=Console(file=io.StringIO(), force_terminal=False))
    silent = CaseWindows(piped)
    silent.update(2, 5)
    assert piped.tasks == []
    silent.finish()


def test_cli_fast_prints_one_stage_line_per_case(tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from vertseg.cli.main import app

    _levels_phantom(tmp_path / "levels.nii.gz")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "identification_branch": False}}))
    result = CliRunner().invoke(app, ["predict", "-i", str(tmp_path / "levels.nii.gz"), "-o", str(tmp_path / "out"),
                                      "--random-weights", "--config", str(config), "--fast", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "summary.json").read_text())["records"][0]
    assert record["spine_box"]["method"] in ("bone", "none (no spine found)")  # --fast names the bone heuristic
    lines = [line for line in result.output.splitlines() if line.startswith("levels: load ")]
    assert len(lines) == 1 and f"({record['windows']} windows)" in lines[0]


class _AutocastProbe(torch.nn.Module):
    """Records whether each forward pass runs under CPU autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.autocast: list[bool] = []
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x):
        from vertseg.model.output import SegIdOutput

        self.autocast.append(torch.is_autocast_enabled("cpu"))
        out = self.conv(x)
        return SegIdOutput(seg=[out[:, :1]], identification=None)


@pytest.mark.parametrize("native", [True, False])
def test_fast_runs_the_windows_in_bf16_only_where_the_device_computes_bf16(monkeypatch, native):
    """bf16 doubles the window rate on a CPU with AVX512-BF16 and halves it on one without: `--fast` asks for it,
    the device decides; the default path stays float32 everywhere."""
    import vertseg.inference.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "native_bf16", lambda device: native)
    batch = torch.zeros((1, 1, 16, 16, 16))
    for overrides, expected in ((list(FAST_OVERRIDES), native), ([], False)):
        probe = _AutocastProbe()
        seg, _ = Predictor(probe, build_config(copy.deepcopy(TINY), overrides), "cpu").net(batch)
        assert probe.autocast == [expected] and seg.shape == (1, 1, 16, 16, 16)


def test_cpu_bf16_training_is_opt_in_and_only_where_native(monkeypatch):
    import vertseg.training.trainer as trainer_module
    from vertseg.training.trainer import Trainer

    small = ["model.base_width=2", "model.bottleneck=none", "data.patch_size=[16,16,16]"]
    for native in (True, False):
        monkeypatch.setattr(trainer_module, "native_bf16", lambda device, native=native: native)
        assert not Trainer(build_config({}, small)).autocast
        assert Trainer(build_config({}, small + ["train.cpu_bf16=true"])).autocast == native
