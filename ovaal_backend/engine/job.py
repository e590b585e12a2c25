"""One round's heavy work as one function with plain inputs and outputs: ``run_round(RoundJob) -> RoundResult``.

Given the stored clicks, the pool's image files and the last checkpoint, it trains (plus the final phase after the
last round), saves the checkpoint, selects the next round's pixels and predicts the dense masks. It knows nothing of
Label Studio or HTTP and needs only files, so it runs in a thread of the web process or in a fresh process on a GPU
machine that shares MODEL_DIR. Re-running a job whose checkpoint was already saved (a crash after training) loads
those weights instead of training again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IGNORE_INDEX, EngineConfig, engine_part
from ..files import write_atomically
from .data import load_rgb, to_tensor_resized
from .dense import DenseLabels, grid_points
from .learner import MODEL_FIELDS, ActiveLearner, Queries, model_settings
from .rounds import START, RoundPlan, Training, round_job_id
from .step import Pool, round_step
from .train import TrainResult, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundJob:
    """Everything one round's work needs, as plain values (picklable, so a queue can carry it).

    ``points[i]`` holds image i's clicks as (row, col, class index) at its original size, IGNORE_INDEX for "can't
    tell"; ``dense`` holds the full label maps some images have (by key): those train on every grid cell besides
    their clicks and are not queried again; ``checkpoint`` is read when ``fine_tune`` and written when the job
    trains; masks are written as ``masks_dir/<key>.npz`` when ``masks_dir`` is set.

    ``config`` is the engine part only: a job is pickled into Redis and read by workers, so it must not carry the
    Label Studio key, the basic-auth password or Redis' URL. A whole ``Config`` given here is cut down to its engine.
    """

    config: EngineConfig
    classes: list[str]
    ended_round: int
    keys: list[int]
    image_paths: list[str]
    points: list[np.ndarray]
    checkpoint: str
    version: int
    generation: int
    fine_tune: bool = True
    masks_dir: str | None = None
    dense: dict[int, DenseLabels] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", engine_part(self.config))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def job_id(self) -> str:
        """Stable id of this piece of work: model generation, version to produce and the round that ended."""
        return round_job_id(self.generation, self.version, self.ended_round)


@dataclass
class RoundResult:
    """What a round's work produced: the trained version (or the one it started from), the next round's queries
    and the dense-mask files, each keyed like ``RoundJob.keys``, and the class list it was made with (the job's):
    class indices in its masks and queries mean these names, so a project whose classes changed meanwhile must
    not publish it."""

    version: int
    next_round: int | None
    classes: list[str] = field(default_factory=list)
    training: dict[str, Any] | None = None
    queries: dict[int, Queries] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    masks: dict[int, str] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)


def run_round(job: RoundJob) -> RoundResult:
    """The round's step (``step.round_step``): train on every click and dense label map (unless nothing is
    trainable, this is the start, or an earlier run saved this version), save the checkpoint, select (images with a
    dense map are not asked again); then predict the masks of a trained version."""
    plan = RoundPlan.from_config(job.config)
    keys, pool, unreadable = _load_pool(job)
    result = RoundResult(version=job.version - 1, next_round=plan.next_round(job.ended_round),
                         classes=list(job.classes), unreadable=unreadable)
    result.sizes = dict(zip(keys, pool.sizes))
    if not keys:
        return result
    learner = ActiveLearner(job.config, job.num_classes)
    train = job.ended_round != START and _restore(job, learner, pool, result)
    step = round_step(learner, plan, job.ended_round, pool, train=train,
                      on_trained=_Saver(job, plan, learner, pool, result))
    result.queries = {keys[i]: q for i, q in step.queries.items()}
    if result.version == job.version and job.masks_dir:
        result.masks = _write_masks(learner, keys, pool.images, pool.sizes, Path(job.masks_dir),
                                    job.config.predict_batch)
    return result


def _load_pool(job: RoundJob) -> tuple[list[int], Pool, dict[int, str]]:
    """The readable pool images resized to the training size, with their clicks and dense maps; unreadable ones
    are reported, not fatal."""
    keys, tensors, sizes, points, unreadable = [], [], [], [], {}
    for key, path, table in zip(job.keys, job.image_paths, job.points, strict=True):
        try:
            array = load_rgb(path, job.config.max_image_pixels)
        except Exception as err:  # a broken image must not stop the round
            unreadable[key] = f"{type(err).__name__}: {err}"
            continue
        keys.append(key)
        tensors.append(to_tensor_resized(array, job.config.image_height, job.config.image_width))
        sizes.append((int(array.shape[0]), int(array.shape[1])))
        points.append(_inside(table, sizes[-1]))
    images = torch.stack(tensors) if tensors else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
    return keys, Pool(images, sizes, points, _dense_points(job, keys, sizes)), unreadable


def _inside(table: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Clicks that lie on the image (a click outside it trains nothing and must not break indexing)."""
    table = np.asarray(table, dtype=np.int64).reshape(-1, 3)
    keep = (table[:, 0] >= 0) & (table[:, 0] < size[0]) & (table[:, 1] >= 0) & (table[:, 1] < size[1])
    return table[keep]


