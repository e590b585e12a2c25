"""``simulate``'s command line: a flag for every engine field the simulator varies, made from the field itself.

Each such flag is the field's name with dashes (``pixels_per_round`` -> ``--pixels-per-round``), takes the field's
type (a boolean gives ``--x`` and ``--no-x``) and, where the field takes a name, the names ``EngineConfig`` accepts
(``ENGINE_CHOICES``). A new engine field gets its flag without an edit here, or is listed in ``SIMULATE_NO_FLAG``
with the reason. Torch-free, like presets.py: the parser loads no model code.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from ..config import ENGINE_CHOICES, MULTICLASS_SCORERS, Config, EngineConfig, is_ova
from .presets import METHODS, PRESETS

SIMULATE_NO_FLAG = {
    "image_height": "--image-size HxW sets both", "image_width": "--image-size HxW sets both",
    "train_profile": "the simulator runs a preset (a protocol), not a machine's profile",
    **dict.fromkeys(("batch_size", "lr", "beta1", "beta2", "weight_decay", "scale_min", "scale_max", "color_jitter",
                     "amp", "semi_alpha", "semi_top_l", "semi_ema_decay", "semi_balance"),
                    "fixed by the preset: the compared methods share them"),
    **dict.fromkeys(("model_dir", "label_studio_local_files_document_root", "predict_batch", "max_image_pixels"),
                    "a round job's files in the backend; the simulator reads its own folders"),
}
"""The engine fields ``simulate`` has no flag for, each with the reason."""

FLAG_NAMES = {"num_threads": "threads"}
"""Engine fields whose flag has another name than the field (``--threads``)."""

FLAG_HELP = {
    "semi": "OVAAL+ semi-supervised final phase",
    "rounds": "acquisition rounds after the random round 0",
    "pixels_per_round": "per image; OVA splits it over the classes (evenly, or see --quota-area)",
    "quota_area": "0..1: share of OVA's per-class split made by each class's predicted area (0 = even, the paper)",
    "init_pixels": "random pixels per image in round 0",
    "epochs": "epochs per round after the first",
    "semi_epochs": "epochs of the final phase (with --semi: the OVAAL+ loss)",
    "retrain": "fresh model every round (else fine-tune)",
    "class_balance": "0..1: how strongly each class's clicks are re-weighted to weigh the same (default: method's)",
    "class_balance_global": "the balance's class weights from all clicks' counts (else each batch's)",
    "decision_balance": "0..1: class balance of ova-softmax's decision head (0 = plain cross-entropy)",
    "lr_schedule": "learning rate within each training (cosine)",
    "keep_optimizer": "keep Adam's state across rounds (else a fresh Adam per round)",
    "semi_rule": "OVAAL+ refinement of the uncertain pixels",
    "semi_teacher": "OVAAL+ pseudo-labels: mean teacher or frozen",
    "diversity_top_fraction": "draw each round's pixels at random from this most uncertain fraction (per class for "
                              "OVA; 0 = strict top pixels)",
    "exclude_void": "PixelPick's convention: never query ground-truth void pixels",
    "encoder_lr_ratio": "encoder learning rate / LR (PixelPick: 0.1)",
    "final_from_scratch": "train the final model afresh on every label (the converged preset does)",
    "encoder_weights": "imagenet | lite0-offline | none | PATH",
    "encoder": "any segmentation_models_pytorch encoder name",
    "arch": "any segmentation_models_pytorch architecture (deeplabv3plus, unet, ...)",
    "device": "auto | cpu | cuda | cuda:N",
    "correction_points": "most training points of a fully labelled image (0 = one per training pixel)",
    "num_threads": "torch CPU threads (default: the preset's; 0 = torch's default)",
}
"""What a flag's ``--help`` says beyond the field's name (optional: a field without an entry still gets its flag)."""


def simulate_flag_fields() -> list[str]:
    """The engine fields a ``simulate`` flag sets, in declaration order."""
    return [f.name for f in fields(EngineConfig) if f.name in EngineConfig.names() - SIMULATE_NO_FLAG.keys()]


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of ``simulate_flag_fields``; its value lands in ``args.<field>`` (None when not given)."""
    group = parser.add_argument_group("engine settings", "each sets the engine field of its name (default: the "
                                      "preset's, then the --method's)")
    defaults = {f.name: f.default for f in fields(EngineConfig)}
    for name in simulate_flag_fields():
        flag = "--" + FLAG_NAMES.get(name, name).replace("_", "-")
        kind = type(defaults[name])
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=FLAG_HELP.get(name))
        else:
            group.add_argument(flag, dest=name, type=kind, choices=ENGINE_CHOICES.get(name), help=FLAG_HELP.get(name))


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Every argument of ``simulate``: data, method, preset, what is measured, and the engine flags."""
    p = parser
    p.add_argument("--train", required=True, help="folder with images/, labels/ and classes.json (the pool)")
    p.add_argument("--eval", required=True, help="folder to evaluate on after every round")
    p.add_argument("--out", required=True, help="RESULT.json to write")
    p.add_argument("--plot", help="PNG of mIoU against labelled pixels")
    p.add_argument("--method", choices=sorted(METHODS), help="shorthand for classifier + selection + semi")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--no-balance", action="store_true", help="the paper's plain loss (same as --class-balance 0)")
    p.add_argument("--image-size", type=image_size, help="training size HxW, e.g. 176x240 (default: the preset's)")
    p.add_argument("--semi-ablations", default="",
                   help="comma-separated other OVAAL+ final phases run on the same rounds (paper)")
    p.add_argument("--train-prefixes", default="",
                   help="comma-separated image-name prefixes the pool keeps (CamVid sequences: 0001TP,0016E5)")
    p.add_argument("--eval-prefixes", default="", help="comma-separated image-name prefixes evaluated on (0006R0)")
    p.add_argument("--save-checkpoint", help="save the learner after the last active round (for diagnostics)")
    p.add_argument("--logit-taus", default="",
                   help="comma-separated logit-adjustment strengths also measured (e.g. 0.5,1; engine/adjust.py)")
    p.add_argument("--convergence-check", action="store_true",
                   help="train the final phase again with twice its epochs on the same labels (RESULT: convergence)")
    p.add_argument("--max-train-images", type=int, default=0, help="use only the first N pool images (0 = all)")
    p.add_argument("--max-eval-images", type=int, default=0, help="evaluate on the first N images (0 = all)")
    p.add_argument("--dense-images", type=int, default=0,
                   help="N pool images (drawn by the seed) get their whole ground-truth mask as if an annotator had "
                        "corrected the pushed mask: they train as dense labels from round 1 and are not queried again")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_flags(p)


def simulation_config(args: argparse.Namespace) -> Config:
    """Preset, then method shorthand, then explicit flags (flags win)."""
    values: dict[str, Any] = {**PRESETS[args.preset], "semi": False}
    if args.method:
        values.update(METHODS[args.method])
    flags = {name: getattr(args, name) for name in simulate_flag_fields()}
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.image_size:
        values["image_height"], values["image_width"] = args.image_size
    if args.no_balance:
        values["class_balance"] = 0.0
    multiclass_selection = values.get("selection") in MULTICLASS_SCORERS
    classifier_chosen = args.classifier is not None or (args.method and "classifier" in METHODS[args.method])
    if multiclass_selection and is_ova(values.get("classifier", EngineConfig.classifier)) and not classifier_chosen:
        values["classifier"] = "multiclass"
    return Config(**values)


def image_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (height, width); argparse turns the ValueError into a usage error naming the flag."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH in pixels, e.g. 176x240")
    return int(height), int(width)
