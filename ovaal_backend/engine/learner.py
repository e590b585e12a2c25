"""The active-learning engine: the loop's state and steps, shared by the offline simulator and the backend.

It knows images, probabilities, pixels and labels; nothing of HTTP or Label Studio. It runs what it is told: which
trainings follow a round (epochs, OVAAL+, a fresh model) is ``RoundPlan``'s decision, and the round's sequence (train,
then ``query`` the next pixels) is ``step.round_step``'s, which both drivers call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RANDOM_SELECTION, EngineConfig
from .acquisition import area_shares, select_per_class, select_random, select_top
from .data import normalize
from .model import SegmentationClassifier, build_classifier, winner_takes_all
from .rounds import Training
from .runtime import resolve_device
from .scorers import Scorer, get_scorer, normalised_entropy
from .train import TrainResult, build_optimizer, train_model
from .weights import get_normalization

log = logging.getLogger(__name__)

RANDOM_QUERY = -1
"""``query_class`` of a pixel chosen at random (round 0, or the random baseline) rather than by one class."""
MODEL_FIELDS = ("classifier", "arch", "encoder", "encoder_weights")
"""The settings a checkpoint's weights belong to: the network's shape and the input normalisation it learnt with."""


def model_settings(state: dict) -> dict[str, str]:
    """The MODEL_FIELDS a learner's checkpoint ``state`` (``ActiveLearner.state_dict``) was trained with."""
    saved = state.get("config", {})
    return {name: saved[name] for name in MODEL_FIELDS if name in saved}


@dataclass(frozen=True)
class Queries:
    """The pixels one image should have answered next, at its original size.

    ``query_class[i]`` is the class whose classifier asked for pixel i (RANDOM_QUERY for random picks),
    ``guess[i]`` the model's Winner-Takes-All class there (-1 without a model), ``uncertainty[i]`` in [0, 1].
    ``image_uncertainty`` is the whole image's mean normalised uncertainty (1.0 without a model).
    """

    rows: np.ndarray
    cols: np.ndarray
    query_class: np.ndarray
    guess: np.ndarray
    uncertainty: np.ndarray
    image_uncertainty: float = 1.0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def certainty(self) -> float:
        """Task-level score, 1 - the image's mean uncertainty (low = most informative image, served first).

        The queried points themselves are by construction the most uncertain pixels (all close to 1), so their mean
        cannot rank images; the whole image's uncertainty can.
        """
        return float(1 - self.image_uncertainty)


