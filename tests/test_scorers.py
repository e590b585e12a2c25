"""The scorers with known answers on hand-built tensors, and their registry by name."""

import math

import pytest
import torch

from ovaal_backend.engine.scorers import (
    SCORERS,
    get_scorer,
    score_binary_entropy,
    score_entropy,
    score_least_confidence,
    score_margin,
)


def test_binary_entropy_known_values():
    probs = torch.tensor([0.5, 0.0, 1.0, 0.1]).view(1, 4, 1, 1)
    h = score_binary_entropy(probs).flatten()
    assert h[0] == pytest.approx(math.log(2), abs=1e-6)
    assert h[1] < 1e-4 and h[2] < 1e-4
    assert h[3] == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)), abs=1e-5)
    assert torch.isfinite(h).all()


def test_multiclass_scorers_rank_uniform_highest():
    confident = torch.tensor([0.9, 0.05, 0.05])
    uniform = torch.full((3,), 1 / 3)
    two_way = torch.tensor([0.5, 0.5, 0.0])
    probs = torch.stack([confident, uniform, two_way], -1).view(1, 3, 1, 3)
    for scorer in (score_entropy, score_least_confidence):
        s = scorer(probs).flatten()
        assert s[1] > s[0] and s[1] > s[2]
    margin = score_margin(probs).flatten()
    assert margin[2] == pytest.approx(1.0) and margin[0] == pytest.approx(0.15)
    assert score_entropy(probs).flatten()[1] == pytest.approx(math.log(3), abs=1e-6)


def test_unknown_scorer_lists_valid_names():
    with pytest.raises(ValueError, match="margin"):
        get_scorer("bald")


def test_each_name_computes_its_own_score():
    """The registry pairs names with functions by name, never by position: margin is the margin, and so on."""
    probs = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    assert SCORERS["margin"].score(probs).item() == pytest.approx(1 - (0.6 - 0.3))
    assert SCORERS["least-confidence"].score(probs).item() == pytest.approx(0.4)
    assert SCORERS["entropy"].score(probs).item() == pytest.approx(-sum(p * math.log(p) for p in (0.6, 0.3, 0.1)))
    per_class = {"ova", "ova-and-margin"}
    assert all(SCORERS[n].per_class for n in per_class)
    assert not any(s.per_class for n, s in SCORERS.items() if n not in per_class)
    assert torch.equal(SCORERS["ova"].score(probs), score_binary_entropy(probs))
    assert SCORERS["ova-and-margin"].score is score_binary_entropy and SCORERS["ova-and-margin"].other_half == "margin"
    assert all(s.other_half is None for n, s in SCORERS.items() if n != "ova-and-margin")
