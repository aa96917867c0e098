"""`vertseg bench ssl`: paired differences, the goal check, the rendered section, and the branch protocol end to end
on a tiny store (warm-up once, every row branches from it, diagnostics from the hidden labels)."""

from __future__ import annotations

import json
import math

import pytest

from vertseg.bench.ssl import ROWS, Branch, Budget, goal_lines, paired, render
from vertseg.config import load_config
from vertseg.steps import RESOURCES, PhantomPools


def _branch(fraction: float, seed: int, row: str, acc: float, dice: float = 0.8) -> Branch:
    metrics = {"test_vertebra_dice": dice, "test_dice": dice, "test_id_acc": acc, "test_id_rate": acc}
    diagnostics = {"pass_cls": 0.1, "pseudo_acc": 0.6, "class_top2": 0.3}
    return Branch(fraction, seed, row, metrics, diagnostics, 60.0)


def test_paired_differences_use_the_same_seed_and_their_standard_error():
    runs = [_branch(0.25, s, "fsl", a) for s, a in enumerate((0.50, 0.60, 0.70))]
    runs += [_branch(0.25, s, "paper+all", a) for s, a in enumerate((0.60, 0.66, 0.78))]
    runs += [_branch(0.1, 0, "paper+all", 0.99)]  # another fraction never pairs
    mean, error, n, wins = paired(runs, 0.25, "paper+all", "test_id_acc")
    diffs = [0.10, 0.06, 0.08]
    assert n == 3 and wins == 3 and mean == pytest.approx(0.08)
    assert error == pytest.approx(math.sqrt(sum((d - 0.08) ** 2 for d in diffs) / 2) / math.sqrt(3))
    swapped = [Branch(b.fraction, b.seed, {"fsl": "paper+all", "paper+all": "fsl"}.get(b.row, b.row), b.metrics,
                      b.diagnostics, b.train_seconds) for b in runs]
    assert paired(swapped, 0.25, "paper+all", "test_id_acc")[0] == pytest.approx(-0.08)


def test_goal_lines_say_met_only_beyond_the_threshold_and_two_standard_errors():
    runs = [_branch(0.25, s, "fsl", 0.5, 0.80) for s in range(3)]
    runs += [_branch(0.25, s, "paper+all", 0.5 + d, 0.82) for s, d in enumerate((0.06, 0.07, 0.065))]
    lines = goal_lines(runs, 0.25, "paper+all")
    assert "goal Acc_ID >= +5 points" in lines[0] and ": met (+6.5" in lines[0]
    assert "goal binary Dice >= +1 points" in lines[1] and ": met (+2.0" in lines[1]
    noisy = runs[:3] + [_branch(0.25, s, "paper+all", 0.5 + d) for s, d in enumerate((0.20, -0.05, 0.01))]
    assert "not met" in goal_lines(noisy, 0.25, "paper+all")[0]
    ten = [_branch(0.1, s, "fsl", 0.3) for s in range(3)] + [_branch(0.1, s, "paper+all", 0.38) for s in range(3)]
    assert goal_lines(ten, 0.1, "paper+all")[0].startswith("- `paper+all`, goal Acc_ID >= +10 points") and "not met" in goal_lines(ten, 0.1, "paper+all")[0]


def test_render_holds_both_fractions_every_row_and_the_diagnostics():
    rows = ["fsl", "proposed-paper", "paper+all"]
    runs = [_branch(f, s, r, 0.5 + 0.05 * rows.index(r) + 0.01 * s) for f in (0.1, 0.25) for s in range(3) for r in rows]
    runs += [_branch(f, s, "warm-up", 0.4) for f in (0.1, 0.25) for s in range(3)]
    warmups = {f"f{p}-seed{s}": {"epochs": 40, "best_epoch": 30, "val_id_acc": 0.5} for p in (10, 25) for s in range(3)}
    text = render(runs, warmups, [0.1, 0.25], rows, Budget(), ["train.loader_workers=0"], PhantomPools(48, 2, 0, 4, 2026), 60.0, 2, 1)
    assert "### 10 % labels" in text and "### 25 % labels" in text
    assert "| paper+all | 3 |" in text and "+10.0 ± 0.0 (3/3)" in text
    assert "| warm-up | 3 |" in text and "pseudo_acc" in text
    assert text.count("| proposed-paper | 0 | ") == 2  # its diagnostics, once per fraction


def test_every_row_and_budget_is_a_valid_config():
    budget = Budget()
    for row in ROWS.values():
        load_config(RESOURCES / "demo.yaml", budget.branch() + list(row.overrides) + [f"train.method={row.method}"])
    load_config(RESOURCES / "demo.yaml", budget.warmup() + ["train.method=fsl"])
    assert ROWS["paper+all"].overrides and all(o in ROWS["paper+all"].overrides or o.startswith("train.ssl.")
                                               for o in ROWS["paper+gate"].overrides)


@pytest.mark.slow
def test_branch_protocol_end_to_end(tmp_path):
    """A tiny store: one warm-up per seed, fsl and proposed branch from its checkpoint, every branch is evaluated
    on the test phantom, and the semi-supervised branch logs pseudo-label accuracy against the hidden labels."""
    from vertseg.bench.ssl import run_protocol
    from vertseg.steps import make_phantom_pools, pool_sources, preprocess_in_process

    base = ["model.base_width=4", "data.patch_size=[32,16,16]", "data.spacing_mm=4.0", "train.loader_workers=0",
            "train.validate_every=1", "train.schedule.tau_cls_start=0", "train.schedule.tau_cls_end=0",
            "train.schedule.tau_seg_start=0", "train.schedule.tau_seg_end=0", "inference.localisation=bone"]
    folders = make_phantom_pools(tmp_path / "data", PhantomPools(training=4, validation=1, unlabeled=0, test=1, seed=0))
    store = tmp_path / "store.zarr"
    preprocess_in_process(pool_sources([folders["labeled"]]), store, load_config(RESOURCES / "demo.yaml", base))
    budget = Budget(warmup_epochs=2, branch_epochs=2, iterations_per_epoch=2, patience=1)
    lines: list[str] = []
    branches, warmups = run_protocol([0.5], 1, ["fsl", "proposed-paper"], base, budget, store, folders["test"],
                                     tmp_path / "runs", 1, 1, lines.append)
    assert set(warmups) == {"f50-seed0"} and any(line.startswith("warm-up f50-seed0") for line in lines)
    assert sorted(b.row for b in branches) == ["fsl", "proposed-paper", "warm-up"]
    for branch in branches:
        assert 0.0 <= branch.metrics["test_dice"] <= 1.0
    proposed = next(b for b in branches if b.row == "proposed-paper")
    assert math.isfinite(proposed.diagnostics["pseudo_cover"])  # the held-back scans' labels were read
    config = (tmp_path / "runs" / "branches" / "f50-seed0-proposed-paper" / "config.yaml").read_text()
    assert "method: proposed" in config and "labeled_fraction: 0.5" in config
    saved = json.loads((tmp_path / "runs" / "outcomes" / "f50-seed0-fsl.json").read_text())
    assert saved["row"] == "fsl"
    again, _ = run_protocol([0.5], 1, ["fsl", "proposed-paper"], base, budget, store, folders["test"],
                            tmp_path / "runs", 1, 1, lines.append)  # everything reused, nothing retrained
    assert sorted((b.row, b.metrics["test_dice"]) for b in again) == sorted((b.row, b.metrics["test_dice"]) for b in branches)
