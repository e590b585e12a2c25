import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovaal_backend.config import IGNORE_INDEX
from ovaal_backend.engine.losses import (
    balanced_bce,
    click_counts,
    global_balanced_bce,
    ova_semi_loss,
    sparse_cross_entropy,
    sparse_ova_bce,
)


def test_ova_bce_unbalanced_matches_manual_one_hot():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 1, 0])
    expected = F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, 3).float())
    assert sparse_ova_bce(logits, labels, balance=0.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ova_bce_balanced_weighs_positives_and_negatives_equally():
    # class 0 has one positive (loss log 2 each) and three negatives at logit 0 too; give negatives a tiny loss instead
    logits = torch.tensor([[0.0, -20.0], [-20.0, 0.0], [-20.0, 0.0], [-20.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    loss = sparse_ova_bce(logits, labels, balance=1.0)
    # class 0: positive loss log2, negatives ~0 -> 0.5*log2; class 1: positives log2, negative ~0 -> 0.5*log2
    assert loss.item() == pytest.approx(0.5 * math.log(2), abs=1e-4)
    unbalanced = sparse_ova_bce(logits, labels, balance=0.0)
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


def test_balanced_cross_entropy_weighs_each_present_class_the_same():
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    per_point = F.cross_entropy(logits, labels, reduction="none")
    balanced = sparse_cross_entropy(logits, labels, balance=1.0)
    assert balanced.item() == pytest.approx((per_point[:3].mean() + per_point[3]).item() / 2, rel=1e-6)
    assert sparse_cross_entropy(logits, labels, balance=0.0).item() == pytest.approx(per_point.mean().item())
    half = sparse_cross_entropy(logits, labels, balance=0.5).item()
    assert half == pytest.approx((balanced.item() + per_point.mean().item()) / 2, rel=1e-6)


def test_semi_loss_leaves_out_weighted_pixels_and_balances():
    logits = torch.tensor([[[[4.0, -4.0, 0.0]]]])  # one class, three pixels
    pseudo = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    weight = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    kept = F.binary_cross_entropy_with_logits(logits[..., :2], pseudo[..., :2])
    assert ova_semi_loss(logits, pseudo, weight).item() == pytest.approx(kept.item(), rel=1e-6)
    # balanced: the two positives (one of them weighted out) and one negative -> (pos + neg) / 2
    pos = F.binary_cross_entropy_with_logits(torch.tensor(4.0), torch.tensor(1.0))
    neg = F.binary_cross_entropy_with_logits(torch.tensor(-4.0), torch.tensor(0.0))
    assert ova_semi_loss(logits, pseudo, weight, balance=1.0).item() == pytest.approx(((pos + neg) / 2).item())


def test_semi_loss_is_bce_on_pseudo_labels():
    logits = torch.zeros(1, 2, 2, 2)
    pseudo = torch.ones(1, 2, 2, 2)
    assert ova_semi_loss(logits, pseudo).item() == pytest.approx(math.log(2), abs=1e-6)


def test_global_balance_matches_the_batch_balance_where_the_batch_mirrors_all_clicks():
    logits, labels = torch.randn(12, 3), torch.tensor([0] * 6 + [1] * 4 + [2] * 2)
    rows = np.stack([np.zeros(13, dtype=np.int64), np.arange(13), np.r_[labels.numpy(), IGNORE_INDEX]], axis=1)
    counts = click_counts([rows, rows[:12], np.zeros((0, 3), dtype=np.int64)], 3)  # twice the batch's mix
    assert counts.tolist() == [12.0, 8.0, 4.0]
    for balance in (0.5, 1.0):
        assert sparse_ova_bce(logits, labels, balance, counts).item() == pytest.approx(
            sparse_ova_bce(logits, labels, balance).item(), rel=1e-5)
        assert sparse_cross_entropy(logits, labels, balance, counts).item() == pytest.approx(
            sparse_cross_entropy(logits, labels, balance).item(), rel=1e-5)
    assert sparse_ova_bce(logits, labels, 0.0, counts).item() == sparse_ova_bce(logits, labels, 0.0).item()


def test_global_balance_weighs_a_rare_class_by_all_clicks_not_by_the_batch():
    per_point = torch.rand(4, 2)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # one positive of class 0 here
    rare = global_balanced_bce(per_point, targets, torch.tensor([1.0, 99.0]))  # ...but 1 in 100 clicks overall
    common = global_balanced_bce(per_point, targets, torch.tensor([25.0, 75.0]))  # ...the batch's own mix
    assert common.item() == pytest.approx(balanced_bce(per_point, targets, torch.ones_like(targets)).item(), rel=1e-5)
    # class 0's one positive and class 1's one negative each weigh N / 2 = 50 (1 click in 100 overall); the other
    # sides weigh N / (2 x 99)
    other = 100 / 198
    weights = torch.tensor([[50.0, 50.0], [other, other], [other, other], [other, other]])
    assert rare.item() == pytest.approx((per_point * weights).mean(0).mean().item(), rel=1e-5)
