"""VerSe centroid JSON: `[{"direction": [..]}, {"label": L, "X": .., "Y": .., "Z": ..}, ...]`.

X, Y, Z are continuous voxel indices along the array axes 0, 1, 2 of a grid whose nibabel axis codes are
`direction` (each code names where the index increases). The points are vertebral-BODY centroids, not mask
centres of mass. When `direction` differs from the image's own codes the points are permuted/flipped onto the
image grid with index' = (n - 1) - index (nibabel's flip), not VerSe's `n - index`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vertseg.data.errors import CaseError
from vertseg.io import atomic_write_json
from vertseg.labels import VERSE_NAMES

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_AXIS_OF = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def read_centroids_json(path: Path) -> tuple[tuple[str, str, str] | None, dict[int, np.ndarray]]:
    """Direction codes (None when the file has none) and label -> voxel (3,) float64 in that frame."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CaseError(path, f"unreadable centroid JSON ({error})") from None
    if not isinstance(entries, list):
        raise CaseError(path, "centroid JSON must be a list of entries")
    codes: tuple[str, str, str] | None = None
    points: dict[int, np.ndarray] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CaseError(path, f"centroid entry {entry!r} is not an object")
        if "direction" in entry:
            codes = _validate_codes(entry["direction"], path)
            continue
        try:
            label = _integral_label(entry["label"])
            xyz = np.array([_number(entry["X"]), _number(entry["Y"]), _number(entry["Z"])], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise CaseError(path, f"centroid entry {entry!r} needs numeric label, X, Y, Z") from None
        if label is None:
            raise CaseError(path, f"centroid entry {number} ({entry!r}): label {entry['label']!r} is not a whole "
                                  "number (a VerSe label is an integer; refusing to round it)")
        if label not in VERSE_NAMES:
            raise CaseError(path, f"centroid label {label} is not a VerSe label (1-28)")
        if not np.all(np.isfinite(xyz)):
            raise CaseError(path, f"centroid of label {label} is not finite: {xyz.tolist()}")
        if label in points:
            raise CaseError(path, f"label {label} appears twice")
        points[label] = xyz
    return codes, points


def _number(value) -> float:
    """A JSON number; `true`/`false` are refused rather than read as 1/0."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a coordinate")
    return float(value)


def _integral_label(value) -> int | None:
    """The label as an int, None when it is a number with a fractional part (20.7); TypeError/ValueError when it is
    not a number at all."""
    number = _number(value)
    if not np.isfinite(number) or number != int(number):
        return None
    return int(number)


def _validate_codes(codes, path) -> tuple[str, str, str]:
    codes = tuple(str(c).upper() for c in codes)
    if len(codes) != 3 or sorted(_AXIS_OF[c] for c in codes if c in _AXIS_OF) != [0, 1, 2]:
        raise CaseError(path, f"direction {list(codes)} is not a permutation of L/R, A/P, S/I codes")
    return codes  # type: ignore[return-value]


def reorient_points(
    points: dict[int, np.ndarray], codes_from: tuple[str, ...], codes_to: tuple[str, ...], shape_to: tuple[int, ...]
) -> dict[int, np.ndarray]:
    """Voxel points in a grid with `codes_from` -> the same points in the grid with `codes_to` and `shape_to`."""
    if tuple(codes_from) == tuple(codes_to) or not points:
        return dict(points)
    source_axis = {_AXIS_OF[c]: (i, c) for i, c in enumerate(codes_from)}
    labels = list(points)
    src = np.stack([points[k] for k in labels])
    dst = np.empty_like(src)
    for axis_to, code in enumerate(codes_to):
        axis_from, code_from = source_axis[_AXIS_OF[code]]
        dst[:, axis_to] = src[:, axis_from] if code_from == code else (shape_to[axis_to] - 1) - src[:, axis_from]
    return {k: dst[n] for n, k in enumerate(labels)}


def write_centroids_json(
    path: Path | str, centroids_voxel: dict[int, tuple[float, float, float]], direction_codes: tuple[str, ...]
) -> None:
    """Write VerSe-format centroids (voxel coordinates of the grid with `direction_codes`), atomically."""
    codes = _validate_codes(direction_codes, path)
    entries: list[dict] = [{"direction": list(codes)}]
    for label in sorted(centroids_voxel):
        x, y, z = (round(float(v), 2) for v in centroids_voxel[label])
        entries.append({"label": int(label), "X": x, "Y": y, "Z": z})
    atomic_write_json(path, entries)
