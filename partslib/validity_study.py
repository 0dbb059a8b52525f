"""Table T2 (SPEC §5, §7): are the quantitative part explanations valid? V1–V5 for every method.

This module composes the model-agnostic metrics of :mod:`partslib.metrics.validity` with the
concrete explainers of the study and the removal operators of :mod:`partslib.removal`.

**Explainers** (:data:`METHODS`, built by :func:`build_explainers`). Each is a callable
``(images [B,3,H,W], targets [B], keys or None) -> Claim`` whose ``contributions`` are
``[B,P+1]`` (column 0 = background):

* ``pdm-region-soft`` / ``pdm-region-hard`` -- SPEC §4 region rule, ``c_p = mean_u π_p(u)
  CAM_k(u)``, π from the PDM's probabilities / argmax (complete: ``b_k + Σ c_p = logit_k``).
* ``pdm-occlusion`` -- each PDM part (argmax map) filled with the Gaussian blur (kernel 11, σ 5),
  ``c_p`` = drop of the logit.
* ``pdm-region-soft-contrastive`` / ``pdm-occlusion-contrastive`` -- the same on the margin
  ``logit_k − logit_j`` against the runner-up class j.
* ``pdm-basis`` and ``ibd`` -- IBD's basis rule in logit units
  (:attr:`partslib.baselines.IBDContributions.logit_contributions`). The basis rule reads no
  map, so these two rows carry **the same contribution numbers**: in the 2×2 ablation the
  (PDM, basis) cell equals the (linear, basis) cell. They differ only in the map drawn (V5).
* ``ibd-linear-region`` -- the region rule on IBD's linear 1×1 concept maps (softmax over the
  bilinearly upsampled scores), completing the 2×2: {linear, PDM maps} × {basis, region rule}.
* ``gradcam-mass`` -- pytorch-grad-cam's Grad-CAM of the final stage; ``c_p`` = share of its
  positive mass inside PDM part p (units: share of the map, not logits).
* ``random`` -- :class:`partslib.metrics.RandomExplainer`, the chance floor.

**Removal operators** (:func:`default_operators`): ``rerender`` (the exact counterfactual:
SynthParts re-renders the sample without the part; keys = dataset indices), ``mean`` (each
image's mean colour), ``blur`` (kernel 11, σ 5, as RISE) and ``road`` (ROAD's noisy linear
imputation, seeded).

**Measured effects** use the **ground-truth part masks** (on SynthParts) and only the parts
present in them: ``Δ_p = logit_k(x) − logit_k(x without p)``; contrastive methods are scored
against the effect on the margin ``logit_k − logit_j`` with the j of their own explanation.
Every removed image is scored once per operator and reused by all methods, by V2 (logit) and V3
(probability) alike (:class:`RemovalCache`); the results equal those of
:func:`~partslib.metrics.removal_effects` and :func:`~partslib.metrics.deletion_curve`
(tested).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.explain import part_areas, region_contributions
from partslib.ibd import decompose
from partslib.metrics.validity import (
    RandomExplainer,
    cascading_randomisation,
    claimed_order,
    completeness_error,
    decisive_part_accuracy,
    deletion_auc,
    random_order,
    removal_agreement,
)
from partslib.models import ContractClassifier, check_images
from partslib.removal import (
    IGNORE_INDEX,
    GaussianBlurFill,
    MeanFill,
    NoisyLinearImputer,
    RemovalOperator,
)

__all__ = [
    "METHODS",
    "OPERATORS",
    "CONTRASTIVE",
    "SANITY_METHODS",
    "Claim",
    "Explainer",
    "RemovalCache",
    "FinalFeatures",
    "fused_features",
    "region_gap",
    "gap_summary",
    "ValidityExtras",
    "build_explainers",
    "default_operators",
    "sanity_module_names",
    "run_validity",
    "headline",
    "metrics_dict",
    "ablation_table",
    "reading",
    "plot_claimed_vs_measured",
    "plot_deletion_curves",
    "plot_sanity",
]

METHODS = ("pdm-region-soft", "pdm-region-hard", "pdm-occlusion", "pdm-region-soft-contrastive",
           "pdm-occlusion-contrastive", "pdm-basis", "ibd", "ibd-linear-region", "gradcam-mass",
           "random")
OPERATORS = ("rerender", "mean", "blur", "road")
CONTRASTIVE = ("pdm-region-soft-contrastive", "pdm-occlusion-contrastive")
NEEDS_IBD = ("pdm-basis", "ibd", "ibd-linear-region")
PDM_METHODS = tuple(m for m in METHODS if m.startswith("pdm-"))
SANITY_METHODS = ("pdm-region-soft", "gradcam-mass", "ibd")
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's blur substrate (evaluation.md §2.1)
ROAD_NOISE = 0.01  # ROAD's noisy linear imputation (evaluation.md §2.2)

NOTES = {
    "pdm-basis": "same numbers as ibd: the basis rule reads no map (2x2 cell pdm x basis = "
                 "linear x basis)",
    "ibd": "IBD = (linear maps, basis rule)",
    "ibd-linear-region": "2x2 cell (linear maps, region rule)",
    "pdm-occlusion": "its claim is the blur counterfactual on PDM masks: against 'blur' it is "
                     "nearly scored by its own operator",
    "pdm-occlusion-contrastive": "blur on PDM masks, margin",
    "gradcam-mass": "share of positive Grad-CAM mass per PDM part (no logit units)",
    "random": "chance floor",
}


# ------------------------------------------------------------------------------ explainers

@dataclass(frozen=True)
class Claim:
    """What an explainer claims for a batch.

    Attributes:
        contributions: ``[B,P+1]`` claimed contribution of each part (0 = background).
        units: ``"logit"``, ``"margin"`` (``logit_k − logit_j``), ``"share"`` (of a heatmap's
            mass) or ``"none"``.
        score: ``[B]`` the explained score (logit or margin); None without logit units.
        bias: ``[B]`` the bias of a rule with a completeness identity (``b_k`` or ``b_k − b_j``);
            None for rules without one (occlusion, shares).
        contrast: ``[B]`` the class j of a contrastive claim, else None.
        maps: ``[B,H,W]`` the explanation drawn on the image (V5 compares them), or None. For
            part rules: ``Σ_p c_p π_p(x)`` with π the method's part probabilities.
    """

    contributions: Tensor
    units: str
    score: Tensor | None = None
    bias: Tensor | None = None
    contrast: Tensor | None = None
    maps: Tensor | None = None


Explainer = Callable[[Tensor, Tensor, "Sequence[Any] | None"], Claim]


def _runner_up(logits: Tensor, k: Tensor) -> Tensor:
    masked = logits.clone()
    masked[torch.arange(len(k)), k] = -math.inf
    return masked.argmax(1)


def _margin(logits: Tensor, k: Tensor, j: Tensor | None) -> Tensor:
    rows = torch.arange(len(k), device=logits.device)
    s = logits[rows, k]
    return s if j is None else s - logits[rows, j]


def _paint(contributions: Tensor, probs: Tensor) -> Tensor:
    """``Σ_p c_p π_p(x)``: ``[B,P+1]`` × ``[B,P+1,H,W]`` → ``[B,H,W]``."""
    return torch.einsum("bp,bphw->bhw", contributions.to(probs.dtype), probs)


class _Shared:
    """Classifier, PDM and IBD forward passes shared by the explainers of one
    :func:`build_explainers` call, memoised for the last images tensor seen (by identity)."""

    def __init__(self, classifier: ContractClassifier, pdm, ibd, batch_size: int,
                 use_pdm: bool, features: Callable[[Tensor], Tensor] | None):
        self.classifier, self.pdm, self.ibd, self.batch_size = classifier, pdm, ibd, batch_size
        self.use_pdm, self.features = use_pdm, features
        self._images: Tensor | None = None
        self._memo: dict[str, Any] = {}

    def get(self, images: Tensor, what: str) -> Any:
        if images is not self._images:
            self._images, self._memo = images, {}
        if what not in self._memo:
            self._compute(images, what)
        return self._memo[what]

    @torch.no_grad()
    def _compute(self, images: Tensor, what: str) -> None:
        clf, bs = self.classifier.eval(), self.batch_size
        if what in ("A", "logits", "pdm_probs"):
            if what == "pdm_probs" and self.pdm is None:
                raise ValueError("this method needs a PDM (build_explainers(pdm=...))")
            use_pdm = self.use_pdm and self.pdm is not None
            feats_A, probs = [], []
            for i in range(0, len(images), bs):  # one features pass for CAM and PDM
                x = images[i:i + bs]
                feats = clf.features(x)
                feats_A.append(feats[clf.final_stage])
                if use_pdm:
                    pdm = self.pdm.eval()
                    image = clf.normalise(x) if getattr(pdm, "image_proj", None) is not None \
                        else None
                    probs.append(pdm(feats, image).softmax(1))
            A = torch.cat(feats_A)
            self._memo["A"], self._memo["logits"] = A, clf.head(A)
            if use_pdm:
                self._memo["pdm_probs"] = torch.cat(probs)
        elif what == "basis":
            self._memo["basis"] = None  # filled by the first basis-rule explainer
        elif what == "pdm_labels":
            self._memo["pdm_labels"] = self.get(images, "pdm_probs").argmax(1)
        elif what == "lin_probs":
            if self.ibd is None:
                raise ValueError("this method needs IBD (build_explainers(ibd=...))")
            A = self.get(images, "A")
            self._memo["lin_probs"] = self.ibd.linear_maps_from_features(
                A, tuple(images.shape[-2:])).softmax(1)
        else:  # pragma: no cover
            raise KeyError(what)

    def occlusion_cache(self, images: Tensor, keys, remover: RemovalOperator) -> RemovalCache:
        """One cache of PDM-part removals, shared by the plain and contrastive occlusion."""
        name = f"occlusion:{getattr(remover, 'name', id(remover))}"
        if images is not self._images or name not in self._memo:
            labels = self.get(images, "pdm_labels")
            self._memo[name] = RemovalCache(self.classifier, images, labels, remover, keys,
                                            batch_size=self.batch_size, features=self.features,
                                            num_labels=self.get(images, "pdm_probs").shape[1])
        return self._memo[name]


def _region(shared: _Shared, parts: str, hard: bool, contrastive: bool) -> Explainer:
    def explain(images: Tensor, targets: Tensor, keys=None) -> Claim:
        probs = shared.get(images, parts)
        A, logits = shared.get(images, "A"), shared.get(images, "logits")
        k = targets.to(logits.device).long()
        j = _runner_up(logits, k) if contrastive else None
        fc = shared.classifier.fc
        w = fc.weight[k] - (fc.weight[j] if j is not None else 0)
        b = fc.bias[k] - (fc.bias[j] if j is not None else 0)
        with torch.no_grad():
            c, _ = region_contributions(A, w, probs, hard)
        shown = F.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype) \
            if hard else probs
        return Claim(contributions=c, units="margin" if contrastive else "logit",
                     score=_margin(logits, k, j), bias=b.detach(), contrast=j,
                     maps=_paint(c, shown))
    return explain


def _occlusion(shared: _Shared, remover: RemovalOperator, contrastive: bool) -> Explainer:
    def explain(images: Tensor, targets: Tensor, keys=None) -> Claim:
        labels = shared.get(images, "pdm_labels")
        cache = shared.occlusion_cache(images, keys, remover)
        k = targets.long().cpu()
        j = _runner_up(cache.base, k) if contrastive else None
        L = cache.num_labels
        present = part_areas(labels, L).cpu() > 0
        c = torch.nan_to_num(cache.effects(k, present, j), nan=0.0)  # absent parts claim 0
        shown = F.one_hot(labels, L).permute(0, 3, 1, 2).to(c.dtype)
        return Claim(contributions=c, units="margin" if contrastive else "logit",
                     score=_margin(cache.base, k, j), contrast=j, maps=_paint(c, shown))
    return explain


def _basis(shared: _Shared, parts: str) -> Explainer:
    def explain(images: Tensor, targets: Tensor, keys=None) -> Claim:
        if shared.ibd is None:
            raise ValueError("the basis rule needs IBD (build_explainers(ibd=...))")
        k = targets.long().cpu()
        memo = shared.get(images, "basis")  # pdm-basis and ibd share one computation
        if memo is None or not torch.equal(memo.targets.cpu(), k):
            memo = shared.ibd.contributions(images, k, shared.batch_size)
            shared._memo["basis"] = memo
        c = memo.logit_contributions.to(torch.float32)
        return Claim(contributions=c, units="logit", score=memo.score.float(),
                     bias=memo.bias.float(), maps=_paint(c, shared.get(images, parts)))
    return explain


def _gradcam(shared: _Shared) -> Explainer:
    from partslib.baselines import gradcam_maps, heatmap_part_contributions

    def explain(images: Tensor, targets: Tensor, keys=None) -> Claim:
        maps = gradcam_maps(shared.classifier, images, targets.long(),
                            batch_size=shared.batch_size)
        labels = shared.get(images, "pdm_labels")
        L = shared.get(images, "pdm_probs").shape[1]
        c = heatmap_part_contributions(maps, labels, L).to(torch.float32)
        return Claim(contributions=c, units="share", maps=maps)
    return explain


def _random(seed: int, num_labels: int) -> Explainer:
    rnd = RandomExplainer(seed)

    def explain(images: Tensor, targets: Tensor, keys=None) -> Claim:
        present = torch.ones(len(images), num_labels, dtype=torch.bool)
        return Claim(contributions=rnd(images, targets, present), units="none")
    return explain


def build_explainers(classifier: ContractClassifier, pdm=None, ibd=None,
                     methods: Iterable[str] = METHODS, seed: int = 0,
                     num_labels: int | None = None, batch_size: int = 128,
                     use_fused: bool = True) -> dict[str, Explainer]:
    """The explainers of :data:`METHODS` (see the module docstring), by name.

    Explainers built by one call share the classifier / PDM / IBD forward passes of the last
    images tensor they saw (memoised by identity), so explaining one batch with every method
    runs the PDM once.

    Args:
        classifier: the explained classifier (feature contract); used as is, never changed.
        pdm: a :class:`~partslib.pdm.PartsDetectionModule` on its features (``pdm(features,
            normalised image or None)`` → part logits ``[B,P+1,H,W]``); needed by ``pdm-*`` and
            ``gradcam-mass``.
        ibd: an :class:`~partslib.baselines.IBDModel` fitted to ``classifier``; needed by
            ``pdm-basis``, ``ibd``, ``ibd-linear-region``.
        methods: names from :data:`METHODS`.
        seed: seed of the random explainer.
        num_labels: P + 1 (default: the PDM's, else IBD's).
        use_fused: occlusion scores its removed images with :func:`fused_features` (same
            logits up to float rounding, about 2× faster on CPU).
    """
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if ibd is not None and ibd.classifier is not classifier:
        raise ValueError("ibd was fitted to another classifier object: pass the same classifier "
                         "(or use sanity_ibd for a modified copy)")
    if num_labels is None:
        num_labels = pdm.num_labels if pdm is not None else (ibd.num_labels if ibd else None)
    if num_labels is None:
        raise ValueError("num_labels is needed when neither pdm nor ibd is given")
    use_pdm = any(m.startswith("pdm-") or m == "gradcam-mass" for m in methods)
    needs_features = any("occlusion" in m for m in methods)
    shared = _Shared(classifier, pdm, ibd, batch_size, use_pdm,
                     fused_features(classifier) if use_fused and needs_features else None)
    blur = GaussianBlurFill(BLUR_KERNEL, BLUR_SIGMA)
    makers: dict[str, Callable[[], Explainer]] = {
        "pdm-region-soft": lambda: _region(shared, "pdm_probs", False, False),
        "pdm-region-hard": lambda: _region(shared, "pdm_probs", True, False),
        "pdm-occlusion": lambda: _occlusion(shared, blur, False),
        "pdm-region-soft-contrastive": lambda: _region(shared, "pdm_probs", False, True),
        "pdm-occlusion-contrastive": lambda: _occlusion(shared, blur, True),
        "pdm-basis": lambda: _basis(shared, "pdm_probs"),
        "ibd": lambda: _basis(shared, "lin_probs"),
        "ibd-linear-region": lambda: _region(shared, "lin_probs", False, False),
        "gradcam-mass": lambda: _gradcam(shared),
        "random": lambda: _random(seed, num_labels),
    }
    return {m: makers[m]() for m in methods}


def default_operators(dataset=None, seed: int = 0, names: Iterable[str] = OPERATORS
                      ) -> dict[str, RemovalOperator]:
    """The removal operators of T2 by name: ``rerender`` (needs a SynthParts ``dataset``; keys
    are its indices), ``mean`` (image mean colour), ``blur`` (kernel 11, σ 5), ``road`` (noisy
    linear imputation, noise 0.01, seeded with ``seed``)."""
    ops: dict[str, RemovalOperator] = {}
    for name in names:
        if name == "rerender":
            if dataset is None or not hasattr(dataset, "rerender"):
                raise ValueError("the rerender operator needs a SynthParts dataset")
            ops[name] = dataset.rerender()
        elif name == "mean":
            ops[name] = MeanFill()
        elif name == "blur":
            ops[name] = GaussianBlurFill(BLUR_KERNEL, BLUR_SIGMA)
        elif name == "road":
            ops[name] = NoisyLinearImputer(noise=ROAD_NOISE, seed=seed)
        else:
            raise ValueError(f"unknown operator {name!r}; choose from {list(OPERATORS)}")
    return ops


# --------------------------------------------------------------------------- removal cache

class FinalFeatures(torch.nn.Module):
    """``x -> A``: the final-stage features of a contract classifier, as one module."""

    def __init__(self, classifier: ContractClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)[self.classifier.final_stage]


def fused_features(classifier: ContractClassifier) -> Callable[[Tensor], Tensor]:
    """An inference copy of ``x -> A`` with every BatchNorm folded into its convolution
    (``torch.fx.experimental.optimization.fuse``) and channels-last weights: about 2× faster
    on CPU, same features up to float rounding (~1e-6 relative). Falls back to the plain
    model when it cannot be traced."""
    from torch.fx.experimental.optimization import fuse

    plain = FinalFeatures(classifier).eval()
    try:
        fast = fuse(plain).to(memory_format=torch.channels_last).eval()
    except Exception:  # noqa: BLE001 - untraceable model: the plain one is correct, only slower
        return plain
    return fast


class RemovalCache:
    """Logits of images with sets of parts removed, each distinct (image, set) scored once.

    V2 needs every single-part removal and V3 every prefix of every part order; orders of
    different methods share most prefixes (and all share the single removals and the full
    removal), so one cache per operator serves all methods, both scores (logit for V2,
    probability for V3) and the contrastive margins.

    Args:
        classifier: the contract classifier; logits are ``classifier.head(features(x))``.
        images: ``[B,3,H,W]``; labels ``[B,H,W]`` the part labels removals use.
        remover: a removal operator; keys one per image (or None) for it.
        features: ``x -> A`` final-stage features (default: the classifier's own; pass
            :func:`fused_features` for speed).
        pool_labels: ``[B,H,W]`` labels by which to pool the final features of every scored
            image (:meth:`pooled`), for the region-rule terms of :func:`region_gap`; or None.
            Unannotated pixels (255) pool into an extra last column.
    """

    def __init__(self, classifier: ContractClassifier, images: Tensor, labels: Tensor,
                 remover: RemovalOperator, keys: Sequence[Any] | None = None,
                 batch_size: int = 256, features: Callable[[Tensor], Tensor] | None = None,
                 pool_labels: Tensor | None = None, num_labels: int | None = None):
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"keys must hold one entry per image ({len(images)}), got "
                             f"{len(keys)}")
        self.classifier, self.images, self.labels = classifier, images, labels
        self.remover, self.keys, self.batch_size = remover, keys, batch_size
        self.features = features or FinalFeatures(classifier).eval()
        self.num_labels = num_labels
        self.pool_labels: Tensor | None = None
        if pool_labels is not None:
            lab = pool_labels.long()
            L = num_labels or int(lab[lab != IGNORE_INDEX].max()) + 1
            self.num_labels = L
            self.pool_labels = torch.where(lab == IGNORE_INDEX, L, lab)  # 255 -> column L
        self._rows: dict[tuple[int, int], int] = {}
        self._logits: list[Tensor] = []
        self._pooled: list[Tensor] = []
        self.n_removals = 0  # removed images scored so far (cache misses)
        base, pooled = [], []
        for i in range(0, len(images), batch_size):
            lg, pl = self._score(images[i:i + batch_size], torch.arange(i, min(i + batch_size,
                                                                               len(images))))
            base.append(lg)
            pooled.append(pl)
        self.base = torch.cat(base)
        self.base_pooled = torch.cat(pooled) if self.pool_labels is not None else None

    @torch.no_grad()
    def _score(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        A = self.features(x)
        A = A.contiguous() if A.is_contiguous(memory_format=torch.channels_last) else A
        logits = self.classifier.head(A).detach().cpu()
        if self.pool_labels is None:
            return logits, None
        onehot = F.one_hot(self.pool_labels[idx], self.num_labels + 1).permute(0, 3, 1, 2)
        pi = F.adaptive_avg_pool2d(onehot.float(), A.shape[-2:])  # [n,L+1,h,w]
        return logits, torch.einsum("nlhw,nchw->nlc", pi, A.float()).cpu() / A[0, 0].numel()

    def _codes(self, drop: Tensor) -> np.ndarray:
        L = drop.shape[1]
        if self.num_labels is None:
            self.num_labels = L
        elif L != self.num_labels:
            raise ValueError(f"drop has {L} columns, expected {self.num_labels}")
        if L > 62:
            raise ValueError("at most 62 labels")
        return (drop.cpu().numpy().astype(np.int64) << np.arange(L, dtype=np.int64)).sum(1)

    def _fill(self, idx: Tensor, drop: Tensor) -> np.ndarray:
        codes = self._codes(drop)
        idx_np = idx.cpu().numpy().astype(np.int64)
        todo = sorted({(int(i), int(c)) for i, c in zip(idx_np, codes)
                       if c != 0 and (int(i), int(c)) not in self._rows})
        bits = 1 << np.arange(drop.shape[1], dtype=np.int64)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            ii = torch.tensor([i for i, _ in chunk], dtype=torch.long)
            dd = torch.from_numpy((np.array([c for _, c in chunk])[:, None] & bits) != 0)
            sub_keys = None if self.keys is None else [self.keys[i] for i in ii.tolist()]
            removed = self.remover(self.images[ii], self.labels[ii],
                                   dd.to(self.images.device), sub_keys)
            logits, pooled = self._score(removed, ii)
            for r, key in enumerate(chunk):
                self._rows[key] = len(self._logits)
                self._logits.append(logits[r])
                if pooled is not None:
                    self._pooled.append(pooled[r])
            self.n_removals += len(chunk)
        return codes

    def logits(self, idx: Tensor, drop: Tensor) -> Tensor:
        """``[M,K]`` logits of image ``idx[m]`` without the parts ``drop[m]`` (``[M,P+1]``
        bool); an empty drop gives the unmodified image's logits."""
        codes = self._fill(idx, drop)
        rows = [self.base[int(i)] if c == 0 else self._logits[self._rows[(int(i), int(c))]]
                for i, c in zip(idx.tolist(), codes)]
        return torch.stack(rows) if rows else self.base.new_zeros(0, self.base.shape[1])

    def pooled(self, idx: Tensor, drop: Tensor) -> Tensor:
        """``[M,P+2,C]``: final features of the removed images averaged over the feature
        cells with the shares of each ``pool_labels`` part (``mean_u π_q(u) A(u)``); the last
        column pools the unannotated pixels."""
        if self.pool_labels is None:
            raise ValueError("built without pool_labels")
        codes = self._fill(idx, drop)
        rows = [self.base_pooled[int(i)] if c == 0
                else self._pooled[self._rows[(int(i), int(c))]]
                for i, c in zip(idx.tolist(), codes)]
        return torch.stack(rows)

    def _singles(self, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pairs = present.cpu().nonzero()
        idx, part = pairs[:, 0], pairs[:, 1]
        drop = torch.zeros(len(pairs), present.shape[1], dtype=torch.bool)
        drop[torch.arange(len(pairs)), part] = True
        return idx, part, drop

    def effects(self, targets: Tensor, present: Tensor, contrast: Tensor | None = None
                ) -> Tensor:
        """``Δ_p = s(x) − s(x without p)`` for present parts, ``s`` = ``logit_k`` or the margin
        ``logit_k − logit_j`` (``contrast`` = j); NaN where absent. As
        :func:`~partslib.metrics.removal_effects` with ``score="logit"``."""
        B, L = present.shape
        idx, part, drop = self._singles(present)
        lg = self.logits(idx, drop)
        k = targets.long().cpu()
        j = None if contrast is None else contrast.long().cpu()
        s0 = _margin(self.base, k, j)
        s = _margin(lg, k[idx], None if j is None else j[idx])
        out = torch.full((B, L), math.nan, dtype=self.base.dtype)
        out[idx, part] = s0[idx] - s
        return out

    def deletion_curve(self, targets: Tensor, order: Tensor, present: Tensor,
                       score: str = "probability") -> Tensor:
        """Score after removing the first 0..n parts of ``order``; ``[B,P+2]``, padded like
        :func:`~partslib.metrics.deletion_curve` (whose values it reproduces)."""
        if score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
        B, L = present.shape
        n = present.cpu().sum(1)
        o = order.cpu().long()
        steps = [(i, j) for i in range(B) for j in range(1, int(n[i]) + 1)]
        drop = torch.zeros(len(steps), L, dtype=torch.bool)
        for r, (i, j) in enumerate(steps):
            drop[r, o[i, :j]] = True
        idx = torch.tensor([i for i, _ in steps], dtype=torch.long)
        lg = self.logits(idx, drop)
        k = targets.long().cpu()

        def s(logits: Tensor, kk: Tensor) -> Tensor:
            if score == "probability":
                logits = torch.softmax(logits.float(), 1)
            return logits.gather(1, kk[:, None])[:, 0]

        curve = torch.empty(B, L + 1, dtype=torch.float32)
        curve[:, 0] = s(self.base, k)
        if len(steps):
            jj = torch.tensor([j for _, j in steps], dtype=torch.long)
            curve[idx, jj] = s(lg, k[idx])
        cols = torch.arange(L + 1)[None]
        last = curve.gather(1, n[:, None].long())
        return torch.where(cols > n[:, None], last, curve)


def region_gap(cache: RemovalCache, weights: Tensor, present: Tensor) -> pd.DataFrame:
    """Why region contributions and removal effects differ: an exact split of the effect.

    With the part shares π fixed from the original image (``cache``'s ``pool_labels``, e.g.
    the ground truth), completeness holds for the removed image too, so for each part p

        Δ_p = [c_p(x) − c_p(x')] + Σ_{q≠p} [c_q(x) − c_q(x')]        (x' = x without p)

    and the region rule's claim ``c_p(x) = Δ_p + remaining_p − context_p`` differs from the
    effect by ``remaining_p = c_p(x')`` (CAM mass still found in p's cells after the removal:
    the rule's baseline is zero features, the counterfactual's is not) minus ``context_p =
    Σ_{q≠p} [c_q(x) − c_q(x')]`` (the removal's effect on the *other* parts' cells, through
    receptive fields).

    Args:
        cache: a :class:`RemovalCache` built with ``pool_labels``.
        weights: ``[B,C]`` explained weight vector per image (``w_k``).
        present: ``[B,P+1]`` parts to remove.
    Returns:
        One row per (image, present part): ``row`` (in the batch), ``part``, ``claim``
        (region rule on the pooling labels), ``effect`` (Δ_p of ``w·mean_u A(u)``: the logit
        effect when ``w = w_k``), ``remaining`` and ``context``.
    """
    idx, part, drop = cache._singles(present)
    w = weights.detach().float().cpu()
    c0 = torch.einsum("blc,bc->bl", cache.base_pooled, w)  # c_q(x)  [B,L]
    c1 = torch.einsum("mlc,mc->ml", cache.pooled(idx, drop), w[idx])  # c_q(x')  [M,L]
    diff = c0[idx] - c1
    rows = torch.arange(len(idx))
    own = diff[rows, part]
    return pd.DataFrame({"row": idx.numpy(), "part": part.numpy(),
                         "claim": c0[idx, part].double().numpy(),
                         "effect": diff.sum(1).double().numpy(),
                         "remaining": c1[rows, part].double().numpy(),
                         "context": (diff.sum(1) - own).double().numpy()})


# ------------------------------------------------------------------------------- the study

@dataclass
class ValidityExtras:
    """Everything behind T2, for figures and further analysis.

    Attributes:
        indices: ``[n]`` positions (in the arrays given) of the images evaluated.
        targets, present, decisive: ``[n]`` class, ``[n,P+1]`` ground-truth presence and
            decisive parts.
        claims: method → :class:`Claim` on those images.
        effects: operator → ``[n,P+1]`` logit effects Δ (ground-truth masks).
        margin_effects: (operator, method) → ``[n,P+1]`` margin effects of contrastive methods.
        curves: (order, operator) → ``[n,P+2]`` deletion curves (probability); order is a
            method name, ``"random"`` or ``"oracle"``.
        per_image: one row per (method, operator, image) of V2.
        sanity: V5, one row per (method, step).
        gap: :func:`region_gap` per operator on the ground-truth masks (why region claims
            and removal effects differ).
        timings: wall seconds per phase (``cpu:<phase>``: process CPU seconds, all threads);
            removals: removed images scored per operator.
        settings: choices recorded with the results.
    """

    indices: Tensor
    targets: Tensor
    present: Tensor
    decisive: Tensor
    claims: dict[str, Claim]
    effects: dict[str, Tensor]
    margin_effects: dict[tuple[str, str], Tensor]
    curves: dict[tuple[str, str], Tensor]
    per_image: pd.DataFrame
    sanity: pd.DataFrame
    gap: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    removals: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def sanity_module_names(classifier: ContractClassifier) -> list[str]:
    """V5's cascade, top down: the head ``fc``, then the stages, deepest first."""
    return ["fc", *reversed(classifier.stage_names)]


def _ibd_for(ibd, model: ContractClassifier):
    """``ibd`` re-attached to a (randomised) copy of its classifier: the concept classifiers are
    kept (they are the explainer's dictionary), the class weights are decomposed again."""
    from dataclasses import replace

    q = ibd.part_classifiers().concept_vectors()
    dec = decompose(model.fc.weight.detach(), q, ibd.decomposition.n_components)
    return replace(ibd, classifier=model, decomposition=dec)


def _state_key(model: torch.nn.Module) -> tuple:
    """A fingerprint of the model's parameters and buffers (two moments per tensor)."""
    with torch.no_grad():
        return tuple((name, float(t.double().sum()), float(t.double().square().sum()))
                     for name, t in model.state_dict().items() if t.is_floating_point())


def _sanity(classifier, pdm, ibd, methods, images, targets, present, seed, batch_size,
            num_labels) -> pd.DataFrame:
    """V5 for each method. The cascades of all methods re-initialise the same modules with the
    same seeds, so the explanations of every method at a step are computed together, once, by
    explainers that share the step's classifier/PDM passes (memoised by parameter state)."""
    if not methods:
        return _empty_sanity()
    names = sanity_module_names(classifier)
    memo: dict[tuple, dict[str, Claim]] = {}
    use_ibd = ibd is not None and any(m in NEEDS_IBD for m in methods)

    def claims_for(model) -> dict[str, Claim]:
        key = _state_key(model)
        if key not in memo:
            ib = _ibd_for(ibd, model) if use_ibd else None
            exs = build_explainers(model, pdm, ib, methods, seed=seed, num_labels=num_labels,
                                   batch_size=batch_size)
            memo[key] = {m: exs[m](images, targets, None) for m in methods}
        return memo[key]

    frames = []
    for m in methods:
        def explain_fn(model, x, t, m=m):
            c = claims_for(model)[m]
            return c.contributions, c.maps
        df = cascading_randomisation(classifier, names, explain_fn, images, targets, seed=seed,
                                     present=present)
        df.insert(0, "method", m)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else _empty_sanity()


def _empty_sanity() -> pd.DataFrame:
    return pd.DataFrame(columns=["method", "step", "module", "spearman_contrib",
                                 "spearman_maps"])


def _nanmax(x: Tensor) -> float:
    v = x.detach().double().cpu().numpy()
    return float(np.nanmax(v)) if np.isfinite(v).any() else math.nan


def _decisive_chance(decisive: Tensor, present: Tensor) -> float:
    """Expected V4 of a ranking that picks a uniformly random present part."""
    n = present.sum(1).double()
    hits = (decisive & present).sum(1).double()
    use = n > 0
    return float((hits[use] / n[use]).mean()) if bool(use.any()) else math.nan


def _select_correct(classifier: ContractClassifier, images: Tensor, labels: Tensor, n: int,
                    batch_size: int) -> Tensor:
    """Positions of the first ``n`` correctly classified images (classifies only as far as
    needed)."""
    found: list[Tensor] = []
    count = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pred = classifier(images[i:i + batch_size]).argmax(1).cpu()
            ok = (pred == labels[i:i + batch_size].cpu()).nonzero().flatten() + i
            found.append(ok)
            count += len(ok)
            if count >= n:
                break
    return torch.cat(found)[:n] if found else torch.zeros(0, dtype=torch.long)


def _empty_result(methods: list[str], operators: list[str], seed: int, num_labels: int,
                  n_eval: int) -> tuple[pd.DataFrame, ValidityExtras]:
    """T2 with no evaluated image: one row per (method, operator), every metric NaN."""
    metric_cols = ["completeness_error_max", "completeness_error_mean", "spearman", "top_part",
                   "norm_abs_error", "auc_claimed", "auc_random", "auc_oracle", "decisive",
                   "decisive_ceiling", "decisive_chance"]
    rows = [{"method": m, "operator": op, "units": "", "score_v2": "margin"
             if m in CONTRASTIVE else "logit", "score_v3": "probability", "seed": seed,
             "n_images": 0, "n_images_v3": 0, **{c: math.nan for c in metric_cols},
             "note": NOTES.get(m, "")} for op in operators for m in methods]
    settings = {"n_eval_requested": n_eval, "n_images": 0, "n_images_v3": 0,
                "sanity_images": 0}
    t2 = pd.DataFrame(rows)
    t2.attrs.update(settings)
    empty = torch.zeros(0, num_labels, dtype=torch.bool)
    extras = ValidityExtras(indices=torch.zeros(0, dtype=torch.long),
                            targets=torch.zeros(0, dtype=torch.long), present=empty,
                            decisive=empty, claims={}, effects={}, margin_effects={}, curves={},
                            per_image=pd.DataFrame(), sanity=_empty_sanity(),
                            gap=pd.DataFrame(), settings=settings)
    return t2, extras


def run_validity(classifier: ContractClassifier, pdm, images: Tensor, masks: Tensor,
                 labels: Tensor, *, decisive: Tensor, operators: Mapping[str, RemovalOperator],
                 keys: Sequence[Any] | None = None, ibd=None, n_eval: int = 300,
                 n_deletion: int | None = 100, methods: Iterable[str] = METHODS,
                 sanity_methods: Iterable[str] = SANITY_METHODS, n_sanity: int = 32,
                 seed: int = 0, batch_size: int = 128, use_fused: bool = True
                 ) -> tuple[pd.DataFrame, ValidityExtras]:
    """Table T2: V1–V5 for every method × removal operator.

    The first ``n_eval`` correctly classified images are evaluated, explaining their (true =
    predicted) class. Per operator, the measured effects are computed once on the
    **ground-truth** part masks (parts present in them only) and shared by all methods.

    Args:
        classifier, pdm, ibd: the models (``ibd`` may be None: its methods are then skipped).
        images: ``[N,3,H,W]`` float in [0,1] or uint8; masks ``[N,H,W]`` ground-truth part
            labels; labels ``[N]`` true classes; decisive ``[N,P+1]`` bool decisive parts.
        operators: name → removal operator (:func:`default_operators`).
        keys: one per image for the operators (dataset indices for ``rerender``).
        n_eval: images evaluated (the first correctly classified ones): V1, V2, V4.
        n_deletion: the first ``n_deletion`` of them for V3 (None = all): the deletion games
            cost one removal per distinct prefix of every order, several times V2's.
        sanity_methods: methods of the V5 cascade, on the first ``n_sanity`` images.
        seed: of the random explainer, the random order and V5's re-initialisations (ROAD's
            noise is seeded through ``operators``).
        use_fused: score removed images with :func:`fused_features` (same logits up to float
            rounding, about 2× faster on CPU).

    Returns:
        ``(t2, extras)``. ``t2`` has one row per (method, operator) with columns ``method``,
        ``operator``, ``units``, ``score_v2`` (``logit`` or ``margin``), ``score_v3``
        (``probability``), ``seed``, ``n_images``, ``n_images_v3``,
        ``completeness_error_max`` and ``_mean`` (V1; for the basis rule the error is IBD's
        residual, which no part claims), ``spearman``, ``top_part``, ``norm_abs_error`` (V2),
        ``auc_claimed``, ``auc_random``, ``auc_oracle`` (V3, lower is better), ``decisive``,
        ``decisive_ceiling``, ``decisive_chance`` (V4) and ``note``; ``t2.attrs`` records the
        settings. V5 is in ``extras.sanity``, the region-rule gap in ``extras.gap``.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    images = check_images(images)
    N = len(images)
    if masks.shape != (N, *images.shape[-2:]) or labels.shape != (N,):
        raise ValueError(f"masks must be [N,H,W] and labels [N] for {N} images, got "
                         f"{tuple(masks.shape)} and {tuple(labels.shape)}")
    if decisive.dim() != 2 or decisive.shape[0] != N:
        raise ValueError(f"decisive must be bool [N,P+1] with N={N}, got "
                         f"{tuple(decisive.shape)}")
    if keys is not None and len(keys) != N:
        raise ValueError(f"keys must hold one entry per image ({N}), got {len(keys)}")
    methods = [m for m in methods if ibd is not None or m not in NEEDS_IBD]
    sanity_methods = [m for m in sanity_methods if m in methods]
    L = int(decisive.shape[1])
    classifier.eval()

    # -- the evaluated images: the first n_eval correctly classified ones
    idx = _select_correct(classifier, images, labels, n_eval, batch_size)
    B = len(idx)
    if B == 0:
        warnings.warn(f"run_validity: none of the {N} images is correctly classified; T2 is "
                      f"empty (all metrics NaN)", RuntimeWarning, stacklevel=2)
        return _empty_result(methods, list(operators), seed, L, n_eval)
    x, gt = images[idx], masks[idx].long()
    k = labels[idx].long().cpu()
    sub_keys = None if keys is None else [keys[int(i)] for i in idx]
    present = torch.stack([(gt == p).flatten(1).any(1) for p in range(L)], 1).cpu()
    dec = decisive[idx].bool().cpu()
    n3 = B if n_deletion is None else min(int(n_deletion), B)
    fc_w, fc_b = classifier.fc.weight.detach().cpu(), classifier.fc.bias.detach().cpu()
    features = fused_features(classifier) if use_fused else None
    timings["select"] = time.perf_counter() - t_start
    timings["cpu:select"] = time.process_time() - cpu_start

    # -- claims
    t0, c0 = time.perf_counter(), time.process_time()
    explainers = build_explainers(classifier, pdm, ibd, methods, seed=seed, num_labels=L,
                                  batch_size=batch_size, use_fused=use_fused)
    claims = {m: explainers[m](x, k, sub_keys) for m in methods}
    claims = {m: Claim(**{f: (v.detach().cpu() if isinstance(v, Tensor) else v)
                          for f, v in vars(c).items()}) for m, c in claims.items()}
    timings["explain"] = time.perf_counter() - t0
    timings["cpu:explain"] = time.process_time() - c0

    orders = {m: claimed_order(claims[m].contributions, present) for m in methods}
    orders["random"] = random_order(present, seed=seed)
    ones = torch.ones(B, dtype=torch.bool)
    chance = _decisive_chance(dec, present)
    decisive_acc = {m: decisive_part_accuracy(claims[m].contributions, dec, ones, present)
                    for m in methods}

    rows, per_image, gaps = [], [], []
    effects, margin_effects, curves, removals = {}, {}, {}, {}
    for op_name, op in operators.items():
        t0, c0 = time.perf_counter(), time.process_time()
        cache = RemovalCache(classifier, x, gt, op, sub_keys, batch_size=batch_size,
                             features=features, pool_labels=gt, num_labels=L)
        base = cache.base
        delta = cache.effects(k, present)
        effects[op_name] = delta
        ceiling = decisive_part_accuracy(delta, dec, ones, present)
        gap = region_gap(cache, fc_w[k], present)
        gap.insert(0, "image", idx.numpy()[gap["row"].to_numpy()])
        gap.insert(0, "operator", op_name)
        gaps.append(gap)
        # V3 on the first n3 images: claimed orders, random, oracle (by logit effect)
        sub = slice(0, n3)
        op_orders = dict(orders, oracle=claimed_order(delta, present))
        aucs = {}
        for name, order in op_orders.items():
            curve = cache.deletion_curve(k[sub], order[sub], present[sub])
            curves[(name, op_name)] = curve
            aucs[name] = float(torch.nanmean(deletion_auc(curve, present[sub].sum(1))))
        for m in methods:
            cl = claims[m]
            if cl.contrast is not None:
                d = cache.effects(k, present, cl.contrast)
                margin_effects[(op_name, m)] = d
                score = _margin(base, k, cl.contrast)
                bias = fc_b[k] - fc_b[cl.contrast]
                ceil = decisive_part_accuracy(d, dec, ones, present)
            else:
                d, score, bias, ceil = delta, _margin(base, k, None), fc_b[k], ceiling
            agree = removal_agreement(cl.contributions, d, present, logits=score, bias=bias)
            nae = agree.summary["norm_abs_error"] if cl.units in ("logit", "margin") else math.nan
            v1 = v1_mean = math.nan
            if cl.bias is not None and cl.score is not None:
                err = completeness_error(cl.contributions, cl.bias, cl.score)
                v1, v1_mean = _nanmax(err), float(err.double().nanmean())
            rows.append({
                "method": m, "operator": op_name, "units": cl.units,
                "score_v2": "margin" if cl.contrast is not None else "logit",
                "score_v3": "probability", "seed": seed, "n_images": B, "n_images_v3": n3,
                "completeness_error_max": v1, "completeness_error_mean": v1_mean,
                "spearman": agree.summary["spearman"], "top_part": agree.summary["top_part"],
                "norm_abs_error": nae,
                "auc_claimed": aucs[m], "auc_random": aucs["random"],
                "auc_oracle": aucs["oracle"],
                "decisive": decisive_acc[m], "decisive_ceiling": ceil,
                "decisive_chance": chance, "note": NOTES.get(m, ""),
            })
            pi = agree.per_image.copy()
            pi.insert(0, "image", idx.numpy())
            pi.insert(0, "operator", op_name)
            pi.insert(0, "method", m)
            per_image.append(pi)
        removals[op_name] = cache.n_removals
        del cache
        timings[f"operator:{op_name}"] = time.perf_counter() - t0
        timings[f"cpu:operator:{op_name}"] = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    n_s = min(n_sanity, B)
    sanity = _sanity(classifier, pdm, ibd, sanity_methods if n_s > 0 else [], x[:n_s],
                     k[:n_s], present[:n_s], seed, batch_size, L)
    if len(sanity):
        sanity["n_images"] = n_s
        sanity["seed"] = seed
    timings["sanity"] = time.perf_counter() - t0
    timings["cpu:sanity"] = time.process_time() - c0
    timings["total"] = time.perf_counter() - t_start
    timings["cpu_total"] = time.process_time() - cpu_start  # all threads

    t2 = pd.DataFrame(rows)
    settings = {
        "n_eval_requested": n_eval, "n_images": B, "n_images_v3": n3,
        "targets": "true class (= predicted: correctly classified images only)",
        "effects": "ground-truth part masks, present parts only",
        "operators": {n: getattr(o, "name", type(o).__name__) for n, o in operators.items()},
        "v2_score": "logit (margin logit_k - logit_j for contrastive methods)",
        "v3_score": "softmax probability of the target class; AUC by RISE's trapezoid, "
                    "lower is better; oracle order = by logit effect",
        "scorer": "BatchNorm-folded channels-last copy of the classifier" if use_fused
                  else "the classifier",
        "random_order_seed": seed, "random_explainer_seed": seed,
        "sanity_modules": sanity_module_names(classifier), "sanity_images": n_s,
        "pdm_occlusion_imputer": f"gaussian blur k={BLUR_KERNEL} sigma={BLUR_SIGMA:g}",
        "ties": "claimed order: ties go to the lower part index",
    }
    t2.attrs.update(settings)
    extras = ValidityExtras(indices=idx, targets=k, present=present, decisive=dec, claims=claims,
                            effects=effects, margin_effects=margin_effects, curves=curves,
                            per_image=pd.concat(per_image, ignore_index=True) if per_image
                            else pd.DataFrame(), sanity=sanity,
                            gap=pd.concat(gaps, ignore_index=True) if gaps else pd.DataFrame(),
                            timings=timings, removals=removals, settings=settings)
    return t2, extras


# ---------------------------------------------------------------------------- reporting

_METRIC_COLUMNS = ("spearman", "top_part", "norm_abs_error", "auc_claimed", "auc_random",
                   "auc_oracle", "decisive", "decisive_ceiling", "completeness_error_max",
                   "completeness_error_mean")


def metrics_dict(t2: pd.DataFrame, sanity: pd.DataFrame | None = None) -> dict[str, float]:
    """Flat ``{"<method>/<operator>/<metric>": value}`` for ``metrics.json`` (NaN → None),
    plus ``<method>/sanity/<module>/spearman_contrib|maps`` from V5 and ``n_images``."""
    out: dict[str, Any] = {}

    def num(v: Any) -> float | None:
        v = float(v)
        return v if math.isfinite(v) else None

    for r in t2.itertuples(index=False):
        for col in _METRIC_COLUMNS:
            out[f"{r.method}/{r.operator}/{col}"] = num(getattr(r, col))
    if len(t2):
        out["n_images"] = int(t2["n_images"].iloc[0])
        out["seed"] = int(t2["seed"].iloc[0])
    if sanity is not None:
        for r in sanity.itertuples(index=False):
            for col in ("spearman_contrib", "spearman_maps"):
                out[f"{r.method}/sanity/{r.module}/{col}"] = num(getattr(r, col))
    return out


def headline(t2: pd.DataFrame, reference: str = "rerender") -> dict[str, Any]:
    """The SPEC §8 numbers: best PDM mode's decisive accuracy (and which mode; ``pdm-basis``,
    which equals IBD, does not count), the ceiling
    under ``reference``, PDM-region (soft) Spearman against ``reference`` effects, with IBD and
    Grad-CAM beside it."""
    ref = t2[t2.operator == reference].set_index("method")
    # pdm-basis is left out: the basis rule reads no PDM map, its numbers are IBD's
    pdm = ref.loc[[m for m in PDM_METHODS if m in ref.index and m != "pdm-basis"]]
    out: dict[str, Any] = {}
    if len(pdm):
        best = pdm["decisive"].astype(float).idxmax()
        out.update(best_pdm_mode=best, best_pdm_decisive=float(pdm.loc[best, "decisive"]))
    for m, key in (("pdm-region-soft", "pdm_region_spearman"), ("ibd", "ibd_spearman"),
                   ("gradcam-mass", "gradcam_spearman"), ("random", "random_spearman")):
        if m in ref.index:
            out[key] = float(ref.loc[m, "spearman"])
    if "pdm-region-soft" in ref.index:
        out["decisive_ceiling"] = float(ref.loc["pdm-region-soft", "decisive_ceiling"])
    return out


def ablation_table(t2: pd.DataFrame, operator: str = "rerender",
                   metric: str = "spearman") -> pd.DataFrame:
    """SPEC §4's 2×2: rows maps {linear, pdm}, columns rule {basis, region}, one metric."""
    cells = {("linear", "basis"): "ibd", ("pdm", "basis"): "pdm-basis",
             ("linear", "region"): "ibd-linear-region", ("pdm", "region"): "pdm-region-soft"}
    ref = t2[t2.operator == operator].set_index("method")[metric]
    data = {rule: {maps: float(ref.get(m, math.nan)) for (maps, r), m in cells.items()
                   if r == rule} for rule in ("basis", "region")}
    df = pd.DataFrame(data).reindex(["linear", "pdm"])
    df.index.name, df.columns.name = "maps", "rule"
    df.attrs.update(operator=operator, metric=metric)
    return df


