"""The preprocessed Zarr v3 store: one group per case under `cases/`, plus `manifest.json` at the root.

Layout of `STORE.zarr`:
  `cases/<case_id>/image`   int16 HU on the canonical grid (z, y, x), chunked and compressed
  `cases/<case_id>/labels`  uint8 VerSe labels after the transitional policy (labeled cases only)
  `cases/<case_id>/fg`      int32 (N, 4) sampled foreground voxels (verse label or 0 for bone, z, y, x)
  group attributes          case record: ids, split, pool, geometry, centroids, spine box, label counts, hashes
A case group is built in a hidden temporary directory and renamed into place, so a reader sees whole cases only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vertseg.data.case_ids import case_id_problem, check_case_id
from vertseg.data.chunks import DamagedShard, ShardedArrayReader, UnsupportedLayout, shard_sizes
from vertseg.data.shard_writer import write_shards
from vertseg.data.config import DataConfig
from vertseg.data.geometry import HU_BACKGROUND, CaseGeometry
from vertseg.io import atomic_path, atomic_write_json, path_under

STORE_FORMAT = "vertseg-store/1"
MANIFEST = "manifest.json"
CASES = "cases"
POOLS = ("labeled", "unlabeled")
HU_FILL = int(HU_BACKGROUND)  # value of unstored (all-air) image chunks


class StoreError(RuntimeError):
    """A store that cannot be read; the message names the path."""


def store_settings(config: DataConfig) -> dict[str, Any]:
    """The preprocessing settings that change what is written; a case made with other settings is redone."""
    return {
        "spacing_mm": config.spacing_mm,
        "chunk_size": list(config.chunk_size),
        "shard_size": list(config.shard_size),
        "codec": config.codec,
        "codec_level": config.codec_level,
        "protocol": config.protocol,
        "transitional_policy": config.transitional_policy.value,
    }


def settings_hash(config: DataConfig) -> str:
    return hashlib.sha256(json.dumps(store_settings(config), sort_keys=True).encode()).hexdigest()[:16]


def _compressors(config: DataConfig, dtype: np.dtype) -> Any:
    from zarr.codecs import BloscCodec

    if config.codec == "none":
        return None
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname=config.codec, clevel=config.codec_level, shuffle=shuffle)


def _check_layout(config: DataConfig) -> None:
    if any(s % c for s, c in zip(config.shard_size, config.chunk_size)):
        raise StoreError(f"data.shard_size {config.shard_size} must be a multiple of data.chunk_size {config.chunk_size}")


def init_store(root: Path, config: DataConfig) -> None:
    """Create the root and `cases/` groups (once); refuse a store made with different settings."""
    root = Path(root)
    _check_layout(config)
    if (root / "zarr.json").exists():
        existing = zarr.open_group(str(root), mode="r").attrs.get("settings")
        if existing is not None and existing != store_settings(config):
            raise StoreError(
                f"{root} was preprocessed with settings {existing}, not {store_settings(config)}; "
                "write to another --out (or delete this store first)"
            )
    group = zarr.open_group(str(root), mode="a")
    group.attrs.update({"format": STORE_FORMAT, "settings": store_settings(config)})
    if not (root / CASES / "zarr.json").exists():
        group.create_group(CASES)
    for leftover in (root / CASES).glob(".*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)  # halves of cases interrupted mid-write


def case_path(root: Path, case_id: str) -> Path:
    """The group of a case; an id that is not one safe path component, or leads out of `cases/`, is refused."""
    return path_under(Path(root) / CASES, check_case_id(case_id, root))


def read_case_attrs(root: Path, case_id: str) -> dict[str, Any] | None:
    """The stored record of a case, or None when the case is absent or incomplete."""
    meta = case_path(root, case_id) / "zarr.json"
    if not meta.exists():
        return None
    attrs = json.loads(meta.read_text()).get("attributes", {})
    return attrs if attrs.get("complete") else None


def write_case(
    root: Path,
    case_id: str,
    config: DataConfig,
    image_hu: np.ndarray,
    labels: np.ndarray | None,
    foreground: np.ndarray,
    attrs: dict[str, Any],
) -> None:
    """Write one case group atomically (temp directory + rename); replaces an older version of the case."""
    with atomic_path(case_path(root, case_id)) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        arrays = {"image": (image_hu.astype(np.int16, copy=False), HU_FILL)}
        if labels is not None:
            arrays["labels"] = (labels.astype(np.uint8, copy=False), 0)
        for name, (array, fill) in arrays.items():
            group.create_array(
                name,
                shape=array.shape,
                dtype=array.dtype,
                shards=tuple(config.shard_size),
                chunks=tuple(config.chunk_size),
                compressors=_compressors(config, array.dtype),
                fill_value=fill,  # chunks holding only the fill value (air, background) are not stored
                dimension_names=("z", "y", "x"),
            )
            write_shards(tmp / name, array)
        group.create_array("fg", data=foreground.astype(np.int32), chunks=(max(1, len(foreground)), 4), compressors=None)
        shards = {name: shard_sizes(tmp / name) for name in arrays}  # reads check them: a lost shard is an error
        group.attrs.update(_jsonable({**attrs, "shards": shards, "complete": True}))


def shard_problems(root: Path, case_id: str, attrs: dict[str, Any]) -> list[str]:
    """Shards of a case that are missing, resized or unexpected against the sizes recorded at write time (file
    sizes only, no data read). Cases written before shard records: nothing to check."""
    problems = []
    for name, expected in attrs.get("shards", {}).items():
        found = shard_sizes(case_path(root, case_id) / name)
        for key in sorted(set(expected) | set(found)):
            if expected.get(key) != found.get(key):
                what = ("is missing" if key not in found else "was not written with the case" if key not in expected
                        else f"has {found[key]} bytes, {expected[key]} were written")
                problems.append(f"{name} shard {key} {what}")
    return problems


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def list_case_ids(root: Path) -> list[str]:
    """Case groups fully written in the store (whatever the manifest says)."""
    folder = Path(root) / CASES
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and read_case_attrs(root, p.name))


def build_manifest(root: Path, config: DataConfig, failures: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise every complete case of the store: pools, splits, patients, label counts and a content fingerprint."""
    cases: dict[str, Any] = {}
    totals = np.zeros(256, dtype=np.int64)
    for case_id in list_case_ids(root):
        attrs = read_case_attrs(root, case_id)
        cases[case_id] = {
            key: attrs[key]
            for key in ("patient_id", "dataset", "split", "pool", "shape_zyx", "source_hash", "labels_present")
        }
        for label, count in attrs.get("label_counts", {}).items():
            totals[int(label)] += int(count)
    splits: dict[str, list[str]] = {}
    patients: dict[str, list[str]] = {}
    pools: dict[str, list[str]] = {pool: [] for pool in POOLS}
    for case_id, record in cases.items():
        splits.setdefault(record["split"] or "unknown", []).append(case_id)
        patients.setdefault(record["patient_id"], []).append(case_id)
        pools[record["pool"]].append(case_id)
    fingerprint = hashlib.sha256(
        json.dumps([store_settings(config), sorted((k, v["source_hash"]) for k, v in cases.items())]).encode()
    ).hexdigest()
    return {
        "format": STORE_FORMAT,
        "settings": store_settings(config),
        "fingerprint": fingerprint,
        "cases": cases,
        "patients": patients,
        "splits": splits,
        "pools": pools,
        "label_counts": {str(label): int(totals[label]) for label in np.flatnonzero(totals)},
        "failures": sorted(failures, key=lambda f: f["case_id"]),
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(root) / MANIFEST, manifest)


