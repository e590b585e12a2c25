"""The round plan and the round job: plain inputs and outputs, files only, re-runnable after a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovaal_backend.config import IGNORE_INDEX, Config
from ovaal_backend.engine.job import MASK_TILE_ELEMENTS, START, RoundJob, predict_masks, read_mask, run_round
from ovaal_backend.engine.learner import ActiveLearner
from ovaal_backend.engine.rounds import RoundPlan, Training
from ovaal_backend.engine.train import load_checkpoint
from tests.helpers.fake_label_studio import TINY
from tests.helpers.synthetic import CLASSES, VOID

TWO_ROUNDS = dict(TINY, semi=True, rounds=2)
"""The tests' tiny settings over two rounds, with pseudo-labels."""


def test_round_plan():
    plan = RoundPlan.from_config(Config(init_pixels=10, pixels_per_round=4, rounds=3, semi=True, semi_epochs=2))
    assert plan.budget == 22 and [plan.pixels(r) for r in range(4)] == [10, 4, 4, 4]
    assert plan.is_random(0) and not plan.is_random(1)
    assert [plan.next_round(r) for r in (START, 0, 2, 3)] == [0, 1, 3, None]
    assert not plan.is_last(2) and plan.is_last(3) and plan.has_final_phase(3) and not plan.has_final_phase(2)
    assert not RoundPlan.from_config(Config(rounds=1, semi_epochs=0)).has_final_phase(1)


def test_round_plan_decides_each_training():
    plan = RoundPlan.from_config(Config(first_round_epochs=5, epochs=2, semi_epochs=3, rounds=2, semi=True))
    assert plan.trainings(START, False) == () and plan.trainings(0, False) == (Training(5),)
    assert plan.trainings(1, True) == (Training(2),), "later rounds fine-tune for EPOCHS"
    assert plan.trainings(2, True) == (Training(2, last=False), Training(3, semi=True, final=True))
    fresh = RoundPlan.from_config(Config(first_round_epochs=5, epochs=2, semi_epochs=3, rounds=1, semi=False,
                                         retrain=True, final_from_scratch=True))
    assert fresh.trainings(0, False) == (Training(5),), "the first model is fresh already"
    assert fresh.trainings(1, True) == (Training(5, fresh=True, last=False), Training(3, final=True, fresh=True))


def clicks(label: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, label.shape[0], n), rng.integers(0, label.shape[1], n)
    classes = label[rows, cols].astype(np.int64)
    return np.stack([rows, cols, np.where(classes == VOID, IGNORE_INDEX, classes)], 1)


def job(tmp_path, pool, ended_round: int, version: int, points=None, **changes) -> RoundJob:
    paths, labels = pool
    points = points if points is not None else [np.zeros((0, 3), np.int64) for _ in paths]
    config = changes.pop("config", Config(**TWO_ROUNDS))
    return RoundJob(config=config, classes=CLASSES, ended_round=ended_round, keys=[10, 11, 12, 13],
                    image_paths=paths, points=points, checkpoint=str(tmp_path / "model.pt"), version=version,
                    generation=0, masks_dir=str(tmp_path / "masks"), **changes)


def test_start_picks_random_round0_pixels_without_training(tmp_path, pool):
    result = run_round(job(tmp_path, pool, START, 1))
    assert result.next_round == 0 and result.training is None and result.version == 0 and not result.masks
    assert set(result.queries) == {10, 11, 12, 13} and all(len(q) == 5 for q in result.queries.values())
    assert all((q.guess == -1).all() for q in result.queries.values())
    assert result.sizes[10] == (48, 64) and not (tmp_path / "model.pt").exists()


