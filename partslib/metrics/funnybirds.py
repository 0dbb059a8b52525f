"""The FunnyBirds checks as pure functions over callables and tensors.

FunnyBirds (Hesse, Schaub-Meyer, Roth, ICCV 2023, https://arxiv.org/abs/2308.06248; code
``visinf/funnybirds-framework``, Apache-2.0) checks part-level explanations on images that can
be rendered again with any parts or background objects removed. This module follows its
``evaluation_protocols.py`` and ``explainers/explainer_wrapper.py``; where it departs, the
docstring says so. :mod:`partslib.metrics.funnybirds_protocol` runs all seven checks,
chooses the threshold and aggregates Com / Cor / Con.

Conventions (as in :mod:`partslib.metrics.validity`): part columns ``0..P`` with column 0 the
background and ``1..P`` the foreground parts; ``D`` background objects ("distractors") per image
at most, ``distractor_present`` ``[M,D]`` bool says which slots an image has. The caller gives

* ``predict(image_indices [M], drop_parts bool [M,P+1], drop_distractors bool [M,D])
  -> logits [M,K]``: re-renders image ``image_indices[m]`` without the flagged parts and
  background objects and classifies it (dropping nothing must give the original image);
* ``importance(image_indices [M], targets [M]) -> PartImportance``: the explanation of each
  image for each target class, as one number per part (and per background object).

**Which parts are important at threshold t** (:func:`important_parts`): those whose importance
exceeds ``t · total``, with ``total`` the *signed sum of the whole attribution*, as the
FunnyBirds wrapper compares with ``attribution.sum()``. For part-level contributions the default
``total`` is the signed sum over all ``P+1`` columns, background included (the analogue of the
whole map: background objects lie inside the background, so their importances are not added
again; a rule's bias is not part of it). A caller with a pixel attribution passes its sum.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from partslib.constants import INFERENCE_BATCH
from partslib.metrics._checks import spearman

__all__ = [
    "RELEVANCE",
    "THRESHOLDS",
    "ClassTable",
    "ImportanceFn",
    "PartImportance",
    "PredictFn",
    "SingleRemovals",
    "background_independence",
    "class_distance",
    "controlled_synthetic_data_check",
    "deletion_check",
    "distractibility",
    "explain_in_batches",
    "important_parts",
    "minimal_sufficient_part_sets",
    "precomputed_importance",
    "predict_unique",
    "preservation_check",
    "shared_parts",
    "single_deletion",
    "single_removals",
]

# 80 thresholds, as ``AbstractExplainer.get_p_thresholds``
THRESHOLDS = torch.from_numpy(np.linspace(0.01, 0.50, num=80))
# a removal that lowers the target logit by less than 5% of it leaves the part "irrelevant"
RELEVANCE = 0.05

ClassTable = Sequence[Mapping[Any, Any]]  # class k -> {part: variant}, hashable both
PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PartImportance:
    """Importances of one explanation per image.

    Attributes:
        parts: ``[M,P+1]`` float, column 0 the background.
        distractors: ``[M,D]`` float, one per background object (``None``: not given; the
            distractibility check then refuses to run).
        total: ``[M]`` the "whole attribution" the thresholds scale; ``None``: ``parts.sum(1)``.
    """

    parts: torch.Tensor
    distractors: torch.Tensor | None = None
    total: torch.Tensor | None = None

    def __post_init__(self) -> None:
        p = self.parts
        if not isinstance(p, torch.Tensor) or p.dim() != 2 or not p.is_floating_point():
            raise ValueError(f"PartImportance.parts must be a float [M,P+1] tensor, got "
                             f"{getattr(p, 'dtype', type(p))} of shape "
                             f"{tuple(getattr(p, 'shape', ()))}")
        d = self.distractors
        if d is not None and (d.dim() != 2 or d.shape[0] != p.shape[0]):
            raise ValueError(f"PartImportance.distractors must be [M,D] with M={p.shape[0]}, "
                             f"got shape {tuple(d.shape)}")
        t = self.total
        if t is not None and tuple(t.shape) != (p.shape[0],):
            raise ValueError(f"PartImportance.total must be [M] with M={p.shape[0]}, got "
                             f"shape {tuple(t.shape)}")

    def whole(self) -> torch.Tensor:
        """``[M]`` the total the thresholds scale (``total``, else the signed column sum)."""
        return self.parts.sum(1) if self.total is None else self.total


ImportanceFn = Callable[[torch.Tensor, torch.Tensor], PartImportance]


def explain_in_batches(importance: ImportanceFn, image_indices: torch.Tensor,
                       targets: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> PartImportance:
    """``importance`` over ``batch_size`` images at a time, concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [importance(image_indices[s:s + batch_size], targets[s:s + batch_size])
              for s in range(0, image_indices.shape[0], batch_size)]
    if not chunks:
        raise ValueError("image_indices is empty: nothing to explain")
    parts = torch.cat([c.parts.detach() for c in chunks])
    dis = None if any(c.distractors is None for c in chunks) else \
        torch.cat([c.distractors.detach() for c in chunks if c.distractors is not None])
    total = None if any(c.total is None for c in chunks) else \
        torch.cat([c.total.detach() for c in chunks if c.total is not None])
    return PartImportance(parts, dis, total)


