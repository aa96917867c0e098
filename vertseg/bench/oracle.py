"""`vertseg bench identification --oracle`: perfect network outputs through the real inference path.

A stage is proven with an oracle before anything is trained through it. Here the "network" is the ground truth:
each test phantom's store-frame labels are written into the image the predictor sees (label * LABEL_STEP), and
`OracleNetwork` decodes them window by window into foreground logits and identification logits. Everything after
the network is the production path: localisation, sliding-window assembly on the 1/4 grid, post-processing,
mapping back to the original grid, the writers, and `vertseg evaluate`'s runner against the phantom files.

Variants: `one-hot` (what a perfect classifier outputs; must score 100 %), `heatmap` (the trainer's own Gaussian
identification targets, `training/heatmaps.py`, read as class evidence), `flat-T4`/`flat-T8` (one-hot logits
divided by a temperature), `noise` (Gaussian noise on the logits), `dropped-class` (the middle visible level of
each case never wins). The degraded rows say how gracefully identification fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vertseg.config import VertsegConfig
from vertseg.labels import PROTOCOLS
from vertseg.model.output import SegIdOutput

LABEL_STEP = 1.0 / 64.0  # image value of one VerSe label unit: 28 levels stay inside [0, 1]
ID_STRIDE = 4
VARIANTS = ("one-hot", "heatmap", "flat-T4", "flat-T8", "noise", "dropped-class")
_LOGIT_FLOOR = 1e-4


@dataclass(frozen=True)
class Variant:
    name: str
    temperature: float = 1.0
    noise_sigma: float = 0.0
    heatmap: bool = False
    drop_middle: bool = False


VARIANT_SETTINGS = {
    "one-hot": Variant("one-hot"),
    "heatmap": Variant("heatmap", heatmap=True),
    "flat-T4": Variant("flat-T4", temperature=4.0),
    "flat-T8": Variant("flat-T8", temperature=8.0),
    "noise": Variant("noise", noise_sigma=2.0),
    "dropped-class": Variant("dropped-class", drop_middle=True),
}


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """Store-frame VerSe labels -> the oracle's input image."""
    return labels.astype(np.float32) * LABEL_STEP


