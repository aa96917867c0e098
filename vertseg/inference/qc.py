"""Quality-control picture of a prediction: sagittal and coronal views with coloured labels and level names.

Drawn in the store frame (isotropic, superior at the top) so every scan looks the same; the label overlay is
the maximum-intensity projection of a slab around the spine so a curved or scoliotic spine stays visible.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vertseg.io import atomic_write_bytes
from vertseg.labels import MAX_VERSE_LABEL, VERSE_NAMES

SLAB_MM = 30.0


def label_colours() -> np.ndarray:
    """(MAX_VERSE_LABEL + 1, 4) RGBA; neighbouring levels get clearly different colours, 0 is transparent."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = np.array([cmap(i % 20) for i in range(MAX_VERSE_LABEL + 1)], dtype=float)
    colours[:, 3] = 0.55
    colours[0] = 0.0
    return colours


def _slab_mip(labels: np.ndarray, axis: int, centre: int, half: int) -> np.ndarray:
    lo, hi = max(0, centre - half), min(labels.shape[axis], centre + half + 1)
    return np.take(labels, np.arange(lo, hi), axis=axis).max(axis=axis)


def render_qc(image_zyx: np.ndarray, labels_zyx: np.ndarray, spacing_mm: float, title: str) -> bytes:
    """PNG bytes: the image (normalised, [0, 1]) mid-spine sagittal and coronal slices with the labels overlaid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fg = np.argwhere(labels_zyx > 0)
    centre = np.round(np.median(fg, axis=0)).astype(int) if len(fg) else np.array(labels_zyx.shape) // 2
    half = int(round(SLAB_MM / 2 / spacing_mm))
    colours = label_colours()
    views = (("sagittal", 2, "posterior →"), ("coronal", 1, "right →"))
    figure = Figure(figsize=(10, 8), dpi=100)
    for column, (name, axis, xlabel) in enumerate(views, start=1):
        axes = figure.add_subplot(1, 2, column)
        image = np.take(image_zyx, centre[axis], axis=axis)
        labels = _slab_mip(labels_zyx, axis, int(centre[axis]), half)
        axes.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes.imshow(colours[labels], interpolation="nearest")
        _annotate(axes, labels)
        axes.set_title(f"{name} (slab {SLAB_MM:.0f} mm)")
        axes.set_xlabel(xlabel)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _annotate(axes, labels_2d: np.ndarray) -> None:
    """Level name at the centre of mass of each label in the view."""
    flat = labels_2d.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=MAX_VERSE_LABEL + 1)
    rows, cols = np.indices(labels_2d.shape)
    row_mean = np.bincount(flat, weights=rows.ravel(), minlength=MAX_VERSE_LABEL + 1) / np.maximum(counts, 1)
    col_mean = np.bincount(flat, weights=cols.ravel(), minlength=MAX_VERSE_LABEL + 1) / np.maximum(counts, 1)
    for label in np.flatnonzero(counts[1:]) + 1:
        axes.text(col_mean[label], row_mean[label], VERSE_NAMES.get(int(label), str(label)), color="white",
                  fontsize=7, ha="center", va="center", fontweight="bold")


def write_qc(path: Path, image_zyx: np.ndarray, labels_zyx: np.ndarray, spacing_mm: float, title: str) -> None:
    atomic_write_bytes(path, render_qc(image_zyx, labels_zyx, spacing_mm, title))
