"""`vertseg synth`: spine CT phantoms in a real dataset layout, for tests, demos and trying the pipeline."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import console, fail


def _parse_splits(text: str) -> dict[str, float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--splits takes three fractions training,validation,test, not {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--splits takes numbers, not {text!r}") from None
    if min(values) < 0 or sum(values) <= 0:
        raise ValueError(f"--splits fractions must be >= 0 with a positive sum, not {text!r}")
    return dict(zip(("training", "validation", "test"), values))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., help="Folder to write the dataset into (created if absent)."),
        cases: int = typer.Option(8, "--cases", "-n", min=1, help="Number of scans."),
        layout: str = typer.Option(
            "verse20", help="On-disk layout: verse20 | verse19 | verse-legacy | ctspine1k | nifti (nnU-Net style)."
        ),
        seed: int = typer.Option(0, help="Case i depends only on (seed, i): reruns give identical files."),
        size: str = typer.Option("small", help="small (~64x64x96 voxels, ~2 mm) | medium (~1 mm, <=192) | large | ct "
                                 "(clinical CT: the spine in a whole body, with ribs, pelvis, organs, vessels and "
                                 "per-case tissue HU and scanner noise)."),
        labeled_fraction: float = typer.Option(
            1.0, "--labeled-fraction", min=0.0, max=1.0, help="Share of training scans written with mask + centroids."
        ),
        splits: str = typer.Option(
            "0.6,0.2,0.2", help="Training, validation and test fractions, comma-separated (assigned per patient)."
        ),
        variant_rate: float = typer.Option(
            0.1, min=0.0, max=1.0, help="Probability of each anatomical variant (L6, T13, wedge fracture)."
        ),
        multi_scan_rate: float = typer.Option(
            0.2, min=0.0, max=1.0, help="VerSe layouts: share of patients with two scans (`split-` entities)."
        ),
        first_id: int = typer.Option(None, help="Number of the first patient id (default 500 for verse20, else 1)."),
        overwrite: bool = typer.Option(False, help="Replace an earlier `vertseg synth` output in OUT."),
    ) -> None:
        """Write synthetic spine CT phantoms with their masks.

        Write synthetic spine CT phantoms (curved spine, C1-L5 + sacrum, ribs, soft tissue, noise; with --size ct
        the whole body of a clinical CT) with masks and vertebral-body centroid JSON in a real dataset layout. A
        `synth.json` at the root records the ground truth."""
        import time

        from rich.table import Table

        from vertseg.data.synth import LAYOUTS, SIZES, generate_dataset

        if layout not in LAYOUTS:
            raise fail(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        if size not in SIZES:
            raise fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
        try:
            fractions = _parse_splits(splits)
        except ValueError as error:
            raise fail(str(error)) from None
        start = time.perf_counter()
        try:
            paths = generate_dataset(
                out, cases, layout, seed, size, labeled_fraction=labeled_fraction, splits=fractions,
                variant_rate=variant_rate, multi_scan_rate=multi_scan_rate, first_id=first_id, overwrite=overwrite,
            )
        except FileExistsError as error:
            raise fail(f"{error} (--overwrite)") from None
        elapsed = time.perf_counter() - start
        from vertseg.data.readers import discover_cases

        found = discover_cases([out])
        table = Table(title=f"{len(paths)} phantoms in {out} ({layout}, {elapsed:.1f} s)")
        for column in ("split", "scans", "labeled", "patients"):
            table.add_column(column)
        for split in sorted({s.split for s in found}):
            members = [s for s in found if s.split == split]
            table.add_row(split or "-", str(len(members)), str(sum(s.labeled for s in members)),
                          str(len({s.patient_id for s in members})))
        console.print(table)
