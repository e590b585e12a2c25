"""The names the engine's settings choose from, and the label of a point that trains nothing.

The names come from the engine's registries, each a dict name -> implementation beside the implementations
(torch-free modules, so the settings load no torch): CLASSIFIERS (engine/classifiers.py), SCORERS (engine/scorers.py),
LR_SCHEDULES (engine/schedules.py), SEMI_RULES and SEMI_TEACHERS (engine/pseudo_labels.py). Nothing here repeats a
name: a setting and its implementation cannot drift apart.
"""

from __future__ import annotations

from ..engine.classifiers import CLASSIFIERS
from ..engine.pseudo_labels import SEMI_RULES, SEMI_TEACHERS
from ..engine.schedules import LR_SCHEDULES
from ..engine.scorers import SCORERS

IGNORE_INDEX = -1
"""Label of a point that trains nothing: void, "can't tell", or a class the label config no longer has."""

RANDOM_SELECTION = "random"
"""The selection that scores nothing: pixels drawn uniformly at random (round 0 always; the random baseline)."""
SELECTIONS = (*SCORERS, RANDOM_SELECTION)
"""Every ``SELECTION``: a scorer's name, or ``random``."""
MULTICLASS_SCORERS = tuple(name for name, scorer in SCORERS.items() if not scorer.per_class)
"""Selections that score a class distribution (margin, entropy, least-confidence), not each class on its own."""


def is_ova(classifier: str) -> bool:
    """Whether a classifier kind is One-vs-All (per-class sigmoids) rather than the multi-class softmax baseline."""
    return CLASSIFIERS[classifier].ova


__all__ = ["CLASSIFIERS", "IGNORE_INDEX", "LR_SCHEDULES", "MULTICLASS_SCORERS", "RANDOM_SELECTION", "SCORERS",
           "SELECTIONS", "SEMI_RULES", "SEMI_TEACHERS", "is_ova"]
