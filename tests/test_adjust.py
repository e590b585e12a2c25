import numpy as np
import pytest
import torch

from ovaal_backend.config import IGNORE_INDEX, Config
from ovaal_backend.engine.adjust import adjusted_class_map, click_log_prior
from ovaal_backend.engine.learner import ActiveLearner
from ovaal_backend.engine.rounds import RoundPlan
from ovaal_backend.engine.train import build_optimizer
from tests.helpers.fake_label_studio import TINY

from .test_engine import _pool


def test_click_prior_counts_answered_classes_with_one_pseudo_count():
    points = [np.array([[0, 0, 0], [0, 1, 0], [1, 1, IGNORE_INDEX]]), np.zeros((0, 3), dtype=np.int64),
              np.array([[2, 2, 1]])]
    prior = click_log_prior(points, 3).exp()
    assert torch.allclose(prior, torch.tensor([3, 2, 1]) / 6.0)


def test_tau_zero_is_winner_takes_all_and_a_strong_prior_moves_close_calls_to_the_frequent_class():
    probabilities = torch.tensor([[0.55, 0.50], [0.45, 0.50]]).view(1, 2, 1, 2)  # (B, C, H, W), OVA sigmoids
    log_prior = torch.tensor([0.1, 0.9]).log()
    assert torch.equal(adjusted_class_map(probabilities, True, log_prior, 0.0), probabilities.argmax(1))
    assert adjusted_class_map(probabilities, True, log_prior, 0.0).tolist() == [[[0, 0]]]
    assert adjusted_class_map(probabilities, True, log_prior, 1.0).tolist() == [[[1, 1]]]
    softmax = torch.tensor([[0.9, 0.52], [0.1, 0.48]]).view(1, 2, 1, 2)
    assert adjusted_class_map(softmax, False, log_prior, 1.0).tolist() == [[[0, 1]]]


def test_encoder_learns_at_its_ratio_of_the_rate():
    config = Config(encoder_lr_ratio=0.1, **TINY)
    learner = ActiveLearner(config, 3)
    optimizer = build_optimizer(learner.model, config)
    encoder = {id(p) for p in learner.model.encoders()[0].parameters()}
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(rates) == len(list(learner.model.parameters()))
    assert {rates[i] for i in encoder} == {config.lr * 0.1}
    assert {r for i, r in rates.items() if i not in encoder} == {config.lr}


@pytest.mark.slow  # trains three models
def test_final_from_scratch_trains_a_fresh_model_and_fine_tuning_keeps_it():
    images, labels, sizes = _pool(2)
    points = [np.array([[r, c, labels[i][r, c]] for r in range(4, 40, 6) for c in range(4, 60, 6)]) for i in range(2)]
    for from_scratch in (True, False):
        learner = ActiveLearner(Config(final_from_scratch=from_scratch, **TINY), 3)
        plan = RoundPlan.from_config(learner.config)
        active, final = plan.trainings(plan.rounds, learner.trained)
        learner.train(images, points, sizes, active, progress=False)
        before = learner.model
        learner.train(images, points, sizes, final, progress=False)
        assert (learner.model is not before) == from_scratch
