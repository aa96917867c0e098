"""A Markdown reference of every configuration key, generated from the config models so docs cannot drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from vertseg.config import VertsegConfig

_COMMENT = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.+)$")


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The one-line comments beside field definitions (they carry the paper's equation numbers)."""
    import inspect

    comments: dict[str, str] = {}
    for line in inspect.getsource(model).splitlines():
        match = _COMMENT.match(line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _format_default(value: object) -> str:
    if isinstance(value, BaseModel):
        return ""
    if hasattr(value, "value"):
        value = value.value
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_default(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    comments = _field_comments(model)
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, f"{prefix}{name}."))
            continue
        plain = isinstance(annotation, type) and not getattr(annotation, "__args__", None)
        kind = annotation.__name__ if plain else str(annotation).replace("typing.", "")
        rows.append((f"{prefix}{name}", kind, _format_default(field.default), comments.get(name, field.description or "")))
    return rows


def config_reference_markdown() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, note in _rows(VertsegConfig, ""):
        lines.append(f"| `{key}` | `{kind}` | `{default}` | {note} |")
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- config-reference:begin -->"
README_END = "<!-- config-reference:end -->"


def readme_with_reference(readme: Path) -> str:
    """README text with the generated reference between its markers."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    return text[:start] + "\n" + config_reference_markdown() + text[end:]