def reading(t2: pd.DataFrame, gap: tuple[pd.DataFrame, dict[str, float]] | None = None,
            gap_operator: str = "rerender") -> str:
    """A short reading of T2 in Markdown, generated from the numbers (so it stays true).

    Args:
        t2: from :func:`run_validity`.
        gap: ``gap_summary(extras, gap_operator, part_names)``, to say *why* the region rule
            and the removal effects differ.
    """
    lines = []
    scored = t2[t2.units.isin(["logit", "margin"]) | (t2.method == "gradcam-mass")]
    for op in t2.operator.unique():
        sub = scored[scored.operator == op].set_index("method")
        if not len(sub) or sub["spearman"].isna().all():
            continue
        best = sub["spearman"].astype(float).idxmax()
        floor = t2[(t2.operator == op) & (t2.method == "random")]["spearman"]
        floor_txt = f"; the random floor is {float(floor.iloc[0]):.2f}" if len(floor) else ""
        own = (" -- its own counterfactual, on PDM instead of ground-truth masks"
               if op == "blur" and "occlusion" in best else "")
        ceiling = float(t2[(t2.operator == op) & (t2.score_v2 == "logit")]
                        ["decisive_ceiling"].iloc[0])
        region = sub["spearman"].get("pdm-region-soft", math.nan)
        region_txt = (f" The PDM region rule reaches {region:.2f}." if math.isfinite(region)
                      and best != "pdm-region-soft" else "")
        lines.append(f"* **{op}**: the ranking that best matches the measured effects is "
                     f"`{best}` (Spearman {sub.loc[best, 'spearman']:.2f}, top part "
                     f"{sub.loc[best, 'top_part']:.2f}{own}){floor_txt}.{region_txt} The "
                     f"effects themselves rank a decisive part first for {ceiling:.2f} of the "
                     f"images.")
    dec = t2.drop_duplicates("method").set_index("method")["decisive"].astype(float)
    dec = dec.drop(labels=["random"], errors="ignore")
    if len(dec):
        best = dec.idxmax()
        lines.append(f"* Decisive-part accuracy (no counterfactual involved) is highest for "
                     f"`{best}` ({dec[best]:.2f}); chance is "
                     f"{float(t2['decisive_chance'].iloc[0]):.2f}.")
    if {"ibd", "ibd-linear-region", "pdm-region-soft"} <= set(t2.method) and \
            "rerender" in set(t2.operator):
        ab = ablation_table(t2, "rerender")
        rule_gain = ab.loc["pdm", "region"] - ab.loc["pdm", "basis"]
        map_gain = ab.loc["pdm", "region"] - ab.loc["linear", "region"]
        lines.append(f"* 2×2 ablation against re-rendering (Spearman): switching the rule from "
                     f"basis to region changes agreement by {rule_gain:+.2f}; switching the "
                     f"maps from linear to PDM within the region rule by {map_gain:+.2f}.")
    if gap is not None:
        per_part, sm = gap
        top = per_part["top_by_claim"].astype(float).idxmax()
        r = per_part.loc[top]
        lines.append(
            f"* Why the region rule disagrees with `{gap_operator}` effects: with "
            f"ground-truth masks it reaches Spearman {sm['gt_region_spearman']:.2f} "
            f"({sm['gt_region_spearman_objects']:.2f} over object parts only), so the "
            f"segmentation is not the cause. The rule ranks `{top}` first for "
            f"{r.top_by_claim:.2f} of the images (mean claim {r.claim:.2f}), while removing "
            f"it changes the logit by {r.effect:.2f} on average: after the removal its cells "
            f"still hold {r.remaining:.2f} of CAM mass (the rule's baseline is zero features, "
            f"the counterfactual's is not) and the other parts' cells change by "
            f"{-r.context:+.2f}. Per part, claim = effect + remaining − context exactly.")
    return "\n".join(lines)


