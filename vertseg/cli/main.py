"""The `vertseg` command. Each pipeline stage registers its commands from its own module in this package."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="vertseg",
    help="Semi-supervised vertebra segmentation and identification (C1-L5) in spine CT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks; each writes its table to docs/benchmarks.md.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Pipeline order: data -> model -> training -> inference -> evaluation -> tuning/reporting -> launch -> demo.
COMMAND_MODULES: tuple[str, ...] = (
    "config",
    "synth",
    "data",
    "model",
    "train",
    "predict",
    "evaluate",
    "tune",
    "report",
    "launch",
    "demo",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"vertseg.cli.{_name}").register(app, bench_app)
