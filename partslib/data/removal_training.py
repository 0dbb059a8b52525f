"""In-domain removal training: SynthParts training images with labels removed, and the classes
still consistent with what remains (FunnyBirds' ``--multi_target`` recipe).

A classifier trained on intact objects only never sees one with a part missing, so even the exact
re-render "without part p" is outside its training distribution. FunnyBirds (Hesse et al., ICCV
2023) re-renders a share of its training images with parts removed and spreads the loss over
every class the remaining parts are still consistent with. Here:

* **Which images.** ``round(fraction * N)`` training images, drawn without replacement, are
  replaced by a re-rendering of the *same* scene (:meth:`SynthPartsConfig.render`) without a
  random non-empty subset of its labels: ``k`` uniform in ``1..L-1`` (``L = P + 1`` labels),
  then ``k`` labels uniform among the background (id 0: flat grey, no texture, no distractors)
  and the parts ``1..P``, so at least one label always remains. When the background stays,
  each of its distractors is removed as well with probability 1/2 (``distractors=True``).
  Everything is drawn up front from ``numpy.random.default_rng([seed, split seed, 7])``: the
  same seed and split give the identical training set.
* **Which classes.** Class ``k`` is ruled out only by a part of its signature that is *shown*
  (not removed and visible in the re-rendered mask) with another pattern than ``k`` puts there;
  removed signature parts rule nothing out (:func:`consistent_classes`). The true class is
  always consistent. Intact images keep their one class.
* **The loss.** Cross-entropy against the uniform soft target over the consistent set,
  ``-sum_k t_k log softmax(z)_k`` with ``t_k = 1/|S|`` for ``k`` in ``S`` (not
  ``-log sum_{k in S} p_k``): it asks for equal probability on every consistent class, and is
  plain cross-entropy when every set has one class (:func:`soft_cross_entropy`).

**Which ground truth describes such a model.** Trained this way, a classifier learns to *rule
classes out* by the parts that remain, so the generator's decisive parts (the class signature)
no longer say which parts it needs. What does: the minimal sets of shown parts that leave only
the class consistent (:func:`sufficient_sets`; on the ``funnybirds`` table, where every class
names every part, these are FunnyBirds' minimal sufficient part sets, the ground truth of CSDC;
on the default table, where classes leave parts free, a class is singled out by the nuisance
patterns of the other classes' parts: class ``stripes-head`` by body, tail and wing, not by its
head). :func:`ground_truth` names the one that applies to a classifier.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from partslib.data.split import Split
from partslib.data.synthparts import SynthParts, SynthPartsConfig

__all__ = [
    "GROUND_TRUTHS",
    "REMOVAL_VERSION",
    "RemovalSet",
    "consistent_classes",
    "filled_training_set",
    "ground_truth",
    "removal_option",
    "removal_training_set",
    "soft_cross_entropy",
    "sufficient_matrix",
    "sufficient_sets",
]

#: bump when the drawing of the removal set changes, so checkpoints trained on another are not
#: reused (it is part of the classifier checkpoint's configuration)
REMOVAL_VERSION = 1


def consistent_classes(signatures: Sequence[Sequence[tuple[str, str]]],
                       shown: Mapping[str, str]) -> torch.Tensor:
    """Bool ``[K]``: the classes still consistent with the parts an image shows.

    Args:
        signatures: the class table, one sequence of ``(part, pattern)`` pairs per class
            (``SynthPartsConfig.signatures``).
        shown: ``{part: pattern}`` of the parts the image shows (present and visible); parts
            left out are removed (or hidden) and rule nothing out.

    Class ``k`` is ruled out only when a part of its signature is shown with another pattern.
    """
    return torch.tensor([all(shown.get(part, pattern) == pattern for part, pattern in sig)
                         for sig in signatures], dtype=torch.bool)


def _shown_by_class(cfg: SynthPartsConfig, k: int, parts: Sequence[str]) -> dict[str, str]:
    """What an intact sample of class ``k`` shows on ``parts``: its signature pattern, or a
    nuisance pattern (never a signature pattern of that part; written ``"nuisance"``)."""
    sig = dict(cfg.signatures[k])
    return {part: sig.get(part, "nuisance") for part in parts}


def sufficient_sets(cfg: SynthPartsConfig) -> list[list[tuple[str, ...]]]:
    """Per class, the minimal sets of parts whose patterns, shown alone, leave only that class
    consistent (:func:`consistent_classes`); the ground truth of a classifier trained with
    removal. On a table where every class names every part (``funnybirds``) these equal
    :meth:`SynthPartsConfig.minimal_sufficient_sets`. A class that even all its parts do not
    single out gets no set."""
    out: list[list[tuple[str, ...]]] = []
    for k in range(cfg.num_classes):
        found: list[tuple[str, ...]] = []
        for r in range(1, cfg.num_parts + 1):
            for subset in itertools.combinations(cfg.parts, r):
                if any(set(f) <= set(subset) for f in found):
                    continue
                ok = consistent_classes(cfg.signatures, _shown_by_class(cfg, k, subset))
                if int(ok.sum()) == 1:
                    found.append(subset)
        out.append(found)
    return out


def sufficient_matrix(cfg: SynthPartsConfig) -> torch.Tensor:
    """Bool ``[num_classes, P+1]``: ``[k, p]`` is True when part p belongs to a minimal
    sufficient set of class k (:func:`sufficient_sets`); the background never does. Index it
    with a split's labels for the ``decisive`` argument of T2
    (:func:`partslib.studies.validity.run_validity`)."""
    m = torch.zeros(cfg.num_classes, cfg.num_parts + 1, dtype=torch.bool)
    for k, sets in enumerate(sufficient_sets(cfg)):
        for subset in sets:
            m[k, [cfg.parts.index(part) + 1 for part in subset]] = True
    return m


#: the two ground truths of which parts a class needs, by name
GROUND_TRUTHS = {
    "decisive": "the generator's decisive parts (each class's signature): what a classifier "
                "trained on intact images relies on; removing one should change the class "
                "score most",
    "sufficient": "the minimal sufficient part sets under the consistent-class rule (as "
                  "FunnyBirds' CSDC): a classifier trained with parts removed rules classes "
                  "out by the parts that remain, so the parts that single a class out are "
                  "the ones that matter",
}


def ground_truth(removal: Mapping[str, Any] | None) -> str:
    """``"decisive"`` for a classifier trained on intact images (``removal`` ``None``),
    ``"sufficient"`` for one trained with removal (its checkpoint's ``removal`` record,
    :func:`removal_option`); :data:`GROUND_TRUTHS` describes each."""
    return "sufficient" if removal else "decisive"


def removal_option(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The in-domain removal record of a classifier checkpoint (``fraction``, ``distractors``,
    ``version``), or ``None`` when it was trained on intact images only."""
    from partslib.training import load_checkpoint

    return load_checkpoint(Path(checkpoint), kind="classifier")["config"]["model"].get("removal")