def _dense_points(job: RoundJob, keys: list[int], sizes: list[tuple[int, int]]) -> dict[int, np.ndarray]:
    """The training points of each loaded image's dense label map (pool index -> (n, 3)); a map drawn at another
    size than the image has now (the file changed since) is left out, with a warning."""
    out = {}
    for index, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        labels = job.dense.get(key)
        if labels is None:
            continue
        if tuple(labels.size) != tuple(size):
            log.warning("job %s: image %s is %dx%d but its dense labels were drawn at %dx%d: they train nothing",
                        job.job_id, key, size[1], size[0], labels.size[1], labels.size[0])
            continue
        out[index] = grid_points(labels.grid, size, job.num_classes)
    return out


def _restore(job: RoundJob, learner: ActiveLearner, pool: Pool, result: RoundResult) -> bool:
    """Load the weights this job starts from; True when it must train.

    An earlier run of this job that saved ``job.version`` (a crash after the save) is reused, not trained again.
    With nothing trainable the job trains nothing and selects with the version it continues, if there is one.
    Otherwise it trains, continuing the generation's last weights when ``fine_tune``. Weights of another model
    (CLASSIFIER, ENCODER... changed since they were saved) are not the generation's: the job trains a new model as
    the settings now ask, on every stored click.
    """
    saved = _read(job.checkpoint)
    ours = saved is not None and saved["generation"] == job.generation
    if ours and not learner.fits(saved["learner"]):
        log.warning("job %s: the saved model was trained with %s, the settings now ask for %s: a new model is "
                    "trained from the pretrained encoder on every stored click", job.job_id,
                    model_settings(saved["learner"]), {name: getattr(job.config, name) for name in MODEL_FIELDS})
        ours = False
    if ours and saved["version"] == job.version:
        learner.load_state_dict(saved["learner"])
        result.version, result.training = job.version, saved.get("training")
        log.info("job %s: its weights were saved by an earlier run; using them", job.job_id)
        return False
    if not pool.trainable():
        if ours and job.version - 1 >= 1 and saved["version"] == job.version - 1:
            learner.load_state_dict(saved["learner"])
        return False
    if job.fine_tune and ours:
        learner.load_state_dict(saved["learner"])
    return True


class _Saver:
    """The round job's ``on_trained``: after the round's last training, its facts and the checkpoint of
    ``job.version`` (saved before the selection draws from the learner's generator, which the checkpoint holds)."""

    def __init__(self, job: RoundJob, plan: RoundPlan, learner: ActiveLearner, pool: Pool,
                 result: RoundResult) -> None:
        self.job, self.plan, self.learner, self.pool, self.result = job, plan, learner, pool, result
        self.started = time.perf_counter()

    def __call__(self, training: Training, outcome: TrainResult) -> None:
        if not training.last:
            return
        job, pool, dense = self.job, self.pool, self.pool.dense
        self.result.training = {
            "round": job.ended_round, "generation": job.generation, "final": self.plan.is_last(job.ended_round),
            "semi": training.semi, "points": sum(int((p[:, 2] != IGNORE_INDEX).sum()) for p in pool.clicks),
            "images": sum(1 for p in pool.training_points() if len(p)),
            "dense_images": sum(1 for d in dense.values() if len(d)),
            "dense_points": sum(len(d) for d in dense.values()), "loss": outcome.last_loss,
            "seconds": round(time.perf_counter() - self.started, 2), "finished_at": time.time()}
        save_checkpoint(job.checkpoint, {"learner": self.learner.state_dict(), "version": job.version,
                                         "generation": job.generation, "classes": list(job.classes),
                                         "training": self.result.training})
        self.result.version = job.version


def _read(path: str) -> dict[str, Any] | None:
    return load_checkpoint(path) if Path(path).is_file() else None