def labelled_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool, True at every pixel that has an answer (void and "can't tell" answers included)."""
    mask = np.zeros((height, width), dtype=bool)
    if len(points):
        mask[points[:, 0], points[:, 1]] = True
    return mask


class ActiveLearner:
    """A classifier plus the steps of the active-learning loop, and the one owner of the state its trainings share:
    the model, the random generator, the optimiser kept across rounds and the count of trainings (``state_dict``
    is what a checkpoint holds of it). A training run (``train.train_model``) only steps what it is given.

    Args:
        config: model, training and acquisition settings.
        num_classes: C.
        device: where to run; ``config.device`` by default.
        pretrained: load ``config.encoder_weights`` into the encoder (not when a checkpoint's weights replace them).
    """

    def __init__(self, config: EngineConfig, num_classes: int, device: torch.device | None = None,
                 pretrained: bool = True) -> None:
        self.config = config
        self.num_classes = num_classes
        self.device = device or resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.normalization = get_normalization(config.encoder_weights)
        torch.manual_seed(config.seed)
        self.model: SegmentationClassifier = build_classifier(config, num_classes, pretrained).to(self.device).eval()
        self.trained_rounds = 0
        self._kept_optimizer: torch.optim.Optimizer | None = None

    def reset_model(self) -> None:
        """Start again from the pretrained encoder (PixelPick retrains from scratch every round)."""
        self.model = build_classifier(self.config, self.num_classes).to(self.device).eval()

    @property
    def trained(self) -> bool:
        """Whether the learner has trained before: the plan's first training runs ``first_round_epochs``, and a
        step picks random pixels until it has."""
        return self.trained_rounds > 0

    def train(self, images: torch.Tensor, points: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]],
              training: Training, progress: bool = True) -> TrainResult:
        """Run one training the plan decided (``RoundPlan.trainings``) on every labelled point so far.

        Args:
            images: (N, 3, h, w) uint8 pool images at the training size.
            points: per image, (n_i, 3) (row, col, label) at the original size.
            original_sizes: per image, (height, width).
            training: its epochs, whether it adds the OVAAL+ loss, and whether it starts from a fresh model.
        """
        if training.fresh:
            self.reset_model()
        result = train_model(self.model, images, points, original_sizes, self.config, training.epochs, self.device,
                             self.normalization, self.generator, self._optimizer(), semi=training.semi,
                             progress=progress)
        self.trained_rounds += 1
        return result

    def _optimizer(self) -> torch.optim.Optimizer:
        """This training's optimiser: a fresh Adam, or with ``keep_optimizer`` the one kept across rounds (rebuilt
        when the model was rebuilt). The learner is its one owner; a training run only steps it."""
        if not self.config.keep_optimizer:
            return build_optimizer(self.model, self.config)
        first = next(self.model.parameters())
        kept = self._kept_optimizer
        if kept is None or not any(p is first for group in kept.param_groups for p in group["params"]):
            self._kept_optimizer = build_optimizer(self.model, self.config)
        return self._kept_optimizer

    @torch.no_grad()
    def predict_probabilities(self, images: torch.Tensor, size: tuple[int, int],
                              decision: bool = False) -> torch.Tensor:
        """Per-class probabilities at ``size`` (the original image size): those selection scores, or with
        ``decision`` those whose argmax is the class map (they differ only for ``ova-softmax``).

        Shape: images (B, 3, h, w) uint8 at the training size -> (B, C, H, W) float on ``self.device``.
        """
        logits = self._logits_at(images, size)
        return (self.model.decision_probabilities if decision else self.model.probabilities)(logits)

    def _logits_at(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits bilinearly upsampled to ``size``. Shape: (B, 3, h, w) uint8 -> (B, outputs, H, W)."""
        logits = self.predict_logits(images)
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class logits at the model's resolution, for callers that upsample them piece by piece (a dense mask
        of a 49 MP photo: ``engine.job.predict_masks``).

        Shape: images (B, 3, h, w) uint8 at the training size -> (B, C, h, w) float32 on ``self.device``.
        """
        self.model.eval()
        inputs = normalize(images.to(self.device), *self.normalization)
        with torch.autocast(self.device.type, dtype=torch.float16,
                            enabled=self.config.amp and self.device.type == "cuda"):
            return self.model(inputs).float()

    @torch.no_grad()
    def predict_class_map(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Winner-Takes-All class maps (B, H, W) at ``size``."""
        return winner_takes_all(self.predict_probabilities(images, size, decision=True))

    def select(self, probabilities: torch.Tensor | None, candidates: torch.Tensor, n: int,
               random: bool = False, decision: torch.Tensor | None = None) -> list[Queries]:
        """The next ``n`` pixels of each image, chosen by the configured selection.

        Args:
            probabilities: (B, C, H, W) from ``predict_probabilities``; None before any training (random picks).
            candidates: (B, H, W) bool, False at labelled (and otherwise excluded) pixels.
            n: pixels per image; for OVA selection split evenly over the classes.
            random: random picks whatever the configured selection (round 0, the cold start).
            decision: (B, C, H, W) whose argmax gives each query's pre-labelled guess (``predict_probabilities`` with
                ``decision``); None: ``probabilities``' own argmax.
        """
        candidates = candidates.to(self.device)
        guesses = decision if decision is not None else probabilities
        selection = RANDOM_SELECTION if random or probabilities is None else self.config.selection
        query_class = None
        if selection == RANDOM_SELECTION:
            index, valid = select_random(candidates, n, self.generator)
        elif (scorer := get_scorer(selection)).per_class:
            half = n // 2 if scorer.other_half else 0
            index, query_class, valid = self._select_per_class(scorer, probabilities, guesses, candidates, n - half)
            if half:  # the other half from the image's top pixels by the other scorer, never a pixel taken above
                taken = torch.zeros_like(candidates).reshape(index.shape[0], -1).scatter_(1, index, True)
                more, more_valid = self._select_top(get_scorer(scorer.other_half), self._distribution(probabilities),
                                                    candidates & ~taken.reshape(candidates.shape), half)
                index, valid = torch.cat([index, more], 1), torch.cat([valid, more_valid], 1)
                query_class = torch.cat([query_class, torch.full_like(more, RANDOM_QUERY)], 1)
        else:
            probabilities = self._distribution(probabilities)  # the queries' uncertainties are of what it ranks
            index, valid = self._select_top(scorer, probabilities, candidates, n)
            guesses = decision if decision is not None else probabilities
        return self._to_queries(probabilities, guesses, candidates.shape[-1], index, query_class, valid)

    def _select_per_class(self, scorer: Scorer, probabilities: torch.Tensor, guesses: torch.Tensor,
                          candidates: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OVA selection: each class's most uncertain pixels; over a softmax (Table II (b)) each class's probability
        is read as its own binary problem. The split over classes is even or, with ``quota_area``, by predicted
        area (``guesses``' class map)."""
        shares = None
        if self.config.quota_area > 0:
            class_map = winner_takes_all(guesses)
            shares = area_shares(class_map, self.num_classes, self.config.quota_area)
        return select_per_class(scorer.score(probabilities), candidates, n, self.config.diversity_top_fraction,
                                self.generator, shares)

    def _distribution(self, probabilities: torch.Tensor) -> torch.Tensor:
        """What a scorer of the class distribution ranks. Table II (c): over OVA outputs, the sigmoids normalised to
        sum to one."""
        if not self.model.is_ova:
            return probabilities
        return probabilities / probabilities.sum(1, keepdim=True).clamp_min(1e-12)

    def _select_top(self, scorer: Scorer, probabilities: torch.Tensor, candidates: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's top pixels by a scorer of the class distribution (``probabilities`` from ``_distribution``)."""
        return select_top(scorer.score(probabilities), candidates, n, self.config.diversity_top_fraction,
                          self.generator)

    def _to_queries(self, probabilities: torch.Tensor | None, guesses: torch.Tensor | None, width: int,
                    index: torch.Tensor, query_class: torch.Tensor | None, valid: torch.Tensor) -> list[Queries]:
        out = []
        for b in range(index.shape[0]):
            keep = valid[b]
            flat = index[b][keep]
            rows, cols = (flat // width), (flat % width)
            asked = query_class[b][keep] if query_class is not None else torch.full_like(flat, RANDOM_QUERY)
            image_uncertainty = 1.0
            if probabilities is None:
                guess = torch.full_like(flat, -1)
                uncertainty = torch.ones(flat.shape, device=flat.device)
            else:
                at = probabilities[b][:, rows, cols]
                guess = guesses[b][:, rows, cols].argmax(0)
                uncertainty = self._point_uncertainty(at, asked)
                image_uncertainty = self._image_uncertainty(probabilities[b])
            arrays = (t.cpu().numpy() for t in (rows, cols, asked, guess, uncertainty))
            out.append(Queries(*arrays, image_uncertainty=image_uncertainty))
        return out

    def _image_uncertainty(self, probabilities: torch.Tensor) -> float:
        """Mean over an image's pixels of the normalised uncertainty (``scorers.normalised_entropy``), for OVA the
        mean over classes. Shape: (C, H, W) -> float in [0, 1].

        OVA takes the mean over classes, not the most uncertain class: after a short training some head is near 0.5
        almost everywhere, and the maximum then made every image score the same (0.0000 on 20 CamVid images).
        """
        per_pixel = normalised_entropy(probabilities, self.model.is_ova, 0, lambda entropy: entropy.mean(0))
        return float(per_pixel.mean().clamp(0, 1))

    def _point_uncertainty(self, at: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
        """Normalised uncertainty in [0, 1] of each queried point: for OVA the asking class's (the most uncertain
        class's for a random pick). Shape: at (C, n), asked (n,) -> (n,)."""
        def own_class(entropy: torch.Tensor) -> torch.Tensor:
            own = entropy.gather(1, asked.clamp(min=0)[:, None])[:, 0]
            return torch.where(asked >= 0, own, entropy.max(1).values)

        return normalised_entropy(at.t(), self.model.is_ova, 1, own_class)

    def query(self, images: torch.Tensor, points: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]],
              n: int, random: bool = False, excluded: Iterable[np.ndarray | None] | None = None) -> list[Queries]:
        """Predict each pool image and choose its next ``n`` pixels, never an answered one.

        Images are handled one at a time because their original sizes may differ; ``excluded`` (per image, an (H, W)
        bool mask or None) removes more pixels from the candidates (the simulator's ground-truth-void option).
        """
        excluded = list(excluded) if excluded is not None else [None] * len(points)
        out: list[Queries] = []
        for i, (height, width) in enumerate(original_sizes):
            mask = ~labelled_mask(points[i], height, width)
            if excluded[i] is not None:
                mask &= ~excluded[i]
            candidates = torch.from_numpy(mask)[None]
            probs = decision = None
            if not random:
                logits = self._logits_at(images[i:i + 1], (height, width))
                probs, decision = self.model.probabilities(logits), self.model.decision_probabilities(logits)
            out.extend(self.select(probs, candidates, n, random=random, decision=decision))
        return out

    def state_dict(self) -> dict:
        """Everything needed to resume: weights, the config they were trained with, rounds trained, RNG state."""
        return {"model": self.model.state_dict(), "config": self.config.to_dict(), "num_classes": self.num_classes,
                "kind": self.model.kind, "trained_rounds": self.trained_rounds,
                "generator": self.generator.get_state()}

    @classmethod
    def from_checkpoint(cls, config: EngineConfig, num_classes: int, state: dict) -> ActiveLearner:
        """The learner a checkpoint ``state`` holds, built with the model settings it was trained with (MODEL_FIELDS)
        and ``config``'s others. Why: a project whose CLASSIFIER or ENCODER changed since its last training still
        serves the model it has until the next round trains one as the settings ask (``semi`` is off here: a served
        model trains nothing, and OVAAL+ would refuse a softmax checkpoint). Its pretrained weights are not read."""
        served = config.replace(**model_settings(state), semi=False)
        learner = cls(served, num_classes, pretrained=False)
        learner.load_state_dict(state)
        return learner

    def fits(self, state: dict) -> bool:
        """Whether the checkpoint ``state`` holds this learner's model: the same classes, kind and MODEL_FIELDS."""
        return (state["num_classes"] == self.num_classes and state["kind"] == self.model.kind
                and all(getattr(self.config, name) == value for name, value in model_settings(state).items()))

    def load_state_dict(self, state: dict) -> None:
        if not self.fits(state):
            raise ValueError(f"checkpoint holds a {state['kind']} model with {state['num_classes']} classes "
                             f"({model_settings(state)}); this learner is {self.model.kind} with {self.num_classes}")
        self.model.load_state_dict(state["model"])
        self.trained_rounds = int(state["trained_rounds"])
        self.generator.set_state(state["generator"])
        self.model.to(self.device).eval()

