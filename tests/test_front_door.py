"""The first things a TotalSegmentator or nnU-Net user tries: `vertseg --version`, `dir(vertseg)`, a wrong path."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

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


def test_predict_help_at_80_columns_cuts_no_option_text():
    """Rich cuts a word wider than the help column with an ellipsis: '<case>_statistics.json/.c…' was one."""
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "--per-vertebra" in result.output and "--roi-subset" in result.output
    assert max(map(len, result.output.splitlines())) <= 80
    assert "…" not in result.output, result.output
    import typer.main

    command = typer.main.get_command(app).commands["predict"]
    words = [word for param in command.params for word in (getattr(param, "help", "") or "").split()]
    assert max(map(len, words)) <= 27, max(words, key=len)  # the help column at 80 with Typer's own type names


@functools.lru_cache(maxsize=None)
def _help_pages() -> tuple[tuple[str, str], ...]:
    """("vertseg ...", its `--help` in an 80-column terminal) for `vertseg` and every command and subcommand, run
    through the real CLI as a user runs it."""
    runner = CliRunner()
    pages = []
    for words in [(), *(tuple(name.split()) for name, _, _ in _commands())]:
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        pages.append((" ".join(("vertseg", *words)), result.output))
    return tuple(pages)


def _help_texts(command) -> list[str]:
    return [command.help or "", command.short_help or ""] + [getattr(p, "help", "") or "" for p in command.params]


def _internal_constants() -> set[str]:
    """Module-level ALL_CAPS names of the package (FAST_OVERRIDES, ...): Python's, not a user's, words."""
    import ast

    names = set()
    for path in Path(vertseg.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names |= {t.id.lstrip("_") for t in targets if isinstance(t, ast.Name)
                      and re.fullmatch(r"_?[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", t.id)}
    return names


def test_help_never_names_an_issue_or_an_internal_constant():
    """Neither the help texts nor the pages a user sees name an issue, a Python constant, or an equation, table or
    figure without saying whose (`the paper's Eq. 16`, not `Eq. 16`)."""
    constants = _internal_constants()
    assert "FAST_OVERRIDES" in constants
    bare_reference = r"(?<!paper's )(?<!its )\b(Eqs?\.|Figs?\.|Tables?) ?\d"
    for name, command, _ in _commands():
        for text in _help_texts(command):
            assert not re.search(r"(?i:\bissues? #?\d+)|(?<![\w&])#\d+\b|[a-z]\.[A-Z]{3,}_[A-Z_]{3,}", text), f"{name}: {text}"
            assert not re.search(bare_reference, text), f"{name}: {text}"
            assert not constants & set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text)), f"{name}: {text}"
    for name, page in _help_pages():
        named = constants & set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", page))
        assert not named and not re.search(r"\bissues? #?\d+", page, re.I), f"{name}: {named}\n{page}"


def test_help_shows_no_type_after_a_flag_and_a_plain_metavar_after_a_value():
    """Typer's Rich help printed `<bool>` after every flag and `<list[Path]>`, `<str>`, `<int range>` after values;
    an nnU-Net or TotalSegmentator user expects nothing after a flag and PATH, TEXT or INTEGER after a value."""
    pages = dict(_help_pages())
    assert {"vertseg predict", "vertseg train", "vertseg evaluate", "vertseg preprocess", "vertseg tune"} <= set(pages)
    for name, page in pages.items():
        assert not re.search(r"<(bool|str|int|float|path|list\[)", page), f"{name}:\n{page}"
        assert max(map(len, page.splitlines())) <= 80, f"{name}:\n{page}"
    predict = pages["vertseg predict"]
    assert re.search(r"inputs\.\.\.\s+PATH\s", predict) and re.search(r"--out\s+-o\s+PATH\s", predict)
    assert re.search(r"--workers\s+INTEGER\s[^\n]*\n\W*\[x>=1\]\s", predict)  # its range on the line under it
    assert re.search(r"--seed\s+INTEGER\s", predict)
    assert re.search(r"--statistics\s+Also", predict) and re.search(r"--help\s+Show", predict)  # flags: no type
    assert re.search(r"--instances\s+labels\|binary\s", pages["vertseg evaluate"])
    assert re.search(r"--init-from\s+CKPT\s", pages["vertseg train"])  # a metavar the code gives is kept
    assert re.search(r"--version\s+Print", pages["vertseg"])  # `vertseg --help` is click's plain text when piped


def test_no_help_at_80_columns_is_cut_with_an_ellipsis():
    """Rich cuts an option name squeezed by a wide metavar column ('--labeled-fracti…') and a help word wider than
    its column ('training,validation,te…') with an ellipsis; no page, bench included, may show one. Nor may a
    default be this machine's path (submit's `/work/.../bin/python…`)."""
    pages = dict(_help_pages())
    assert {"vertseg", "vertseg synth", "vertseg bench identification", "vertseg submit"} <= set(pages)
    for name, page in pages.items():
        assert "…" not in page, f"{name}:\n{page}"
        assert sys.executable not in page and "/bin/python" not in page, f"{name}:\n{page}"


def test_no_help_outside_bench_points_into_the_docs_folder(tmp_path):
    """docs/ is in the repository, not in the wheel: a pip user's help and errors say what they mean instead (the
    developer benchmarks, run from a checkout, may name docs/benchmarks.md, their output)."""
    from vertseg.weights import Registry, RegistryError

    for name, command, _ in _commands():
        if not name.startswith("bench"):
            assert not any("docs/" in text for text in _help_texts(command)), name
    for name, page in _help_pages():
        if not name.startswith("vertseg bench"):
            assert "docs/" not in page, f"{name}:\n{page}"
    with pytest.raises(RegistryError) as error:
        Registry(tmp_path / "weights").get()
    assert "docs/" not in str(error.value) and "vertseg weights import --help" in str(error.value)


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
