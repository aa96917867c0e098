"""The single-process trainer core: one optimisation step, epochs, validation and the complete resume state.

It knows nothing of Ray: distribution enters only through `wrap` (e.g. DDP around the student bundle) and the
torch.distributed process group, when one is initialised, for agreeing on skipped steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vertseg.config import VertsegConfig, dump_config
from vertseg.model import build_model
from vertseg.model.precision import native_bf16
from vertseg.postprocess.assign import PostprocessSettings
from vertseg.training.augment import apply_weak, labeled_photometric, sample_weak, strong_augment
from vertseg.training.checkpoint import (
    CheckpointError,
    InitReport,
    capture_rng,
    load_checkpoint,
    load_matching,
    model_weights,
    restore_rng,
)
from vertseg.training.ema import EMATeacher
from vertseg.training.losses import class_frequency_weights
from vertseg.training.losses.identification import downsample_labels
from vertseg.training.methods import StepContext, StudentBundle, Views, get_method, supervised_loss
from vertseg.training.pseudo_labels import ClassBalance
from vertseg.training.schedules import consistency_weight, lr_factor, tau_cls, tau_seg

LABELED_KEYS = ("image", "mask", "labels", "centroids")
MIN_INIT_FRACTION = 0.5  # --init-from: a new head is a small share of the weights; a different network is not


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient; the run stops instead of training on garbage."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank (so all ranks skip or step together)."""
    if not _distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