@dataclass(frozen=True)
class CaseCentroids:
    """Centroids of one case in store voxel coordinates (z, y, x), keyed by VerSe label."""

    body: dict[int, np.ndarray]  # vertebral-body centroids from the dataset's centroid file
    mask: dict[int, np.ndarray]  # centres of mass of the stored label mask

    def best(self) -> dict[int, np.ndarray]:
        """Body centroid where the dataset gives one, else the mask centre of mass."""
        return {**self.mask, **self.body}


class VertStore:
    """Read access to a preprocessed store for training and inference; reads windows, never whole stores."""

    def __init__(self, root: Path | str, hu_window: tuple[float, float] | None = None) -> None:
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.exists():
            raise StoreError(f"{self.root} is not a vertseg store (no {MANIFEST}); run `vertseg preprocess` first")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise StoreError(f"{manifest_path} is not valid JSON: {error}") from None
        if self.manifest.get("format") != STORE_FORMAT:
            raise StoreError(f"{manifest_path}: unknown store format {self.manifest.get('format')!r}")
        for case_id in self.manifest.get("cases", {}):
            problem = case_id_problem(case_id)
            if problem is not None:
                raise StoreError(f"{manifest_path}: case id {case_id!r} {problem}; the manifest was not written by "
                                 "`vertseg preprocess` or was edited")
        self.hu_window = tuple(hu_window) if hu_window is not None else (-500.0, 1500.0)
        self._arrays: dict[tuple[str, str], Any] = {}
        self._attrs: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (to loader or Ray workers) without open arrays and memory maps; they reopen lazily."""
        return {**self.__dict__, "_arrays": {}}

    @cached_property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    def cases(self, split: str | None = None, pool: str | None = None) -> list[str]:
        """Case ids, optionally only one split ("training", "validation", "test", ...) and/or pool."""
        ids = sorted(self.manifest["cases"])
        if split is not None:
            ids = [c for c in ids if (self.manifest["cases"][c]["split"] or "unknown") == split]
        if pool is not None:
            if pool not in POOLS:
                raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
            ids = [c for c in ids if self.manifest["cases"][c]["pool"] == pool]
        return ids

    def attrs(self, case_id: str) -> dict[str, Any]:
        if case_id not in self._attrs:
            if case_id not in self.manifest["cases"]:
                raise KeyError(f"case {case_id!r} is not in {self.root}")
            attrs = read_case_attrs(self.root, case_id)
            if attrs is None:
                raise StoreError(f"{case_path(self.root, case_id)} is missing or incomplete")
            self._attrs[case_id] = attrs
        return self._attrs[case_id]

    def _array(self, case_id: str, name: str) -> zarr.Array:
        key = (case_id, name)
        if key not in self._arrays:
            self._arrays[key] = zarr.open_array(str(case_path(self.root, case_id) / name), mode="r")
        return self._arrays[key]

    def _window(self, case_id: str, name: str, window: tuple[slice, ...] | None) -> np.ndarray:
        """Read through the lean shard reader; arrays of another layout fall back to zarr-python."""
        key = (case_id, f"{name}:reader")
        if key not in self._arrays:
            expected = self.attrs(case_id).get("shards", {}).get(name)  # stores written before shard records: None
            try:
                self._arrays[key] = ShardedArrayReader(case_path(self.root, case_id) / name, expected=expected)
            except UnsupportedLayout:
                self._arrays[key] = None
        reader = self._arrays[key]
        if reader is None:
            return self._array(case_id, name)[window or ...]
        try:
            return reader.read(window or ())
        except DamagedShard as error:
            raise StoreError(f"case {case_id!r}, array {name!r}: {error}; run `vertseg preprocess` again for this "
                             "case (it rewrites only missing or changed cases)") from None

    def shard_problems(self, case_id: str) -> list[str]:
        return shard_problems(self.root, case_id, self.attrs(case_id))

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return tuple(self.attrs(case_id)["shape_zyx"])

    def is_labeled(self, case_id: str) -> bool:
        return self.attrs(case_id)["pool"] == "labeled"

    def read_hu(self, case_id: str, window: tuple[slice, ...] | None = None) -> np.ndarray:
        return self._window(case_id, "image", window)

    def read_image(self, case_id: str, window: tuple[slice, ...] | None = None) -> np.ndarray:
        """HU window clipped and scaled to [0, 1] (float32), as the network sees it."""
        return normalize_hu(self.read_hu(case_id, window), self.hu_window)

    def read_labels(self, case_id: str, window: tuple[slice, ...] | None = None) -> np.ndarray:
        if not self.is_labeled(case_id):
            raise StoreError(f"case {case_id!r} in {self.root} has no labels (unlabeled pool)")
        return self._window(case_id, "labels", window)

    def foreground(self, case_id: str) -> np.ndarray:
        """(N, 4) sampled foreground voxels: VerSe label (0 = bone, unlabeled cases), z, y, x (cached, small)."""
        key = (case_id, "fg:values")
        if key not in self._arrays:
            self._arrays[key] = self._array(case_id, "fg")[...]
        return self._arrays[key]

    def geometry(self, case_id: str) -> CaseGeometry:
        return CaseGeometry.from_dict(self.attrs(case_id)["geometry"])

    def centroids(self, case_id: str) -> CaseCentroids:
        stored = self.attrs(case_id)["centroids"]
        return CaseCentroids(
            body={int(k): np.asarray(v["voxel_zyx"], float) for k, v in stored["body"].items()},
            mask={int(k): np.asarray(v["voxel_zyx"], float) for k, v in stored["mask"].items()},
        )

    def spine_box(self, case_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Inclusive-exclusive (start, stop) of the labeled spine in store voxels, or None when unknown."""
        box = self.attrs(case_id).get("spine_box_zyx")
        return None if box is None else (np.asarray(box[0]), np.asarray(box[1]))

    def class_frequencies(self, verse_labels: tuple[int, ...]) -> np.ndarray:
        """Voxel counts per protocol class (index 0 = background), for class-frequency loss weights."""
        counts = {int(k): v for k, v in self.manifest["label_counts"].items()}
        return np.array([counts.get(0, 0)] + [counts.get(label, 0) for label in verse_labels], dtype=np.int64)


def normalize_hu(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Section 2.2: clip to the HU window and scale linearly to [0, 1]."""
    low, high = window
    return np.clip((hu.astype(np.float32) - low) / (high - low), 0.0, 1.0)
