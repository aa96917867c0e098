"""Identification pseudo-labels from a teacher's outputs (Eq. 11-12), their class balance, and the diagnostics
that judge them against the hidden labels of the unlabelled scans.

Two ways to turn the teacher's class maps into per-position classes (`train.ssl.pseudo_labels`):
- `argmax` (Eq. 11 as written): each position takes its most probable class, confidence = that probability;
- `sequence`: the maps go through vertseg's own post-processing (connected components, seeds, cranio-caudal
  sequence decoder, `postprocess.assign`), so every position of one decoded vertebra carries that vertebra's
  label and the labels along the patch are a continuous sequence; confidence = the mean probability the maps give
  the decoded labels along the patch: the sequence is decided as a whole, so a vertebra the decoder renamed (one
  of a merged pair) is taught with the confidence of its neighbours, not with the low probability its own map
  gave its new label.
  Per-position argmax lets two frequent classes spread over their neighbours (a confirmation loop); the decoder
  cannot name two vertebrae alike or skip one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vertseg.postprocess.assign import PostprocessSettings, labelmap_from_predictions


@dataclass(frozen=True)
class ClassPseudoLabels:
    """Per identification-grid position: `classes` (B, z, y, x) long, 0 = background, 1..K vertebrae;
    `confidence` (B, z, y, x) float in [0, 1]."""

    classes: torch.Tensor
    confidence: torch.Tensor


def teacher_probabilities(id_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the K+1 channels (Eq. 11-12)."""
    return torch.softmax(id_logits.float() / temperature, dim=1)


def argmax_pseudo_labels(probs: torch.Tensor) -> ClassPseudoLabels:
    confidence, classes = probs.max(dim=1)
    return ClassPseudoLabels(classes, confidence)


def _majority(labels: torch.Tensor, shape: tuple[int, int, int], num_classes: int) -> torch.Tensor:
    """(B, Z, Y, X) class indices -> (B, *shape) the class covering most of each coarse cell."""
    one_hot = F.one_hot(labels.long(), num_classes + 1).permute(0, 4, 1, 2, 3).float()
    return F.adaptive_avg_pool3d(one_hot, shape).argmax(1)


def sequence_pseudo_labels(seg_logits: torch.Tensor, probs: torch.Tensor, spacing_mm: tuple[float, float, float],
                           settings: PostprocessSettings) -> ClassPseudoLabels:
    """The teacher's maps decoded per sample by the inference post-processing (see the module docstring).

    `seg_logits` (B, 1, Z, Y, X) full resolution, `probs` (B, K+1, z, y, x) teacher class probabilities. Positions
    whose cell is mostly outside a decoded vertebra (or in one the decoder called "not a vertebra") are background.
    """
    protocol = settings.protocol
    lut = protocol.class_lut()  # as training labels: a decoded L6 / T13 teaches L5 / T12 (the merge policy)
    fg = torch.sigmoid(seg_logits.float())[:, 0].cpu().numpy()
    maps = probs.cpu().numpy()
    full_classes, confidence = [], []
    for sample_fg, sample_maps in zip(fg, maps):
        labelmap, records = labelmap_from_predictions(sample_fg, sample_maps, spacing_mm, settings)
        named = [record for record in records if record.label]
        by_class = np.zeros(protocol.num_classes + 1, dtype=np.float32)
        if named:
            by_class[lut[[record.label for record in named]]] = np.mean([record.confidence for record in named])
        full_classes.append(lut[labelmap])
        confidence.append(by_class)
    classes = _majority(torch.from_numpy(np.stack(full_classes)), tuple(probs.shape[2:]), protocol.num_classes)
    table = torch.from_numpy(np.stack(confidence))
    cell_confidence = torch.gather(table, 1, classes.flatten(1)).view_as(classes)
    return ClassPseudoLabels(classes.to(probs.device), cell_confidence.to(probs.device))


