"""`vertseg preprocess`, `vertseg inspect` and `vertseg bench data`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from vertseg.cli.common import ConfigOption, MessageConsole, SetOption, config_or_exit, console, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("preprocess")
    def preprocess(
        sources: list[Path] = typer.Argument(..., help="Dataset folders, NIfTI files or DICOM folders."),
        out: Path = typer.Option(..., "--out", "-o", help="The Zarr store to create or update (STORE.zarr)."),
        config: Path = ConfigOption,
        overrides: list[str] = SetOption,
        address: str = typer.Option(None, help="Ray cluster to join (e.g. 'auto' or ray://host:10001); default local."),
        workers: int = typer.Option(None, min=1, help="Cases processed at once (default: all CPUs)."),
        overwrite: bool = typer.Option(False, help="Redo cases already in the store even if their sources are unchanged."),
        pool: str = typer.Option("auto", help="labeled | unlabeled | auto (labeled when a mask exists)."),
        dataset: str = typer.Option(None, help="Force a layout/dataset name (verse19, verse20, ctspine1k, nifti, dicom)."),
        overlap: str = typer.Option("dedupe", help="Patients in two pools: dedupe (keep the safest) or refuse."),
        label_format: str = typer.Option(None, "--label-format", help=(
            "Mask numbering: verse | ctspine1k | totalseg_v1 | totalseg_v2 | totalsegmentator (version read from the "
            "file, refused when it cannot tell). Default: the layout's own (VerSe, CTSpine1K), else verse."
        )),
        allow_irregular: bool = typer.Option(
            False, "--allow-irregular",
            help="DICOM series with uneven slice positions (a missing slice): resample onto a uniform grid instead of refusing.",
        ),
    ) -> None:
        """Turn scans and masks into a Zarr store for training.

        Resample scans to the canonical 1 mm frame and write them to a chunked Zarr v3 store, in parallel on Ray."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from vertseg.data.parallel import run_preprocess
        from vertseg.data.readers import OverlapError, check_pool_overlap, discover_cases

        if pool not in ("auto", "labeled", "unlabeled"):
            raise fail(f"--pool must be labeled, unlabeled or auto, not {pool!r}")
        settings = config_or_exit(config, overrides)
        try:
            found = discover_cases(sources, dataset, label_format, allow_irregular=allow_irregular)
            report = check_pool_overlap(found, policy=overlap)
        except OverlapError as error:
            raise fail(f"patients overlap across pools (--overlap refuse):\n{error}") from None
        except ValueError as error:
            raise fail(str(error)) from None
        if not report.clean:
            console.print(f"[yellow]{report.summary()}[/]", highlight=False)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("preprocessing", total=len(report.kept))

            def advance(result: dict[str, Any]) -> None:
                progress.update(task, advance=1, description=f"{result['case_id']} {result['status']}")

            try:
                summary = run_preprocess(report.kept, out, settings.data, pool, overwrite, address, workers, advance)
            except (ValueError, RuntimeError) as error:
                raise fail(str(error)) from None
        console.print(
            f"{summary.count('written')} written, {summary.count('skipped')} unchanged, "
            f"{summary.count('failed')} failed -> {out} ({len(summary.manifest['cases'])} cases in store)",
            highlight=False,
        )
        for failure in summary.failures:
            console.print(f"[red]failed[/] {failure['case_id']}: {failure['file']}: {failure['problem']}", highlight=False)
        if summary.failures:
            raise typer.Exit(1)

    @app.command("inspect")
    def inspect(
        store: Path = typer.Argument(..., help="A store written by `vertseg preprocess`."),
        case: str = typer.Argument(None, help="One case id; default: every case."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        """Show what a store holds, case by case.

        Shapes, spacing, orientation, label volumes (ml) and centroids (RAS mm of the original scan) per case."""
        from vertseg.data.inspect import describe_store
        from vertseg.data.store import StoreError

        try:
            description = describe_store(store, case)
        except (StoreError, KeyError) as error:
            raise fail(str(error).strip("'\"")) from None
        if as_json:
            typer.echo(json.dumps(description, indent=2))
        else:
            _print_description(description)
        damaged = [(record["case_id"], problem) for record in description["cases"] for problem in record["problems"]]
        for case_id, problem in damaged:
            console.print(f"[red]damaged[/red] {case_id}: {problem}", highlight=False)
        if damaged:
            raise fail(f"{len({c for c, _ in damaged})} case(s) of {store} have damaged shards; run `vertseg preprocess` "
                       "again (it rewrites them)", code=1)

    @bench_app.command("data")
    def bench_data(
        quick: bool = typer.Option(False, help="Fewer, smaller cases and reads (about a minute)."),
        workdir: Path = typer.Option(None, help="Scratch folder (default: a temporary one)."),
        output: Path = typer.Option(Path("docs/benchmarks.md"), help="Benchmarks file to update."),
    ) -> None:
        """Preprocessing and patch-read throughput.

        Preprocessing throughput and patch reads/s + disk use: Zarr store vs NIfTI, Blosc2 and .npy layouts."""
        from vertseg.bench.data import run_data_bench

        run_data_bench(quick=quick, workdir=workdir, output=output, echo=typer.echo)


def _print_description(description: dict[str, Any]) -> None:
    from rich.table import Table

    out = MessageConsole()
    summary = description["summary"]
    out.print(
        f"store {description['store']}: {summary['cases']} cases ({summary['labeled']} labeled, "
        f"{summary['unlabeled']} unlabeled), {summary['patients']} patients, splits {summary['splits']}, "
        f"{summary['failures']} failures; fingerprint {summary['fingerprint'][:12]}",
        highlight=False,
    )
    table = Table("case", "split", "pool", "shape (z,y,x)", "spacing", "orientation", "vertebrae", "volume ml")
    for record in description["cases"]:
        table.add_row(
            record["case_id"], record["split"], record["pool"], "x".join(map(str, record["shape_zyx"])),
            f"{record['spacing_mm']:g} mm", f"{record['orientation']['original']} -> {record['orientation']['store']}",
            " ".join(row["name"] for row in record["labels"]) or "-",
            f"{sum(row['volume_ml'] for row in record['labels']):.1f}",
        )
    out.print(table)
    if len(description["cases"]) == 1 and description["cases"][0]["labels"]:
        detail = Table("label", "volume ml", "body centroid (RAS mm)", "mask centre (RAS mm)")
        for row in description["cases"][0]["labels"]:
            detail.add_row(
                row["name"], f"{row['volume_ml']:.2f}",
                *("-" if p is None else " ".join(f"{v:.1f}" for v in p) for p in (row["body_centroid_ras"], row["mask_centre_ras"])),
            )
        out.print(detail)
    for failure in description["failures"]:
        out.print(f"[red]failed[/] {failure['case_id']}: {failure['file']}: {failure['problem']}", highlight=False)