class Trainer:
    """Student(s), EMA teacher, SGD with poly decay, and the step/epoch logic of sections 2.4-2.6."""

    def __init__(
        self,
        config: VertsegConfig,
        device: torch.device | str = "cpu",
        class_counts: torch.Tensor | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        rank: int = 0,
    ) -> None:
        self.config = config
        self.train_cfg = config.train
        self.device = torch.device(device)
        self.method = get_method(config.train.method)
        members = []
        for i in range(self.method.students):
            torch.manual_seed(config.train.seed + i)  # same init on every rank; CPS students differ from each other
            members.append(build_model(config.model))
        self.bundle = StudentBundle(members, config.train.methods.unimatch_feature_dropout).to(self.device)
        if self.device.type == "cuda" and config.train.channels_last:
            self.bundle.to(memory_format=torch.channels_last_3d)
        self.student = wrap(self.bundle) if wrap is not None else self.bundle
        self.teacher = EMATeacher(self.bundle.members[0], config.train.schedule.ema_decay) if self.method.uses_teacher else None
        if self.device.type == "cuda" and config.train.compile:
            for member in self.bundle.members:
                member.compile()
        optim = config.train.optim
        self.optimizer = torch.optim.SGD(
            self.bundle.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
        schedule = config.train.schedule
        self.total_iterations = schedule.epochs * schedule.iterations_per_epoch
        num_classes = config.model.num_classes
        counts = class_counts if class_counts is not None else torch.zeros(num_classes)
        self.class_weights = class_frequency_weights(counts).to(self.device)
        ssl = config.train.ssl
        self.balance = (ClassBalance(num_classes, ssl.balance_momentum, counts)
                        if ssl.class_thresholds == "adaptive" or ssl.distribution_alignment else None)
        self.postprocess = PostprocessSettings.from_config(config) if ssl.pseudo_labels == "sequence" else None
        self.teacher_ready = ssl.ready_acc_id <= 0  # the readiness gate; opened by `observe_validation`
        self.plateaued = False  # `train.plateau_patience` validations without a better score: training is done
        self.generator = torch.Generator(self.device).manual_seed(config.train.seed * 1000 + rank)
        self.autocast = config.train.amp if self.device.type == "cuda" else (
            config.train.cpu_bf16 and native_bf16(self.device))
        self.epoch = 0
        self.step = 0
        self.iteration = 0  # within the current epoch; non-zero only after an interrupted epoch
        self.skipped_steps = 0
        self._consecutive_nonfinite = 0

    # ---- one step -------------------------------------------------------------------------------------------
    def _context(self) -> StepContext:
        schedule = self.train_cfg.schedule
        return StepContext(
            config=self.train_cfg,
            epoch=self.epoch,
            consistency_weight=consistency_weight(self.epoch, schedule) * self.train_cfg.loss.lambda_cons,
            tau_seg=tau_seg(self.epoch, schedule),
            tau_cls=tau_cls(self.epoch, schedule),
            class_weights=self.class_weights,
            generator=self.generator,
            cls_enabled=self.teacher_ready,
            balance=self.balance,
            postprocess=self.postprocess,
            spacing_mm=(float(self.config.data.spacing_mm),) * 3,
        )

    def observe_validation(self, metrics: dict[str, float]) -> None:
        """The readiness gate (`train.ssl.ready_acc_id`): the identification consistency term starts once the
        deployed network's validation Acc_ID (full-volume when measured, else patch-level) reaches the threshold,
        and stays on."""
        acc = metrics.get("val_volume_id_acc", metrics.get("val_id_acc", math.nan))
        if math.isfinite(acc) and acc >= self.train_cfg.ssl.ready_acc_id:
            self.teacher_ready = True

    def make_views(self, labeled: dict[str, torch.Tensor], unlabeled: torch.Tensor | None, ctx: StepContext,
                   hidden: torch.Tensor | None = None) -> Views:
        """Weak geometry on labeled data (+ photometric), weak and strong views of the unlabeled patches; the
        unlabelled patches' hidden labels (diagnostics only) follow the weak geometry."""
        aug = self.train_cfg.augment
        lab = {k: labeled[k].to(self.device, non_blocking=True) for k in LABELED_KEYS}
        params = sample_weak(lab["image"].shape[0], aug, self.generator, self.device)
        lab = apply_weak(params, lab["image"], lab["mask"], lab["labels"], lab["centroids"])
        lab["image"] = labeled_photometric(lab["image"], aug, self.generator)
        if unlabeled is None or not self.method.uses_unlabeled or ctx.consistency_weight <= 0:
            return Views(labeled=lab)
        images = unlabeled.to(self.device, non_blocking=True)
        hidden = None if hidden is None else hidden.to(self.device, non_blocking=True)
        # hidden labels go through shifted by one: the rotation pads with 0, which reads back as -1 (unknown)
        moved = apply_weak(sample_weak(images.shape[0], aug, self.generator, self.device), images,
                           labels=None if hidden is None else hidden + 1)
        weak = moved["image"]
        hidden = None if hidden is None else moved["labels"] - 1
        return Views(labeled=lab, weak=weak, strong=strong_augment(weak, aug, self.generator), hidden=hidden)

    def train_step(self, labeled: dict[str, torch.Tensor], unlabeled: torch.Tensor | None = None,
                   hidden: torch.Tensor | None = None) -> dict[str, float]:
        self.bundle.train()
        lr = self.train_cfg.optim.lr * lr_factor(self.step, self.total_iterations, self.train_cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr  # derived from the step counter, so a resumed run continues the same decay
        ctx = self._context()
        views = self.make_views(labeled, unlabeled, ctx, hidden)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.method.loss(self.student, self.teacher, views, ctx)
        logs = ctx.logs
        self.optimizer.zero_grad(set_to_none=True)
        stepped = _all_ranks_true(bool(torch.isfinite(loss)), self.device)
        if stepped:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.bundle.parameters(), self.train_cfg.optim.grad_clip)
            stepped = bool(torch.isfinite(norm))  # gradients are all-reduced: every rank sees the same norm
            logs["grad_norm"] = float(norm)
        if stepped:
            self.optimizer.step()
            self._consecutive_nonfinite = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self._consecutive_nonfinite += 1
            if self._consecutive_nonfinite > self.train_cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self._consecutive_nonfinite} consecutive non-finite steps at epoch {self.epoch}, step {self.step} "
                    f"(last terms: {logs}); lower train.optim.lr or check the data"
                )
        if self.teacher is not None and stepped:
            self.teacher.update(self.bundle.members[0])
        self.step += 1
        logs.update(
            loss=float(loss.detach()), lr=lr, lambda_cons=ctx.consistency_weight,
            tau_seg=ctx.tau_seg, tau_cls=ctx.tau_cls, skipped=0.0 if stepped else 1.0,
        )
        return logs

    # ---- epochs -----------------------------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """End of warm-up (epoch E_cons): the teacher restarts from the current student (section 2.4.3 (4))."""
        if self.teacher is not None and self.epoch == self.train_cfg.schedule.e_cons:
            self.teacher.reinitialise(self.bundle.members[0])

    def train_epoch(
        self,
        labeled: Iterator[dict[str, torch.Tensor]],
        unlabeled: Iterator[dict[str, torch.Tensor]] | None = None,
        on_step: Callable[[dict[str, float]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, float]:
        """Run the rest of the current epoch (`iterations_per_epoch` steps from `iteration`) and return the mean of
        every logged value. Advances `epoch` unless `should_stop` interrupts it (then `iteration` records where)."""
        if self.iteration == 0:
            self.begin_epoch()
        needs_unlabeled = self.method.uses_unlabeled and self._context().consistency_weight > 0
        sums: dict[str, float] = {}
        steps = 0
        while self.iteration < self.train_cfg.schedule.iterations_per_epoch:
            if should_stop is not None and should_stop():
                break
            batch = next(labeled)
            extra = next(unlabeled) if (unlabeled is not None and needs_unlabeled) else {}
            logs = self.train_step(batch, extra.get("image"), extra.get("hidden_labels"))
            self.iteration += 1
            steps += 1
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value
            if on_step is not None:
                on_step(logs)
        if self.iteration >= self.train_cfg.schedule.iterations_per_epoch:
            self.epoch += 1
            self.iteration = 0
        return {key: value / max(steps, 1) for key, value in sums.items()}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Patch-level validation of the deployed network (`deployed_weights`): Dice of the thresholded mask,
        identification accuracy over foreground voxels at the identification resolution, and the supervised loss;
        summed over ranks. Scoring the weights inference loads keeps the "best" checkpoint honest."""
        model = self.deployed_model
        model.eval()
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # inter, total, correct, counted, loss, batches
        for batch in batches:
            data = {k: batch[k].to(self.device) for k in LABELED_KEYS}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                out = model(data["image"])
            pred = (out.seg[0].float() > 0).float()
            sums[0] += (pred * data["mask"]).sum()
            sums[1] += pred.sum() + data["mask"].sum()
            if out.identification is not None:
                target = downsample_labels(data["labels"], tuple(out.identification.shape[2:]), self.config.model.num_classes)
                fg = target[:, 0] < 0.5
                sums[2] += ((out.identification.argmax(1) == target.argmax(1)) & fg).sum()
                sums[3] += fg.sum()
            sums[4] += supervised_loss(out, data, self.train_cfg, {}).detach()
            sums[5] += 1
        model.train()
        if _distributed():
            dist.all_reduce(sums)
        inter, total, correct, counted, loss_sum, n = sums.tolist()
        metrics = {"val_dice": 2 * inter / total if total > 0 else 1.0, "val_loss": loss_sum / max(n, 1.0)}
        if counted > 0:
            metrics["val_id_acc"] = correct / counted
        return metrics

    @torch.no_grad()
    def validate_volumes(self, validator: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
        """Full-volume validation of the deployed network (`validator`: evaluation.holdout.volume_validator)."""
        model = self.deployed_model.eval()
        try:
            return validator(model)
        finally:
            model.train()

    @property
    def deployed_model(self) -> nn.Module:
        return self.teacher.module if self.deployed_weights == "teacher" else self.bundle.members[0]

    @property
    def deployed_weights(self) -> str:
        """Which network inference uses: the EMA teacher once it tracks the trained student (it is re-initialised
        from the student at the start of epoch E_cons), else the first student; a warm-up teacher still averages
        in the random initialisation."""
        if self.teacher is not None and self.epoch > self.train_cfg.schedule.e_cons:
            return "teacher"
        return "student"

    # ---- resume state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "vertseg-train/1",
            "method": self.method.name,
            "inference_weights": self.deployed_weights,
            "config_yaml": dump_config(self.config),
            "students": self.bundle.state_dict(),
            "model": self.bundle.members[0].state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": self.train_cfg.optim.lr_decay, "total_iterations": self.total_iterations},
            "epoch": self.epoch,
            "step": self.step,
            "iteration": self.iteration,
            "skipped_steps": self.skipped_steps,
            "rng": capture_rng(self.generator),
            "teacher_ready": self.teacher_ready,
            "plateaued": self.plateaued,
            "class_balance": self.balance.state_dict() if self.balance is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method.name:
            raise ValueError(f"checkpoint was trained with method {state.get('method')!r}, config says {self.method.name!r}")
        self.bundle.load_state_dict(state["students"])
        if self.teacher is not None and state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.iteration = int(state["epoch"]), int(state["step"]), int(state["iteration"])
        self.skipped_steps = int(state["skipped_steps"])
        restore_rng(state["rng"], self.generator)
        self.teacher_ready = bool(state.get("teacher_ready", self.teacher_ready))
        self.plateaued = bool(state.get("plateaued", False))
        if self.balance is not None and state.get("class_balance") is not None:
            self.balance.load_state_dict(state["class_balance"])

    def initialise_from(self, path: Path | str) -> InitReport:
        """Fine-tuning: every student starts from a checkpoint's deployed weights, the teacher from the first
        student; optimiser, schedule and counters stay fresh. Tensors whose shape differs (e.g. the identification
        head of another class count) keep their fresh initialisation and are listed in the report."""
        checkpoint = load_checkpoint(path)
        state, key = model_weights(checkpoint, path)
        report = load_matching(self.bundle.members[0], state, Path(path), key)
        if report.fraction < MIN_INIT_FRACTION:
            raise CheckpointError(f"--init-from {path}: only {report.fraction:.0%} of this network's weights match the "
                                  "checkpoint; its model.* settings differ too much to fine-tune from it")
        for member in self.bundle.members[1:]:
            load_matching(member, state, Path(path), key)
            perturb(member, self.train_cfg.ssl.cps_weight_noise, self.generator)
        if self.teacher is not None:
            self.teacher.reinitialise(self.bundle.members[0])
        self.observe_validation(checkpoint.get("best_metrics") or {})  # the teacher starts as these weights
        return report

    @property
    def finished(self) -> bool:
        return self.epoch >= self.train_cfg.schedule.epochs or self.plateaued


@torch.no_grad()
def perturb(module: nn.Module, relative: float, generator: torch.Generator) -> None:
    """Gaussian noise of `relative` times each floating tensor's std: two students branched from one checkpoint
    (CPS) must differ, or each only teaches itself."""
    for tensor in module.state_dict().values():
        if tensor.is_floating_point() and tensor.numel() > 1 and relative > 0:
            noise = torch.randn(tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype)
            tensor.add_(noise * relative * tensor.std())


def is_better(metrics: dict[str, float], best: dict[str, float] | None) -> bool:
    """Model selection: the higher `selection_score`."""
    score = selection_score(metrics)
    return best is None or not math.isfinite(selection_score(best)) or score > selection_score(best)


VOLUME_SELECTION = ("val_volume_dice", "val_volume_id_acc", "val_volume_id_rate")
PATCH_SELECTION = ("val_dice", "val_id_acc")


def selection_score(metrics: dict[str, float]) -> float:
    """Mean of what users get when full-volume validation ran (binary Dice, Acc_ID, id-rate of whole validation
    scans after post-processing), else of the patch monitors (Dice, identification accuracy); all in [0, 1]."""
    volume = [metrics[k] for k in VOLUME_SELECTION if math.isfinite(metrics.get(k, math.nan))]
    values = volume or [metrics[k] for k in PATCH_SELECTION if k in metrics]
    return sum(values) / len(values) if values else float("nan")
