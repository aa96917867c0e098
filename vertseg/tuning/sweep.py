"""Declarative ablation sweeps: a YAML file names a base config, data stores, a grid of dotted overrides and seeds.

Everything is validated (every trial's full config included) before Ray or MLflow start, so a typo in trial 17
fails in a second, not after sixteen trainings.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vertseg.config import ConfigError, VertsegConfig, build_config, format_validation_error, read_yaml_mapping
from vertseg.config_base import ConfigModel

SSL_METHODS = frozenset({"proposed", "mean_teacher", "ua_mt", "cps", "unimatch"})

# `--smoke`: the same code paths at a size that trains in seconds per trial on a laptop CPU.
SMOKE_OVERRIDES: dict[str, Any] = {
    "train.schedule.epochs": 2,
    "train.schedule.iterations_per_epoch": 2,
    "train.schedule.e_cons": 0,
    "train.schedule.e_ramp": 1,
    "train.validate_every": 1,
    "train.optim.labeled_batch_size": 1,
    "train.optim.unlabeled_batch_size": 1,
    "train.amp": False,
    "model.base_width": 4,
    "data.patch_size": [32, 16, 16],
}


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file and the offending entry."""


class DataStores(ConfigModel):
    """Preprocessed Zarr stores (paths relative to the working directory, as on the `vertseg train` line)."""

    store: Path = Field(strict=False)  # YAML gives paths as strings
    unlabeled: Path | None = Field(None, strict=False)  # used by SSL methods only; FSL rows train on the labeled pool alone
    eval_split: str | None = None  # held-out split of the trials' evaluation; None: test if the store has it, else validation
    evaluate: bool = True  # full-volume evaluation of every trial's best checkpoint on eval_split, logged to MLflow


class Resources(ConfigModel):
    workers_per_trial: int = Field(2, ge=1)  # Ray Train workers (DDP ranks) per trial
    use_gpu: bool = False  # one GPU per worker when true
    max_concurrent: int | None = Field(None, ge=1)  # default: as many trials as the cluster's resources fit
    max_failures: int = Field(2, ge=0)  # Tune retries of a failed trial (each resumes its own checkpoint)


class Variant(ConfigModel):
    """One named row of a table: a label and its dotted overrides."""

    label: str
    overrides: dict[str, Any] = {}


