"""Pixel selection, vectorised in torch (the same code on CPU and GPU).

Selectors take scores (from ``scorers.py``: higher means more informative) plus a candidate mask (False for
already-labelled pixels, and for pixels the caller excludes) and never return a non-candidate.
"""

from __future__ import annotations

import math

import torch


def select_top(scores: torch.Tensor, candidates: torch.Tensor, n: int, top_fraction: float = 0.0,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` highest-scoring candidate pixels of each image.

    With ``top_fraction`` > 0 this is PixelPick's diversity step: keep the most uncertain ``top_fraction`` of each
    image's pixels (at least ``n``), then draw ``n`` of them uniformly at random.

    Shape:
        scores (B, H, W) float, candidates (B, H, W) bool -> (indices (B, n) long into H*W, valid (B, n) bool).
        ``valid`` is False where an image has fewer than ``n`` candidates.
    """
    batch = scores.shape[0]
    flat = scores.reshape(batch, -1).float().masked_fill(~candidates.reshape(batch, -1), -math.inf)
    n = min(n, flat.shape[1])
    if top_fraction > 0:
        pool = min(flat.shape[1], max(n, math.ceil(top_fraction * flat.shape[1])))
        pool_scores, pool_index = flat.topk(pool, dim=1)
        draw = torch.rand(pool_scores.shape, generator=generator, device="cpu").to(flat.device)
        draw = draw.masked_fill(torch.isinf(pool_scores), -1.0)
        picked = draw.topk(n, dim=1).indices
        return pool_index.gather(1, picked), torch.isfinite(pool_scores.gather(1, picked))
    top_scores, index = flat.topk(n, dim=1)
    return index, torch.isfinite(top_scores)


def select_random(candidates: torch.Tensor, n: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` candidate pixels per image uniformly at random (cold start, and the random baseline)."""
    scores = torch.rand(candidates.shape, generator=generator, device="cpu").to(candidates.device)
    return select_top(scores, candidates, n)


def split_quota(n: int, num_classes: int, order: torch.Tensor, shares: torch.Tensor | None = None) -> list[int]:
    """Per-class pixel counts for ``n`` pixels: an even split, the remainder to the first classes of ``order``; or,
    given ``shares`` (C,) summing to 1, ``n * shares`` rounded down, the remainder to the largest fractions (ties
    in ``order``)."""
    if shares is None:
        quota = [n // num_classes] * num_classes
        for c in order[: n % num_classes].tolist():
            quota[c] += 1
        return quota
    exact = n * shares.double().cpu()
    quota = exact.floor().long().tolist()
    fraction = (exact - exact.floor())[order]
    ranked = order[torch.sort(fraction, descending=True, stable=True).indices]
    for c in ranked[: n - sum(quota)].tolist():
        quota[c] += 1
    return quota


def area_shares(class_map: torch.Tensor, num_classes: int, area: float) -> torch.Tensor:
    """Each class's share of a round's pixels: ``(1 - area) / C`` plus ``area`` times its share of ``class_map``'s
    predicted pixels, so ``area`` 0 is the paper's even split and 1 asks each class in proportion to its predicted
    area. Why: an even split gives a large class the same handful of clicks as a rare one, and out of sample the
    One-vs-All default lost large classes (issue 15). Shape: class_map (B, H, W) long -> (C,) summing to 1."""
    counts = torch.bincount(class_map.reshape(-1).cpu(), minlength=num_classes)[:num_classes].double()
    return (1 - area) / num_classes + area * counts / counts.sum().clamp(min=1)


def select_per_class(scores: torch.Tensor, candidates: torch.Tensor, n: int, top_fraction: float = 0.0,
                     generator: torch.Generator | None = None, shares: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OVAAL selection: each class's most uncertain pixels, ``n`` per image split evenly over the classes (or by
    ``shares``, see ``split_quota`` and ``area_shares``).

    A pixel is queried once. Classes take their picks in turn, in an order shuffled each call; a pixel already taken by
    an earlier class is skipped and that class takes its next most uncertain one, so every class gets its full quota
    of distinct pixels and no class is systematically favoured.

    ``top_fraction`` > 0 applies PixelPick's diversity step per class (see ``select_top``). Without it a class's picks
    are its strict arg-max pixels, which bunch: neighbours of one blob, and, while a binary classifier is still near
    0.5 everywhere, wherever tiny numeric differences win, which on CamVid was the image border (62 % of round-1
    picks within 4 px of the edge, against 9 % with a 5 % pool: benchmarks/border_picks.py).

    Shape:
        scores (B, C, H, W), candidates (B, H, W) bool -> indices (B, n) into H*W, query class (B, n), valid (B, n).
    """
    batch, num_classes = scores.shape[:2]
    available = candidates.reshape(batch, -1).clone()
    order = torch.randperm(num_classes, generator=generator)
    quota = split_quota(n, num_classes, order, shares)
    indices, classes, valid = [], [], []
    for c in order.tolist():
        if quota[c] == 0:
            continue
        index, ok = select_top(scores[:, c], available.reshape(candidates.shape), quota[c], top_fraction, generator)
        available.scatter_(1, index, torch.zeros_like(ok))
        indices.append(index)
        classes.append(torch.full_like(index, c))
        valid.append(ok)
    return torch.cat(indices, 1), torch.cat(classes, 1), torch.cat(valid, 1)
