"""The `vertseg` command. Each pipeline stage registers its commands from its own module in this package."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from vertseg.cli.common import plain_help_types


class RootGroup(TyperGroup):
    """The `vertseg` group. Where stderr is not a terminal (pipes, files, CI logs, test runners) usage errors (an
    unknown option, a bad value) are click's plain `Error: ...` line instead of Typer's framed panel, whose text is
    hard-wrapped at 80 columns and so splits long paths across lines. `vertseg --help` is then plain text too.
    Built with every command in place, it sets the type text of their help once (see `plain_help_types`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_help_types(self)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not sys.stderr.isatty():
            self.rich_markup_mode = None  # read by Typer's error handler; this group is built afresh for each call
        return super().main(*args, **kwargs)


app = typer.Typer(
    cls=RootGroup,
    name="vertseg",
    help="Semi-supervised vertebra segmentation and identification (C1-L5) in spine CT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Developer benchmarks, run from a source checkout.\n\nEach writes its table to "
                             "docs/benchmarks.md of the checkout.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Pipeline order: data -> model -> training -> inference -> evaluation -> tuning/reporting -> launch -> demo.
COMMAND_MODULES: tuple[str, ...] = (
    "config",
    "synth",
    "data",
    "model",
    "train",
    "predict",
    "weights",
    "export",
    "evaluate",
    "tune",
    "report",
    "launch",
    "demo",
)

def _print_version(value: bool) -> None:
    if value:
        from vertseg import __version__

        typer.echo(f"vertseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Semi-supervised vertebra segmentation and identification (C1-L5) in spine CT."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"vertseg.cli.{_name}").register(app, bench_app)
