"""The model that ships inside the package (`vertseg/resources/weights/`), used when no default is registered, so
`vertseg predict -i ct.nii.gz -o out` runs on a fresh install with no checkpoint and no download.

Each bundled model is `<name>.pt` with a model card `<name>.json` (sha256, training data and budget, scores on real
and synthetic scans, limits); the file is re-hashed before every use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vertseg.weights.fetch import sha256_of

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "resources" / "weights"
BUNDLED_DEFAULT = "synthetic-v1"


@dataclass(frozen=True)
class BundledModel:
    name: str
    checkpoint: Path
    card: dict

    @property
    def ref(self) -> str:
        return f"{self.name} (bundled)"


def bundled_model(name: str = BUNDLED_DEFAULT) -> BundledModel:
    """The bundled model `name`, its checksum verified against its card; RuntimeError when the install is damaged."""
    checkpoint = BUNDLED_DIR / f"{name}.pt"
    card_path = checkpoint.with_suffix(".json")
    if not checkpoint.is_file() or not card_path.is_file():
        raise RuntimeError(f"bundled model {name!r} is missing from {BUNDLED_DIR}; reinstall vertseg")
    card = json.loads(card_path.read_text())
    if sha256_of(checkpoint) != card["sha256"]:
        raise RuntimeError(f"{checkpoint} does not match its sha256 in {card_path}; reinstall vertseg")
    return BundledModel(name, checkpoint, card)
