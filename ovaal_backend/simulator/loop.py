"""The offline simulator: the engine's loop with an oracle annotator that answers from ground-truth masks."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import IGNORE_INDEX, Config
from ..engine.adjust import adjusted_class_map, click_log_prior
from ..engine.data import SegmentationFolder, resize_images
from ..engine.dense import grid_labels, grid_points, grid_shape
from ..engine.learner import ActiveLearner, Queries
from ..engine.metrics import confusion_matrix, iou_per_class, mean_iou, semantic_diversity, spatial_diversity
from ..engine.rounds import START, RoundPlan, Training
from ..engine.runtime import configure_torch
from ..engine.step import Pool, round_step
from ..engine.train import TrainResult, save_checkpoint
from .presets import METHODS

log = logging.getLogger(__name__)

DENSE_FROM_ROUND = 1
"""The round while which ``--dense-images`` masks arrive, as corrections do in the backend: the first masks are pushed
with round 1's query tasks (from the round-0 model), so corrected masks train from round 1's training on, and their
images are not queried again from round 2 on (round 1's tasks were already out)."""


def method_names(config: Config) -> list[str]:
    """Every shorthand whose settings a config has (``default`` and ``ovaal`` are the same design today)."""
    return [name for name, settings in METHODS.items() if all(getattr(config, k) == v for k, v in settings.items())]


def method_name(config: Config, asked: str | None = None) -> str:
    """The shorthand asked for when the config still matches it, else the first matching one, else a description."""
    names = method_names(config)
    if asked in names:
        return str(asked)
    if names:
        return names[0]
    return f"{config.classifier}+{config.selection}" + ("+semi" if config.semi else "")


class Oracle:
    """An annotator that answers every query from the ground truth; a void pixel is answered "void" (ignored)."""

    def __init__(self, labels: list[np.ndarray]) -> None:
        self.labels = labels

    def answer(self, image_index: int, queries: Queries) -> np.ndarray:
        """(n, 3) points (row, col, label) for the queried pixels."""
        labels = self.labels[image_index][queries.rows, queries.cols]
        labels = np.where(labels < 0, IGNORE_INDEX, labels)
        return np.stack([queries.rows, queries.cols, labels], 1).astype(np.int64)


SEMI_ABLATIONS: dict[str, dict[str, Any]] = {"paper": {"semi_rule": "paper", "semi_teacher": "frozen"},
                                             "unbalanced": {"semi_balance": 0.0}}
"""Other OVAAL+ final phases a simulation can run on the same rounds: ``paper`` = the paper's inversion rule with
pseudo-labels from the frozen model; ``unbalanced`` = the default rule with a plain (unweighted) semi loss."""


def select_images(folder: SegmentationFolder, limit: int = 0, prefixes: Sequence[str] = ()) -> list[int]:
    """Indices of the images whose file name starts with one of ``prefixes`` (all when empty), the first ``limit``.

    CamVid names its images by sequence (``0016E5_07959``), so prefixes give splits held out by sequence.
    """
    chosen = [i for i, key in enumerate(folder.keys) if not prefixes or key.startswith(tuple(prefixes))]
    if not chosen:
        raise ValueError(f"{folder.root}: no image name starts with {', '.join(prefixes)}")
    return chosen if limit <= 0 else chosen[:limit]


def _load_split(folder: SegmentationFolder, chosen: list[int], config: Config, desc: str, progress: bool):
    images, labels, sizes = [], [], []
    for i in tqdm(chosen, desc=f"load {desc}", disable=not progress, leave=False):
        image = folder.load_image(i)
        images.append(image)
        labels.append(folder.load_label(i))
        sizes.append(image.shape[:2])
    return resize_images(images, config.image_height, config.image_width), labels, sizes


def evaluate(learner: ActiveLearner, images: torch.Tensor, labels: list[np.ndarray],
             sizes: list[tuple[int, int]], batch: int = 8, log_prior: torch.Tensor | None = None,
             taus: Sequence[float] = (0.0,)) -> dict[float, torch.Tensor]:
    """Confusion matrices over a whole evaluation set, predicted at each image's original size, void ignored.

    One matrix per logit-adjustment strength in ``taus`` (0 = plain Winner-Takes-All), from one forward pass.
    """
    num = learner.num_classes
    prior = log_prior if log_prior is not None else torch.zeros(num)
    confusion = {tau: torch.zeros((num, num), dtype=torch.long) for tau in taus}
    for start in range(0, len(labels), batch):
        stop = min(start + batch, len(labels))
        same_size = len({sizes[i] for i in range(start, stop)}) == 1
        groups = [range(start, stop)] if same_size else [range(i, i + 1) for i in range(start, stop)]
        for group in groups:
            probabilities = learner.predict_probabilities(images[group.start:group.stop], sizes[group.start],
                                                          decision=True)
            target = torch.from_numpy(np.stack([labels[i] for i in group])).to(probabilities.device)
            for tau in taus:
                pred = adjusted_class_map(probabilities, learner.model.spec.decides_by_ova, prior, tau)
                confusion[tau] += confusion_matrix(pred, target, num).cpu()
    return confusion


def describe(confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU and per-class IoU (percent; None for a class absent from both prediction and truth)."""
    iou = iou_per_class(confusion)
    return {"miou": mean_iou(confusion),
            "per_class_iou": {c: (None if torch.isnan(v) else float(v) * 100) for c, v in zip(classes, iou)}}


def run_simulation(config: Config, train_dir: str | Path, eval_dir: str | Path, max_train: int = 0,
                   max_eval: int = 0, progress: bool = True,
                   on_round: Callable[[dict[str, Any]], None] | None = None, train_prefixes: Sequence[str] = (),
                   eval_prefixes: Sequence[str] = (), semi_ablations: Sequence[str] = (),
                   checkpoint: str | Path | None = None, logit_taus: Sequence[float] = (),
                   convergence_check: bool = False, method: str | None = None,
                   dense_images: int = 0) -> dict[str, Any]:
    """Run the whole loop: random round 0, then ``rounds`` acquisition rounds, then the final (OVAAL+) phase.

    ``train_prefixes`` / ``eval_prefixes`` keep only images whose names start with one of them (a split by sequence);
    ``semi_ablations`` (names of SEMI_ABLATIONS) run other OVAAL+ final phases on the same rounds; ``checkpoint``
    saves the learner after the last active round; ``logit_taus`` also measures every model with logit adjustment
    of those strengths (engine/adjust.py); ``convergence_check`` trains the final phase a second time, on the same
    labels, with twice its epochs; ``dense_images`` pool images (drawn by the seed) get their whole ground-truth mask
    as if an annotator had corrected the pushed mask (see DENSE_FROM_ROUND). Returns the RESULT.json dictionary (mIoU
    in percent); its ``pool`` entry measures the final model's dense masks on the pool images themselves (what the
    backend pushes to Label Studio).
    """
    for name in semi_ablations:
        if name not in SEMI_ABLATIONS:
            raise ValueError(f"unknown OVAAL+ ablation {name!r}: choose from {', '.join(SEMI_ABLATIONS)}")
    configure_torch(config)
    sim = Simulation(config, train_dir, eval_dir, (max_train, train_prefixes), (max_eval, eval_prefixes), progress,
                     dense_images)
    sim.on_round = on_round
    sim.taus = (0.0, *[float(t) for t in logit_taus if float(t) != 0.0])
    sim.extras = Extras(checkpoint, tuple(semi_ablations), convergence_check)
    sim.run()
    result = sim.result(train_prefixes, eval_prefixes)
    result["method"], result["is_default"] = method_name(config, method), "default" in method_names(config)
    result["pool"] = sim.measure_pool()
    if sim.double is not None:
        result["convergence"] = {"final_epochs": config.semi_epochs, "double_epochs": 2 * config.semi_epochs,
                                 "final_miou": result["rounds"][-1]["miou"], "double": sim.double}
    return result


@dataclass(frozen=True)
class Extras:
    """What a simulation measures besides its rounds, all from the last round's active model (before its final
    phase): ``checkpoint`` saves it; ``semi_ablations`` and ``convergence_check`` train paired final phases on
    copies of it (``Simulation.final_twin``)."""

    checkpoint: str | Path | None = None
    semi_ablations: tuple[str, ...] = ()
    convergence_check: bool = False


class Simulation:
    """One simulated loop: the pool with its oracle, the evaluation set, the learner and what each round measured."""

    def __init__(self, config: Config, train_dir: str | Path, eval_dir: str | Path,
                 train_subset: tuple[int, Sequence[str]], eval_subset: tuple[int, Sequence[str]],
                 progress: bool, dense_images: int = 0) -> None:
        train_folder, eval_folder = SegmentationFolder(train_dir), SegmentationFolder(eval_dir)
        self.classes = train_folder.info.classes
        if eval_folder.info.classes != self.classes:
            raise ValueError(f"{train_dir} and {eval_dir} list different classes")
        train_chosen = select_images(train_folder, *train_subset)
        eval_chosen = select_images(eval_folder, *eval_subset)
        if Path(train_dir).resolve() == Path(eval_dir).resolve() and set(train_chosen) & set(eval_chosen):
            raise ValueError("the training pool and the evaluation set share images: use disjoint prefixes")
        self.config, self.plan, self.progress = config, RoundPlan.from_config(config), progress
        self.images, labels, self.sizes = _load_split(train_folder, train_chosen, config, "train", progress)
        self.eval = _load_split(eval_folder, eval_chosen, config, "eval", progress)
        self.oracle = Oracle(labels)
        self.excluded = [label == IGNORE_INDEX for label in labels] if config.exclude_void else None
        self.points = [np.zeros((0, 3), dtype=np.int64) for _ in labels]
        if not 0 <= dense_images <= len(labels):
            raise ValueError(f"--dense-images {dense_images}: the pool has {len(labels)} images")
        chosen = np.random.default_rng(config.seed).permutation(len(labels))[:dense_images]  # nested across N
        self.dense = {int(i): _dense_points(labels[i], self.sizes[i], config, len(self.classes))
                      for i in sorted(chosen)}
        self.acquired: list[list[np.ndarray]] = [[] for _ in labels]
        self.rounds: list[dict[str, Any]] = []
        self.learner = ActiveLearner(config, len(self.classes))
        if self.learner.device.type == "cuda":  # resident on the GPU: batches are augmented there, never copied
            self.images = self.images.to(self.learner.device)
            self.eval = (self.eval[0].to(self.learner.device), *self.eval[1:])
        self.pool = Pool(self.images, self.sizes, self.points, excluded=self.excluded)  # dense maps from round 1
        self.on_round: Callable[[dict[str, Any]], None] | None = None
        self.taus: tuple[float, ...] = (0.0,)
        self.extras = Extras()
        self.double: dict[str, Any] | None = None
        self.without_semi: dict[str, Any] | None = None
        self.variants: dict[str, dict[str, Any]] = {}
        self.started = time.perf_counter()

    def _described(self, model: ActiveLearner, images: torch.Tensor, labels: list[np.ndarray],
                   sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """mIoU and per-class IoU of ``model`` on a set, plus each logit adjustment (prior from the clicks so far)."""
        prior = click_log_prior(self.points, len(self.classes))
        confusion = evaluate(model, images, labels, sizes, log_prior=prior, taus=self.taus)
        out = describe(confusion[0.0], self.classes)
        if len(self.taus) > 1:
            out["logit_adjusted"] = {str(tau): describe(confusion[tau], self.classes) for tau in self.taus[1:]}
        return out

    def measure_pool(self) -> dict[str, Any]:
        """The final model's dense masks on the pool images, against their ground truth (void ignored)."""
        return self._described(self.learner, self.images, self.oracle.labels, self.sizes)

    def measure(self, model: ActiveLearner, round_index: int, phase: str, train_seconds: float,
                select_seconds: float) -> dict[str, Any]:
        """Evaluate ``model`` and describe the round: labelled pixels so far, mIoU, per-class IoU, timings."""
        described = self._described(model, *self.eval)
        answered = sum(len(p) for p in self.points)
        total_pixels = sum(h * w for h, w in self.sizes)
        entry = {
            "round": round_index, "phase": phase,
            "labelled_pixels": answered, "labelled_pixels_per_image": answered / len(self.points),
            "labelled_fraction": answered / total_pixels,
            "void_answers": sum(int((p[:, 2] == IGNORE_INDEX).sum()) for p in self.points),
            "dense_images": len(self.pool.dense),
            **described,
            "train_seconds": train_seconds, "select_seconds": select_seconds,
            "elapsed_seconds": time.perf_counter() - self.started,
        }
        log.info("round %d (%s) | %.1f px/img (%.4f %%) | mIoU %.2f | train %.0f s | select %.0f s", round_index,
                 phase, entry["labelled_pixels_per_image"], 100 * entry["labelled_fraction"], entry["miou"],
                 train_seconds, select_seconds)
        return entry

    def record(self, round_index: int, phase: str, train_seconds: float, select_seconds: float) -> None:
        entry = self.measure(self.learner, round_index, phase, train_seconds, select_seconds)
        self.rounds.append(entry)
        if self.on_round:
            self.on_round(entry)

    def run(self) -> None:
        """Round 0's random picks, then per round: the oracle answers, and one step (``engine.step.round_step``, as
        the backend's round job) trains for the plan, measured after each training (``_trained``), and selects the
        next round's pixels."""
        step = round_step(self.learner, self.plan, START, self.pool)
        for round_index in range(self.plan.rounds + 1):
            self.answer(round_index, step.queries)
            if round_index >= DENSE_FROM_ROUND:
                self.pool.dense = self.dense
            step = round_step(self.learner, self.plan, round_index, self.pool, progress=self.progress,
                              on_trained=partial(self._trained, round_index, step.select_seconds))

    def answer(self, round_index: int, queries: dict[int, Queries]) -> None:
        """The oracle answers a round's queries: each asked image's clicks grow by its answers."""
        for i, q in queries.items():
            answers = self.oracle.answer(i, q)
            self.points[i] = np.concatenate([self.points[i], answers])
            if round_index > 0:
                self.acquired[i].append(answers)

    def _trained(self, round_index: int, select_seconds: float, training: Training, outcome: TrainResult) -> None:
        """Measure each training; the last round's active model is also saved and copied for the paired final
        phases (``Extras``) before its own final phase trains."""
        if training.final:
            self.record(self.plan.rounds + 1, "semi" if training.semi else "final", outcome.seconds, 0.0)
            return
        self.record(round_index, "active", outcome.seconds, select_seconds)
        if not self.plan.is_last(round_index):
            return
        if self.extras.checkpoint:
            save_checkpoint(self.extras.checkpoint, self.learner.state_dict())
        if self.extras.convergence_check:
            self.double = self.final_twin(False, {"semi_epochs": 2 * self.config.semi_epochs})
        if self.plan.has_final_phase(round_index) and self.plan.semi:  # OVAAL+ is also measured without its loss
            self.without_semi = self.final_twin(False, {})
            self.variants = {name: self.final_twin(True, SEMI_ABLATIONS[name]) for name in self.extras.semi_ablations}

    def final_twin(self, semi: bool, changes: dict[str, Any]) -> dict[str, Any]:
        """The final phase on a copy of the learner (identical weights and random state): a paired ablation."""
        twin = copy.deepcopy(self.learner)
        twin.config = self.config.replace(**changes)
        training = RoundPlan.from_config(twin.config).final_phase(semi)
        result = twin.train(self.images, self.pool.training_points(), self.sizes, training, progress=self.progress)
        return self.measure(twin, self.plan.rounds + 1, "semi" if semi else "final", result.seconds, 0.0)

    def result(self, train_prefixes: Sequence[str], eval_prefixes: Sequence[str]) -> dict[str, Any]:
        """The RESULT.json dictionary."""
        chosen = [np.concatenate(a) if a else np.zeros((0, 3), dtype=np.int64) for a in self.acquired]
        all_labels = np.concatenate([c[:, 2] for c in chosen]) if chosen else np.zeros(0, dtype=np.int64)
        return {
            "method": method_name(self.config), "config": self.config.to_dict(), "classes": list(self.classes),
            "train_images": len(self.points), "eval_images": len(self.eval[1]),
            "train_prefixes": list(train_prefixes), "eval_prefixes": list(eval_prefixes),
            "void_policy": "excluded from candidates (PixelPick)" if self.config.exclude_void
            else "queried, answered void, costs budget, trains nothing",
            "rounds": self.rounds,
            "diversity": {"spatial": spatial_diversity(chosen), "pixels": int(len(all_labels)),
                          "semantic": semantic_diversity(all_labels, len(self.classes))},
            "final_without_semi": self.without_semi, "semi_ablations": self.variants,
            "dense_images": len(self.dense), "dense_indices": sorted(self.dense), "dense_from_round": DENSE_FROM_ROUND,
            "device": str(self.learner.device), "total_seconds": time.perf_counter() - self.started,
        }


def _dense_points(label: np.ndarray, size: tuple[int, int], config: Config, num_classes: int) -> np.ndarray:
    """A pool image's whole ground truth as training points: one per cell of the training grid (void trains
    nothing), as the backend turns a corrected mask into dense labels."""
    shape = grid_shape(size, config.image_height, config.image_width, config.correction_points)
    return grid_points(grid_labels(label, *shape), size, num_classes)


def write_result(result: dict[str, Any], out: str | Path) -> None:
    """Write RESULT.json, creating its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def plot_results(results: list[dict[str, Any]], out: str | Path) -> None:
    """mIoU against labelled pixels per image, one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        xs = [r["labelled_pixels_per_image"] for r in result["rounds"]]
        ys = [r["miou"] for r in result["rounds"]]
        ax.plot(xs, ys, marker="o", label=f"{result['method']} (seed {result['config']['seed']})")
    ax.set_xlabel("labelled pixels per image")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
