"""`vertseg demo` and `vertseg bench quality`."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import console, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="Output folder (reused by a rerun)."),
        fresh: bool = typer.Option(False, "--fresh", help="Delete an earlier demo output in OUT and redo every stage."),
        quick: bool = typer.Option(False, "--quick", help="Fewer phantoms and steps (the end-to-end test)."),
        workers: int = typer.Option(2, "--workers", min=1, help="Ray Train CPU workers (DDP over gloo)."),
    ) -> None:
        """The whole pipeline on phantoms in minutes on a CPU: synth -> Zarr -> Ray training of `proposed` (2 workers)
        -> predict -> evaluate -> HTML report. A rerun reuses finished stages; logs go to OUT/logs/<stage>.log."""
        from vertseg.demo import DemoError, run_demo, summary_lines

        try:
            results = run_demo(out, fresh=fresh, quick=quick, workers=workers)
        except DemoError as error:
            raise fail(str(error), code=1) from None
        for line in summary_lines(out, results):
            console.print(line, highlight=False, soft_wrap=True)

    @bench_app.command("quality")
    def bench_quality(
        seeds: int = typer.Option(3, "--seeds", min=1, help="Training seeds per method (mean ± std over them)."),
        full: bool = typer.Option(False, "--full", help="GPU-sized data, model and schedule (hours on CPU)."),
        methods: str = typer.Option("fsl,proposed", "--methods", help="Comma-separated train.method values."),
        workdir: Path = typer.Option(Path(".bench/quality"), "--workdir", help="Phantoms, store, runs (resumable)."),
        output: Path = typer.Option(Path("docs/benchmarks.md"), "--output", help="Benchmarks file to update."),
        parallel: int = typer.Option(2, "--parallel", min=1, help="Runs trained at once (separate processes)."),
        threads: int = typer.Option(1, "--threads", min=1, help="Torch threads per run (1 avoids oversubscribing CPUs)."),
        budget: int = typer.Option(1, "--budget", min=1, help="N x the epochs (same schedule shape); own section."),
    ) -> None:
        """fsl vs proposed (and any SSL baseline) at 25% labels on held-out phantoms: Dice, Acc_ID and VerSe id-rate,
        mean ± std over seeds, with the consistency diagnostics; writes the `quality` section of docs/benchmarks.md."""
        from typing import get_args

        from vertseg.bench.quality import run_quality_bench
        from vertseg.training.config import Method

        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in get_args(Method)]
        if unknown or not chosen:
            raise fail(f"--methods takes {', '.join(get_args(Method))}; unknown: {', '.join(unknown) or '(none given)'}")
        path = run_quality_bench(chosen, seeds, full, workdir, output, parallel, threads,
                                 echo=lambda line: console.print(line, highlight=False), budget=budget)
        console.print(f"wrote {path}", highlight=False)
