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
    ``softmax_decision``: the network has 2C outputs, C One-vs-All heads and beside them a softmax over C on the same
    features; the heads score uncertainty (what to ask), the softmax decides the class map. Why: a One-vs-All
    model's Winner-Takes-All gave large classes away out of sample (docs/benchmarks.md, issue 15), while the softmax
    trained on the same clicks keeps the classes' real frequencies.
    """

    ova: bool
    separate: bool = False
    softmax_decision: bool = False

    @property
    def outputs_per_class(self) -> int:
        """Network outputs per class: 2 with a softmax decision head beside the One-vs-All heads, else 1."""
        return 2 if self.softmax_decision else 1

    def probabilities(self, logits: Tensor) -> Tensor:
        """Per-class probabilities that selection scores (B, C, H, W): independent sigmoids (OVA; the heads of a
        kind with a decision head) or a softmax over the classes."""
        if self.softmax_decision:
            return logits[:, :logits.shape[1] // 2].sigmoid()
        return logits.sigmoid() if self.ova else logits.softmax(dim=1)

    def decision_probabilities(self, logits: Tensor) -> Tensor:
        """Per-class probabilities whose argmax is the class map (B, C, H, W): the decision head's softmax, or
        ``probabilities`` for a kind without one."""
        if self.softmax_decision:
            return logits[:, logits.shape[1] // 2:].softmax(dim=1)
        return self.probabilities(logits)

    @property
    def decides_by_ova(self) -> bool:
        """Whether the class map is an argmax over sigmoids (log-odds are its logits) rather than a softmax."""
        return self.ova and not self.softmax_decision


CLASSIFIERS: dict[str, ClassifierKind] = {
    "ova-shared": ClassifierKind(ova=True),
    "ova-separate": ClassifierKind(ova=True, separate=True),
    "multiclass": ClassifierKind(ova=False),
    "ova-softmax": ClassifierKind(ova=True, softmax_decision=True),
}
"""Classifier name -> kind: one network with C sigmoid outputs, C binary networks as in the paper, one network with
a softmax over C (PixelPick), or One-vs-All heads that select beside a softmax that decides (``ova-softmax``, the
default since issue 15's converged grid; not in the paper)."""


def get_classifier_kind(name: str) -> ClassifierKind:
    """The kind called ``name``; the error lists the valid names."""
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown classifier kind {name!r}: choose one of {', '.join(CLASSIFIERS)}") from None
