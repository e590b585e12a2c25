"""The engine's settings: what a round's work needs, and the only part a round job carries to a worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .choices import CLASSIFIERS, LR_SCHEDULES, SELECTIONS, SEMI_RULES, SEMI_TEACHERS, is_ova
from .part import ConfigError, Part, explicit_field, records_given
from .profiles import PROFILE_CHOICES, TRAIN_PROFILES

if TYPE_CHECKING:
    from .settings import Config

ENGINE_CHOICES: dict[str, tuple[str, ...]] = {
    "classifier": tuple(CLASSIFIERS), "selection": SELECTIONS, "train_profile": PROFILE_CHOICES,
    "lr_schedule": tuple(LR_SCHEDULES), "semi_rule": tuple(SEMI_RULES), "semi_teacher": tuple(SEMI_TEACHERS),
}
"""The engine settings that take a name, each with the names it takes (``validate`` and ``simulate``'s flags)."""


@records_given
@dataclass(frozen=True)
class EngineConfig(Part):
    """What a round's work needs: model, training, acquisition, OVAAL+, and where its files lie.

    The simulator runs on it and a ``RoundJob`` carries it to the process that trains (a thread here, or a queue
    worker through Redis), so it holds no secret: the Label Studio key and the basic-auth pair live in
    ``ServerConfig``, Redis' URL in ``QueueConfig``.
    """

    # --- model ---
    classifier: str = "ova-softmax"  # One-vs-All heads select, a softmax beside them decides (docs/method.md)
    arch: str = "deeplabv3plus"
    encoder: str = "timm-tf_efficientnet_lite0"
    encoder_weights: str = "lite0-offline"
    device: str = "auto"

    # --- training ---
    train_profile: str = "auto"  # auto | gpu | cpu: which training defaults apply (see TRAIN_PROFILES)
    image_height: int = 360
    image_width: int = 480
    epochs: int = 20
    first_round_epochs: int = 20
    retrain: bool = False
    batch_size: int = 8
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 2e-4
    scale_min: float = 0.75
    scale_max: float = 1.5
    color_jitter: float = 0.3
    class_balance: float = 0.5  # 0 = the paper's plain loss, 1 = each class's clicks weigh the same (our departure)
    # the balance's class weights from the counts of all clicks instead of each batch's (issue 15's mechanism)
    class_balance_global: bool = False
    # CLASSIFIER=ova-softmax: the class balance of its softmax decision head (0 = the plain cross-entropy); 0.5 as the
    # heads' won the converged CamVid grid on both splits (docs/benchmarks.md, issue 15)
    decision_balance: float = 0.5
    # most training points a fully labelled image (a corrected mask) gives: a grid of the training size scaled down to
    # at most this many cells (0 = one point per training pixel, which lowered the pool's masks: docs/benchmarks.md)
    correction_points: int = 1000
    lr_schedule: str = "cosine"
    keep_optimizer: bool = False
    # the pretrained encoder's learning rate as a fraction of LR (PixelPick trains its encoder at 0.1 of the head's)
    encoder_lr_ratio: float = 1.0
    # the final phase trains a fresh model (pretrained encoder, new heads) on every label instead of fine-tuning the
    # last round's model (as the paper's Table II and PixelPick train their final models)
    final_from_scratch: bool = False
    amp: bool = True
    num_threads: int = 0
    seed: int = 0

    # --- acquisition ---
    selection: str = "ova"
    init_pixels: int = 22
    pixels_per_round: int = 22
    rounds: int = 4
    diversity_top_fraction: float = 0.05
    # OVA selection's split of a round's pixels over the classes: 0 = even (the paper), 1 = by each class's predicted
    # area in the image, in between a mix (issue 15's mechanism for the large classes)
    quota_area: float = 0.0
    exclude_void: bool = False

    # --- OVAAL+ semi-supervised step ---
    semi: bool = False  # OVAAL+ lowered mIoU in the grid so far (docs/benchmarks.md): off until one helps
    semi_alpha: float = 1.0
    semi_top_l: int = 2000
    semi_epochs: int = 10
    semi_rule: str = "wta"
    semi_teacher: str = "ema"
    semi_ema_decay: float = 0.99
    semi_balance: float = 1.0  # like class_balance, for the pseudo-labels of the OVAAL+ loss

    # --- a round job's files: where they lie (a queue worker moves them onto its own mounts) and how they are read ---
    model_dir: str = "model_dir"
    # Label Studio's LOCAL_FILES_DOCUMENT_ROOT as mounted in the backend: /data/local-files/ images are read from
    # disk there ("" = always download them from Label Studio with the token).
    label_studio_local_files_document_root: str = ""
    predict_batch: int = 4
    max_image_pixels: int = 50_000_000  # width x height of an image, checked before it is decoded

    explicit: frozenset[str] = explicit_field()

    def __post_init__(self) -> None:
        self.validate()

    @property
    def budget(self) -> int:
        """Pixels per image when every round has been answered: the round plan's (one computation)."""
        from ..engine.rounds import RoundPlan  # torch-free; here, not at the top, since rounds.py reads this module

        return RoundPlan.from_config(self).budget

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting."""
        for name, allowed in ENGINE_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("class_balance", "semi_ema_decay", "semi_balance", "quota_area",
                     "decision_balance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.encoder_lr_ratio <= 1.0:
            raise ConfigError(f"encoder_lr_ratio must lie in (0, 1], got {self.encoder_lr_ratio}")
        if self.semi and self.final_from_scratch:
            raise ConfigError("semi=True (OVAAL+) takes its pseudo-labels from the last round's model: "
                              "set FINAL_FROM_SCRATCH=false or SEMI=false")
        if self.semi and not is_ova(self.classifier):
            raise ConfigError("semi=True (OVAAL+) inverts binary OVA predictions: "
                              "use an OVA classifier or set SEMI=false")
        if self.max_image_pixels <= 0:
            raise ConfigError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        for name in ("image_height", "image_width", "batch_size", "pixels_per_round", "predict_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "first_round_epochs", "rounds", "init_pixels", "semi_epochs", "semi_top_l",
                     "num_threads", "correction_points"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.diversity_top_fraction <= 1.0:
            raise ConfigError(f"diversity_top_fraction must lie in [0, 1], got {self.diversity_top_fraction}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        self._check_explicit()

    def profile_for(self, has_cuda: bool) -> str:
        """The training profile this config gets on a machine with or without CUDA (``auto`` decides by it)."""
        return self.train_profile if self.train_profile != "auto" else ("gpu" if has_cuda else "cpu")

    def profile_changes(self, profile: str) -> dict[str, Any]:
        """The fields ``profile`` sets: those of TRAIN_PROFILES[profile] not given on purpose (``explicit``: the
        environment, ``from_env`` overrides, constructor arguments), whatever their value."""
        return {k: v for k, v in TRAIN_PROFILES[profile].items() if k not in self.explicit}

    def for_machine(self, has_cuda: bool) -> EngineConfig:
        """The config with its training profile applied and ``train_profile`` set to the profile it resolved to.

        Call it where the training runs: in the web process without REDIS_URL, in the queue worker with it.
        """
        profile = self.profile_for(has_cuda)
        return self.replace(train_profile=profile, **self.profile_changes(profile))

    def for_worker(self, worker: EngineConfig | Config, has_cuda: bool) -> EngineConfig:
        """A queued round job's config (``self``, from the backend) with the profile of the machine that trains it.

        The backend leaves the profile unapplied for queued jobs. Its TRAIN_PROFILE wins when it names one (gpu,
        cpu); with ``auto`` the worker's own TRAIN_PROFILE decides (``auto`` by default: ``gpu`` when the worker has
        CUDA), so a CPU worker does not train the GPU sizes.
        """
        profile = self.train_profile if self.train_profile != "auto" else worker.train_profile
        return self.replace(train_profile=profile).for_machine(has_cuda)
