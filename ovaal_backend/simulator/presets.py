"""The simulator's method shorthands and protocols: plain settings, kept apart so the CLI parser needs no torch."""

from __future__ import annotations

from typing import Any

from ..config import TRAIN_PROFILES, EngineConfig

METHOD_FIELDS = ("classifier", "selection", "semi", "diversity_top_fraction", "class_balance", "quota_area",
                 "class_balance_global", "decision_balance")
"""The settings that make a method (the rest is the protocol: preset and flags)."""

DEFAULT_METHOD: dict[str, Any] = {name: getattr(EngineConfig, name) for name in METHOD_FIELDS}
"""The method settings the backend runs with no setting changed."""

METHODS: dict[str, dict[str, Any]] = {
    "default": DEFAULT_METHOD,
    "ovaal": {"classifier": "ova-shared", "selection": "ova", "semi": False, "diversity_top_fraction": 0.05,
              "class_balance": 0.5},
    "ovaal+": {"classifier": "ova-shared", "selection": "ova", "semi": True, "diversity_top_fraction": 0.05,
               "class_balance": 0.5},
    "pixelpick": {"classifier": "multiclass", "selection": "margin", "semi": False, "diversity_top_fraction": 0.05,
                  "class_balance": 0.0},
    "pixelpick-balanced": {"classifier": "multiclass", "selection": "margin", "semi": False,
                           "diversity_top_fraction": 0.05, "class_balance": 1.0},
    "random": {"classifier": "multiclass", "selection": "random", "semi": False, "class_balance": 0.0},
    # Table II's 2x2 with the paper's plain loss: {softmax, One-vs-All} classifier x {margin, One-vs-All} selection;
    # softmax + margin is ``pixelpick``
    "softmax-ovaselect": {"classifier": "multiclass", "selection": "ova", "semi": False,
                          "diversity_top_fraction": 0.05, "class_balance": 0.0},
    "ova-margin": {"classifier": "ova-shared", "selection": "margin", "semi": False, "diversity_top_fraction": 0.05,
                   "class_balance": 0.0},
    "ova-plain": {"classifier": "ova-shared", "selection": "ova", "semi": False, "diversity_top_fraction": 0.05,
                  "class_balance": 0.0},
    # issue 15's mechanisms for the large classes, each a change of ``ovaal`` (the default until they were measured)
    "ova-softmax": {"classifier": "ova-softmax", "selection": "ova", "semi": False, "diversity_top_fraction": 0.05,
                    "class_balance": 0.5, "decision_balance": 0.0},
    "ova-area": {"classifier": "ova-shared", "selection": "ova", "semi": False, "diversity_top_fraction": 0.05,
                 "class_balance": 0.5, "quota_area": 0.5},
    "ova-global": {"classifier": "ova-shared", "selection": "ova", "semi": False, "diversity_top_fraction": 0.05,
                   "class_balance": 0.5, "class_balance_global": True},
    "ova-halves": {"classifier": "ova-shared", "selection": "ova-and-margin", "semi": False,
                   "diversity_top_fraction": 0.05, "class_balance": 0.5},
    "default-area": {**DEFAULT_METHOD, "quota_area": 0.5},
}
"""Shorthands for the compared methods. ``default`` is exactly what the backend runs with no setting changed (read
from the Config defaults, so it follows them); then the paper's four, and ``pixelpick-balanced`` (PixelPick's softmax
with the same class re-weighting as our OVA loss), which tells One-vs-All apart from re-weighting; and the other
cells of the paper's Table II 2x2 with its plain loss (``softmax-ovaselect``, ``ova-margin``, ``ova-plain``;
``pixelpick`` is the fourth); then issue 15's mechanisms, each a change of ``ovaal`` (One-vs-All on one network,
half-balanced heads: the default until they were measured): ``ova-softmax`` adds a softmax decision head beside the
One-vs-All heads (the heads select, the softmax decides the masks) trained with the plain cross-entropy; the
default is that design with the softmax half class-balanced (``DECISION_BALANCE=0.5``, measured as
``ova-softmax-half`` before it became the default); ``ova-area`` splits half of each round's pixels over the classes
by their predicted area instead of evenly; ``ova-global`` weighs the balanced loss's classes by the counts of all
clicks instead of each batch's; ``ova-halves`` picks half of each round per class and half by margin (budget-aware
selection); ``default-area`` is the default with ``ova-area``'s quotas, the two measured winners stacked. OVAAL's
class balance is 0.5 (half plain, half class-balanced loss): the 5-seed ``cpu`` grid's best OVA
design on both splits (docs/benchmarks.md); ``--class-balance 1`` gives the full balance, ``0`` the paper's plain
loss."""

CPU_PROFILE = TRAIN_PROFILES["cpu"]
"""The one CPU profile, the backend's ``TRAIN_PROFILE=cpu``: the ``cpu`` and ``converged`` presets start from it (its
176x240 size) and change only its epochs, on purpose. The protocol trains 2 + 1 per round + 2 final epochs (``cpu``)
or 2 + 1 + 20 from scratch (``converged``), so that a method's loop on CamVid ends in minutes and every figure of
docs/benchmarks.md stays comparable; the product profile trains 3 + 2 + 6, since a project's final phase runs once
and 6 final epochs raised mIoU by about 2 in every CamVid run measured."""

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "image_height": 360, "image_width": 480, "batch_size": 4, "retrain": True,
        "first_round_epochs": 50, "epochs": 50, "semi_epochs": 50,
        "init_pixels": 22, "pixels_per_round": 22, "rounds": 4, "scale_min": 0.5, "scale_max": 2.0,
    },
    "cpu": {
        **CPU_PROFILE, "batch_size": 8, "retrain": False,
        "first_round_epochs": 2, "epochs": 1, "semi_epochs": 2,
        "init_pixels": 22, "pixels_per_round": 22, "rounds": 3, "scale_min": 0.75, "scale_max": 1.5,
        "semi_top_l": 1000, "num_threads": 2,
    },
    "converged": {
        **CPU_PROFILE, "batch_size": 8, "retrain": False,
        "first_round_epochs": 2, "epochs": 1, "init_pixels": 22, "pixels_per_round": 22, "rounds": 4,
        "scale_min": 0.5, "scale_max": 2.0, "encoder_lr_ratio": 0.1, "num_threads": 2,
        "final_from_scratch": True, "semi_epochs": 20,
    },
}
"""Protocols: ``paper`` is PixelPick's GPU protocol (full size, a fresh model and 50 epochs per round); ``cpu`` is the
scaled protocol that finishes one method's loop on CamVid in minutes on 2 CPU cores (see docs/benchmarks.md for why);
``converged`` runs the same short active loop at the product's budget (22 + 4 x 22 = 110 px per image), then trains
the final model from scratch on the selected labels for ``semi_epochs`` epochs, as the paper's Table II does, with
PixelPick's encoder rate (0.1 of the head's) and scale range (0.5-2) for every method."""
