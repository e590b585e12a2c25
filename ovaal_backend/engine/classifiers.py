"""Classifier kinds and their registry: the names of ``CLASSIFIER`` and what each one means.

``model.py`` builds a kind's networks from its entry; this module imports no torch (tensor methods only), so
``config/`` takes its valid names from ``CLASSIFIERS`` in processes that never load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class ClassifierKind:
    """How a kind turns logits (B, C, H, W) into probabilities, and how many networks it has.

    ``ova``: C independent sigmoids (One-vs-All), else one softmax over C (the multi-class baseline).
    ``separate``: C networks with one output each (the paper's OvA, C times the cost), else one network with C
    outputs.
    """

    ova: bool
    separate: bool = False

    def probabilities(self, logits: Tensor) -> Tensor:
        """Per-class probabilities (B, C, H, W): independent sigmoids (OVA) or a softmax over the classes."""
        return logits.sigmoid() if self.ova else logits.softmax(dim=1)


CLASSIFIERS: dict[str, ClassifierKind] = {
    "ova-shared": ClassifierKind(ova=True),
    "ova-separate": ClassifierKind(ova=True, separate=True),
    "multiclass": ClassifierKind(ova=False),
}
"""Classifier name -> kind: one network with C sigmoid outputs (the default), C binary networks as in the paper, or
one network with a softmax over C (PixelPick)."""


def get_classifier_kind(name: str) -> ClassifierKind:
    """The kind called ``name``; the error lists the valid names."""
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown classifier kind {name!r}: choose one of {', '.join(CLASSIFIERS)}") from None