@dataclass(frozen=True, eq=False)
class RemovalSet:
    """A training split with a share of its images re-rendered without some labels.

    Attributes:
        images: uint8 ``[N,3,H,W]``, the split's images with the altered ones replaced.
        targets: float ``[N,K]``, uniform over each image's consistent classes (one-hot for an
            intact image); rows sum to 1.
        removed: bool ``[N,P+1]``, the labels removed from each image (0 = background).
        altered: bool ``[N]``, the images that were re-rendered.
        info: what identifies the set (JSON-able; for the checkpoint configuration).
    """

    images: torch.Tensor
    targets: torch.Tensor
    removed: torch.Tensor
    altered: torch.Tensor
    info: dict[str, Any]

    def summary(self) -> dict[str, float]:
        """``removal_images`` (altered images), ``removal_mean_labels_removed`` and
        ``removal_mean_consistent`` (mean size of the consistent set) over the altered ones."""
        alt = self.altered
        n = int(alt.sum())
        sizes = (self.targets[alt] > 0).sum(1).float()
        return {"removal_images": n,
                "removal_mean_labels_removed": float(self.removed[alt].sum(1).float().mean())
                if n else 0.0,
                "removal_mean_consistent": float(sizes.mean()) if n else 0.0}


def removal_training_set(data: SynthParts | Split, fraction: float, seed: int = 0,
                         distractors: bool = True, operator: Any = None) -> RemovalSet:
    """Re-render ``round(fraction * len(data))`` images of ``data`` without a random non-empty
    subset of labels (the module docstring gives the draws) and give each its consistent set.

    Args:
        data: a SynthParts split (re-rendered), or any other split with part masks (real
            photos: :func:`filled_training_set`, the removed parts filled by ``operator``, the
            class kept).
        fraction: share of the images re-rendered, in ``[0, 1]``.
        seed: seed of the draws (which images, which labels, which distractors).
        distractors: also remove each distractor with probability 1/2 when the background
            stays (SynthParts).
        operator: the removal operator of other splits (default
            :class:`~partslib.removal.BackgroundFill`); SynthParts is re-rendered.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if not isinstance(data, SynthParts):
        if not isinstance(data, Split):
            raise TypeError(f"removal training (removal_fraction > 0) needs a SynthParts split "
                            f"or a Split with part masks, got {type(data).__name__}")
        return filled_training_set(data, fraction, seed=seed, operator=operator)
    cfg, n = data.cfg, len(data)
    L, K = cfg.num_parts + 1, cfg.num_classes
    rng = np.random.default_rng([int(seed), int(data.seed), 7])
    chosen = np.sort(rng.choice(n, size=round(fraction * n), replace=False))
    images = data.images.clone()
    targets = nn.functional.one_hot(data.labels, K).float()
    removed = torch.zeros(n, L, dtype=torch.bool)
    altered = torch.zeros(n, dtype=torch.bool)
    for i in chosen.tolist():
        label = int(data.labels[i])
        drop = rng.choice(L, size=int(rng.integers(1, L)), replace=False).tolist()
        drop_d: list[int] = []
        if distractors and 0 not in drop:
            n_dis = cfg.num_distractors(data.seed, i, label)
            drop_d = np.flatnonzero(rng.random(n_dis) < 0.5).tolist()
        smp = cfg.render(data.seed, i, label=label, drop_parts=drop, drop_distractors=drop_d)
        visible = set(np.unique(smp.mask).tolist())
        patterns = cfg.part_patterns(data.seed, i, label)
        shown = {part: patterns[part] for p, part in enumerate(cfg.parts, start=1)
                 if p in visible}
        ok = consistent_classes(cfg.signatures, shown)
        if not ok[label]:  # the generator draws the class's own patterns: cannot happen
            raise AssertionError(f"sample {i}: its class {label} is not consistent with {shown}")
        images[i] = torch.from_numpy(smp.image).permute(2, 0, 1)
        targets[i] = ok.float() / ok.sum()
        removed[i, drop] = True
        altered[i] = True
    info = {"fraction": float(fraction), "seed": int(seed), "distractors": bool(distractors),
            "version": REMOVAL_VERSION}
    return RemovalSet(images=images, targets=targets, removed=removed, altered=altered,
                      info=info)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``-sum_k w_k t_k log softmax(logits)_k``.

    ``targets``: float ``[B,K]`` rows summing to 1 (uniform over the consistent classes), or
    int64 ``[B]`` class indices (then plain cross-entropy). ``weight``: optional per-class
    weights; with soft targets the mean is over the batch (``torch``'s rule for probability
    targets), not over the weights as for class indices.
    """
    if targets.dim() == 1:
        return nn.functional.cross_entropy(logits, targets, weight=weight)
    if targets.shape != logits.shape:
        raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(targets.shape)}")
    return nn.functional.cross_entropy(logits, targets, weight=weight)


