"""The base model of every configuration section: values are taken as written, never coerced into another type."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _is_tuple(annotation: Any) -> bool:
    """True for `tuple[...]` and for unions holding one (`tuple[int, ...] | None`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(arg) for arg in typing.get_args(annotation))
    return annotation is tuple or origin is tuple


class ConfigModel(BaseModel):
    """Unknown keys are refused, and so is every value pydantic would otherwise coerce: `epochs: true` (read as 1),
    `amp: "yes"` (read as True), `epochs: 2.5` or `epochs: "10"`. An int is a valid float, and a YAML list stands for
    a declared tuple (YAML has no tuples); the list's items are checked as strictly as any other value. Infinite and
    NaN numbers are refused too (`lr: .inf` trained to NaN weights and exited 0)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        converted = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(converted.get(name), list) and _is_tuple(field.annotation):
                converted[name] = tuple(converted[name])
        return converted
