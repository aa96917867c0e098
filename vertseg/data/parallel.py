"""Preprocess many cases on Ray (the only data module that imports ray) and finish the store's manifest.

Each Ray task writes its own case group atomically, so an interrupted run keeps every finished case and the
next run skips them by source hash. The manifest is rebuilt from the case groups on disk at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vertseg.data.config import DataConfig
from vertseg.data.preprocess import PoolChoice, limit_threads, preprocess_case
from vertseg.data.store import build_manifest, init_store, write_manifest
from vertseg.data.types import CaseSource


@dataclass
class PreprocessSummary:
    results: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r["status"] == status)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == "failed"]


def _connect(address: str | None, workers: int | None) -> bool:
    """Join a running Ray (explicit address, RAY_ADDRESS, or this process's) or start a local one; True if started."""
    import os

    import ray

    if ray.is_initialized():
        return False
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = "auto"
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        options["num_cpus"] = workers or os.cpu_count()
    ray.init(address=address, **options)
    return True


def _preprocess_on_one_cpu(*args: Any) -> dict[str, Any]:
    """The Ray task: `preprocess_case` on the one thread its CPU share allows."""
    limit_threads(1)
    return preprocess_case(*args)


def run_preprocess(
    sources: list[CaseSource],
    root: Path | str,
    config: DataConfig,
    pool: PoolChoice = "auto",
    overwrite: bool = False,
    address: str | None = None,
    workers: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> PreprocessSummary:
    """Preprocess `sources` into the store at `root` with at most `workers` cases in flight."""
    import ray

    root = Path(root)
    seen: set[str] = set()
    duplicates = sorted({s.case_id for s in sources if s.case_id in seen or seen.add(s.case_id)})
    if duplicates:
        raise ValueError(f"case ids occur more than once among the sources: {duplicates[:10]}")
    init_store(root, config)
    started = _connect(address, workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_preprocess_on_one_cpu)
        limit = max(1, workers or int(ray.available_resources().get("CPU", 1)))
        pending: dict[Any, CaseSource] = {}
        queue = list(sources)
        summary = PreprocessSummary()
        while queue or pending:
            while queue and len(pending) < limit:
                source = queue.pop(0)
                pending[task.remote(source, config, str(root), pool, overwrite)] = source
            (done,), _ = ray.wait(list(pending), num_returns=1)
            source = pending.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayError as error:  # worker killed (e.g. out of memory) twice: record, go on
                result = {"case_id": source.case_id, "status": "failed", "file": str(source.image),
                          "problem": f"worker failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            summary.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if started:
            ray.shutdown()
    failures = [{k: r[k] for k in ("case_id", "file", "problem")} for r in summary.failures]
    summary.manifest = build_manifest(root, config, failures)
    write_manifest(root, summary.manifest)
    return summary
