"""The training methods of Table 3 behind one registry: `train.method` picks one."""

from __future__ import annotations

from vertseg.training.methods.base import Method, StepContext, StudentBundle, Views, split_output, supervised_loss
from vertseg.training.methods.cps import CPS
from vertseg.training.methods.mean_teacher import UAMT, MeanTeacher
from vertseg.training.methods.proposed import Proposed
from vertseg.training.methods.supervised import Supervised
from vertseg.training.methods.unimatch import UniMatch

METHODS: dict[str, type[Method] | object] = {
    "seg_only": lambda: Supervised("seg_only"),
    "fsl": lambda: Supervised("fsl"),
    "proposed": Proposed,
    "mean_teacher": MeanTeacher,
    "ua_mt": UAMT,
    "cps": CPS,
    "unimatch": UniMatch,
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "StepContext", "StudentBundle", "Views", "get_method", "split_output", "supervised_loss"]