class ClassBalance:
    """Running share of each vertebra class in the teacher's predictions over vertebra positions (an EMA of the
    mean class probability, FreeMatch's p~ and ReMixMatch's running mean). It scales tau_cls per class
    (`adaptive`: tau_k = tau * p~_k / max p~, so a class the teacher rarely predicts needs less confidence) and
    aligns the teacher's probabilities with the labelled class shares (`distribution_alignment`), so no
    frequent class takes the class maps over."""

    def __init__(self, num_classes: int, momentum: float, target: torch.Tensor | None = None) -> None:
        self.momentum = momentum
        self.shares = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        total = None if target is None else float(target.sum())
        self.target = (target.double() / total) if total else torch.full((num_classes,), 1.0 / num_classes,
                                                                          dtype=torch.float64)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, region: torch.Tensor | None) -> None:
        """Fold in the vertebra-channel means of `probs` (B, K+1, ...) over `region` (B, ...) or all positions."""
        vertebra = probs[:, 1:].double()
        vertebra = vertebra / vertebra.sum(1, keepdim=True).clamp(min=1e-12)
        weights = torch.ones_like(vertebra[:, 0]) if region is None else region.double()
        if float(weights.sum()) <= 0:
            return
        mean = (vertebra * weights.unsqueeze(1)).sum((0, *range(2, vertebra.dim()))) / weights.sum()
        self.shares = self.momentum * self.shares + (1 - self.momentum) * mean.cpu()

    def thresholds(self, tau: float) -> torch.Tensor:
        """(K+1,) per-class thresholds (index 0 unused)."""
        scaled = tau * self.shares / self.shares.max().clamp(min=1e-12)
        return torch.cat([torch.tensor([tau], dtype=torch.float64), scaled]).float()

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """Vertebra channels reweighted by target / running share and renormalised to their old total; the
        background channel is untouched."""
        ratio = (self.target / self.shares.clamp(min=1e-12)).to(probs.device, probs.dtype)
        vertebra = probs[:, 1:] * ratio.view(1, -1, *([1] * (probs.dim() - 2)))
        vertebra = vertebra * (probs[:, 1:].sum(1, keepdim=True) / vertebra.sum(1, keepdim=True).clamp(min=1e-12))
        return torch.cat([probs[:, :1], vertebra], dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"shares": self.shares.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shares = state["shares"].double().cpu()


def class_map_entropy(classes: torch.Tensor, region: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """How spread the teacher's class map is over the vertebra positions `region`: (entropy of the class
    histogram / ln K, share of the two most frequent classes). A confirmation loop narrows it."""
    chosen = classes[region & (classes > 0)]
    if chosen.numel() == 0:
        return math.nan, math.nan
    counts = torch.bincount(chosen, minlength=num_classes + 1)[1:].double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(num_classes))
    return entropy, float(p.topk(2).values.sum())


def pseudo_label_accuracy(pseudo: torch.Tensor, keep: torch.Tensor, hidden: torch.Tensor) -> dict[str, float]:
    """Pseudo-labels against the hidden truth (both (B, z, y, x) class grids; hidden < 0 = unknown): `pseudo_acc`
    = share of the taught vertebra positions whose class is right, `pseudo_cover` = share of the true vertebra
    positions that are taught. Diagnostics only: the hidden labels never reach a loss."""
    known = hidden >= 0
    taught = keep & known
    vertebra = (hidden > 0) & known
    out = {}
    if taught.any():
        out["pseudo_acc"] = float((pseudo[taught] == hidden[taught]).double().mean())
    if vertebra.any():
        out["pseudo_cover"] = float((keep & vertebra).double().sum() / vertebra.double().sum())
    return out


def hidden_classes(labels: torch.Tensor, shape: tuple[int, int, int], num_classes: int) -> torch.Tensor:
    """Full-resolution hidden labels (B, Z, Y, X; -1 = unknown scan) -> the identification grid's majority class."""
    known = labels >= 0
    coarse = _majority(labels.clamp(min=0), shape, num_classes)
    unknown = F.adaptive_max_pool3d((~known).float().unsqueeze(1), shape)[:, 0] > 0
    return torch.where(unknown, torch.full_like(coarse, -1), coarse)
