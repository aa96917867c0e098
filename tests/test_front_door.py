"""The first things a TotalSegmentator or nnU-Net user tries: `vertseg --version`, `dir(vertseg)`, a wrong path."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import vertseg
from vertseg.cli.main import app


def test_version_flag_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"vertseg {vertseg.__version__}"


def test_the_python_api_is_listed_and_a_missing_file_is_a_file_not_found_error(tmp_path):
    assert {"predict", "Result", "__version__"} <= set(dir(vertseg))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz: no such file"):
        vertseg.predict(tmp_path / "missing.nii.gz", device="cpu")


def _commands():
    """(full name, command, width of its list's widest name) for every command and subcommand."""
    import typer.main

    def walk(group, prefix=""):
        widest = max(len(name) for name in group.commands)
        for name, command in group.commands.items():
            yield prefix + name, command, widest
            if hasattr(command, "commands"):
                yield from walk(command, prefix + name + " ")
    return list(walk(typer.main.get_command(app)))


def test_command_lists_at_80_columns_are_never_cut_mid_phrase():
    for name, command, widest in _commands():
        short = command.get_short_help_str(80 - 6 - widest)  # click's room for it in an 80-column list
        assert short and not short.endswith("..."), f"{name}: {short!r}"


def test_help_never_names_an_issue_or_an_internal_constant():
    import re

    for name, command, _ in _commands():
        texts = [command.help or ""] + [getattr(p, "help", "") or "" for p in command.params]
        for text in texts:
            assert not re.search(r"\bissue \d+|[a-z]\.[A-Z]{3,}_[A-Z_]{3,}", text), f"{name}: {text}"


def test_predict_refuses_a_setting_the_model_fixes(tmp_path):
    """`--set train.schedule.epochs=10` (the old help example) was accepted by predict and did nothing."""
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", "-i", str(scan), "-o", str(tmp_path / "out"),
                                      "--set", "train.schedule.epochs=10"])
    assert result.exit_code == 2 and "predict takes inference.* settings only" in result.output


def test_inputs_renamed_or_left_unread_are_named(tmp_path):
    """Two inputs called p505 become p505 and p505_2, and an NRRD inside a folder is not read: both are said."""
    import nibabel as nib
    import numpy as np

    from vertseg.inference.cases import collect_jobs, unread_images

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(tmp_path / folder / "p505.nii.gz"))
    (tmp_path / "a" / "other.nrrd").write_bytes(b"NRRD0004")
    jobs = collect_jobs([tmp_path / "a" / "p505.nii.gz", tmp_path / "b" / "p505.nii.gz"])
    assert [(j.case_id, j.renamed_from) for j in jobs] == [("p505", None), ("p505_2", "p505")]
    assert unread_images([tmp_path / "a", tmp_path / "b" / "p505.nii.gz"]) == [tmp_path / "a" / "other.nrrd"]