class TrialSpec(BaseModel):
    """A fully expanded trial: what Tune hands to the trial function and what MLflow tags record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str  # deterministic id, stable across restarts: <variant-slug>-s<seed>
    order: int  # position in the sweep file's expansion: the report's row order
    variant: str  # table row label
    x: float | None = None  # numeric axis value (e.g. tau) for line plots
    seed: int
    overrides: tuple[str, ...]


class Sweep(ConfigModel):
    name: str
    title: str = ""
    kind: str = "bars"  # report layout: bars (Fig. 2/4/5, Tables 3/4) or line (Fig. 3)
    base: Path | None = Field(None, strict=False)  # base config YAML, relative to the sweep file; None = paper defaults
    data: DataStores
    overrides: dict[str, Any] = {}  # applied to every trial
    variants: list[Variant] = []
    grid: dict[str, list[Any]] = {}  # cartesian product of dotted keys, crossed with `variants`
    x_key: str | None = None  # the grid key plotted on the x axis of a line plot
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)  # section 2.6: seed 42
    resources: Resources = Resources()
    smoke: dict[str, Any] = {}  # extra `--smoke` overrides on top of SMOKE_OVERRIDES
    entrypoint: str = "vertseg.distributed.train:run_training"  # any callable with run_training's signature

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(f"sweep name {value!r} must be letters, digits, '_', '.', '-'")
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in ("bars", "line"):
            raise ValueError(f"kind must be 'bars' or 'line', got {value!r}")
        return value

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"entrypoint {value!r} must look like 'package.module:function'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Sweep":
        if not self.variants and not self.grid:
            raise ValueError("a sweep needs `variants` or `grid` (or both)")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid entry {key!r} has no values")
        if len({v.label for v in self.variants}) != len(self.variants):
            raise ValueError("variant labels must be unique")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        if self.x_key is not None and self.x_key not in self.grid:
            raise ValueError(f"x_key {self.x_key!r} is not a grid key ({sorted(self.grid)})")
        if self.kind == "line" and self.x_key is None:
            raise ValueError("kind 'line' needs x_key (the grid key on the x axis)")
        return self


def _to_override(key: str, value: Any) -> str:
    return f"{key}={_format_value(value)}"


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:40] or hashlib.sha1(text.encode()).hexdigest()[:8]


def _format_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def expand(sweep: Sweep, smoke: bool = False) -> list[TrialSpec]:
    """All trials in a stable order: variants x grid x seeds (`smoke` keeps the first seed only)."""
    variants = sweep.variants or [Variant(label="")]
    grid_keys = list(sweep.grid)
    seeds = sweep.seeds[:1] if smoke else sweep.seeds
    smoke_overrides = {**SMOKE_OVERRIDES, **sweep.smoke} if smoke else {}
    trials: list[TrialSpec] = []
    for variant in variants:
        for combo in itertools.product(*(sweep.grid[k] for k in grid_keys)):
            point = dict(zip(grid_keys, combo))
            parts = [variant.label] if variant.label else []
            parts += [f"{k.rsplit('.', 1)[-1]}={_format_value(v)}" for k, v in point.items()]
            label = ", ".join(parts)
            x = point.get(sweep.x_key) if sweep.x_key else None
            for seed in seeds:
                merged = {**sweep.overrides, **variant.overrides, **point, **smoke_overrides, "train.seed": seed}
                trials.append(
                    TrialSpec(
                        key=f"{_slug(label)}-s{seed}",
                        order=len(trials),
                        variant=label,
                        x=float(x) if x is not None else None,
                        seed=seed,
                        overrides=tuple(_to_override(k, v) for k, v in merged.items()),
                    )
                )
    keys = [t.key for t in trials]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise SweepError(f"sweep {sweep.name!r}: labels collide after slugging: {duplicates}")
    return trials


def base_raw(sweep: Sweep, sweep_dir: Path) -> dict[str, Any]:
    """The base config as a raw mapping (trials apply their overrides to a copy)."""
    if sweep.base is None:
        return {}
    path = sweep.base if sweep.base.is_absolute() else sweep_dir / sweep.base
    try:
        return read_yaml_mapping(path, "base config")
    except ConfigError as error:
        raise SweepError(str(error)) from None


def trial_config(raw: dict[str, Any], trial: TrialSpec, source: str = "<sweep>") -> VertsegConfig:
    return build_config(copy.deepcopy(raw), list(trial.overrides), f"{source} trial {trial.key}")


class SweepPlan(BaseModel):
    """A validated sweep ready to launch: the sweep, its base config, and every trial's overrides."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    sweep: Sweep
    path: Path
    base: dict[str, Any]
    trials: list[TrialSpec]
    smoke: bool

    def config_for(self, trial: TrialSpec) -> VertsegConfig:
        return trial_config(self.base, trial, str(self.path))

    def unlabeled_for(self, config: VertsegConfig) -> Path | None:
        return self.sweep.data.unlabeled if config.train.method in SSL_METHODS else None


def load_sweep(path: Path | str) -> Sweep:
    path = Path(path)
    try:
        return Sweep.model_validate(read_yaml_mapping(path, "sweep file"))
    except ConfigError as error:
        raise SweepError(str(error)) from None
    except ValidationError as error:
        raise SweepError(format_validation_error(error, str(path), "sweep file")) from None


def plan_sweep(
    path: Path | str,
    *,
    smoke: bool = False,
    store: Path | None = None,
    unlabeled: Path | None = None,
    check_stores: bool = True,
) -> SweepPlan:
    """Load, expand and validate every trial's config (and that the stores exist) before anything starts."""
    path = Path(path)
    sweep = load_sweep(path)
    # The two stores go together: another labeled store drops the file's unlabeled one unless one is given.
    update = {"store": store, "unlabeled": unlabeled} if store is not None else {}
    if unlabeled is not None:
        update["unlabeled"] = unlabeled
    if update:
        sweep = sweep.model_copy(update={"data": sweep.data.model_copy(update=update)})
    raw = base_raw(sweep, path.parent)
    try:
        build_config(copy.deepcopy(raw), [], str(path))
    except ConfigError as error:
        raise SweepError(f"sweep {path}: base config is invalid\n{error}") from None
    trials = expand(sweep, smoke)
    plan = SweepPlan(sweep=sweep, path=path, base=raw, trials=trials, smoke=smoke)
    needs_unlabeled = []
    for trial in trials:
        try:
            config = plan.config_for(trial)
        except ConfigError as error:
            raise SweepError(f"sweep {path}: {error}") from None
        if config.train.method in SSL_METHODS:
            needs_unlabeled.append(trial.key)
    if check_stores:
        if not sweep.data.store.exists():
            raise SweepError(f"sweep {path}: labeled store {sweep.data.store} does not exist")
        if needs_unlabeled and sweep.data.unlabeled is not None and not sweep.data.unlabeled.exists():
            raise SweepError(f"sweep {path}: unlabeled store {sweep.data.unlabeled} does not exist")
    return plan
