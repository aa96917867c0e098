"""`vertseg model summary` and `vertseg bench model`."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import ConfigOption, SetOption, config_or_exit, console


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    model_app = typer.Typer(help="Inspect the network.", no_args_is_help=True)
    app.add_typer(model_app, name="model")

    @model_app.command("summary")
    def summary(
        config: Path = ConfigOption,
        overrides: list[str] = SetOption,
        patch: str = typer.Option(None, "--patch", help="Patch ZxYxX for the FLOP count (default: data.patch_size)."),
        batch: int = typer.Option(1, "--batch", min=1),
    ) -> None:
        """Parameters and FLOPs of the network and its variants.

        Parameters and forward FLOPs of the configured network and of each ablation variant (section 2.7.3)."""
        settings = config_or_exit(config, overrides)
        size = tuple(settings.data.patch_size) if patch is None else _parse_patch(patch)
        from rich.console import Console
        from rich.table import Table

        from vertseg.model.summary import summarize

        try:
            costs = summarize(settings.model, size, batch)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        table = Table(title=f"vertseg model, patch {'x'.join(map(str, size))}, batch {batch}")
        for column in ("variant", "parameters", "forward GFLOP", "of which scan GFLOP", "FLOPs vs configured"):
            table.add_column(column, justify="left" if column == "variant" else "right", no_wrap=column == "variant")
        for cost in costs:
            table.add_row(cost.name, f"{cost.parameters:,}", f"{cost.forward_flops / 1e9:.2f}",
                          f"{cost.scan_flops / 1e9:.3f}", f"{cost.forward_flops / costs[0].forward_flops:.2f}")
        out = Console(width=max(100, Console().width))
        out.print(table)
        out.print("FLOPs: convolutions/matmuls counted by torch FlopCounterMode + 9*B*L*d_inner*d_state per selective scan.")

    @bench_app.command("model")
    def bench_model(
        config: Path = ConfigOption,
        overrides: list[str] = SetOption,
        quick: bool = typer.Option(False, "--quick", help="Fewer tokens, a 64x32x32 patch, fewer repeats (a few minutes on CPU)."),
    ) -> None:
        """Mamba vs Transformer cost and the scan backends.

        Mamba vs Transformer bottleneck scaling, scan backends vs the naive recurrence, ablation variant costs."""
        settings = config_or_exit(config, overrides)
        from vertseg.bench.model import run_model_bench

        command = "vertseg bench model" + (" --quick" if quick else "")
        console.print(run_model_bench(settings.model, quick, command), highlight=False)


def _parse_patch(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise typer.BadParameter(f"--patch {text!r} must look like 128x64x64")
    return size
