"""Classifier kinds on segmentation_models_pytorch, all behind one interface.

Every kind maps images (B, 3, H, W) to logits (B, C, H, W); what differs is how logits become probabilities:
C independent sigmoids for the One-vs-All kinds, one softmax for the multi-class baseline. Winner-Takes-All
(argmax over C) turns either into a class map.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from ..config import EngineConfig
from .classifiers import get_classifier_kind
from .weights import load_encoder_weights

INPUT_MULTIPLE = 16
"""smp encoders need heights and widths divisible by this; inputs are padded to it and logits cropped back."""


def _build_network(arch: str, encoder: str, classes: int) -> nn.Module:
    try:
        return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=classes)
    except KeyError as err:
        raise ValueError(f"unknown architecture or encoder ({arch!r}, {encoder!r}): {err}. "
                         f"Architectures: {', '.join(sorted(a.__name__.lower() for a in smp._MODEL_ARCHITECTURES))}; "
                         "encoders: segmentation_models_pytorch.encoders.get_encoder_names()") from None


class SegmentationClassifier(nn.Module):
    """A segmentation network of one of the three classifier kinds.

    Args:
        kind: a name of ``classifiers.CLASSIFIERS``: ``ova-shared``, ``ova-separate``, ``multiclass``
            or ``ova-softmax``.
        num_classes: C.
        arch: any smp architecture name (``deeplabv3plus``, ``unet``, ...).
        encoder: any smp encoder name.

    Shape:
        ``forward``: (B, 3, H, W) -> logits (B, C, H, W), any H, W (padded internally to a multiple of 16);
        (B, 2C, H, W) for ``ova-softmax``: the C heads, then the C logits of its softmax decision.
    """

    def __init__(self, kind: str, num_classes: int, arch: str = "deeplabv3plus",
                 encoder: str = "timm-tf_efficientnet_lite0") -> None:
        super().__init__()
        spec = get_classifier_kind(kind)
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        self.kind = kind
        self.spec = spec
        self.num_classes = num_classes
        self.arch = arch
        self.encoder_name = encoder
        if spec.separate:
            self.networks = nn.ModuleList(_build_network(arch, encoder, 1) for _ in range(num_classes))
        else:
            self.networks = nn.ModuleList([_build_network(arch, encoder, num_classes * spec.outputs_per_class)])

    @property
    def is_ova(self) -> bool:
        return self.spec.ova

    def encoders(self) -> list[nn.Module]:
        """The encoder of every network (one, or C for ``ova-separate``), for loading pretrained weights."""
        return [net.encoder for net in self.networks]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_h = (-height) % INPUT_MULTIPLE
        pad_w = (-width) % INPUT_MULTIPLE
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > 1 else "constant")
        logits = torch.cat([net(images) for net in self.networks], dim=1)
        return logits[..., :height, :width]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities that selection scores (B, C, H, W): independent sigmoids (OVA) or a softmax
        (multi-class); see ``ClassifierKind.probabilities``."""
        return self.spec.probabilities(logits)

    def decision_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities whose Winner-Takes-All is the class map (B, C, H, W): ``probabilities``, or the
        softmax decision head of ``ova-softmax``."""
        return self.spec.decision_probabilities(logits)


def winner_takes_all(probabilities: torch.Tensor) -> torch.Tensor:
    """Class map (B, H, W) from per-class probabilities (B, C, H, W): the most confident class wins."""
    return probabilities.argmax(dim=1)


def build_classifier(config: EngineConfig, num_classes: int, pretrained: bool = True) -> SegmentationClassifier:
    """The classifier described by ``config``, with ``pretrained`` its encoder weights loaded (see
    ``weights.load_encoder_weights``); without, for a checkpoint's weights to replace."""
    model = SegmentationClassifier(config.classifier, num_classes, config.arch, config.encoder)
    if pretrained:
        load_encoder_weights(model, config.encoder_weights)
    return model
