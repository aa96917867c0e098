"""Training objective, schedules, augmentation and optimisation settings (paper sections 2.4-2.6).

Every paper hyperparameter is a named default with its equation or section in a comment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vertseg.config_base import ConfigModel

Method = Literal["seg_only", "fsl", "proposed", "mean_teacher", "ua_mt", "cps", "unimatch"]


class LossConfig(ConfigModel):
    alpha_seg: float = Field(0.5, ge=0, le=1)  # Eq. 4: equal-weighted Dice and CE inside L_seg
    scale_weights: tuple[float, float, float] = (4 / 7, 2 / 7, 1 / 7)  # Eq. 4: w_s for full, 1/2, 1/4; sum 1
    eps: float = 1e-6  # Eq. 5: epsilon
    alpha_cls: float = Field(1.0, ge=0)  # Eq. 3: identification weight
    heatmap_sigma: float = Field(2.0, gt=0)  # section 2.4.2: sigma = 2 voxels at the identification resolution
    lambda_cons: float = Field(0.5, ge=0)  # Table A1: maximum consistency weight
    temperature: float = Field(0.5, gt=0)  # Eq. 11-12: teacher heatmap softmax temperature T
    id_reweighting: Literal["lagging", "balance", "none"] = "lagging"  # Eq. 3: "dynamically reweighted" KL and instance terms
    seg_pseudo_threshold: float = Field(0.5, gt=0, lt=1)  # Eq. 10: teacher probability -> binary pseudo-mask
    cls_pseudo_region: Literal["teacher_foreground", "heatmap"] = "teacher_foreground"  # Eq. 11: where "excluding the background" looks for background
    id_ce_weight: float = Field(1.0, ge=0)  # not in the paper: per-position class CE at 1/4 resolution (0 = Eq. 3 as written)
    id_ce_background_weight: float = Field(0.5, ge=0)  # weight of the non-bone cells' mean CE ("not a vertebra")
    id_ce_balance: Literal["vertebra", "cell"] = "vertebra"  # not in the paper: each vertebra's bone cells weigh as one

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> "LossConfig":
        if abs(sum(self.scale_weights) - 1.0) > 1e-6:
            raise ValueError(f"loss.scale_weights must sum to 1, got {self.scale_weights}")
        return self


class ScheduleConfig(ConfigModel):
    epochs: int = Field(100, ge=1)  # section 2.6: 100 epochs
    iterations_per_epoch: int = Field(250, ge=1)
    e_cons: int = Field(40, ge=0)  # Eq. 2: consistency starts (end of warm-up)
    e_ramp: int = Field(80, ge=1)  # Eq. 2: consistency weight reaches 1
    tau_seg_start: float = Field(0.50, ge=0, le=1)  # Eq. 13
    tau_seg_end: float = Field(0.90, ge=0, le=1)  # Eq. 13
    tau_cls_start: float = Field(0.30, ge=0, le=1)  # Eq. 12
    tau_cls_end: float = Field(0.55, ge=0, le=1)  # Eq. 12
    ema_decay: float = Field(0.99, gt=0, lt=1)  # section 2.4.3 (4): alpha = 0.99

    @model_validator(mode="after")
    def _ramp_after_start(self) -> "ScheduleConfig":
        if self.e_ramp <= self.e_cons:
            raise ValueError(f"schedule.e_ramp ({self.e_ramp}) must be greater than schedule.e_cons ({self.e_cons})")
        return self


class OptimConfig(ConfigModel):
    lr: float = Field(0.01, gt=0)  # section 2.6: SGD, initial lr 0.01
    momentum: float = Field(0.9, ge=0, lt=1)  # section 2.6: momentum 0.9
    weight_decay: float = Field(3e-5, ge=0)
    lr_decay: Literal["poly", "none"] = "poly"
    poly_exponent: float = 0.9
    grad_clip: float = Field(12.0, gt=0)
    labeled_batch_size: int = Field(2, ge=1)
    unlabeled_batch_size: int = Field(2, ge=0)


class AugmentConfig(ConfigModel):
    """Table A2. Probabilities p_* and ranges; the weak view is geometry only, the strong view photometric only."""

    flip_xy_p: float = Field(0.5, ge=0, le=1)  # Table A2: flip X/Y
    flip_z_p: float = Field(0.0, ge=0, le=1)  # Table A2 says 0.25; 0 measured better for identification (docs/training.md)
    rotate_deg: float = Field(22.5, ge=0)  # Table A2: in-plane XY rotation in [-22.5, 22.5] degrees
    labeled_strong_p: float = Field(0.5, ge=0, le=1)  # section 2.5: strong pipeline on labeled volumes
    labeled_mild_p: float = Field(0.5, ge=0, le=1)  # section 2.5: otherwise mild scaling
    mild_scale: tuple[float, float] = (0.95, 1.05)  # section 2.5: mild intensity scaling range
    scale_shift_p: float = Field(0.5, ge=0, le=1)  # Table A2
    scale_range: tuple[float, float] = (0.8, 1.2)  # Table A2: alpha
    shift_range: tuple[float, float] = (-0.1, 0.1)  # Table A2: beta
    gamma_p: float = Field(0.5, ge=0, le=1)  # Table A2
    gamma_range: tuple[float, float] = (0.7, 1.5)  # Table A2
    clahe_p: float = Field(0.5, ge=0, le=1)  # Table A2
    clahe_clip: float = 0.03  # Table A2: normalised clip limit (skimage convention)
    unsharp_p: float = Field(0.5, ge=0, le=1)  # Table A2
    unsharp_amount: tuple[float, float] = (0.5, 1.5)  # Table A2
    unsharp_sigma: float = 1.0  # Table A2: sigma_blur
    gaussian_noise_p: float = Field(0.5, ge=0, le=1)  # Table A2
    gaussian_noise_sigma: tuple[float, float] = (0.0, 0.025)  # Table A2
    speckle_p: float = Field(0.3, ge=0, le=1)  # Table A2
    speckle_sigma: tuple[float, float] = (0.0, 0.05)  # Table A2
    salt_pepper_p: float = Field(0.3, ge=0, le=1)  # Table A2
    salt_pepper_amount: tuple[float, float] = (0.001, 0.01)  # Table A2
    poisson_p: float = Field(0.3, ge=0, le=1)  # Table A2
    poisson_peak: float = 255.0  # counts at intensity 1 (the table gives no magnitude)
    blur_p: float = Field(0.5, ge=0, le=1)  # Table A2
    blur_sigma: tuple[float, float] = (0.75, 1.25)  # Table A2
    median_p: float = Field(0.5, ge=0, le=1)  # Table A2: kernel size 3

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "AugmentConfig":
        for name, value in self:
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ValueError(f"augment.{name} {list(value)} must be [low, high] with low <= high")
        return self


class MethodConfig(ConfigModel):
    """Settings of the Table 3 baselines (each from its own paper), adapted to the dual-branch model."""

    ua_mt_passes: int = Field(8, ge=2)  # UA-MT (Yu et al. 2019): T = 8 stochastic teacher passes
    ua_mt_noise: float = Field(0.1, ge=0)  # UA-MT: input noise std, clipped to +-2 std
    unimatch_feature_dropout: float = Field(0.5, ge=0, lt=1)  # UniMatch (Yang et al. 2023): feature dropout rate


class SslConfig(ConfigModel):
    """How the teacher's identification pseudo-labels are made (Eq. 11-12). The defaults are the paper's Eq. 9-13 as
    written; each switch is one measured deviation (docs/training.md, `vertseg bench ssl`)."""

    ready_acc_id: float = Field(0.0, ge=0, le=1)  # not in the paper: class term waits until validation Acc_ID >= this (0 = starts at e_cons)
    pseudo_labels: Literal["argmax", "sequence"] = "argmax"  # Eq. 11: per-position argmax; "sequence" = decoded by post-processing
    class_thresholds: Literal["global", "adaptive"] = "global"  # Eq. 12: one tau_cls; "adaptive" scales it per class (FreeMatch)
    distribution_alignment: bool = False  # not in the paper: teacher class probabilities aligned to the labelled class shares (ReMixMatch)
    balance_momentum: float = Field(0.99, gt=0, lt=1)  # EMA of the teacher's class shares behind both of the above
    cps_weight_noise: float = Field(0.01, ge=0)  # CPS branched from one checkpoint: second student's weights get this relative noise


class TrainConfig(ConfigModel):
    method: Method = "proposed"
    seed: int = Field(42, ge=0, lt=2**32)  # section 2.6: random seed 42
    labeled_fraction: float = Field(1.0, gt=0, le=1)  # Table 2 note: the rest of the labeled pool becomes unlabeled
    validate_every: int = Field(5, ge=1)
    loss: LossConfig = LossConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    methods: MethodConfig = MethodConfig()
    ssl: SslConfig = SslConfig()
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPUs that compute it natively (AVX512-BF16/AMX): faster steps, not bitwise reproducible (`vertseg bench train`)
    channels_last: bool = False  # CUDA only: channels-last-3d memory format for the student(s) and teacher
    compile: bool = False  # CUDA only: torch.compile the student network(s) in place (state_dict keys unchanged)
    max_nonfinite_steps: int = Field(10, ge=0)  # consecutive skipped non-finite steps before the run stops
    max_failures: int = Field(3, ge=-1)  # Ray Train worker-group restarts from the latest checkpoint (-1 = unlimited)
    teacher_check_every: int = Field(1, ge=1)  # epochs between cross-rank EMA-teacher checksums
    loader_workers: int = Field(2, ge=0)  # DataLoader processes per training worker
    log_every_steps: int = Field(10, ge=1)  # steps between step lines + step metrics (loss, lr, pass fractions); also the first step and every 20 s
    plateau_patience: int = Field(0, ge=0)  # stop after this many validations without a better score (0 = run all epochs)

    @model_validator(mode="after")
    def _ramp_within_training(self) -> "TrainConfig":
        schedule = self.schedule
        if self.method not in ("fsl", "seg_only") and schedule.e_ramp > schedule.epochs:
            raise ValueError(
                f"train.schedule.e_ramp ({schedule.e_ramp}) must not exceed train.schedule.epochs ({schedule.epochs}) "
                f"for method {self.method!r}: its consistency weight would never reach 1; set e_cons and e_ramp "
                "with epochs (the paper: 40% and 80% of them)"
            )
        return self
