import numpy as np
import pytest
import torch

from ovaal_backend.config import IGNORE_INDEX, Config
from ovaal_backend.engine import train as train_module
from ovaal_backend.engine.data import resize_images, sample_at_points
from ovaal_backend.engine.job import predict_masks
from ovaal_backend.engine.learner import RANDOM_QUERY, ActiveLearner, labelled_mask
from ovaal_backend.engine.losses import sparse_cross_entropy, sparse_ova_bce
from ovaal_backend.engine.rounds import START, RoundPlan, Training
from ovaal_backend.engine.step import Pool, round_step
from ovaal_backend.engine.train import load_checkpoint, point_loss, save_checkpoint
from tests.helpers.fake_label_studio import TINY
from tests.helpers.synthetic import make_scene


def _pool(count=4, seed=0):
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng) for _ in range(count)]
    images = resize_images([s[0] for s in scenes], 32, 48)
    labels = [np.where(s[1] == 255, IGNORE_INDEX, s[1].astype(np.int64)) for s in scenes]
    return images, labels, [lab.shape for lab in labels]


@pytest.mark.parametrize("classifier,selection", [("ova-shared", "ova"), ("ova-separate", "ova"),
                                                  ("multiclass", "margin"), ("multiclass", "entropy"),
                                                  ("multiclass", "least-confidence"), ("multiclass", "random"),
                                                  ("multiclass", "ova"), ("ova-shared", "margin"),
                                                  ("ova-softmax", "ova"), ("ova-softmax", "margin"),
                                                  ("ova-shared", "ova-and-margin"), ("multiclass", "ova-and-margin")])
def test_queries_never_repeat_labelled_pixels(classifier, selection):
    images, labels, sizes = _pool(2)
    config = Config(classifier=classifier, selection=selection, semi=classifier != "multiclass", **TINY)
    learner = ActiveLearner(config, 3)
    points = [np.array([[r, c, labels[i][r, c]] for r in range(0, 48, 2) for c in range(0, 64, 2)])
              for i in range(2)]
    queries = learner.query(images, points, sizes, 9)
    for i, q in enumerate(queries):
        assert len(q) == 9
        assert not labelled_mask(points[i], *sizes[i])[q.rows, q.cols].any()
        assert len({(r, c) for r, c in zip(q.rows, q.cols)}) == 9
        assert ((q.uncertainty >= 0) & (q.uncertainty <= 1 + 1e-6)).all()
        assert 0 <= q.certainty <= 1 and q.certainty == pytest.approx(1 - q.image_uncertainty)
        if selection == "ova":
            assert sorted(np.bincount(q.query_class, minlength=3).tolist()) == [3, 3, 3]
        elif selection == "ova-and-margin":  # 5 by the classes in turn, 4 by margin among the pixels left
            assert (q.query_class == RANDOM_QUERY).sum() == 4
            assert sorted(np.bincount(q.query_class[q.query_class >= 0], minlength=3).tolist()) == [1, 2, 2]
        else:
            assert (q.query_class == RANDOM_QUERY).all()


@pytest.mark.parametrize("classifier", ["ova-shared", "ova-softmax"])
def test_area_quotas_ask_each_class_in_proportion_to_its_predicted_area(classifier):
    images, labels, sizes = _pool(1)
    learner = ActiveLearner(Config(classifier=classifier, quota_area=1.0, **TINY), 3)
    empty = [np.zeros((0, 3), dtype=np.int64)]
    (q,) = learner.query(images, empty, sizes, 30)
    predicted = learner.predict_class_map(images, sizes[0]).flatten()
    expected = 30 * torch.bincount(predicted, minlength=3).double() / predicted.numel()
    asked = np.bincount(q.query_class, minlength=3)
    assert asked.sum() == 30 and (np.abs(asked - expected.cpu().numpy()) < 1).all(), (asked, expected)


def test_cold_start_is_random_and_has_no_guess():
    images, labels, sizes = _pool(2)
    learner = ActiveLearner(Config(**TINY), 3)
    empty = [np.zeros((0, 3), dtype=np.int64)] * 2
    queries = learner.query(images, empty, sizes, 5, random=True)
    assert all(len(q) == 5 and (q.guess == -1).all() and (q.query_class == RANDOM_QUERY).all() for q in queries)
    assert all(q.certainty == 0.0 for q in queries), "no model: every image is equally uncertain"