def gap_summary(extras: ValidityExtras, operator: str = "rerender",
                part_names: Sequence[str] | None = None,
                method: str = "pdm-region-soft") -> tuple[pd.DataFrame, dict[str, float]]:
    """Why the region rule disagrees with ``operator``'s effects, from :func:`region_gap`.

    Returns:
        ``(per_part, summary)``: per part, the mean region claim on the ground-truth masks,
        the mean effect, the CAM mass ``remaining`` in the part's cells after the removal and
        the ``context`` change in the other parts' cells (claim = effect + remaining −
        context), and how often the part is ranked first by the claim and by the effect;
        ``summary`` holds V2 for the region rule on ground-truth masks (``gt_region_*``) and
        for ``method``, over all present parts and over object parts only (background left
        out).
    """
    g = extras.gap[extras.gap.operator == operator]
    B, L = extras.present.shape
    names = list(part_names) if part_names is not None else [str(p) for p in range(L)]
    claim = torch.full((B, L), math.nan, dtype=torch.float64)
    effect = claim.clone()
    ii = torch.tensor(g["row"].to_numpy(), dtype=torch.long)
    pp = torch.tensor(g["part"].to_numpy(), dtype=torch.long)
    claim[ii, pp] = torch.tensor(g["claim"].to_numpy(), dtype=torch.float64)
    effect[ii, pp] = torch.tensor(g["effect"].to_numpy(), dtype=torch.float64)
    pr = extras.present
    top_claim = claimed_order(claim.nan_to_num(0.0), pr)[:, 0]
    top_effect = claimed_order(effect.nan_to_num(0.0), pr)[:, 0]
    per_part = g.groupby("part")[["claim", "effect", "remaining", "context"]].mean()
    per_part["top_by_claim"] = [float((top_claim == p).double().mean()) for p in per_part.index]
    per_part["top_by_effect"] = [float((top_effect == p).double().mean())
                                 for p in per_part.index]
    per_part.index = [names[p] for p in per_part.index]
    per_part.index.name = "part"
    objects = pr.clone()
    objects[:, 0] = False
    measured = extras.effects[operator]
    summary = {}
    for tag, mask in (("", pr), ("_objects", objects)):
        a = removal_agreement(claim, effect, mask).summary
        summary[f"gt_region_spearman{tag}"] = a["spearman"]
        summary[f"gt_region_top_part{tag}"] = a["top_part"]
        if method in extras.claims:
            b = removal_agreement(extras.claims[method].contributions, measured, mask).summary
            summary[f"{method}_spearman{tag}"] = b["spearman"]
            summary[f"{method}_top_part{tag}"] = b["top_part"]
    if method in extras.claims:
        top = claimed_order(extras.claims[method].contributions, pr)[:, 0]
        summary[f"{method}_top_is_background"] = float((top == 0).double().mean())
    return per_part, summary