def filled_training_set(data: Split, fraction: float, seed: int = 0, operator: Any = None,
                        batch_size: int = 64) -> RemovalSet:
    """In-domain removal training for data that cannot be re-rendered (real photos).

    ``round(fraction * N)`` images, drawn without replacement, lose a random non-empty subset
    of the labels their ground-truth mask shows: ``k`` uniform in ``1..n-1`` of the ``n``
    labels present (background included; unannotated pixels, 255, are never removed), filled
    by ``operator`` (default :class:`~partslib.removal.BackgroundFill`, the game the amortised
    rule learns on photos: removed parts inpainted from the kept background, a removed
    background flat grey). There is no class table to say which classes remain consistent,
    so an altered image keeps its own class (one-hot target): the classifier learns that a
    car seen from the front is still seen from the front when its bumper is gone. Draws come
    from ``numpy.random.default_rng([seed, N, 11])``.
    """
    from partslib.removal import BackgroundFill

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    operator = BackgroundFill() if operator is None else operator
    n, L, K = len(data), len(data.part_names), len(data.class_names)
    rng = np.random.default_rng([int(seed), n, 11])
    chosen = np.sort(rng.choice(n, size=round(fraction * n), replace=False))
    removed = torch.zeros(n, L, dtype=torch.bool)
    for i in chosen.tolist():
        shown = [int(v) for v in torch.unique(data.masks[i]).tolist() if 0 <= v < L]
        if len(shown) < 2:
            continue  # nothing can be removed with one label left
        drop = rng.choice(shown, size=int(rng.integers(1, len(shown))), replace=False)
        removed[i, drop.tolist()] = True
    altered = removed.any(1)
    images = data.images.clone()
    idx = torch.nonzero(altered).flatten()
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        x = data.images[b].float() / 255
        y = operator(x, data.masks[b].long(), removed[b])
        images[b] = (y * 255).round().clamp(0, 255).to(torch.uint8)
    targets = nn.functional.one_hot(data.labels, K).float()
    info = {"fraction": float(fraction), "seed": int(seed), "version": REMOVAL_VERSION,
            "operator": getattr(operator, "name", type(operator).__name__)}
    return RemovalSet(images=images, targets=targets, removed=removed, altered=altered,
                      info=info)