def test_excluded_pixels_are_never_queried():
    images, labels, sizes = _pool(1)
    learner = ActiveLearner(Config(**TINY), 3)
    excluded = np.ones(sizes[0], dtype=bool)
    excluded[10:12, 10:12] = False
    (q,) = learner.query(images, [np.zeros((0, 3), dtype=np.int64)], sizes, 10, random=True, excluded=[excluded])
    assert len(q) == 4 and set(zip(q.rows.tolist(), q.cols.tolist())) == {(10, 10), (10, 11), (11, 10), (11, 11)}


@pytest.mark.parametrize("classifier", ["ova-shared", pytest.param("multiclass", marks=pytest.mark.slow)])  # 25 epochs
def test_training_on_points_learns_the_synthetic_scenes(classifier):
    images, labels, sizes = _pool(8)
    config = Config(classifier=classifier, selection="ova" if classifier != "multiclass" else "margin",
                    semi=classifier != "multiclass",
                    **{**TINY, "first_round_epochs": 25, "batch_size": 4, "lr": 3e-3, "color_jitter": 0.0})
    learner = ActiveLearner(config, 3)
    rng = np.random.default_rng(0)
    points = []
    for lab in labels:
        rows, cols = rng.integers(0, 48, 60), rng.integers(0, 64, 60)
        points.append(np.stack([rows, cols, lab[rows, cols]], 1))
    (first,) = RoundPlan.from_config(config).trainings(0, learner.trained)
    result = learner.train(images, points, sizes, first, progress=False)
    assert first.epochs == 25 and result.iterations == 25 * 2
    pred = learner.predict_class_map(images, sizes[0]).cpu().numpy()
    trained = learner.query(images, points, sizes, 6)
    assert all(q.certainty > 0.5 for q in trained), "a model that learned the scenes is mostly certain"
    gt = np.stack(labels)
    accuracy = (pred == gt)[gt != IGNORE_INDEX].mean()
    assert accuracy > 0.8, accuracy


def test_ova_softmax_trains_heads_and_decision_and_its_masks_and_guesses_follow_the_decision():
    images, labels, sizes = _pool(2)
    config = Config(classifier="ova-softmax", **TINY)
    learner = ActiveLearner(config, 3)
    logits = torch.randn(2, 6, 8, 8)
    points = torch.tensor([[0, 1, 2, 0], [0, 5, 5, 2], [1, 3, 4, 1]], dtype=torch.float32)
    at, labels_at = sample_at_points(logits, points), points[:, 3].long()
    expected = sparse_ova_bce(at[:, :3], labels_at, balance=0.5) + sparse_cross_entropy(at[:, 3:], labels_at)
    assert point_loss(learner.model, logits, points, config).item() == pytest.approx(expected.item(), rel=1e-6)
    half = Config(classifier="ova-softmax", decision_balance=0.5, **TINY)
    expected = sparse_ova_bce(at[:, :3], labels_at, balance=0.5) + sparse_cross_entropy(at[:, 3:], labels_at, 0.5)
    assert point_loss(learner.model, logits, points, half).item() == pytest.approx(expected.item(), rel=1e-6)

    clicks = [np.array([[r, c, lab[r, c]] for r in range(0, 48, 6) for c in range(0, 64, 6)]) for lab in labels]
    learner.train(images, clicks, sizes, Training(epochs=2, semi=True), progress=False)  # OVAAL+ uses the heads
    decision = learner.predict_probabilities(images, sizes[0], decision=True)
    heads = learner.predict_probabilities(images, sizes[0])
    assert torch.allclose(decision.sum(1), torch.ones_like(decision[:, 0]), atol=1e-5)
    assert not torch.allclose(decision, heads)
    assert torch.equal(learner.predict_class_map(images, sizes[0]), decision.argmax(1))
    for i, q in enumerate(learner.query(images, clicks, sizes, 6)):
        assert (q.guess == decision[i].argmax(0)[q.rows, q.cols].cpu().numpy()).all()
    (key, class_map, scores), _ = predict_masks(learner, ["a", "b"], images, sizes, 2)
    assert key == "a" and scores.shape == (3,) and (class_map == decision[0].argmax(0).cpu().numpy()).all()