MASK_TILE_ELEMENTS = 1 << 23
"""Class scores upsampled at once while predicting a dense mask (class x pixel; 32 MiB of float32): a 49 MP photo's
mask is built in column strips of this size, never as its full (C, H, W) float stack (4.9 GiB for CamVid)."""


def _write_masks(learner: ActiveLearner, keys: list[int], images: torch.Tensor, sizes: list[tuple[int, int]],
                 folder: Path, batch: int) -> dict[int, str]:
    """Winner-Takes-All class map and per-class confidence per image as ``<key>.npz``; returns key -> path."""
    out = {}
    for key, class_map, scores in predict_masks(learner, keys, images, sizes, batch):
        path = folder / f"{key}.npz"
        write_atomically(path, lambda handle, c=class_map, p=scores: np.savez_compressed(
            handle, class_map=c, scores=p))
        out[key] = str(path)
    return out


def predict_masks(learner: ActiveLearner, keys: list[Any], images: torch.Tensor, sizes: list[tuple[int, int]],
                  batch: int, tile_elements: int = MASK_TILE_ELEMENTS
                  ) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """Yield ``(key, class map (H, W), scores (C,))`` at each image's original size.

    The class map holds the Winner-Takes-All class per pixel (uint8; uint16 past 256 classes); ``scores[c]`` is the
    mean, over the pixels class c won, of the winning probability (0 where it won none). The network runs at its own
    resolution, ``batch`` images at a time; each image's logits are then upsampled to its size in strips of at most
    ``tile_elements`` values (``upsampled_class_map``).
    """
    for start in range(0, len(keys), batch):
        logits = learner.predict_logits(images[start:start + batch])
        for b in range(logits.shape[0]):
            class_map, scores = upsampled_class_map(learner.model.decision_probabilities, logits[b],
                                                    sizes[start + b], tile_elements)
            yield keys[start + b], class_map, scores


def upsampled_class_map(probabilities: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor,
                        size: tuple[int, int], tile_elements: int = MASK_TILE_ELEMENTS
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The class map and per-class mean confidence of bilinearly upsampled ``logits``, built strip by strip.

    A map that fits ``tile_elements`` is upsampled in one call. A larger one is upsampled along its width first
    (C x h x W, small), then in column strips along its height: torch computes bilinear upsampling row-interpolated
    from column-interpolated values, so each strip holds the very values of the whole map (bit for bit where torch
    takes its generic kernel: outputs of more than 128 rows plus columns, and not 3 classes on one thread).

    Shape: logits (outputs, h, w) -> class map (H, W) uint8 or uint16, scores (C,) float64 (C = outputs but for
    ``ova-softmax``, whose 2C outputs give C probabilities).
    """
    classes = probabilities(logits[None, :, :1, :1]).shape[1]
    class_map = np.empty(size, dtype=np.uint8 if classes <= 256 else np.uint16)
    sums, counts = np.zeros(classes), np.zeros(classes)
    for left, part in _upsampled_strips(logits[None], size, tile_elements):
        scores = probabilities(part)[0]
        winners, confidence = scores.argmax(0).cpu().numpy(), scores.max(0).values.cpu().numpy()
        class_map[:, left:left + winners.shape[1]] = winners
        sums += np.bincount(winners.ravel(), weights=confidence.ravel(), minlength=classes)
        counts += np.bincount(winners.ravel(), minlength=classes)
    return class_map, sums / np.maximum(counts, 1)


def _upsampled_strips(logits: torch.Tensor, size: tuple[int, int], tile_elements: int
                      ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first column, logits upsampled to (1, C, H, columns))`` strip by strip (one strip when it fits)."""
    classes, height, width = logits.shape[1], *size
    if logits.shape[-2:] == size:
        yield 0, logits
    elif classes * height * width <= tile_elements:
        yield 0, F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    else:
        wide = F.interpolate(logits, size=(logits.shape[2], width), mode="bilinear", align_corners=False)
        step = max(128, tile_elements // (classes * height))
        for left in range(0, width, step):
            strip = wide[..., left:left + step]
            yield left, F.interpolate(strip, size=(height, strip.shape[-1]), mode="bilinear", align_corners=False)


def read_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A mask file written by a round job: (class map (H, W), scores: per class (C,), or per pixel (H, W) in a
    file an earlier version wrote, which a project may still have to publish)."""
    with np.load(path) as data:
        scores = data["scores"] if "scores" in data else data["confidence"].astype(np.float32)
        return data["class_map"], scores
