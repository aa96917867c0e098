"""Pure aggregation of trial metrics into the paper's tables: mean +- sample std over seeds, per variant.

Metric keys follow `<split>_<metric>[_<sub>]` with metric `dice` or `id_acc` and sub a region (cervical,
thoracic, lumbar) or a vertebra level (C1..L5); `/` is read as `_`. A `best_` prefix (the best validation epoch,
logged by the sweep) wins over the last logged value. Values are fractions; tables print percent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vertseg.labels import REGIONS, VERSE_NAMES

METRICS = ("dice", "id_acc")
REGION_NAMES = tuple(REGIONS)
LEVELS = tuple(VERSE_NAMES[label] for label in range(1, 25))  # C1..L5, the reporting protocol
_REGION_LABELS = {"cervical": "Cervical (C1-C7)", "thoracic": "Thoracic (T1-T12)", "lumbar": "Lumbar (L1-L5)"}
_KEY = re.compile(r"^(?P<split>.+?)_(?P<metric>dice|id_acc)(?:_(?P<sub>[A-Za-z0-9]+))?$")


@dataclass(frozen=True)
class RunRecord:
    """One trial as read back from MLflow."""

    run_id: str
    name: str
    variant: str
    seed: int | None
    x: float | None
    metrics: dict[str, float]
    dataset: str = ""
    method: str = ""
    order: int | None = None  # position in the sweep file


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int
    values: tuple[float, ...] = field(default=())

    def percent(self, digits: int = 1) -> str:
        """`91.6 +- 0.3` (percent); a single seed prints the value alone; no value prints n/a."""
        if self.n == 0:
            return "n/a"
        text = f"{100 * self.mean:.{digits}f}"
        return text if self.n == 1 else f"{text} ± {100 * self.std:.{digits}f}"


def normalise_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """`val/dice` -> `val_dice`; `best_` values override the last logged ones."""
    plain = {k.replace("/", "_"): float(v) for k, v in metrics.items()}
    best = {k.removeprefix("best_"): v for k, v in plain.items() if k.startswith("best_")}
    return {**{k: v for k, v in plain.items() if not k.startswith("best_")}, **best}


def summarize(values: Iterable[float]) -> Summary:
    finite = tuple(v for v in values if v is not None and math.isfinite(v))
    n = len(finite)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return Summary(mean, std, n, finite)


def metric_key(split: str, metric: str, sub: str | None = None) -> str:
    return f"{split}_{metric}" + (f"_{sub}" if sub else "")


def variants_in_order(records: Sequence[RunRecord]) -> list[str]:
    """Rows in numeric x order when every run has one, else in sweep-file order (then first seen)."""
    first: dict[str, tuple[float, float, int]] = {}
    for i, record in enumerate(records):
        x = record.x if record.x is not None else math.inf
        order = record.order if record.order is not None else math.inf
        first[record.variant] = min(first.get(record.variant, (math.inf, math.inf, i)), (x, order, i))
    if first and all(value[0] != math.inf for value in first.values()):
        return sorted(first, key=lambda v: first[v])
    return sorted(first, key=lambda v: first[v][1:])


def by_variant(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {v: [] for v in variants_in_order(records)}
    for record in records:
        groups[record.variant].append(record)
    return groups


def variant_summary(runs: Sequence[RunRecord], key: str) -> Summary:
    return summarize(normalise_metrics(r.metrics).get(key, math.nan) for r in runs)


@dataclass(frozen=True)
class Row:
    variant: str
    dataset: str
    x: float | None
    dice: Summary
    id_acc: Summary
    run_ids: tuple[str, ...]


def comparison_rows(records: Sequence[RunRecord], split: str) -> list[Row]:
    """Table 3/4 rows and the bar/line figures: one row per variant, headline metrics of `split`."""
    rows = []
    for variant, runs in by_variant(records).items():
        rows.append(
            Row(
                variant=variant,
                dataset=runs[0].dataset,
                x=runs[0].x,
                dice=variant_summary(runs, metric_key(split, "dice")),
                id_acc=variant_summary(runs, metric_key(split, "id_acc")),
                run_ids=tuple(r.run_id for r in runs),
            )
        )
    return rows


def headline_split(records: Sequence[RunRecord], preferred: str | None = None) -> str:
    """The split of the headline numbers: `preferred` (the sweep's evaluation split), else the full-volume `test`,
    then `validation` evaluation, whichever the runs hold; else `val`, the training loop's patch-level monitor."""
    held = {k.removesuffix("_dice") for r in records for k in normalise_metrics(r.metrics) if k.endswith("_dice")}
    return next((split for split in (preferred, "test", "validation") if split and split in held), "val")


def region_splits(records: Sequence[RunRecord]) -> list[str]:
    """Splits with region metrics (e.g. `test`, `ctspine1k_test`): the Table 5 blocks, in first-seen order."""
    splits: dict[str, None] = {}
    for record in records:
        for key in normalise_metrics(record.metrics):
            match = _KEY.match(key)
            if match and match["sub"] in REGION_NAMES:
                splits.setdefault(match["split"], None)
    return list(splits)


def region_table(runs: Sequence[RunRecord], split: str) -> list[tuple[str, Summary, Summary]]:
    """Table 5 block: overall then cervical/thoracic/lumbar Dice and identification accuracy."""
    rows = [("Overall", variant_summary(runs, metric_key(split, "dice")), variant_summary(runs, metric_key(split, "id_acc")))]
    for region in REGION_NAMES:
        rows.append(
            (
                _REGION_LABELS[region],
                variant_summary(runs, metric_key(split, "dice", region)),
                variant_summary(runs, metric_key(split, "id_acc", region)),
            )
        )
    return rows


def level_dice(runs: Sequence[RunRecord], split: str) -> dict[str, list[float]]:
    """Per-level Dice values over the runs (seeds) of one variant, levels without any value left out."""
    out: dict[str, list[float]] = {}
    for level in LEVELS:
        values = [normalise_metrics(r.metrics).get(metric_key(split, "dice", level)) for r in runs]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if finite:
            out[level] = finite
    return out
