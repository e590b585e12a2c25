import math

import numpy as np
import pytest
import torch

from ovaal_backend.config import IGNORE_INDEX
from ovaal_backend.engine.metrics import (
    confusion_matrix,
    iou_per_class,
    mean_iou,
    semantic_diversity,
    spatial_diversity,
)


def test_confusion_and_iou_known_answer():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert mean_iou(cm) == pytest.approx(100 * (1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_absent_class_is_left_out_of_the_mean():
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    assert math.isnan(iou_per_class(cm)[2])
    assert mean_iou(cm) == pytest.approx(100.0)


def test_semantic_diversity_bits():
    assert semantic_diversity(np.array([0, 1, 2, 3]), 4) == pytest.approx(2.0)
    assert semantic_diversity(np.array([1, 1, 1, IGNORE_INDEX]), 4) == pytest.approx(0.0)


def test_spatial_diversity_is_std_of_pooled_coordinates():
    coords = np.array([[0, 0, 1], [0, 10, 1], [10, 0, 1], [10, 10, 1]])
    assert spatial_diversity([coords]) == pytest.approx(5.0)
    assert spatial_diversity([coords, coords[:1]]) == pytest.approx(5.0)  # single points carry no spread
