"""benchmarks/inversion_diagnostic.py: counts of OVAAL+'s pseudo-label changes and the share that were right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ovaal_backend.config import SEMI_RULES, Config
from ovaal_backend.engine.learner import ActiveLearner
from tests.helpers.synthetic import make_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inversion_diagnostic.py"


@pytest.fixture(scope="module")
def diagnostic():
    spec = importlib.util.spec_from_file_location("inversion_diagnostic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_counts_and_shares(diagnostic, tmp_path, capsys):
    learner = ActiveLearner(Config(encoder_weights="none", image_height=32, image_width=48, device="cpu"), 3)
    checkpoint = tmp_path / "model.pt"
    torch.save(learner.state_dict(), checkpoint)
    images, height, width = 3, 24, 32
    data = make_dataset(tmp_path / "data", images, height=height, width=width)
    top_ls = (5, 100, 1000)  # 1000 > the 768 pixels of an image

    results = diagnostic.main(["--checkpoint", str(checkpoint), "--data", str(data), "--batch", "2", "--no-docs",
                               "--top-l", *map(str, top_ls)])

    assert set(results) == set(SEMI_RULES)
    for rule in SEMI_RULES:
        for top_l in top_ls:
            counts = results[rule][top_l]
            assert (counts["right"] <= counts["judged"]).all() and (counts["judged"] <= counts["changed"]).all()
            shares = [diagnostic.share(counts, c) for c in (0, 1, 2, None)]
            assert all(s is None or 0.0 <= s <= 1.0 for s in shares)
    for top_l in top_ls:  # the paper's rule inverts exactly top_l pixels per class and image
        assert results["paper"][top_l]["changed"].tolist() == [min(top_l, height * width) * images] * 3
    assert "| **all classes** |" in capsys.readouterr().out


def test_change_counts_by_hand(diagnostic):
    # Two classes' 2x2 sigmoids (they need not sum to one); ground truth: class 0, class 1, void, class 0.
    probs = torch.tensor([[[[0.45, 0.9], [0.52, 0.1]], [[0.40, 0.1], [0.6, 0.9]]]])
    labels = torch.tensor([[[0, 1], [-1, 0]]])
    # paper, L=2: each class inverts its two most uncertain pixels, (0, 0) and (1, 0). (1, 0) is void: changed but
    # not judged. At (0, 0) (class 0) class 0 goes 0 -> 1 (right), class 1 goes 0 -> 1 (wrong).
    paper = diagnostic.change_counts(probs, labels, 2, "paper")
    assert paper["changed"].tolist() == [2, 2]
    assert paper["judged"].tolist() == [1, 1]
    assert paper["right"].tolist() == [1, 0]
    assert (diagnostic.share(paper, 0), diagnostic.share(paper, 1), diagnostic.share(paper)) == (1.0, 0.0, 0.5)
    assert paper["judged_to_one"].tolist() == [1, 1] and diagnostic.share(paper, to_one=True) == 0.5
    # wta, L=2: WTA answers class 0 at (0, 0) and class 1 at (1, 0): class 0 changes at both (0 -> 1 right, 1 -> 0 on
    # void); class 1's thresholded targets already agree with WTA there, so nothing of class 1 changes.
    wta = diagnostic.change_counts(probs, labels, 2, "wta")
    assert (wta["changed"].tolist(), wta["judged"].tolist(), wta["right"].tolist()) == ([2, 0], [1, 0], [1, 0])
    assert (diagnostic.share(wta, 0), diagnostic.share(wta, 1), diagnostic.share(wta)) == (1.0, None, 1.0)