# ------------------------------------------------------------------------------- figures

def plot_claimed_vs_measured(extras: ValidityExtras, operator: str = "rerender",
                             part_names: Sequence[str] | None = None,
                             methods: Sequence[str] | None = None, col_wrap: int = 5):
    """Claimed contribution against measured effect (present parts, one point per image and
    part), one panel per method; contrastive methods against the margin effect."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = list(methods or extras.claims)
    L = extras.present.shape[1]
    names = list(part_names) if part_names is not None else [str(p) for p in range(L)]
    frames = []
    pr = extras.present
    for m in methods:
        d = extras.margin_effects.get((operator, m), extras.effects[operator])
        c = extras.claims[m].contributions.detach().cpu()
        b, p = pr.nonzero(as_tuple=True)
        frames.append(pd.DataFrame({"method": m, "measured": d[b, p].double().numpy(),
                                    "claimed": c[b, p].double().numpy(),
                                    "part": [names[i] for i in p.tolist()]}))
    df = pd.concat(frames, ignore_index=True)
    g = sns.relplot(data=df, x="measured", y="claimed", hue="part", col="method",
                    col_wrap=min(col_wrap, len(methods)), height=2.3, s=9, alpha=0.5,
                    linewidth=0, facet_kws={"sharey": False, "sharex": False})
    g.set_titles("{col_name}", size=8)
    g.set_axis_labels(f"measured effect ({operator})", "claimed")
    for ax, m in zip(g.axes.flat, methods):
        if extras.claims[m].units in ("logit", "margin"):
            lo, hi = ax.get_xlim()
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    sns.move_legend(g, "center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, frameon=False)
    plt.close(g.figure)
    return g.figure


def plot_deletion_curves(extras: ValidityExtras, operators: Sequence[str] | None = None,
                         methods: Sequence[str] | None = None):
    """Mean class probability after removing 0, 1, ... parts in the claimed order of each
    method, a random order and the oracle order (by measured effect); one panel per operator."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ops = list(operators or extras.effects)
    methods = list(methods or extras.claims)
    rows = []
    for (order, op), curve in extras.curves.items():
        if op not in ops or (order not in methods and order not in ("random", "oracle")):
            continue
        mean = curve.double().mean(0).numpy()
        rows += [{"order": order, "operator": op, "parts removed": j, "probability": v}
                 for j, v in enumerate(mean)]
    df = pd.DataFrame(rows)
    hue_order = [*methods, "random", "oracle"]
    palette = dict(zip(methods, sns.color_palette("husl", len(methods))))
    palette.update(random="0.55", oracle="black")
    dashes = {o: (2, 2) if o in ("random", "oracle") else "" for o in hue_order}
    g = sns.relplot(data=df, x="parts removed", y="probability", hue="order", style="order",
                    hue_order=hue_order, style_order=hue_order, palette=palette, dashes=dashes,
                    col="operator", col_order=ops, kind="line", height=2.8, aspect=1.0,
                    linewidth=1.2)
    g.set_titles("{col_name}")
    g.set(ylim=(-0.02, 1.02))
    plt.close(g.figure)
    return g.figure


def plot_sanity(sanity: pd.DataFrame):
    """V5: Spearman of contributions (solid) and maps (dashed) with the trained model's, after
    each step of the cascading re-initialisation."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = sanity.melt(id_vars=["method", "step", "module"],
                       value_vars=["spearman_contrib", "spearman_maps"], var_name="what",
                       value_name="spearman")
    long["what"] = long["what"].map({"spearman_contrib": "contributions",
                                     "spearman_maps": "maps"})
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    sns.lineplot(data=long, x="step", y="spearman", hue="method", style="what",
                 style_order=["contributions", "maps"],
                 dashes={"contributions": (1, 0), "maps": (3, 2)}, markers=True, ax=ax)
    steps = sanity.drop_duplicates("step").sort_values("step")
    ax.set_xticks(steps["step"].tolist(), steps["module"].tolist(), rotation=30, fontsize=8)
    ax.set(xlabel="re-initialised down to", ylabel="Spearman with trained", ylim=(-1.05, 1.05))
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=7, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    plt.close(fig)
    return fig
