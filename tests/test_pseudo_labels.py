"""OVAAL+ pseudo-labels: each refinement rule with known answers on hand-built tensors."""

import pytest
import torch

from ovaal_backend.engine.pseudo_labels import refine_pseudo_labels


def test_paper_rule_flips_exactly_top_l_per_class():
    probs = torch.tensor([0.9, 0.55, 0.45, 0.02, 0.6, 0.99]).view(1, 1, 2, 3)
    pseudo = refine_pseudo_labels(probs, top_l=2, rule="paper")
    # plain argmax would be [1, 1, 0, 0, 1, 1]; the two most uncertain are 0.55 and 0.45 -> flipped
    assert pseudo.flatten().tolist() == [1, 0, 1, 0, 1, 1]
    assert refine_pseudo_labels(probs, 0, rule="paper").flatten().tolist() == [1, 1, 0, 0, 1, 1]


def test_wta_rule_takes_the_argmax_at_uncertain_pixels_only():
    # two classes, three pixels; class 0's head says 0.55 at pixel 0 but class 1 (0.9) wins there
    probs = torch.tensor([[0.55, 0.45, 0.05], [0.9, 0.3, 0.5]]).view(1, 2, 1, 3)
    pseudo = refine_pseudo_labels(probs, top_l=2, rule="wta")
    # class 0: uncertain pixels 0 (0.55) and 1 (0.45); argmax winners are 1, 0, 1 -> targets 0, 1; pixel 2 keeps 0
    assert pseudo[0, 0, 0].tolist() == [0, 1, 0]
    # class 1: uncertain pixels 2 (0.5) and 1 (0.3): winners say 1 at pixel 2, 0 at pixel 1; pixel 0 keeps 1
    assert pseudo[0, 1, 0].tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="unknown OVAAL"):
        refine_pseudo_labels(probs, 1, rule="nope")
