"""Shared CLI plumbing: config loading with a clean error and exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

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


ConfigOption = typer.Option(None, "--config", "-c", help="YAML config; missing keys take the paper defaults.")
SetOption = typer.Option(None, "--set", "-s", help="Override a config value, e.g. --set train.schedule.epochs=10.")


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
