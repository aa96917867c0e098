"""`vertseg config`: validate and show a configuration, and generate the configuration reference."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import ConfigOption, SetOption, config_or_exit, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    config_app = typer.Typer(help="Validate configs and print the configuration reference.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("show")
    def show(config: Path = ConfigOption, overrides: list[str] = SetOption) -> None:
        """Validate a config and print it in full.

        Validate a config (with overrides) and print it in full, defaults filled in."""
        from vertseg.config import dump_config

        typer.echo(dump_config(config_or_exit(config, overrides)), nl=False)

    @config_app.command("reference")
    def reference(
        readme: Path = typer.Option(None, help="Rewrite the reference section of this README in place."),
        check: bool = typer.Option(False, help="With --readme: exit 1 if the README's reference is out of date."),
    ) -> None:
        """Print the reference of every config key.

        Print every config key with its type, default and paper reference (Markdown)."""
        from vertseg.config_reference import config_reference_markdown, readme_with_reference
        from vertseg.io import atomic_write_text

        if readme is None:
            typer.echo(config_reference_markdown(), nl=False)
            return
        updated = readme_with_reference(readme)
        if check:
            if updated != readme.read_text():
                raise fail(f"{readme}: configuration reference is out of date; run `vertseg config reference --readme {readme}`", 1)
            return
        atomic_write_text(readme, updated)
