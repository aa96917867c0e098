"""What makes a training run the same run: its resolved config and the manifests of the stores it trains on.

Both are hashed when a run starts and written to `RUN_DIR/identity.json` (and to the run's MLflow params and tags).
A resume is refused when either hash changed: a checkpoint continued under other settings, or on other data, would
report numbers that no single config produced, while MLflow (whose params are immutable) still showed the old ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vertseg.config import VertsegConfig
from vertseg.io import atomic_write_json

IDENTITY_FILE = "identity.json"


class RunMismatchError(RuntimeError):
    """A resume whose config, store or tracking record does not match the run it would continue."""


@dataclass(frozen=True)
class RunIdentity:
    config_sha256: str
    store_manifest_sha256: str
    config: dict[str, str]  # flat `section.key` -> value, for a readable diff when the hash differs


def _sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.optim.lr": "0.01", ...}; values as JSON so that 1 and "1" stay distinct."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def manifest_sha256(stores: list[Path | None]) -> str:
    """Hash of the stores' manifests (cases, splits, settings, content fingerprint), in the order given."""
    from vertseg.data.store import VertStore

    return _sha256([VertStore(store).manifest if store is not None else None for store in stores])


def config_sha256(config: VertsegConfig) -> str:
    return _sha256(config.model_dump(mode="json"))


def run_identity(config: VertsegConfig, store: Path, unlabeled: Path | None) -> RunIdentity:
    resolved = config.model_dump(mode="json")
    return RunIdentity(config_sha256(config), manifest_sha256([store, unlabeled]), flat_config(resolved))


def config_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """`key: old -> new` for every flat key that differs, was added or was removed."""
    missing = "(absent)"
    return [f"{key}: {before.get(key, missing)} -> {after.get(key, missing)}"
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


def write_identity(run_dir: Path, identity: RunIdentity) -> None:
    atomic_write_json(Path(run_dir) / IDENTITY_FILE, asdict(identity))


def check_resume(run_dir: Path, run_name: str, identity: RunIdentity) -> None:
    """Refuse to continue `run_dir` unless it was started with this config and these stores."""
    path = Path(run_dir) / IDENTITY_FILE
    if not path.exists():
        raise RunMismatchError(f"cannot resume run {run_name!r}: {path} is missing (the run was started by an older "
                               "vertseg), so an unchanged config and store cannot be checked; start a new run with --name")
    try:
        recorded = RunIdentity(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise RunMismatchError(f"cannot resume run {run_name!r}: {path} is unreadable ({error})") from None
    problems = []
    if recorded.config_sha256 != identity.config_sha256:
        changes = config_diff(recorded.config, identity.config)
        problems.append("the config changed (" + ("; ".join(changes) or "same keys, different hash") + ")")
    if recorded.store_manifest_sha256 != identity.store_manifest_sha256:
        problems.append("the store manifest changed (the --store or --unlabeled cases, splits or settings differ)")
    if problems:
        raise RunMismatchError(f"cannot resume run {run_name!r}: " + " and ".join(problems)
                               + "; resume with the original config and stores, or start a new run with --name")