def precomputed_importance(parts: torch.Tensor, distractors: torch.Tensor | None = None,
                           total: torch.Tensor | None = None) -> ImportanceFn:
    """An ``importance`` callable reading precomputed tensors.

    Args:
        parts: ``[N,K,P+1]`` importance of every part of image ``n`` for class ``k``.
        distractors: ``[N,K,D]`` or ``None``.
        total: ``[N,K]`` or ``None`` (the signed column sum).
    """
    if parts.dim() != 3:
        raise ValueError(f"parts must be [N,K,P+1], got shape {tuple(parts.shape)}")

    def importance(image_indices: torch.Tensor, targets: torch.Tensor) -> PartImportance:
        i, k = image_indices.long(), targets.long()
        return PartImportance(parts[i, k],
                              None if distractors is None else distractors[i, k],
                              None if total is None else total[i, k])

    return importance


# ------------------------------------------------------------------------------ class table

def _attributes(row: Mapping[Any, Any]) -> set[tuple[Any, Any]]:
    return {(part, variant) for part, variant in row.items() if variant is not None}


def minimal_sufficient_part_sets(class_table: ClassTable) -> list[list[frozenset]]:
    """The minimal sets of parts that single each class out from all others.

    A set ``S`` of class ``k``'s parts is *sufficient* when no other class shows all of them
    with the same variants; it is *minimal* when no strict subset is sufficient (inclusion-
    minimal, as ``FunnyBirds.get_minimal_sufficient_part_sets``, not only the smallest). A part
    missing from a row (or ``None``) is one the class never shows with a fixed variant, so it
    never matches. Unlike the FunnyBirds code, the last class of the table gets its sets too.

    Args:
        class_table: one mapping ``{part: variant}`` per class.

    Returns:
        per class, a list of frozensets of parts (empty when the class cannot be singled out).
    """
    attrs = [_attributes(row) for row in class_table]
    if len(attrs) < 2:
        raise ValueError(f"class_table needs at least 2 classes, got {len(attrs)}")
    out: list[list[frozenset]] = []
    for k, own in enumerate(attrs):
        others = [a for j, a in enumerate(attrs) if j != k]
        minimal: list[frozenset] = []
        for size in range(1, len(own) + 1):  # increasing size: supersets of a found set skip
            for subset in itertools.combinations(sorted(own, key=repr), size):
                s = frozenset(subset)
                if any(m <= s for m in minimal) or any(s <= o for o in others):
                    continue
                minimal.append(s)
        out.append([frozenset(part for part, _ in m) for m in minimal])
    return out


