"""VerSe-comparable evaluation: overlap (Dice), identification (paper Eq. 15-17 and VerSe id-rate), the runner."""

from vertseg.evaluation.case import CaseMetrics, EvalSettings, evaluate_arrays, mask_centroids, summarise

__all__ = ["CaseMetrics", "EvalSettings", "evaluate_arrays", "mask_centroids", "summarise"]
