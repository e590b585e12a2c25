import pytest
import torch

from ovaal_backend.engine.acquisition import (
    area_shares,
    select_per_class,
    select_random,
    select_top,
    split_quota,
)
from ovaal_backend.engine.scorers import score_binary_entropy


def test_select_top_picks_highest_and_skips_labelled():
    scores = torch.arange(12.0).view(1, 3, 4)
    candidates = torch.ones(1, 3, 4, dtype=torch.bool)
    candidates[0, 2, 3] = False  # the best pixel is already labelled
    index, valid = select_top(scores, candidates, 3)
    assert valid.all()
    assert sorted(index[0].tolist()) == [8, 9, 10]


def test_select_top_marks_missing_candidates_invalid():
    candidates = torch.zeros(1, 2, 2, dtype=torch.bool)
    candidates[0, 0, 1] = True
    index, valid = select_top(torch.rand(1, 2, 2), candidates, 3)
    assert valid.sum() == 1 and index[0][valid[0]].tolist() == [1]


def test_diversity_step_draws_from_top_fraction_only():
    scores = torch.arange(1000.0).view(1, 10, 100)
    candidates = torch.ones(1, 10, 100, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    index, valid = select_top(scores, candidates, 10, top_fraction=0.05, generator=gen)
    assert valid.all() and len(set(index[0].tolist())) == 10
    assert (index >= 950).all()
    assert sorted(index[0].tolist()) != list(range(990, 1000))  # random inside the pool, not the top 10


def test_select_random_is_uniform_over_candidates_and_distinct():
    candidates = torch.zeros(2, 8, 8, dtype=torch.bool)
    candidates[:, :4] = True
    index, valid = select_random(candidates, 20, torch.Generator().manual_seed(1))
    assert valid.all()
    for row in index:
        assert len(set(row.tolist())) == 20
        assert (row < 32).all()


def test_split_quota_even_with_remainder():
    order = torch.tensor([2, 0, 1])
    assert split_quota(7, 3, order) == [2, 2, 3]
    assert sum(split_quota(22, 11, torch.arange(11))) == 22


def test_per_class_selection_queries_each_class_uncertain_pixels_once():
    # class 0 is most uncertain at pixels 0..3, class 1 at 2..5 (overlap 2, 3); both are less uncertain at 6, 7
    probs = torch.full((1, 2, 1, 10), 0.99)
    probs[0, 0, 0, 0:4] = 0.5
    probs[0, 1, 0, 2:6] = 0.5
    probs[0, :, 0, 6:8] = 0.7
    scores = score_binary_entropy(probs)
    candidates = torch.ones(1, 1, 10, dtype=torch.bool)
    for seed in range(6):  # whichever class picks first
        index, cls, valid = select_per_class(scores, candidates, 8, generator=torch.Generator().manual_seed(seed))
        picked = index[0][valid[0]].tolist()
        assert len(picked) == len(set(picked)) == 8, "a pixel is queried once"
        assert set(picked) == set(range(8)), "the overlap goes to one class, the other takes its next best"
        assert (cls[0] == 0).sum() == 4 and (cls[0] == 1).sum() == 4


def test_per_class_selection_respects_candidates():
    scores = torch.rand(1, 3, 6, 6)
    candidates = torch.rand(1, 6, 6) > 0.5
    index, _, valid = select_per_class(scores, candidates, 9)
    flat = candidates.view(-1)
    assert flat[index[0][valid[0]]].all()


def test_per_class_diversity_step_spreads_picks_off_a_plateau_edge():
    # An untrained binary head is ~0.5 everywhere; a tiny excess at the border decides the strict top pixels
    probs = torch.full((1, 2, 40, 40), 0.6)
    probs[..., 0, :] = 0.5999
    scores = score_binary_entropy(probs)
    candidates = torch.ones(1, 40, 40, dtype=torch.bool)
    strict, _, _ = select_per_class(scores, candidates, 20, generator=torch.Generator().manual_seed(0))
    assert (strict[0] // 40 == 0).all(), "strict arg-max: every pick on row 0"
    spread, cls, valid = select_per_class(scores, candidates, 20, top_fraction=0.5,
                                          generator=torch.Generator().manual_seed(0))
    assert valid.all() and len(set(spread[0].tolist())) == 20
    assert (spread[0] // 40 > 0).sum() >= 15, "drawn at random from each class's top half, not its single ridge"
    assert (cls[0] == 0).sum() == (cls[0] == 1).sum() == 10


def test_split_quota_by_shares_rounds_down_then_gives_the_remainder_to_the_largest_fractions():
    shares = torch.tensor([0.5, 0.3, 0.2])
    assert split_quota(10, 3, torch.tensor([2, 0, 1]), shares) == [5, 3, 2]
    assert split_quota(7, 3, torch.tensor([2, 0, 1]), shares) == [4, 2, 1]  # 3.5, 2.1, 1.4: the .5 gets the one left
    even = torch.full((3,), 1 / 3)
    assert split_quota(7, 3, torch.tensor([2, 0, 1]), even) == split_quota(7, 3, torch.tensor([2, 0, 1]))


def test_area_shares_mix_the_even_split_with_the_predicted_areas():
    class_map = torch.tensor([[[0, 0, 0, 1]]])  # class 0 covers 3/4, class 1 1/4, class 2 nothing
    assert torch.allclose(area_shares(class_map, 3, 0.0), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(area_shares(class_map, 3, 1.0), torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    half = area_shares(class_map, 3, 0.5)
    assert torch.allclose(half, torch.tensor([1 / 6 + 0.375, 1 / 6 + 0.125, 1 / 6], dtype=torch.float64))
    assert half.sum().item() == pytest.approx(1.0)


def test_per_class_selection_follows_the_shares():
    scores = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    candidates = torch.ones(1, 10, 10, dtype=torch.bool)
    _, classes, valid = select_per_class(scores, candidates, 12, shares=torch.tensor([0.5, 0.5, 0.0]))
    assert valid.all() and torch.bincount(classes[0], minlength=3).tolist() == [6, 6, 0]