def shared_parts(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> set:
    """Parts both classes show with the same variant."""
    return {part for part, v in _attributes(a) if b.get(part) == v}


def class_distance(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> int:
    """Number of parts on which two classes differ (a part fixed in one only counts)."""
    parts = {p for p, v in a.items() if v is not None} | {p for p, v in b.items() if v is not None}
    return len(parts) - len(shared_parts(a, b))


# ------------------------------------------------------------------------------ prediction

def predict_unique(predict: PredictFn, image_indices: torch.Tensor, drop_parts: torch.Tensor,
                   drop_distractors: torch.Tensor, batch_size: int = INFERENCE_BATCH
                   ) -> torch.Tensor:
    """``predict`` on each distinct (image, dropped parts, dropped distractors) row once, in
    batches of ``batch_size``; returns logits ``[M,K]`` for all ``M`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    M = image_indices.shape[0]
    if drop_parts.shape[0] != M or drop_distractors.shape[0] != M:
        raise ValueError(f"image_indices, drop_parts and drop_distractors need the same rows, "
                         f"got {M}, {drop_parts.shape[0]}, {drop_distractors.shape[0]}")
    if M == 0:
        raise ValueError("predict_unique got no rows (image_indices is empty)")
    key = torch.cat([image_indices.long()[:, None], drop_parts.long(),
                     drop_distractors.long()], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    P1 = drop_parts.shape[1]
    outs = []
    for s in range(0, uniq.shape[0], batch_size):
        u = uniq[s:s + batch_size]
        outs.append(predict(u[:, 0], u[:, 1:1 + P1].bool(), u[:, 1 + P1:].bool()).detach())
    logits = torch.cat(outs).double()
    return logits[inverse]


@dataclass(frozen=True)
class SingleRemovals:
    """Target logits with one part or one background object removed.

    Attributes:
        base: ``[M,K]`` logits of the intact images.
        targets: ``[M]`` the class the scores are read for.
        parts: ``[M,P+1]`` target logit with part ``p`` removed alone (column 0: background).
        distractors: ``[M,D]`` target logit with background object ``d`` removed; NaN where the
            image has no object ``d``.
    """

    base: torch.Tensor
    targets: torch.Tensor
    parts: torch.Tensor
    distractors: torch.Tensor

    @property
    def score(self) -> torch.Tensor:
        """``[M]`` target logit of the intact image."""
        return self.base.gather(1, self.targets[:, None])[:, 0]

    def irrelevant(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(parts [M,P+1], distractors [M,D])`` bool: removing it alone lowers the target
        logit by less than 5% of it, or raises it (FunnyBirds' distractibility); column 0 of
        parts is False (the background is no FunnyBirds part)."""
        s = self.score[:, None]
        tol = (s * RELEVANCE).abs()

        def low(after: torch.Tensor) -> torch.Tensor:
            return ((s - after).abs() < tol) | (s < after)

        parts = low(self.parts)
        parts[:, 0] = False
        return parts, low(self.distractors) & ~self.distractors.isnan()


def single_removals(predict: PredictFn, image_indices: torch.Tensor, targets: torch.Tensor,
                    num_parts: int, distractor_present: torch.Tensor,
                    batch_size: int = INFERENCE_BATCH
                    ) -> SingleRemovals:
    """Classify each image intact, without each part alone and without each background
    object alone (one ``predict`` row per intervention)."""
    M, D = distractor_present.shape
    if image_indices.shape != (M,) or targets.shape != (M,):
        raise ValueError(f"image_indices and targets must be [M] with M={M} (rows of "
                         f"distractor_present), got {tuple(image_indices.shape)} and "
                         f"{tuple(targets.shape)}")
    L = num_parts + 1
    eye_p = torch.eye(L, dtype=torch.bool)
    eye_d = torch.eye(D, dtype=torch.bool)
    # rows per image: intact, each part alone, each distractor alone
    drop_p = torch.cat([torch.zeros(1, L, dtype=torch.bool), eye_p,
                        torch.zeros(D, L, dtype=torch.bool)])
    drop_d = torch.cat([torch.zeros(1 + L, D, dtype=torch.bool), eye_d])
    R = drop_p.shape[0]
    logits = predict_unique(predict, image_indices.repeat_interleave(R), drop_p.repeat(M, 1),
                            drop_d.repeat(M, 1), batch_size).reshape(M, R, -1)
    t = targets.long()
    score = logits[torch.arange(M), :, t]  # [M,R] target logit per row
    dis = score[:, 1 + L:].clone()
    dis[~distractor_present] = float("nan")
    return SingleRemovals(logits[:, 0], t, score[:, 1:1 + L], dis)


# ------------------------------------------------------------------------------ thresholds

def important_parts(importance: PartImportance, thresholds: torch.Tensor = THRESHOLDS
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parts (and background objects) whose importance exceeds ``t · total`` at each t.

    Returns:
        ``(parts [M,T,P+1], distractors [M,T,D] or None)`` bool; column 0 of parts is False
        (FunnyBirds' parts are the foreground parts).
    """
    cut = importance.whole().double()[:, None] * thresholds.double()[None, :]  # [M,T]
    parts = importance.parts.double()[:, None, :] > cut[:, :, None]
    parts[:, :, 0] = False
    d = importance.distractors
    return parts, None if d is None else d.double()[:, None, :] > cut[:, :, None]


# ------------------------------------------------------------------------------ the checks

def controlled_synthetic_data_check(important: torch.Tensor, targets: torch.Tensor,
                                    correct: torch.Tensor,
                                    sufficient_sets: Sequence[Sequence[frozenset]]
                                    ) -> torch.Tensor:
    """CSDC per threshold: over correctly classified images, the best share of a minimal
    sufficient part set of the target class that is marked important.

    Args:
        important: ``[M,T,P+1]`` bool (:func:`important_parts` for the target class).
        targets: ``[M]`` true classes; correct: ``[M]`` bool.
        sufficient_sets: per class, sets of part ids ``1..P``
            (:func:`minimal_sufficient_part_sets` of a table keyed by part id).

    Returns:
        ``[T]``; NaN when no image is correctly classified.
    """
    M, T, _ = important.shape
    scores = torch.zeros(M, T, dtype=torch.float64)
    for m in range(M):
        for s in sufficient_sets[int(targets[m])]:
            ids = torch.tensor(sorted(s), dtype=torch.long)
            share = important[m][:, ids].double().mean(1)
            scores[m] = torch.maximum(scores[m], share)
    if not bool(correct.any()):
        return torch.full((T,), float("nan"), dtype=torch.float64)
    return scores[correct].mean(0)


def _keep_or_drop(predict: PredictFn, image_indices: torch.Tensor, drop: torch.Tensor,
                  num_distractors: int, batch_size: int) -> torch.Tensor:
    """``[M,T]`` predicted class after dropping ``drop [M,T,P+1]`` (foreground only)."""
    M, T, L = drop.shape
    logits = predict_unique(predict, image_indices.repeat_interleave(T), drop.reshape(M * T, L),
                            torch.zeros(M * T, num_distractors, dtype=torch.bool), batch_size)
    return logits.argmax(1).reshape(M, T)


def preservation_check(predict: PredictFn, image_indices: torch.Tensor, important: torch.Tensor,
                       predicted: torch.Tensor, num_distractors: int,
                       batch_size: int = INFERENCE_BATCH
                       ) -> torch.Tensor:
    """PC per threshold ``[T]``: share of images whose prediction survives removing every
    foreground part *not* marked important (``important`` for the predicted class)."""
    drop = ~important
    drop[:, :, 0] = False
    after = _keep_or_drop(predict, image_indices, drop, num_distractors, batch_size)
    return (after == predicted[:, None]).double().mean(0)


def deletion_check(predict: PredictFn, image_indices: torch.Tensor, important: torch.Tensor,
                   predicted: torch.Tensor, num_distractors: int, batch_size: int = INFERENCE_BATCH
                   ) -> torch.Tensor:
    """DC per threshold ``[T]``: share of images whose prediction changes when the parts
    marked important (for the predicted class) are removed."""
    after = _keep_or_drop(predict, image_indices, important, num_distractors, batch_size)
    return (after != predicted[:, None]).double().mean(0)


def distractibility(removals: SingleRemovals, important: torch.Tensor,
                    important_distractors: torch.Tensor) -> tuple[torch.Tensor, int]:
    """D per threshold: ``1 −`` mean share of the irrelevant parts and background objects
    (:meth:`SingleRemovals.irrelevant`) that the explanation marks important; images without
    an irrelevant one are skipped (all skipped: 1, as FunnyBirds).

    Returns:
        ``(D [T], number of images scored)``.
    """
    irr_p, irr_d = removals.irrelevant()
    n_irr = irr_p.sum(1) + irr_d.sum(1)  # [M]
    valid = n_irr > 0
    hit = ((important & irr_p[:, None, :]).sum(2)
           + (important_distractors & irr_d[:, None, :]).sum(2))  # [M,T]
    share = hit[valid].double() / n_irr[valid, None].double()
    n = int(valid.sum())
    return 1.0 - share.sum(0) / (n + 1e-8), n


def background_independence(removals: SingleRemovals) -> float:
    """BI (a model property): share of all background objects whose removal does *not* lower
    the target logit by at least 5% of it. NaN when no image has a background object."""
    s = removals.score[:, None]
    after = removals.distractors
    present = ~after.isnan()
    relevant = ((s - after).abs() >= (s * RELEVANCE).abs()) & (s > after) & present
    total = int(present.sum())
    return float("nan") if total == 0 else 1.0 - int(relevant.sum()) / total


def single_deletion(removals: SingleRemovals, importance: torch.Tensor,
                    parts: Sequence[int]) -> tuple[float, int]:
    """SD: per image, Spearman ρ between the importances of ``parts`` and the target-logit
    drops when each is removed alone; mean of ``0.5ρ + 0.5`` over images with a defined ρ.

    FunnyBirds uses the foreground parts (``parts = 1..P``); include 0 for the background as
    a part.

    Returns:
        ``(SD, number of images with a defined ρ)``; SD is NaN when there is none.
    """
    ids = torch.tensor(list(parts), dtype=torch.long)
    drops = removals.score[:, None] - removals.parts[:, ids]
    rho = [spearman(drops[m], importance[m, ids]) for m in range(drops.shape[0])]
    ok = [0.5 * r + 0.5 for r in rho if not np.isnan(r)]
    return (float(np.mean(ok)) if ok else float("nan")), len(ok)
