"""Read sweeps and runs back from MLflow (never from in-memory results), so a report can be rebuilt any time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vertseg.reporting.aggregate import RunRecord
from vertseg.tuning import tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


class ReportError(ValueError):
    """Nothing to report (unknown sweep or run id, no finished trial); the message says what was looked up."""


@dataclass(frozen=True)
class ReportSource:
    """The runs of one report and where they came from."""

    title: str
    kind: str  # "bars" or "line"
    x_label: str
    parent_run_id: str | None
    params: dict[str, str]  # the parent's params (provenance: store fingerprint, eval split, sweep file)
    records: list[RunRecord]


def _all_experiments(mlflow: "MlflowClient") -> list[str]:
    return [e.experiment_id for e in mlflow.search_experiments()]


def _record(run: "Run") -> RunRecord:
    tags = run.data.tags
    x = tags.get(tracking.TAG_X)
    order = tags.get(tracking.TAG_ORDER)
    seed = tags.get(tracking.TAG_SEED) or run.data.params.get("train.seed")
    name = tags.get(tracking.TAG_RUN_NAME, run.info.run_id)
    return RunRecord(
        run_id=run.info.run_id,
        name=name,
        variant=tags.get(tracking.TAG_VARIANT, name),
        seed=int(seed) if seed is not None else None,
        x=float(x) if x else None,
        metrics=dict(run.data.metrics),
        dataset=tags.get(tracking.TAG_DATASET, ""),
        method=tags.get(tracking.TAG_METHOD, run.data.params.get("train.method", "")),
        order=int(order) if order is not None else None,
    )


def _children(mlflow: "MlflowClient", parent: "Run") -> list["Run"]:
    return mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{tracking.TAG_PARENT}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )


def _from_parent(mlflow: "MlflowClient", parent: "Run") -> ReportSource:
    params = dict(parent.data.params)
    runs = [r for r in _children(mlflow, parent) if tracking.TAG_TRIAL in r.data.tags]
    if not runs:
        raise ReportError(f"sweep run {parent.info.run_id} has no finished trial runs yet")
    x_key = params.get("sweep.x_key", "")
    return ReportSource(
        title=params.get("sweep.title", parent.info.run_name),
        kind=params.get("sweep.kind", "bars"),
        x_label=x_key.rsplit(".", 1)[-1] if x_key else "",
        parent_run_id=parent.info.run_id,
        params=params,
        records=[_record(r) for r in runs],
    )


def from_sweep(mlflow: "MlflowClient", sweep: str) -> ReportSource:
    """The latest sweep of that name that has finished trials (a sweep run twice reports its newest run)."""
    parents = mlflow.search_runs(
        _all_experiments(mlflow),
        filter_string=f"tags.`{tracking.TAG_SWEEP}` = '{sweep}' and tags.`{tracking.TAG_ROLE}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
    )
    if not parents:
        raise ReportError(f"no MLflow sweep run named {sweep!r} (tag {tracking.TAG_SWEEP}) in this tracking store")
    for parent in parents:
        try:
            return _from_parent(mlflow, parent)
        except ReportError:
            continue
    raise ReportError(f"sweep {sweep!r} has no finished trial runs yet")


def from_runs(mlflow: "MlflowClient", run_ids: list[str]) -> ReportSource:
    """Explicit runs; a sweep parent among them stands for its finished children."""
    from mlflow.exceptions import MlflowException

    records: list[RunRecord] = []
    parent_params: dict[str, str] = {}
    for run_id in run_ids:
        try:
            run = mlflow.get_run(run_id)
        except MlflowException:
            raise ReportError(f"MLflow run {run_id} does not exist in this tracking store") from None
        if run.data.tags.get(tracking.TAG_ROLE) == "sweep":
            source = _from_parent(mlflow, run)
            records += source.records
            parent_params = parent_params or source.params
        else:
            records.append(_record(run))
    return ReportSource(
        title="Selected runs",
        kind="bars",
        x_label="",
        parent_run_id=None,
        params=parent_params,
        records=records,
    )