class OracleNetwork(nn.Module):
    """Decodes the label-encoded image of each window into the outputs a perfect network would give.

    Foreground: +-12 logits from label > 0 (on the localisation pass's block means, any bone in the block).
    Identification: log of the area-averaged one-hot classes on the 1/4 grid (or the Gaussian heatmap targets),
    then the variant's degradation. `dropped_class` (set per case) is a protocol class that never wins."""

    def __init__(self, config: VertsegConfig, variant: Variant, seed: int = 0) -> None:
        super().__init__()
        self.protocol = PROTOCOLS[config.data.protocol]
        self.variant = variant
        self.sigma = float(config.train.loss.heatmap_sigma)
        self.lut = torch.as_tensor(self.protocol.class_lut().astype(np.int64))
        self.generator = torch.Generator().manual_seed(seed)
        self.dropped_class: int | None = None

    def forward(self, x: torch.Tensor) -> SegIdOutput:
        fg = torch.where(x > 0.5 * LABEL_STEP, 12.0, -12.0)
        verse = torch.round(x[:, 0] / LABEL_STEP).clamp(0, 255).long()
        classes = self.lut.to(x.device)[verse]
        k = self.protocol.num_classes
        low = tuple(s // ID_STRIDE for s in x.shape[2:])
        one_hot = F.one_hot(classes, k + 1).permute(0, 4, 1, 2, 3).float()
        probs = F.adaptive_avg_pool3d(one_hot, low)
        if self.variant.heatmap:
            probs = torch.cat([torch.zeros_like(probs[:, :1]), self._heatmaps(classes, low)], dim=1)
        logits = torch.log(probs + _LOGIT_FLOOR) / self.variant.temperature
        if self.variant.noise_sigma > 0:
            noise = torch.randn(logits.shape, generator=self.generator) * self.variant.noise_sigma
            logits = logits + noise.to(logits.device)
        if self.dropped_class is not None:
            logits[:, self.dropped_class] = torch.log(torch.tensor(_LOGIT_FLOOR))
        return SegIdOutput(seg=[fg], identification=logits)

    def _heatmaps(self, classes: torch.Tensor, low: tuple[int, ...]) -> torch.Tensor:
        """The trainer's identification targets for this window (vertebrae without a centroid file entry use their
        mask centre, as `fill_missing_centroids` does for patches)."""
        from vertseg.training.heatmaps import fill_missing_centroids, render_heatmaps, to_low_resolution

        k = self.protocol.num_classes
        missing = torch.full((classes.shape[0], k, 3), float("nan"))
        centroids = fill_missing_centroids(missing, classes)
        heat, _ = render_heatmaps(to_low_resolution(centroids, ID_STRIDE), low, self.sigma)
        return heat


@dataclass(frozen=True)
class OracleRow:
    variant: str
    metrics: dict[str, float]
    cases: int
    failed: dict[str, str]


def _middle_class(labels: np.ndarray, config: VertsegConfig) -> int | None:
    protocol = PROTOCOLS[config.data.protocol]
    present = sorted(int(v) for v in np.unique(labels) if v and int(v) in protocol.verse_labels)
    return protocol.class_of(present[len(present) // 2]) if present else None


def run_variant(config: VertsegConfig, store: Path, phantoms: Path, out: Path, variant: Variant,
                seed: int = 0) -> OracleRow:
    """Predict every test case of `store` with the oracle network and evaluate the written files."""
    from vertseg.data.store import VertStore
    from vertseg.evaluation.runner import evaluate_folder
    from vertseg.inference.cases import PredictJob, load_job
    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import Timer, predict_store_frame, write_prediction

    network = OracleNetwork(config, variant, seed)
    predictor = Predictor(network, config, "cpu")
    vert = VertStore(store)
    pred_dir = out / variant.name
    failed: dict[str, str] = {}
    for case_id in vert.cases("test"):
        scan = load_job(PredictJob(case_id, store=store), predictor.spacing, tuple(config.data.hu_window))
        labels = vert.read_labels(case_id)
        scan.image = encode_labels(labels)
        network.dropped_class = _middle_class(labels, config) if variant.drop_middle else None
        prediction = predict_store_frame(predictor, scan, Timer())
        write_prediction(predictor, scan, prediction, pred_dir, Timer())
    report = evaluate_folder(pred_dir, [phantoms])
    failed.update({str(k): str(v) for k, v in report.failed.items()})
    return OracleRow(variant.name, dict(report.summary), len(report.cases), failed)


def build_phantom_store(workdir: Path, config: VertsegConfig, seed: int, cases: int, size: str) -> tuple[Path, Path]:
    """Test phantoms (VerSe 2020 layout, anatomical variants included) and their store at the config's spacing."""
    from vertseg.data.synth import generate_dataset
    from vertseg.steps import pool_sources, preprocess_in_process

    phantoms = workdir / "phantoms"
    generate_dataset(phantoms, cases, "verse20", seed, size, splits={"training": 0, "validation": 0, "test": 1},
                     variant_rate=0.25, multi_scan_rate=0.0, overwrite=True)
    store = workdir / "store.zarr"
    preprocess_in_process(pool_sources([phantoms]), store, config)
    return phantoms, store


def run_oracle_bench(workdir: Path, config: VertsegConfig, seed: int, cases: int, size: str,
                     variants: tuple[str, ...] = VARIANTS) -> list[OracleRow]:
    phantoms, store = build_phantom_store(Path(workdir), config, seed, cases, size)
    return [run_variant(config, store, phantoms, Path(workdir) / "predictions", VARIANT_SETTINGS[name], seed)
            for name in variants]


HEADLINE = (("acc_id", "Acc_ID (%)"), ("id_rate", "id-rate (%)"), ("mean_vertebra_dice", "vertebra Dice (%)"),
            ("binary_dice", "binary Dice (%)"), ("mean_distance_mm", "d_mean (mm)"))


def render_rows(rows: list[OracleRow]) -> tuple[list[str], list[list[Any]]]:
    headers = ["network output", "cases"] + [label for _, label in HEADLINE] + ["failed"]
    table = []
    for row in rows:
        cells: list[Any] = [row.variant, row.cases]
        for key, label in HEADLINE:
            value = row.metrics.get(key, float("nan"))
            cells.append(f"{value:.2f}" if label.endswith("(mm)") else f"{100 * value:.1f}")
        cells.append(len(row.failed))
        table.append(cells)
    return headers, table


def last_line(rows: list[OracleRow]) -> str:
    one_hot = next(r for r in rows if r.variant == "one-hot")
    return (f"oracle Acc_ID {100 * one_hot.metrics.get('acc_id', float('nan')):.1f} "
            f"id-rate {100 * one_hot.metrics.get('id_rate', float('nan')):.1f}")
