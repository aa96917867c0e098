"""The paper's figures from aggregated rows: bars (Fig. 2/4/5), threshold line (Fig. 3), per-level Dice boxes.

Each function returns a matplotlib Figure (Agg backend, no display needed); `save` writes PNG + SVG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vertseg.io import atomic_write_bytes  # noqa: E402
from vertseg.reporting.aggregate import Row  # noqa: E402

_COLORS = {"dice": "#3b6ea8", "id_acc": "#d08a2e"}


def _pct(value: float) -> float:
    return 100 * value if math.isfinite(value) else math.nan


def _y_window(values: Sequence[float]) -> tuple[float, float]:
    """Zoom like the paper's figures (differences are a few points) while keeping every bar visible."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    low, high = min(finite), max(finite)
    pad = max(2.0, 0.15 * (high - low))
    return max(0.0, math.floor(low - pad)), min(100.0, math.ceil(high + pad))


def bar_chart(rows: Sequence[Row], title: str) -> Figure:
    """Grouped bars: Dice and identification accuracy (%) per variant, error bars = std over seeds."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(rows) + 2), 3.6), dpi=120)
    width = 0.38
    centers = range(len(rows))
    heights: list[float] = []
    for offset, (metric, label) in zip((-width / 2, width / 2), (("dice", "Dice"), ("id_acc", "ID accuracy"))):
        means = [_pct(getattr(r, metric).mean) for r in rows]
        errs = [_pct(getattr(r, metric).std) if getattr(r, metric).n > 1 else 0.0 for r in rows]
        bars = ax.bar([c + offset for c in centers], means, width, yerr=errs if any(errs) else None, capsize=3, label=label,
                      color=_COLORS[metric])
        ax.bar_label(bars, labels=[f"{m:.1f}" if math.isfinite(m) else "" for m in means], fontsize=7, padding=2)
        heights += [m - e for m, e in zip(means, errs)] + [m + e for m, e in zip(means, errs)]
    ax.set_ylim(*_y_window(heights))
    ax.set_xticks(list(centers), [r.variant for r in rows], rotation=15 if len(rows) > 3 else 0, ha="right"
                  if len(rows) > 3 else "center", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def line_plot(rows: Sequence[Row], title: str, x_label: str) -> Figure:
    """Dice and identification accuracy (%) against a numeric axis (Fig. 3: the pseudo-label threshold tau)."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    xs = [r.x for r in rows]
    values: list[float] = []
    for metric, label in (("dice", "Dice"), ("id_acc", "ID accuracy")):
        means = [_pct(getattr(r, metric).mean) for r in rows]
        errs = [_pct(getattr(r, metric).std) if getattr(r, metric).n > 1 else 0.0 for r in rows]
        ax.errorbar(xs, means, yerr=errs if any(errs) else None, marker="o", capsize=3, label=label,
                    color=_COLORS[metric])
        values += [m - e for m, e in zip(means, errs)] + [m + e for m, e in zip(means, errs)]
        best = max(range(len(rows)), key=lambda i: means[i] if math.isfinite(means[i]) else -math.inf)
        if metric == "dice" and math.isfinite(means[best]):
            ax.annotate(f"{means[best]:.1f}", (xs[best], means[best]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
    ax.set_ylim(*_y_window(values))
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(x_label)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def level_boxplot(per_variant: dict[str, dict[str, list[float]]], title: str) -> Figure:
    """Per-level Dice (%) distributions over seeds, one panel per variant."""
    panels = list(per_variant.items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.0, 2.4 * len(panels) + 0.6), dpi=120, squeeze=False)
    for ax, (variant, levels) in zip(axes[:, 0], panels):
        names = list(levels)
        ax.boxplot([[100 * v for v in levels[n]] for n in names], tick_labels=names, widths=0.6)
        ax.set_ylabel("Dice (%)")
        ax.set_title(variant, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save(fig: Figure, folder: Path, stem: str) -> dict[str, Path]:
    """Write `stem.png` and `stem.svg` atomically; returns both paths."""
    import io

    paths = {}
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt)
        paths[fmt] = Path(folder) / f"{stem}.{fmt}"
        atomic_write_bytes(paths[fmt], buffer.getvalue())
    plt.close(fig)
    return paths
