"""Fast checks of the demo/quality-bench plumbing: metric keys, aggregation, verdicts, output capture, folder safety."""

from __future__ import annotations

import math
import os
import sys

import pytest

from vertseg.bench.quality import RunOutcome, diagnostics, labeled_coverage, mean_std, render, verdict
from vertseg.steps import PhantomPools

def test_mean_std_is_the_sample_std_and_ignores_nan():
    assert mean_std([1.0, 3.0, math.nan]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_labeled_coverage_names_the_levels_no_labeled_scan_shows():
    from vertseg.training.data import split_labeled

    scans = {"a": set(range(1, 8)), "b": set(range(8, 20)), "c": set(range(16, 25)), "d": {20, 21}}
    lines = labeled_coverage(scans, seeds=3).removesuffix(".").split(": ", 1)[1].split("; ")
    for seed, line in enumerate(lines):
        (kept,), _ = split_labeled(list(scans), 0.25, seed)
        assert line.startswith(f"seed {seed}: 1 labeled scans show {len(scans[kept])}/24 of C1-L5 (never: ")
        never = line.split("never: ")[1].rstrip(")").split()
        assert ("C1" in never) == (1 not in scans[kept]) and ("L5" in never) == (24 not in scans[kept])


def test_diagnostics_average_only_the_epochs_with_consistency_and_name_the_kept_checkpoint():
    volume = {"val_volume_dice": 0.8, "val_volume_id_acc": 0.9, "val_volume_id_rate": 0.9}
    history = [{"epoch": 1, "lambda_cons": 0.0, "val_dice": 0.4, **volume},
               {"epoch": 2, "lambda_cons": 0.0, "pass_seg": 0.0},
               {"epoch": 3, "lambda_cons": 0.25, "pass_seg": 0.2, "pass_cls": 0.1, "val_dice": 0.6,
                **volume, "val_volume_id_acc": 0.5, "val_volume_id_rate": 0.5},
               {"epoch": 4, "lambda_cons": 0.5, "pass_seg": 0.4, "pass_cls": 0.3}]
    out = diagnostics(history, e_cons=2)
    assert out["lambda_final"] == 0.5 and out["pass_seg"] == pytest.approx(0.3) and out["pass_cls"] == pytest.approx(0.2)
    # the checkpoint the trainer keeps (full-volume identification), not the best patch Dice
    assert out["val_score_best"] == pytest.approx(2.6 / 3) and out["best_epoch"] == 1
    assert math.isnan(out["loss_cons_seg"])


def _outcome(method: str, seed: int, dice: float) -> RunOutcome:
    metrics = {"test_vertebra_dice": dice, "test_dice": dice, "test_id_acc": dice / 2, "test_id_rate": dice / 2}
    return RunOutcome(method, seed, metrics, {"lambda_final": 0.5}, 10.0)


def test_verdict_pairs_seeds_and_says_when_proposed_does_not_win():
    losing = [_outcome("fsl", s, 0.8) for s in range(3)] + [_outcome("proposed", s, 0.7 + 0.1 * (s == 0)) for s in range(3)]
    text = verdict(losing)
    assert "`proposed` does not beat `fsl`" in text and "better on 0/3 seeds" in text
    winning = [_outcome("fsl", s, 0.6) for s in range(3)] + [_outcome("proposed", s, 0.7) for s in range(3)]
    assert ("Dice: `proposed` beats `fsl`: paired difference +10.0 points (sample std 0.0, standard error 0.0), "
            "better on 3/3") in verdict(winning)
    noisy = [_outcome("fsl", s, 0.6) for s in range(3)] + [_outcome("proposed", s, d) for s, d in enumerate((0.61, 0.62, 0.4))]
    assert "`proposed` does not beat `fsl`" in verdict(noisy)  # mean below zero
    close = [_outcome("fsl", s, 0.6) for s in range(3)] + [_outcome("proposed", s, d) for s, d in enumerate((0.61, 0.62, 0.59))]
    assert ("Dice: `proposed` is within noise (2 standard errors) of `fsl`: paired difference +0.7 points "
            "(sample std 1.5, standard error 0.9)") in verdict(close)
    body = render(winning, ["fsl", "proposed"], PhantomPools(8, 2, 0, 4), ["x=1"], 60.0)
    assert "| proposed | 3 | 70.0 ± 0.0 |" in body and "| fsl | 3 | 60.0 ± 0.0 |" in body


def test_captured_output_takes_python_and_fd_level_writes(tmp_path):
    from vertseg.demo import captured_output

    log = tmp_path / "logs" / "stage.log"
    with captured_output(log):
        print("from python")
        sys.stderr.write("from stderr\n")
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
    text = log.read_text()
    assert all(line in text for line in ("from python", "from stderr", "from fd 1", "from fd 2"))


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    from vertseg.demo import DemoError, prepare_out

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a `vertseg demo` output"):
        prepare_out(tmp_path, fresh=True)
    assert (tmp_path / "precious.txt").exists()
    demo = tmp_path / "demo"
    prepare_out(demo, fresh=False)
    (demo / "old.txt").write_text("stale")
    prepare_out(demo, fresh=True)
    assert not (demo / "old.txt").exists() and (demo / ".stages").is_dir()


def test_demo_config_keeps_the_paper_schedule_shape():
    from vertseg.config import load_config
    from vertseg.demo import DEMO_CONFIG

    schedule = load_config(DEMO_CONFIG).train.schedule
    assert schedule.e_cons / schedule.epochs == pytest.approx(0.4) and schedule.e_ramp / schedule.epochs == pytest.approx(0.8)


def test_longer_budget_keeps_the_schedule_shape():
    from vertseg.bench.quality import CPU_OVERRIDES, scale_schedule
    from vertseg.config import load_config
    from vertseg.demo import DEMO_CONFIG

    base = load_config(DEMO_CONFIG, CPU_OVERRIDES).train
    longer = load_config(DEMO_CONFIG, scale_schedule(CPU_OVERRIDES, 3)).train
    assert longer.schedule.epochs == 3 * base.schedule.epochs
    assert longer.schedule.e_cons / longer.schedule.epochs == base.schedule.e_cons / base.schedule.epochs == 0.4
    assert longer.schedule.iterations_per_epoch == base.schedule.iterations_per_epoch


def test_the_reference_stage_refuses_a_bundled_model_that_does_not_match_its_checksum(tmp_path, monkeypatch):
    import shutil

    import vertseg.demo as demo
    from vertseg.config import load_config

    tampered = tmp_path / "phantom-fsl.pt"
    shutil.copy(demo.REFERENCE, tampered)
    shutil.copy(demo.REFERENCE.with_suffix(".json"), tmp_path / "phantom-fsl.json")
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    monkeypatch.setattr(demo, "REFERENCE", tampered)
    context = demo.DemoContext(tmp_path / "out", load_config(demo.DEMO_CONFIG), demo.QUICK, 1)
    with pytest.raises(RuntimeError, match="phantom-fsl.pt does not match its sha256"):
        demo.stage_reference(context, lambda *_: None)
    assert not (tmp_path / "out").exists()  # refused before any phantom is written


def test_a_saved_reference_score_is_redone_for_another_bundled_model(tmp_path):
    import vertseg.demo as demo
    from vertseg.config import load_config

    context = demo.DemoContext(tmp_path, load_config(demo.DEMO_CONFIG), demo.QUICK, 1)
    assert not demo.stale("reference", {"sha256": demo.reference_sha256()}, context)
    assert demo.stale("reference", {"sha256": "0" * 64}, context)  # scored by the model this one replaced
    assert demo.stale("reference", {}, context)  # saved before scores named their model
    assert demo.stale("data", {"pools": demo.FULL.__dict__}, context)  # full-demo phantoms in a --quick run
    assert not demo.stale("data", {"pools": demo.QUICK.__dict__}, context)


def test_the_bundled_reference_model_is_the_file_its_provenance_describes():
    import json

    from vertseg.demo import REFERENCE
    from vertseg.weights.fetch import sha256_of

    provenance = json.loads(REFERENCE.with_suffix(".json").read_text())
    assert provenance["file"] == REFERENCE.name and provenance["sha256"] == sha256_of(REFERENCE)


def test_a_larger_test_pool_starts_with_the_benchmarked_one(tmp_path):
    import hashlib
    from dataclasses import replace

    from vertseg.bench.quality import extended_test_pool
    from vertseg.steps import make_phantom_pools

    pools = PhantomPools(training=0, validation=0, unlabeled=0, test=1, seed=5, size="small")
    default = make_phantom_pools(tmp_path / "data", pools)["test"]
    larger = extended_test_pool(tmp_path, replace(pools, test=1), 2)

    def scans(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*_ct.nii.gz"))}

    assert len(scans(larger)) == 2 and scans(default).items() <= scans(larger).items()
    written = (larger / "synth.json").stat().st_mtime_ns
    assert extended_test_pool(tmp_path, pools, 2) == larger
    assert (larger / "synth.json").stat().st_mtime_ns == written  # written once, then reused


@pytest.mark.parametrize("scored_on", ["fsl-seed0.json", "fsl-seed0-test12.json"])
def test_a_finished_scored_run_is_reused_without_training_and_keeps_its_training_time(tmp_path, scored_on):
    import json

    from vertseg.bench.quality import _finished
    from vertseg.training.checkpoint import save_checkpoint

    run, outcomes = tmp_path / "runs" / "fsl-seed0", tmp_path / "outcomes"
    save_checkpoint(run / "best" / "checkpoint.pt", {"epoch": 2})
    save_checkpoint(run / "checkpoints" / "latest.pt", {"epoch": 3})
    assert _finished(run, 3, outcomes, "fsl-seed0")[0] is None  # never scored: the benchmark has not seen it finish
    outcomes.mkdir()
    (outcomes / "fsl-seed00.json").write_text(json.dumps({"train_seconds": 5.0}))  # another run's outcome
    assert _finished(run, 3, outcomes, "fsl-seed0")[0] is None
    (outcomes / scored_on).write_text(json.dumps({"train_seconds": 1128.0}))  # scored on either test pool
    assert _finished(run, 3, outcomes, "fsl-seed0") == (run / "best" / "checkpoint.pt", 1128.0)
    assert _finished(run, 4, outcomes, "fsl-seed0")[0] is None  # a longer schedule still has epochs to train


def test_each_training_pool_size_trains_in_its_own_folder_and_writes_its_own_section(tmp_path):
    from vertseg.bench.quality import CPU_POOLS, quality_layout

    default = quality_layout(["fsl"], 2, False, tmp_path, budget=30, labeled_fraction=1.0)
    larger = quality_layout(["fsl"], 2, False, tmp_path, budget=30, labeled_fraction=1.0, training_cases=48)
    assert default.pools == CPU_POOLS and larger.pools.training == 48
    assert larger.pools.validation == CPU_POOLS.validation and larger.pools.test == CPU_POOLS.test
    assert larger.work != default.work and larger.work.parent == default.work.parent  # own phantoms, store and runs
    assert (default.key, larger.key) == ("quality-x30-b2e44c", "quality-x30-b2e44c-train48")
    assert larger.title.endswith(", 48 training phantoms")
    assert larger.command == ("vertseg bench quality --seeds 2 --methods fsl --budget 30 --labeled-fraction 1 "
                              "--training-cases 48")
    scored = quality_layout(["fsl"], 2, False, tmp_path, budget=30, labeled_fraction=1.0, training_cases=48,
                            test_cases=12)
    assert scored.work == larger.work and scored.key == "quality-x30-b2e44c-train48-test12" and scored.tag == "-test12"
