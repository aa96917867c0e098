"""Turn a ReportSource into Markdown + a self-contained HTML page (figures inlined as base64) + PNG/SVG files."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from vertseg.bench.report import markdown_table
from vertseg.io import atomic_write_json, atomic_write_text
from vertseg.reporting import figures
from vertseg.reporting.aggregate import by_variant, comparison_rows, level_dice, region_splits, region_table
from vertseg.reporting.collect import ReportSource

_PROVENANCE_PARAMS = (
    ("sweep.file", "Sweep file"),
    ("data.store", "Labeled store"),
    ("data.store_fingerprint", "Store fingerprint"),
    ("data.eval_split", "Evaluation split"),
    ("data.eval_cases", "Evaluation cases"),
    ("data.unlabeled", "Unlabeled store"),
    ("sweep.seeds", "Seeds"),
    ("sweep.smoke", "Smoke run"),
)


@dataclass
class Section:
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figure: str | None = None  # stem of a figure in figures/
    note: str = ""


@dataclass
class Report:
    title: str
    sections: list[Section]
    provenance: list[tuple[str, str]]
    summary: dict


def build_report(source: ReportSource, split: str, tracking_uri: str) -> tuple[Report, dict[str, object]]:
    """Tables and figure objects (not yet written) for the runs of `source`."""
    rows = comparison_rows(source.records, split)
    figs: dict[str, object] = {}
    show_dataset = any(r.dataset for r in rows)
    headers = ["Method"] + (["Dataset"] if show_dataset else []) + ["Dice (%)", "Accuracy (%)", "Seeds"]
    table = [
        [r.variant] + ([r.dataset] if show_dataset else []) + [r.dice.percent(), r.id_acc.percent(), str(len(r.run_ids))]
        for r in rows
    ]
    main = Section(f"{source.title}: {split} metrics, mean ± std over seeds", headers, table)
    if source.kind == "line" and all(r.x is not None for r in rows):
        figs["main_line"] = figures.line_plot(rows, source.title, source.x_label or "x")
        main.figure = "main_line"
    else:
        figs["main_bars"] = figures.bar_chart(rows, source.title)
        main.figure = "main_bars"
    sections = [main]

    groups = by_variant(source.records)
    for region_split in region_splits(source.records):
        block = Section(f"Per-region results on `{region_split}` (Table 5 style)",
                        ["Model", "Region", "Dice (%)", "Accuracy (%)"])
        for variant, runs in groups.items():
            for i, (region, dice, acc) in enumerate(region_table(runs, region_split)):
                block.rows.append([variant if i == 0 else "", region, dice.percent(), acc.percent()])
        sections.append(block)

    levels = {variant: level_dice(runs, split) for variant, runs in groups.items()}
    levels = {variant: values for variant, values in levels.items() if values}
    if levels:
        figs["level_dice"] = figures.level_boxplot(levels, f"Per-level Dice on {split}")
        sections.append(Section("Per-level Dice (box = seeds)", figure="level_dice"))

    runs_section = Section("Runs behind every number", ["Method", "Seed", "MLflow run"])
    for variant, runs in groups.items():
        for run in runs:
            runs_section.rows.append([variant, "" if run.seed is None else str(run.seed), run.run_id])
    sections.append(runs_section)

    provenance = [("Generated", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
                  ("Tracking URI", tracking_uri)]
    if source.parent_run_id:
        provenance.append(("Sweep parent run", source.parent_run_id))
    provenance += [(label, source.params[key]) for key, label in _PROVENANCE_PARAMS if source.params.get(key)]
    provenance.append(("Metrics split", split))
    summary = {
        "title": source.title,
        "split": split,
        "parent_run_id": source.parent_run_id,
        "provenance": dict(provenance),
        "rows": [
            {
                "variant": r.variant,
                "dataset": r.dataset,
                "x": r.x,
                "dice_mean": _finite(r.dice.mean),
                "dice_std": _finite(r.dice.std),
                "id_acc_mean": _finite(r.id_acc.mean),
                "id_acc_std": _finite(r.id_acc.std),
                "n": r.dice.n,
                "run_ids": list(r.run_ids),
            }
            for r in rows
        ],
    }
    return Report(source.title, sections, provenance, summary), figs


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [markdown_table(["Provenance", ""], [[k, f"`{v}`"] for k, v in report.provenance]), ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.rows:
            lines += [markdown_table(section.headers, section.rows), ""]
        if section.figure:
            lines += [f"![{section.title}](figures/{section.figure}.png)", ""]
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(report: Report, pngs: dict[str, bytes]) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}",
        "table{border-collapse:collapse;margin:0.5rem 0 1rem}td,th{border:1px solid #ccc;padding:0.25rem 0.6rem;",
        "text-align:left;font-size:0.9rem}th{background:#f3f3f3}img{max-width:100%}code{font-size:0.85rem}",
        "</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        _html_table(["Provenance", ""], [[k, v] for k, v in report.provenance]),
    ]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.rows:
            parts.append(_html_table(section.headers, section.rows))
        if section.figure:
            data = base64.b64encode(pngs[section.figure]).decode()
            parts.append(f"<img alt='{html.escape(section.title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Report, figs: dict[str, object], out: Path) -> dict[str, Path]:
    """Write figures (PNG + SVG), report.md, report.html and summary.json into `out`."""
    out = Path(out)
    paths: dict[str, Path] = {}
    pngs: dict[str, bytes] = {}
    for stem, fig in figs.items():
        written = figures.save(fig, out / "figures", stem)
        pngs[stem] = written["png"].read_bytes()
        paths.update({f"{stem}.png": written["png"], f"{stem}.svg": written["svg"]})
    paths["report.md"] = out / "report.md"
    atomic_write_text(paths["report.md"], _markdown(report))
    paths["report.html"] = out / "report.html"
    atomic_write_text(paths["report.html"], _html(report, pngs))
    paths["summary.json"] = out / "summary.json"
    atomic_write_json(paths["summary.json"], report.summary)
    return paths


def log_to_parent(tracking_uri: str, parent_run_id: str, out: Path) -> None:
    """Attach the report folder to the sweep's parent run (artifact path `report/`)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).log_artifacts(parent_run_id, str(out), "report")
