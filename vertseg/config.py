"""The full vertseg configuration: one typed, validated object loaded from YAML plus dotted CLI overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from vertseg.config_base import ConfigModel
from vertseg.data.config import DataConfig
from vertseg.inference.config import InferenceConfig
from vertseg.labels import PROTOCOLS
from vertseg.model.config import ModelConfig
from vertseg.training.config import TrainConfig


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, key and value."""


class VertsegConfig(ConfigModel):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()

    @model_validator(mode="after")
    def _sections_agree(self) -> "VertsegConfig":
        expected = PROTOCOLS[self.data.protocol].num_classes
        if self.model.num_classes != expected:
            raise ValueError(
                f"model.num_classes={self.model.num_classes} does not match data.protocol="
                f"{self.data.protocol!r} ({expected} classes)"
            )
        divisor = max(2 ** (self.model.num_stages - 1), 4 if self.model.identification_branch else 1)
        if any(size % divisor for size in self.data.patch_size):
            raise ValueError(
                f"data.patch_size {list(self.data.patch_size)} must be divisible by {divisor} on every axis: "
                f"model.num_stages={self.model.num_stages} halves it {self.model.num_stages - 1} times"
                + (" and identification is predicted on a 1/4 grid" if self.model.identification_branch else "")
            )
        if self.train.method == "seg_only" and self.model.identification_branch:
            self.model = self.model.model_copy(update={"identification_branch": False})
        return self


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 numbers: PyYAML follows YAML 1.1 and reads `1e-3` as the string "1e-3", which strict types refuse.
    A key written twice in one mapping is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _parse_value(item: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as error:
        reason = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({reason})") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        dotted, value = item.split("=", 1)
        node = raw
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_value(item, value)
    return raw


def format_validation_error(error: ValidationError, source: str, what: str = "configuration",
                            overridden: frozenset[str] = frozenset()) -> str:
    """One line per bad key: where it is, what is wrong, what was given, and whether a --set gave it."""
    lines = [f"invalid {what} in {source}:"]
    for err in error.errors():
        location = ".".join(str(part) for part in err["loc"]) or "<root>"
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"  # a whole section is too long to echo
        origin = " [from --set]" if location in overridden or location.rsplit(".", 1)[0] in overridden else ""
        lines.append(f"  {location}: {err['msg']}{shown}{origin}")
    return "\n".join(lines)


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None, source: str = "<config>") -> VertsegConfig:
    raw = apply_overrides(dict(raw or {}), list(overrides or []))
    try:
        return VertsegConfig.model_validate(raw)
    except ValidationError as error:
        overridden = frozenset(item.split("=", 1)[0].strip() for item in overrides or [])
        raise ConfigError(format_validation_error(error, source, overridden=overridden)) from None


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> VertsegConfig:
    """Load and validate a YAML config; no path means the paper defaults."""
    if path is None:
        return build_config({}, overrides, "<defaults>")
    return build_config(read_yaml_mapping(Path(path)), overrides, str(path))


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping; a missing file, bad YAML or another top-level type is a ConfigError."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; give a YAML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {error.start}): is it a YAML file?") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} cannot be read (permission denied)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


def dump_config(config: VertsegConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