@pytest.mark.parametrize("classifier", ["ova-shared", "multiclass"])
def test_global_balance_trains_with_the_counts_of_every_click(classifier, monkeypatch):
    images, labels, sizes = _pool(2)
    clicks = [np.array([[5, 5, 0], [20, 30, 1], [9, 9, IGNORE_INDEX]]), np.array([[7, 7, 2], [8, 8, 2]])]
    config = Config(classifier=classifier, selection="margin", class_balance_global=True, **TINY)
    seen, real_loss = [], train_module.point_loss

    def spy(*args):  # the real loss, its counts recorded
        seen.append(args[4])
        return real_loss(*args)

    monkeypatch.setattr(train_module, "point_loss", spy)
    ActiveLearner(config, 3).train(images, clicks, sizes, Training(epochs=1), progress=False)
    assert seen and all(c.tolist() == [1.0, 1.0, 2.0] for c in seen)


def test_semi_phase_needs_ova_and_runs():
    images, labels, sizes = _pool(2)
    points = [np.array([[5, 5, lab[5, 5]], [20, 30, lab[20, 30]]]) for lab in labels]
    learner = ActiveLearner(Config(**TINY), 3)
    semi = RoundPlan.from_config(learner.config).final_phase(True)
    assert learner.train(images, points, sizes, semi, progress=False).iterations == 1
    multi = ActiveLearner(Config(classifier="multiclass", selection="margin", semi=False, **TINY), 3)
    with pytest.raises(ValueError, match="needs One-vs-All heads"):
        multi.train(images, points, sizes, semi, progress=False)


def test_state_round_trips_through_an_atomic_checkpoint(tmp_path):
    images, labels, sizes = _pool(2)
    learner = ActiveLearner(Config(**TINY), 3)
    points = [np.array([[5, 5, lab[5, 5]], [20, 30, lab[20, 30]]]) for lab in labels]
    learner.train(images, points, sizes, Training(epochs=1), progress=False)
    save_checkpoint(tmp_path / "model.pt", learner.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file left behind"
    restored = ActiveLearner(Config(**TINY), 3)
    restored.load_state_dict(load_checkpoint(tmp_path / "model.pt"))
    assert restored.trained_rounds == 1
    assert torch.allclose(restored.predict_probabilities(images, sizes[0]),
                          learner.predict_probabilities(images, sizes[0]))
    other = ActiveLearner(Config(**TINY), 4)
    with pytest.raises(ValueError, match="3 classes"):
        other.load_state_dict(learner.state_dict())


def test_a_round_step_runs_the_plans_trainings_then_selects():
    images, labels, sizes = _pool(3)
    config = Config(**{**TINY, "semi": True})
    plan, learner = RoundPlan.from_config(config), ActiveLearner(config, 3)
    pool = Pool(images, sizes, [np.zeros((0, 3), dtype=np.int64) for _ in sizes])
    assert not pool.trainable()
    start = round_step(learner, plan, START, pool)
    assert not learner.trained and set(start.queries) == {0, 1, 2}
    assert all(len(q) == 5 and (q.guess == -1).all() for q in start.queries.values()), "round 0 is random"
    for i, q in start.queries.items():
        pool.clicks[i] = np.stack([q.rows, q.cols, labels[i][q.rows, q.cols]], 1)
    pool.dense = {2: np.array([[1, 1, 0]])}  # image 2's full label map arrived: it trains, and is not asked again
    trained = []
    step = round_step(learner, plan, 0, pool, on_trained=lambda t, r: trained.append((t, learner.trained_rounds)))
    assert trained == [(Training(config.first_round_epochs), 1)] and set(step.queries) == {0, 1}
    assert all(len(q) == 6 and (q.guess >= 0).all() for q in step.queries.values()), "chosen by the trained model"
    trained.clear()
    last = round_step(learner, plan, 1, pool, on_trained=lambda t, r: trained.append((t, learner.trained_rounds)))
    assert [t for t, _ in trained] == [Training(config.epochs, last=False), plan.final_phase(True)]
    assert [n for _, n in trained] == [2, 3] and last.queries == {}, "the budget is spent: nothing more to ask"