def test_a_round_trains_saves_selects_and_predicts_then_resumes(tmp_path, pool):
    points = [clicks(label, 12, i) for i, label in enumerate(pool[1])]
    points[0] = np.concatenate([points[0], [[480, 640, 1], [-1, 3, 2]]])  # outside the image: left out, no error
    result = run_round(job(tmp_path, pool, 0, 1, points))
    assert result.version == 1 and result.next_round == 1 and result.training["points"] > 0
    assert all(len(q) == 6 for q in result.queries.values())
    assert all((q.guess >= 0).all() for q in result.queries.values())
    for key in (10, 11, 12, 13):
        class_map, scores = read_mask(result.masks[key])
        assert class_map.shape == (48, 64) and class_map.max() < len(CLASSES) and scores.shape == (len(CLASSES),)
    saved = load_checkpoint(tmp_path / "model.pt")
    assert (saved["version"], saved["generation"], saved["classes"]) == (1, 0, CLASSES)
    again = run_round(job(tmp_path, pool, 0, 1, points))  # a crash after the save: the weights are reused
    assert again.training == result.training and again.version == 1


def test_every_round_of_an_ova_softmax_project_runs_to_its_final_masks(tmp_path, pool):
    points = [clicks(label, 12, i) for i, label in enumerate(pool[1])]
    config = Config(**{**TWO_ROUNDS, "classifier": "ova-softmax"})  # with OVAAL+: its loss trains the heads
    ended, version = 0, 1
    while ended is not None:
        result = run_round(job(tmp_path, pool, ended, version, points, config=config))
        ended, version = result.next_round, version + 1
        assert all((q.guess >= 0).all() and (q.guess < len(CLASSES)).all() for q in result.queries.values())
    for key in (10, 11, 12, 13):
        class_map, scores = read_mask(result.masks[key])
        assert class_map.shape == (48, 64) and class_map.max() < len(CLASSES) and scores.shape == (len(CLASSES),)
    assert load_checkpoint(tmp_path / "model.pt")["learner"]["kind"] == "ova-softmax"


def test_last_round_has_no_next_queries_and_nothing_trainable_keeps_the_version(tmp_path, pool):
    empty = [np.array([[3, 3, IGNORE_INDEX]]) for _ in pool[0]]
    nothing = run_round(job(tmp_path, pool, 0, 1, empty))
    assert nothing.training is None and nothing.version == 0 and len(nothing.queries[10]) == 6
    points = [clicks(label, 12, i) for i, label in enumerate(pool[1])]
    final = run_round(job(tmp_path, pool, 2, 1, points))
    assert final.next_round is None and final.queries == {} and final.training["final"]
    assert final.training["semi"]


def test_an_unreadable_image_is_reported_not_fatal(tmp_path, pool):
    paths, labels = pool
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"<html>not found</html>")
    result = run_round(job(tmp_path, (paths[:3] + [str(broken)], labels), START, 1))
    assert set(result.queries) == {10, 11, 12} and "13" not in result.unreadable and 13 in result.unreadable


@pytest.mark.parametrize("classifier", ["ova-shared", "multiclass", "ova-softmax"])
def test_masks_built_in_strips_equal_the_whole_upsampled_map(classifier):
    """The strip-by-strip mask (what a 49 MP photo needs) holds exactly the classes of the whole upsampled map."""
    torch.manual_seed(0)
    learner = ActiveLearner(Config(**{**TWO_ROUNDS, "semi": False, "classifier": classifier}), 4)
    head = [m for m in learner.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.normal_(head.weight, std=2.0)  # an untrained head picks one class everywhere
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    sizes = [(150, 201), (48, 64)]
    whole = [learner.predict_probabilities(images[b:b + 1], sizes[b], decision=True)[0] for b in range(2)]  # at once
    for tile_elements in (MASK_TILE_ELEMENTS, 1000):  # one piece; strips of 128 columns
        masks = list(predict_masks(learner, [7, 8], images, sizes, batch=2, tile_elements=tile_elements))
        assert [key for key, _, _ in masks] == [7, 8]
        for (_, class_map, scores), probabilities in zip(masks, whole):
            reference, confidence = probabilities.argmax(0).numpy(), probabilities.max(0).values.numpy()
            assert class_map.dtype == np.uint8 and len(np.unique(class_map)) > 1
            np.testing.assert_array_equal(class_map, reference)
            expected = [confidence[reference == c].mean() if (reference == c).any() else 0.0 for c in range(4)]
            np.testing.assert_allclose(scores, expected, rtol=1e-5)
