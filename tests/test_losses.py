import math

import pytest
import torch
import torch.nn.functional as F

from ovaal_backend.config import IGNORE_INDEX
from ovaal_backend.losses import invert_uncertain, ova_semi_loss, sparse_cross_entropy, sparse_ova_bce


def test_ova_bce_unbalanced_matches_manual_one_hot():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 1, 0])
    expected = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 3).float())
    assert sparse_ova_bce(logits, labels, balance=False).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ova_bce_balanced_weighs_positives_and_negatives_equally():
    # class 0 has one positive (loss log 2 each) and three negatives at logit 0 too; give negatives a tiny loss instead
    logits = torch.tensor([[0.0, -20.0], [-20.0, 0.0], [-20.0, 0.0], [-20.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    loss = sparse_ova_bce(logits, labels, balance=True)
    # class 0: positive loss log2, negatives ~0 -> 0.5*log2; class 1: positives log2, negative ~0 -> 0.5*log2
    assert loss.item() == pytest.approx(0.5 * math.log(2), abs=1e-4)
    unbalanced = sparse_ova_bce(logits, labels, balance=False)
    assert unbalanced.item() == pytest.approx(4 * math.log(2) / 8, abs=1e-4)


def test_ignored_points_train_nothing():
    logits = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX])
    for loss in (sparse_ova_bce(logits, labels), sparse_cross_entropy(logits, labels)):
        loss.backward()
        assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_sparse_ce_matches_torch():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, IGNORE_INDEX, 2, 1])
    keep = labels != IGNORE_INDEX
    assert sparse_cross_entropy(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits[keep], labels[keep]).item())


def test_invert_uncertain_flips_exactly_top_l_per_class():
    probs = torch.tensor([0.9, 0.55, 0.45, 0.02, 0.6, 0.99]).view(1, 1, 2, 3)
    pseudo = invert_uncertain(probs, top_l=2)
    # plain argmax would be [1, 1, 0, 0, 1, 1]; the two most uncertain are 0.55 and 0.45 -> flipped
    assert pseudo.flatten().tolist() == [1, 0, 1, 0, 1, 1]
    assert invert_uncertain(probs, 0).flatten().tolist() == [1, 1, 0, 0, 1, 1]


def test_semi_loss_is_bce_on_pseudo_labels():
    logits = torch.zeros(1, 2, 2, 2)
    pseudo = torch.ones(1, 2, 2, 2)
    assert ova_semi_loss(logits, pseudo).item() == pytest.approx(math.log(2), abs=1e-6)
