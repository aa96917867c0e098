"""Shared CLI plumbing: config loading with a clean error and exit codes."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import get_args

import typer
import typer.rich_utils
from rich.console import Console
from typer.core import TyperArgument, TyperOption

from vertseg.config import ConfigError, VertsegConfig, load_config


LOG_WIDTH = 160


class MessageConsole(Console):
    """Rich's console, wrapping text at the terminal's width only on a terminal. Piped or redirected (scripts, CI
    logs, test runners) a message stays on one line however long the paths it names, so grep finds it whole, and
    tables get `LOG_WIDTH` columns instead of 80 so their headers stay whole."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.is_terminal and "COLUMNS" not in os.environ:
            self.width = LOG_WIDTH

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        super().print(*objects, soft_wrap=not self.is_terminal if soft_wrap is None else soft_wrap, **kwargs)


console = MessageConsole(stderr=True)


def fail(message: str, code: int = 2) -> "typer.Exit":
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def config_or_exit(path: Path | None, overrides: list[str] | None) -> VertsegConfig:
    """Validate the whole config before any work starts; a bad key/value exits with a clear message."""
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        raise fail(str(error)) from None


_PLAIN_TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def _plain_metavar(param: TyperArgument | TyperOption) -> str:
    """A click-style metavar for a value: PATH, TEXT, INTEGER, FLOAT, or the choices as a|b (click's [a|b] less
    the brackets, which wrapped onto a line of their own in narrow help). A repeatable option or a list argument
    names its element (its help says it repeats); a range is shown under it as [x>=1] (see `plain_help_types`)."""
    descriptor = param.type_descriptor
    if descriptor.choices is not None:
        return "|".join(str(getattr(choice, "value", choice)) for choice in descriptor.choices)
    annotation = descriptor.annotation
    if descriptor.is_list and get_args(annotation):
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "PATH"
    return _PLAIN_TYPE_NAMES.get(annotation, getattr(annotation, "__name__", "VALUE").upper())


class _PlainTypeArgument(TyperArgument):
    """An argument whose help shows click's metavar (PATH) in the type column. Typer 0.29's Rich help prints
    `param.display_type_rich()` there, which for an argument is `<list[Path]>`-style text whatever `metavar` says
    (an argument's `metavar` renames the argument instead), so no setting reaches it; `plain_help_types` gives the
    CLI's arguments this class."""

    def display_type_rich(self, ctx) -> str:
        return _plain_metavar(self)


def plain_help_types(command, parent: typer.Context | None = None) -> None:
    """Give every parameter under `command` the type text a click/argparse user expects in `--help`: none for a
    flag, a short metavar (PATH, TEXT, INTEGER, a|b) for a value. Typer 0.29's Rich help otherwise prints
    `<bool>` after every flag and `<list[Path]>`, `<str>`, `<int range>` after values. For options this sets
    `metavar`, Typer's documented setting (a metavar given in the code is kept); arguments get
    `_PlainTypeArgument`, as no setting exists for them. `--help` is made here, in the context the command will
    run in, so that it is among them. A range goes on its own line under the type (INTEGER, then [x>=1]): beside
    it, `FLOAT [0.0<=x<=1.0]` widened the type column until Rich cut option names (`--labeled-fracti…`) at 80
    columns. Called once on the whole tree by the `vertseg` group."""
    if parent is None:
        typer.rich_utils.RANGE_STRING = "\n[{}]"  # the text Typer's Rich help puts after the type, read at each render
    ctx = typer.Context(command, parent=parent, info_name=command.name, **command.context_settings)
    help_option = command.get_help_option(ctx)
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if isinstance(param, TyperOption):
            if param.is_flag or param.count:
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = _plain_metavar(param)
        elif type(param) is TyperArgument:
            param.__class__ = _PlainTypeArgument
    for subcommand in getattr(command, "commands", {}).values():
        plain_help_types(subcommand, ctx)


ConfigOption = typer.Option(None, "--config", "-c", help="YAML config; missing keys take the paper defaults.")
SetOption = typer.Option(None, "--set", "-s", help="Override a config value, e.g. --set data.codec_level=9.")


def writable_folder_problem(folder: Path) -> str | None:
    """Why outputs cannot go to `folder` (an existing file, no permission), or None; writes nothing."""
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written ({existing}: permission denied)"
    return None
