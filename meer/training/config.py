"""What ``meer-train`` reads from a YAML config: typed dataclasses, checked by ``meer.config``.

Every section below maps to one block of ``configs/*.yaml``; the YAML files document the choices of
each recipe, this file documents what every key means. Any key can be overridden on the command
line as ``section.key=value`` (``meer-train --config configs/tiny.yaml optim.lr_g=1e-3``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from meer.config import ConfigError
from meer.models.meer import MEERConfig
from meer.training.tasks import TASKS
from meer.training.tasks.eum_srt import EUMTaskConfig
from meer.training.tasks.maskmtl import MaskMTLTaskConfig

Task = Literal[tuple(TASKS)]  # the task registry, meer.training.tasks.TASKS: meer, eum_srt, maskmtl


@dataclass
class DataConfig:
    # identity-folder roots (<root>/<identity>/*.jpg, aligned 112x112 crops); relative paths are
    # taken from the current directory. Several roots share one label space ("lfw/<name>").
    roots: list[str] = field(default_factory=list)
    # files listing evaluation-only identities: never trained on, never used for validation
    eval_identities: list[str] = field(default_factory=list)
    # identities held out of training for validation (chosen with `seed` among the training ones)
    val_identities: int = 8
    val_images_per_identity: int = 4  # images per held-out identity used for validation
    min_images: int = 2  # identities with fewer images are left out of training
    batch_size: int = 32  # global batch (split evenly over the processes)
    num_workers: int = 0  # DataLoader worker processes per rank
    hflip: bool = True  # random horizontal flip (drawn from the augmentation generator)
    # low-resolution copies: this share of the faces is shrunk to a side scale drawn in [lowres_min_scale, 1) and
    # enlarged back, after masking (clean and masked alike), like the small, soft faces of real photos (RMFRD)
    lowres_p: float = 0.0
    lowres_min_scale: float = 0.4
    # roots of faces without identity labels (one photo per person, e.g. faces/lfw_singles): trained for
    # restoration, occlusion and distillation, never by the margin or identity-adversary losses (label -1)
    unlabeled_roots: list[str] = field(default_factory=list)
    # roots of aligned photos with *real* masks (e.g. RMFRD's masked photos of its training identities), named
    # like a labelled identity of data.roots; no pixel ground truth: they train the recognition branch only
    # (loss.w_real_distill, loss.w_real_id; meer.training.real_masked), real_masked_per_step of them per step
    real_masked_roots: list[str] = field(default_factory=list)
    real_masked_per_step: int = 4


@dataclass
class OptimConfig:
    # MEER: Adam for everything, as in GAN practice; recognizer = encoder + decoupling + recognition head
    # + margin head + the decoupling adversaries; generator = decoder; D = both discriminators.
    # The schedule keys (schedule, warmup_steps, min_lr_ratio, milestones, gamma) apply to every task.
    lr_r: float = 1e-3
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas_r: tuple[float, float] = (0.9, 0.999)
    betas_g: tuple[float, float] = (0.5, 0.99)
    betas_d: tuple[float, float] = (0.5, 0.99)
    weight_decay_r: float = 5e-4  # decoupled (AdamW) weight decay on the recognizer only
    # pretrained encoder + head (model.encoder: dlib) train at lr_r * this (0.1 can collapse the BN-free trunk)
    lr_pretrained_ratio: float = 0.01
    grad_clip: float = 5.0  # max global grad norm per optimiser; 0 = no clipping
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of the base learning rate
    milestones: tuple[float, ...] = (0.6, 0.85)  # step schedule, fractions of train.total_steps
    gamma: float = 0.1  # step schedule factor


@dataclass
class LossConfig:
    # recognition: margin loss on embeddings of masked (and clean) faces
    margin: Literal["arcface", "cosface"] = "arcface"
    margin_s: float = 64.0
    margin_m: Optional[float] = None  # None: 0.5 for ArcFace, 0.35 for CosFace
    w_id_masked: float = 1.0  # margin loss on the masked face's embedding
    w_id_clean: float = 1.0  # margin loss on the clean face's embedding (recognizer sees both)
    # mask decoupling
    w_occ: float = 1.0  # occlusion-map supervision (BCE + Dice vs the exact synthetic mask)
    w_decouple: float = 0.1  # DecouplingLoss (adversaries + decorrelation), its parts weighted below
    decouple_kind_adv: float = 0.1  # mask-kind adversary on the identity code (gradient reversal)
    decouple_id_adv: float = 0.1  # identity adversary on the occlusion code (gradient reversal)
    decouple_occ_kind: float = 0.1  # mask kind must be readable from the occlusion code
    decouple_decorr: float = 1.0  # cross-correlation of the two codes over the batch (a batch statistic)
    decouple_grl: float = 1.0  # gradient-reversal strength
    # restoration
    w_l1: float = 1.0  # L1, weighted on the masked region
    w_l1_visible: float = 0.1  # L1 of the raw generator output on the visible region (smooth seams)
    w_lpips: float = 0.0  # LPIPS (real trunk when cached, else logged random-trunk fallback)
    lpips_net: Literal["alex", "vgg"] = "alex"
    w_perceptual: float = 0.0  # L1 between recognizer-encoder features of restored vs clean (frozen encoder)
    w_adv_patch: float = 0.01  # generator loss against the global PatchGAN
    w_adv_local: float = 0.01  # generator loss against the local (masked-region) discriminator
    gan: Literal["nonsat", "hinge"] = "nonsat"
    r1_gamma: float = 1.0  # R1 weight (gamma / 2 * ||grad D(real)||^2), lazy
    r1_interval: int = 16  # R1 every N discriminator steps (lazy regularisation); 0 = never
    # id-preserving: recognizer embeds restored and clean face of the same image
    w_id_preserve: float = 1.0  # mean(1 - cos(emb(restored), emb(clean)))
    w_id_restored: float = 0.5  # margin loss on the restored face's embedding
    # (where these gradients go is switched in the model config: model.id_grad_to_generator,
    #  model.id_grad_to_recognizer; model.gen_grad_to_encoder stops restoration losses at the encoder)
    # the id-preserving target (the clean face's embedding) is detached: the loss moves the restored face
    # towards the clean one, never the clean embedding towards a restoration (which would reward a
    # recognizer that ignores the lower face). false = the symmetric form, for ablations only.
    id_target_detach: bool = True
    # which pixels the training composite replaces: "union" (default) = the exact mask plus the predicted map
    # binarised and dilated as at inference (so the ring inference fills, and false positives, are trained);
    # "gt" = the exact mask only; "predicted" = only what inference would replace
    composite: Literal["union", "gt", "predicted"] = "union"
    # frozen identity teacher (meer.models.teacher): "" = none, "dlib" (dlib's ResNet, offline), "facenet"
    # (needs its VGGFace2 weights in the torch cache) or the path of a TorchScript embedder
    teacher: str = ""
    w_teacher_id: float = 0.0  # 1 - cos(teacher(restored), teacher(clean)): trains the generator
    # the teacher's embeddings of the clean training faces are computed once per (face, flip) and kept with the
    # run's state (meer.training.teacher_targets); false recomputes them every step
    teacher_cache: bool = True
    # 1 - cos(embedding(masked), teacher(clean)): template-level distillation (MaskInv) into the recognizer;
    # works on photos without identity labels (data.unlabeled_roots). The embedding is mapped by a learned
    # linear projection when its size differs from the teacher's.
    w_distill: float = 0.0
    # real masked photos (data.real_masked_roots): 1 - cos(embedding(real masked), teacher's mean embedding of the
    # person's clean training photos), and the margin loss on the same embeddings
    w_real_distill: float = 0.0
    w_real_id: float = 0.0


@dataclass
class DiscConfig:
    # global PatchGAN on the whole face and local discriminator on a crop around the masked region
    patch_width: int = 32
    patch_layers: int = 3  # 3 -> 70x70 receptive field per logit
    local_width: int = 32
    local_size: int = 64  # the masked region's box is resized to this side


@dataclass
class EMAConfig:
    enabled: bool = True
    half_life_kimg: float = 10.0  # half-life of the average, in thousands of images
    rampup: Optional[float] = 0.05  # half-life <= rampup * images seen early on; null = off


@dataclass
class ValConfig:
    every: int = 500  # validate every N steps (and at the end); 0 = only at the end
    pairs: int = 200  # verification pairs (half same identity, half different)
    batch_size: int = 64
    best_metric: Literal["verify_acc", "mask_iou", "psnr_masked", "ssim_masked"] = "verify_acc"


@dataclass
class LogConfig:
    every: int = 20  # scalars to stats.jsonl / TensorBoard / log.txt every N steps
    grid_every: int = 500  # image grid (masked / predicted mask / restored / clean) every N steps
    grid_images: int = 8
    progress: bool = True  # tqdm progress bar (rank 0)


@dataclass
class CheckpointConfig:
    every: int = 1000  # full training state every N steps (and at the end)
    keep_last: int = 3


@dataclass
class TrainConfig:
    name: str = "meer"  # run directory suffix: runs/00000-<name>
    task: Task = "meer"
    seed: int = 0
    total_steps: int = 10000
    # stop (after saving a checkpoint) at this step although total_steps is larger: splits one
    # schedule into pieces that fit a cluster's time limit; continue with --resume
    stop_at_step: Optional[int] = None
    # stop (after a checkpoint and a validation) once this many minutes of training have passed;
    # the schedule still follows total_steps, so --resume continues it exactly
    time_limit_min: Optional[float] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"  # fp16 needs CUDA (GradScaler); bf16 works on CPU too
    threads: int = 0  # torch CPU threads per process; 0 = leave torch's default
    runs_dir: str = "runs"
    # BatchNorm in eval mode (running statistics) while training: makes the step independent of how
    # the batch is split, e.g. to compare a CPU DDP run with one process (SyncBatchNorm, used on CUDA
    # with several processes, has no CPU kernel); also the usual choice when fine-tuning
    freeze_bn: bool = False
    masking: dict[str, Any] = field(default_factory=dict)  # keyword arguments of MaskAugment
    model: MEERConfig = field(default_factory=MEERConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    val: ValConfig = field(default_factory=ValConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # task: eum_srt (also reads data, masking, val and optim's schedule keys)
    eum: EUMTaskConfig = field(default_factory=EUMTaskConfig)
    # task: maskmtl (own data section; also reads optim's schedule keys)
    maskmtl: MaskMTLTaskConfig = field(default_factory=MaskMTLTaskConfig)

    def __post_init__(self) -> None:
        check(self)


def check(cfg: TrainConfig) -> None:
    """Cross-field checks that single types cannot express (one-line ConfigError)."""
    if cfg.total_steps < 1:
        raise ConfigError(f"train total_steps must be at least 1, got {cfg.total_steps}")
    if cfg.stop_at_step is not None and not 1 <= cfg.stop_at_step <= cfg.total_steps:
        raise ConfigError(f"stop_at_step must lie in 1..total_steps ({cfg.total_steps}), got {cfg.stop_at_step}")
    if cfg.data.batch_size < 2:
        raise ConfigError(f"data.batch_size must be at least 2, got {cfg.data.batch_size}")
    for name in ("every", "grid_every"):
        if getattr(cfg.log, name) < 0:
            raise ConfigError(f"log.{name} must be >= 0")
    if cfg.checkpoint.every < 0 or cfg.val.every < 0:
        raise ConfigError("checkpoint.every and val.every must be >= 0")
    if cfg.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last must be at least 1, got {cfg.checkpoint.keep_last}")
    if cfg.loss.r1_interval < 0:
        raise ConfigError("loss.r1_interval must be >= 0")
    if cfg.data.val_identities < 0:
        raise ConfigError("data.val_identities must be >= 0")
    if cfg.val.pairs < 2 and cfg.data.val_identities > 0:
        raise ConfigError("val.pairs must be at least 2")
    if (cfg.loss.w_teacher_id > 0 or cfg.loss.w_distill > 0) and not cfg.loss.teacher:
        raise ConfigError("loss.w_teacher_id / loss.w_distill need a teacher (loss.teacher=dlib)")
    if cfg.loss.w_real_distill > 0 and not cfg.loss.teacher:
        raise ConfigError("loss.w_real_distill needs a teacher (loss.teacher=dlib)")
    if (cfg.loss.w_real_distill > 0 or cfg.loss.w_real_id > 0) and not cfg.data.real_masked_roots:
        raise ConfigError("loss.w_real_distill / loss.w_real_id need data.real_masked_roots")
    if not 0.0 <= cfg.data.lowres_p <= 1.0 or not 0.0 < cfg.data.lowres_min_scale <= 1.0:
        raise ConfigError(f"data.lowres_p must lie in [0, 1] and data.lowres_min_scale in (0, 1], got "
                          f"{cfg.data.lowres_p} and {cfg.data.lowres_min_scale}")
    if cfg.data.real_masked_per_step < 1:
        raise ConfigError(f"data.real_masked_per_step must be at least 1, got {cfg.data.real_masked_per_step}")
    for w in [f for f in vars(cfg.loss) if f.startswith("w_")]:
        if getattr(cfg.loss, w) < 0:
            raise ConfigError(f"loss.{w} must be >= 0, got {getattr(cfg.loss, w)}")
