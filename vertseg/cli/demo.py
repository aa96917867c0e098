"""`vertseg demo`, `vertseg bench quality`, `vertseg bench ssl` and `vertseg bench identification`."""

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
        """The whole pipeline on phantoms, in minutes on a CPU.

        The whole pipeline on phantoms in minutes on a CPU: synth -> Zarr -> Ray training of `proposed` (2 workers)
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
        labeled_fraction: float = typer.Option(0.25, "--labeled-fraction", min=0.01, max=1.0,
                                               help="Share of the labeled pool that keeps its labels (the paper's Table 2)."),
        overrides: list[str] = typer.Option([], "--set", help="Config override key=value for every run (an ablation); own section."),
        test_cases: int = typer.Option(None, "--test-cases", min=1,
                                       help="Score on this many test phantoms (the pool's first ones and more; "
                                            "finished trainings are reused); own section."),
        training_cases: int = typer.Option(None, "--training-cases", min=1,
                                           help="Labelled training phantoms (default 16; 32 with --full); own section."),
    ) -> None:
        """Model quality at 25 % labels on phantoms, per method.

        fsl vs proposed (and any SSL baseline) at 25% labels on held-out phantoms: Dice, Acc_ID and VerSe id-rate,
        mean ± std over seeds, with the consistency diagnostics; writes the `quality` section of docs/benchmarks.md."""
        from typing import get_args

        from vertseg.bench.quality import run_quality_bench
        from vertseg.training.config import Method

        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in get_args(Method)]
        if unknown or not chosen:
            raise fail(f"--methods takes {', '.join(get_args(Method))}; unknown: {', '.join(unknown) or '(none given)'}")
        path = run_quality_bench(chosen, seeds, full, workdir, output, parallel, threads,
                                 echo=lambda line: console.print(line, highlight=False), budget=budget,
                                 labeled_fraction=labeled_fraction, extra_overrides=overrides, test_cases=test_cases,
                                 training_cases=training_cases)
        console.print(f"wrote {path}", highlight=False)

    @bench_app.command("ssl")
    def bench_ssl(
        fractions: str = typer.Option("0.1,0.25", "--fractions", help="Comma-separated labelled fractions."),
        seeds: int = typer.Option(3, "--seeds", min=1, help="Warm-ups (and branch sets) per fraction."),
        rows: str = typer.Option(None, "--rows", help="Comma-separated rows (default: all; fsl is always run)."),
        warmup_epochs: int = typer.Option(160, "--warmup-epochs", min=1, help="Warm-up maximum (8-step epochs)."),
        branch_epochs: int = typer.Option(18, "--branch-epochs", min=2, help="Extra epochs of every branch."),
        full: bool = typer.Option(False, "--full", help="GPU-sized data and model (hours on CPU)."),
        overrides: list[str] = typer.Option([], "--set", help="Config override key=value for every run."),
        workdir: Path = typer.Option(Path(".bench/ssl"), "--workdir", help="Phantoms, store, runs (resumable)."),
        output: Path = typer.Option(Path("docs/benchmarks.md"), "--output", help="Benchmarks file to update."),
        parallel: int = typer.Option(2, "--parallel", min=1, help="Runs trained at once (separate processes)."),
        threads: int = typer.Option(1, "--threads", min=1, help="Torch threads per run."),
    ) -> None:
        """Semi-supervision against labels alone, every method.

        Semi-supervision vs labels alone on a branch protocol: per fraction and seed one supervised warm-up until
        validation plateaus, then every method branches from it for the same steps; paired differences against fsl
        with standard errors, pseudo-label accuracy against the hidden labels; writes the `ssl` section."""
        from vertseg.bench.ssl import DEFAULT_ROWS, ROWS, Budget, run_ssl_bench

        try:
            chosen_fractions = [float(f) for f in fractions.split(",") if f.strip()]
        except ValueError:
            raise fail(f"--fractions takes comma-separated numbers in (0, 1), got {fractions!r}") from None
        if not chosen_fractions or not all(0 < f < 1 for f in chosen_fractions):
            raise fail(f"--fractions takes comma-separated numbers in (0, 1), got {fractions!r}")
        chosen_rows = [r.strip() for r in rows.split(",") if r.strip()] if rows else DEFAULT_ROWS
        unknown = [r for r in chosen_rows if r not in ROWS]
        if unknown or not chosen_rows:
            raise fail(f"--rows takes {', '.join(ROWS)}; unknown: {', '.join(unknown) or '(none given)'}")
        from vertseg.config import ConfigError, load_config
        from vertseg.steps import RESOURCES

        try:
            load_config(RESOURCES / "demo.yaml", overrides)
        except ConfigError as error:
            raise fail(str(error)) from None
        path = run_ssl_bench(chosen_fractions, seeds, chosen_rows, Budget(warmup_epochs, branch_epochs), full, workdir,
                             output, parallel, threads, echo=lambda line: console.print(line, highlight=False),
                             extra=overrides)
        console.print(f"wrote {path}", highlight=False)

    @bench_app.command("identification")
    def bench_identification(
        oracle: bool = typer.Option(False, "--oracle", help="Perfect network outputs built from the phantoms' ground truth."),
        seed: int = typer.Option(2028, "--seed", help="Phantom seed (2028: the quality bench's test pool)."),
        cases: int = typer.Option(4, "--cases", min=1, help="Test phantoms."),
        size: str = typer.Option("medium", "--size", help="Phantom size preset (`vertseg synth --size`)."),
        config: Path = typer.Option(None, "--config", help="Config whose data/inference sections apply (default: demo.yaml)."),
        overrides: list[str] = typer.Option([], "--set", help="Config override key=value (repeatable), e.g. inference.seeds=peaks."),
        variants: str = typer.Option(",".join(("one-hot", "heatmap", "flat-T4", "flat-T8", "noise", "dropped-class")),
                                     "--variants", show_default=False, help="Comma-separated oracle outputs to "
                                     "run (default: one-hot, heatmap, flat-T4, flat-T8, noise, dropped-class)."),
        workdir: Path = typer.Option(Path(".bench/identification"), "--workdir", help="Phantoms, store, predictions."),
        output: Path = typer.Option(Path("docs/benchmarks.md"), "--output", help="Benchmarks file to update."),
    ) -> None:
        """Identification from perfect network outputs.

        Identification through the real inference path (localisation, sliding window, post-processing, writers,
        `vertseg evaluate`) from oracle network outputs; one-hot outputs must score 100 %."""
        from vertseg.bench.oracle import VARIANTS, last_line, render_rows, run_oracle_bench
        from vertseg.bench.report import markdown_table, write_section
        from vertseg.config import load_config
        from vertseg.steps import RESOURCES

        if not oracle:
            raise fail("only the oracle benchmark exists: pass --oracle (trained models: `vertseg bench quality`)")
        chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown or "one-hot" not in chosen:
            raise fail(f"--variants takes {', '.join(VARIANTS)} and must include one-hot; unknown: {', '.join(unknown)}")
        cfg = load_config(config or RESOURCES / "demo.yaml", overrides)
        rows = run_oracle_bench(workdir, cfg, seed, cases, size, chosen)
        headers, table = render_rows(rows)
        text = markdown_table(headers, table)
        console.print(text, highlight=False, soft_wrap=True)
        command = (f"vertseg bench identification --oracle --seed {seed} --cases {cases} --size {size}"
                   + (f" --config {config}" if config else "") + "".join(f" --set {o}" for o in overrides)
                   + (f" --variants {','.join(chosen)}" if chosen != VARIANTS else ""))
        body = (f"{cases} `{size}` test phantoms (seed {seed}) at {cfg.data.spacing_mm:g} mm, inference settings of "
                f"{config or 'vertseg/resources/demo.yaml'}; the network is replaced by its ground truth "
                "(`vertseg/bench/oracle.py`), everything after it is the production path, scored by `vertseg evaluate`'s "
                "runner at 1 mm.\n\n" + text + "\n\n" + last_line(rows))
        key = "-".join([f"identification-oracle-{seed}", *(o.replace("=", "-") for o in overrides)])
        write_section(key, f"Identification oracle (seed {seed}{', ' + ', '.join(overrides) if overrides else ''})",
                      command, body, output)
        console.print(last_line(rows), highlight=False)
