import pytest
import torch

from ovaal_backend.config import CLASSIFIERS, Config
from ovaal_backend.engine.model import SegmentationClassifier, build_classifier, winner_takes_all


@pytest.mark.parametrize("kind", [k for k, spec in CLASSIFIERS.items() if not spec.softmax_decision])
def test_every_kind_yields_per_class_probabilities_and_a_class_map(kind):
    model = SegmentationClassifier(kind, 3).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 40, 50))  # not a multiple of 16: padded and cropped back
    assert logits.shape == (2, 3, 40, 50)
    probs = model.probabilities(logits)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert torch.equal(model.decision_probabilities(logits), probs)
    assert model.is_ova == CLASSIFIERS[kind].ova and len(model.networks) == (3 if CLASSIFIERS[kind].separate else 1)
    if not model.is_ova:
        assert torch.allclose(probs, torch.softmax(logits, dim=1))
        assert torch.allclose(probs.sum(1), torch.ones(2, 40, 50), atol=1e-5)
    else:  # C independent sigmoids: each class's probability depends on its own logit only
        assert torch.allclose(probs, torch.sigmoid(logits))
        shifted = model.probabilities(logits + torch.tensor([5.0, 0.0, 0.0]).view(1, 3, 1, 1))
        assert torch.allclose(shifted[:, 1:], probs[:, 1:]) and (shifted[:, 0] > probs[:, 0]).all()
    assert torch.equal(winner_takes_all(probs), logits.argmax(1))


def test_ova_softmax_selects_with_its_heads_and_decides_with_its_softmax():
    model = SegmentationClassifier("ova-softmax", 3).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 40, 50))
    assert logits.shape == (2, 6, 40, 50) and model.is_ova and len(model.networks) == 1
    assert torch.allclose(model.probabilities(logits), torch.sigmoid(logits[:, :3]))
    decision = model.decision_probabilities(logits)
    assert torch.allclose(decision, torch.softmax(logits[:, 3:], dim=1))
    # the class map follows the decision head even where the heads disagree
    crafted = torch.tensor([9.0, -9.0, -9.0, -5.0, 5.0, -5.0]).view(1, 6, 1, 1)
    assert winner_takes_all(model.probabilities(crafted)).item() == 0
    assert winner_takes_all(model.decision_probabilities(crafted)).item() == 1
    assert not model.spec.decides_by_ova and CLASSIFIERS["ova-shared"].decides_by_ova


def test_ova_separate_has_one_network_per_class():
    model = SegmentationClassifier("ova-separate", 4)
    assert len(model.networks) == 4 and len(model.encoders()) == 4


def test_winner_takes_all_picks_the_most_confident_class():
    probs = torch.tensor([0.8, 0.79, 0.1]).view(1, 3, 1, 1)
    assert winner_takes_all(probs).item() == 0


def test_any_smp_architecture_by_name():
    config = Config(classifier="ova-shared", arch="unet", encoder="resnet18", encoder_weights="none")
    model = build_classifier(config, 2).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_unknown_names_give_a_clear_error():
    with pytest.raises(ValueError, match="classifier kind"):
        SegmentationClassifier("ova-magic", 3)
    with pytest.raises(ValueError, match="unknown architecture or encoder"):
        SegmentationClassifier("ova-shared", 3, encoder="no-such-encoder")
