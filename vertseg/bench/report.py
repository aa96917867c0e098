"""docs/benchmarks.md: each benchmark owns one marked section, rewritten with the command that produced it."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

from vertseg.io import atomic_write_text

DEFAULT_BENCH_FILE = Path("docs/benchmarks.md")
_HEADER = (
    "# vertseg benchmarks\n\n"
    "Each section is written by the `vertseg bench ...` command shown in it. Ratios compare runs made in the same\n"
    "process on the same machine; absolute times are only meaningful on the hardware named.\n"
)


def machine_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{_dt.date.today().isoformat()}, {os.cpu_count()} CPU cores ({cpu}), {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def write_section(key: str, title: str, command: str, body: str, path: Path | str = DEFAULT_BENCH_FILE) -> Path:
    """Replace (or append) the section `key` of the benchmarks file."""
    path = Path(path)
    text = path.read_text() if path.exists() else _HEADER
    section = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine_line()}\n\n{body.strip()}\n<!-- /bench:{key} -->\n"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)
    return path


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
