"""What `vertseg inspect` reports about a store, as plain JSON-ready data (the CLI only formats it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vertseg.data.geometry import lps_to_ras
from vertseg.data.store import VertStore
from vertseg.labels import VERSE_NAMES


def describe_case(store: VertStore, case_id: str) -> dict[str, Any]:
    """Shape, spacing, orientation and per-label volume and centroids (RAS mm in the original scan's world frame)."""
    attrs = store.attrs(case_id)
    centroids = attrs["centroids"]
    labels = sorted({*map(int, attrs["label_volume_ml"]), *map(int, centroids["body"])})
    rows = []
    for label in labels:
        body, mask = centroids["body"].get(str(label)), centroids["mask"].get(str(label))
        rows.append({
            "label": label,
            "name": VERSE_NAMES.get(label, str(label)),
            "volume_ml": attrs["label_volume_ml"].get(str(label), 0.0),
            "body_centroid_ras": None if body is None else lps_to_ras(body["lps"]).round(2).tolist(),
            "mask_centre_ras": None if mask is None else lps_to_ras(mask["lps"]).round(2).tolist(),
        })
    original = attrs["geometry"]["original"]
    return {
        "case_id": case_id,
        "patient_id": attrs["patient_id"],
        "dataset": attrs["dataset"],
        "split": attrs["split"] or "unknown",
        "pool": attrs["pool"],
        "shape_zyx": attrs["shape_zyx"],
        "spacing_mm": attrs["spacing_mm"],
        "orientation": attrs["orientation"],
        "original_size_xyz": original["size_xyz"],
        "original_spacing_xyz": [round(v, 4) for v in original["spacing_xyz"]],
        "spine_box_zyx": attrs["spine_box_zyx"],
        "labels": rows,
        "problems": store.shard_problems(case_id),
    }


def describe_store(root: Path | str, case_id: str | None = None) -> dict[str, Any]:
    store = VertStore(root)
    manifest = store.manifest
    ids = store.cases() if case_id is None else [case_id]
    return {
        "store": str(root),
        "summary": {
            "cases": len(manifest["cases"]),
            "labeled": len(manifest["pools"]["labeled"]),
            "unlabeled": len(manifest["pools"]["unlabeled"]),
            "patients": len(manifest["patients"]),
            "splits": {split: len(ids_) for split, ids_ in sorted(manifest["splits"].items())},
            "failures": len(manifest["failures"]),
            "fingerprint": manifest["fingerprint"],
            "settings": manifest["settings"],
        },
        "cases": [describe_case(store, c) for c in ids],
        "failures": manifest["failures"],
    }
