"""A folder of versioned checkpoints: `<home>/weights/<name>/<version>/{checkpoint.pt,config.yaml}` and an index
`registry.json` (entries with sha256, source and a model summary, plus which one is the default).

`home` is `$VERTSEG_HOME` when set, else the platform's user cache folder (platformdirs), so tests and shared
machines can point it anywhere. Every checkpoint is opened with `weights_only=True` and its embedded config
validated before it is registered: what the registry holds always loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from vertseg.config import dump_config
from vertseg.io import atomic_path, atomic_write_json, atomic_write_text
from vertseg.weights.fetch import fetch, sha256_of

HOME_ENV = "VERTSEG_HOME"
INDEX = "registry.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says what to do instead."""


def weights_home() -> Path:
    """Where the registry lives: $VERTSEG_HOME/weights, else <user cache dir>/vertseg/weights."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser() / "weights"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vertseg")) / "weights"


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    sha256: str
    source: str
    model: dict  # a summary for `weights list`: widths, classes, patch size, method, which weights

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value):
        raise RegistryError(f"{what} {value!r} must be letters, digits, '.', '_' or '-' (not starting with a symbol)")
    return value


def _summary(path: Path) -> tuple[dict, str]:
    """(model summary, config YAML) of a checkpoint, or a RegistryError naming the file."""
    from vertseg.inference.model_loading import checkpoint_config
    from vertseg.training.checkpoint import CheckpointError, load_checkpoint, model_weights

    try:
        payload = load_checkpoint(path)
        config = checkpoint_config(payload, path)
        _, key = model_weights(payload, path)
    except CheckpointError as error:
        raise RegistryError(f"not a usable vertseg checkpoint: {error}") from None
    summary = {
        "base_width": config.model.base_width, "num_classes": config.model.num_classes,
        "identification": config.model.identification_branch, "bottleneck": config.model.bottleneck,
        "patch_size": list(config.data.patch_size), "spacing_mm": config.data.spacing_mm,
        "method": config.train.method, "weights": key,
    }
    return summary, dump_config(config)


class Registry:
    """The registry at `root` (default `weights_home()`); every change rewrites the index atomically."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else weights_home()

    # ---- index ------------------------------------------------------------------------------------------------
    def _read(self) -> dict:
        path = self.root / INDEX
        if not path.exists():
            return {"default": None, "entries": []}
        try:
            index = json.loads(path.read_text())
            index["entries"] = [Entry(**raw) for raw in index["entries"]]
        except (ValueError, KeyError, TypeError) as error:
            raise RegistryError(f"weights index {path} is damaged ({error}); re-import the checkpoints into a "
                                f"fresh ${HOME_ENV}") from None
        return index

    def _write(self, index: dict) -> None:
        atomic_write_json(self.root / INDEX, {"default": index["default"],
                                              "entries": [asdict(e) for e in index["entries"]]})

    def entries(self) -> list[Entry]:
        return self._read()["entries"]

    def default_ref(self) -> str | None:
        return self._read()["default"]

    def folder(self, entry: Entry) -> Path:
        return self.root / entry.name / entry.version

    def checkpoint(self, entry: Entry) -> Path:
        return self.folder(entry) / "checkpoint.pt"

    # ---- lookup -----------------------------------------------------------------------------------------------
    def get(self, ref: str | None = None) -> Entry:
        """`name@version`, `name` (its newest import), or None for the default model."""
        index = self._read()
        if ref is None:
            if index["default"] is None:
                raise RegistryError(
                    f"no model is installed in {self.root}; import one with `vertseg weights import CHECKPOINT_OR_URL "
                    "--sha256 HEX` (see `vertseg weights import --help`), or pass --checkpoint CKPT"
                )
            ref = index["default"]
        name, _, version = ref.partition("@")
        matches = [e for e in index["entries"] if e.name == name and (not version or e.version == version)]
        if not matches:
            known = ", ".join(e.ref for e in index["entries"]) or "none"
            raise RegistryError(f"no model {ref!r} in {self.root} (registered: {known})")
        return matches[-1]

    def default_checkpoint(self) -> tuple[Path, str]:
        """(checkpoint, description) of the default model: the registered default, else the bundled model."""
        if self.default_ref() is None:
            from vertseg.weights.bundled import bundled_model

            model = bundled_model()
            return model.checkpoint, model.ref
        path, entry = self.verified_checkpoint()
        return path, entry.ref

    def verified_checkpoint(self, ref: str | None = None) -> tuple[Path, Entry]:
        """The checkpoint of `ref` (default model when None), re-hashed so a file changed on disk is never used."""
        entry = self.get(ref)
        path = self.checkpoint(entry)
        if not path.is_file() or sha256_of(path) != entry.sha256:
            raise RegistryError(f"{path} is missing or no longer matches its sha256 {entry.sha256[:12]}...; "
                                f"import {entry.ref} again")
        return path, entry

    # ---- changes ----------------------------------------------------------------------------------------------
    def import_checkpoint(self, source: str, name: str, version: str | None = None, sha256: str | None = None,
                          make_default: bool = False) -> Entry:
        """Fetch `source` (path or URL, verified against `sha256`), validate it, and register it as name@version
        (version: the next integer when omitted). The first model registered becomes the default."""
        _check_name(name, "model name")
        index = self._read()
        taken = [e.version for e in index["entries"] if e.name == name]
        version = _check_name(version, "version") if version else str(1 + max((int(v) for v in taken if v.isdigit()), default=0))
        if version in taken:
            raise RegistryError(f"{name}@{version} is already registered; give another --version")
        staging = self.root / ".incoming"
        downloaded = fetch(source, sha256, staging, f"{uuid.uuid4().hex}.pt")
        try:
            summary, config_yaml = _summary(downloaded)
            entry = Entry(name, version, sha256_of(downloaded), source, summary)
            with atomic_path(self.folder(entry)) as folder:
                folder.mkdir(parents=True)
                shutil.move(downloaded, folder / "checkpoint.pt")
                atomic_write_text(folder / "config.yaml", config_yaml)
        finally:
            downloaded.unlink(missing_ok=True)
        index["entries"].append(entry)
        if make_default or index["default"] is None:
            index["default"] = entry.ref
        self._write(index)
        return entry

    def set_default(self, ref: str) -> Entry:
        entry = self.get(ref)
        index = self._read()
        index["default"] = entry.ref
        self._write(index)
        return entry

    def export(self, ref: str | None, destination: Path, slim: bool = False) -> tuple[Path, Entry]:
        """Copy a registered checkpoint to `destination` (atomic) with a `sha256sum`-format file beside it; `slim`
        keeps only what inference needs (`training.checkpoint.deployable`)."""
        source, entry = self.verified_checkpoint(ref)
        destination = Path(destination)
        if slim:
            from vertseg.training.checkpoint import deployable, load_checkpoint, save_checkpoint

            save_checkpoint(destination, deployable(load_checkpoint(source), source))
        else:
            with atomic_path(destination) as tmp:
                shutil.copyfile(source, tmp)
        atomic_write_text(destination.with_name(destination.name + ".sha256"),
                          f"{sha256_of(destination)}  {destination.name}\n")
        return destination, entry
