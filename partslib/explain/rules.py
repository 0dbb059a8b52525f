"""Contribution rules: how much each part drove the explained score, from one shared context.

A rule is a small object called with an :class:`~partslib.explain.core.ExplainContext` (images,
stage features, final features ``A``, logits, target ``k``, contrast ``j`` or None, explained
score, part probabilities and argmax map) that returns a :class:`RuleResult` whose
``contributions`` are ``[B, P+1]`` (column 0 = background). Class attributes say what it is:

* ``name`` -- short name (the method name is ``<segmenter>-<name>``, e.g. ``pdm-region-soft``);
* ``units`` -- ``"logit"`` (the explained score's units; these rules also explain the
  contrastive margin ``logit_k − logit_j``), ``"share"`` (of a heatmap's mass) or ``"none"``;
* ``complete`` -- whether ``bias + Σ_p c_p = score`` holds exactly;
* ``absent_zero`` -- whether parts absent from the argmax part map always get 0;
* ``paint`` -- how :attr:`PartExplanation.maps` is drawn: ``Σ_p c_p π_p`` with the soft
  probabilities (``"soft"``) or the one-hot argmax map (``"hard"``), the rule's own map, or
  none (None).

Adding a rule: a class here, an entry in :mod:`partslib.explain.registry`, and the registry
test covers it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from partslib.explain.core import ExplainContext, region_contributions

__all__ = [
    "HeatmapMassRule",
    "IBDBasisRule",
    "OcclusionRule",
    "RandomRule",
    "RegionRule",
    "Rule",
    "RuleResult",
]


@dataclass(frozen=True)
class RuleResult:
    """What a rule computes for one batch."""

    contributions: Tensor  # [B, P+1]
    bias: Tensor | None = None  # [B] the bias term of the score, or None
    cam: Tensor | None = None  # [B, h, w] the CAM of the explained weights (region rule)
    maps: Tensor | None = None  # [B, H, W] a map of the rule's own (else painted by the core)


class Rule(ABC):
    """Base class of the contribution rules (see the module docstring)."""

    name: ClassVar[str] = "rule"
    units: ClassVar[str] = "logit"
    complete: ClassVar[bool] = False
    absent_zero: ClassVar[bool] = True
    paint: ClassVar[str | None] = "hard"

    @abstractmethod
    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """The ``[B, P+1]`` contributions of every part of every image of ``ctx``'s batch."""

    def describe(self) -> str:
        """The rule and its settings, e.g. ``occlusion:blur``."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class RegionRule(Rule):
    """SPEC §4: ``c_p = mean_u π_p(u) CAM(u)`` with ``CAM = (w_k [− w_j]) · A``; complete.

    ``hard=True`` uses the argmax part map for π (absent parts then get 0); the soft rule uses
    the probabilities, so a part absent from the argmax map can hold a small contribution.
    """

    units = "logit"
    complete = True

    def __init__(self, hard: bool = False):
        self.hard = bool(hard)

    @property
    def name(self) -> str:
        """``region-hard`` or ``region-soft``."""
        return "region-hard" if self.hard else "region-soft"

    @property
    def absent_zero(self) -> bool:
        """Absent parts get 0 only with the argmax map (``hard``)."""
        return self.hard

    @property
    def paint(self) -> str:
        """The maps are painted with the part map the rule read."""
        return "hard" if self.hard else "soft"

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """Region contributions, the bias of the explained score and its CAM."""
        w, b = ctx.weights()
        c, cam = region_contributions(ctx.A, w, ctx.probs, self.hard)
        return RuleResult(contributions=c, bias=b.detach(), cam=cam)


class OcclusionRule(Rule):
    """Score drop when each present part is filled by ``imputer``: ``c_p = s(x) − s(x∖p)``.

    Every present part of every image is removed once, in batched forwards of
    ``ctx.batch_size`` removed images; absent parts get 0. ``features`` optionally replaces the
    classifier's ``x -> A`` for the removed images (e.g.
    :func:`~partslib.explain.core.fused_features`, same logits up to float rounding).
    """

    name = "occlusion"
    units = "logit"

    def __init__(self, imputer: Any = None, features: Any = None):
        if imputer is None:
            from partslib.removal import GaussianBlurFill

            imputer = GaussianBlurFill(11, 5.0)
        self.imputer, self.features = imputer, features

    def describe(self) -> str:
        """``occlusion:<imputer name>``."""
        return f"occlusion:{getattr(self.imputer, 'name', type(self.imputer).__name__)}"

    def _logits(self, ctx: ExplainContext, x: Tensor) -> Tensor:
        if self.features is None:
            return ctx.classifier(x)
        A = self.features(x)
        A = A.contiguous() if A.is_contiguous(memory_format=torch.channels_last) else A
        return ctx.classifier.head(A)

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """The score drop per present part (0 for absent parts)."""
        x, labels, k, j = ctx.images, ctx.labels, ctx.target, ctx.contrast
        L = ctx.num_labels
        b_idx, p_idx = torch.nonzero(ctx.present, as_tuple=True)
        new = []
        for s in range(0, len(b_idx), ctx.batch_size):
            bb, pp = b_idx[s:s + ctx.batch_size], p_idx[s:s + ctx.batch_size]
            drop = torch.zeros(len(bb), L, dtype=torch.bool, device=x.device)
            drop[torch.arange(len(bb), device=x.device), pp] = True
            logits = self._logits(ctx, self.imputer(x[bb], labels[bb], drop))
            r = torch.arange(len(bb), device=x.device)
            new.append(logits[r, k[bb]] - (logits[r, j[bb]] if j is not None else 0))
        c = torch.zeros(len(x), L, dtype=ctx.score.dtype, device=ctx.score.device)
        if new:
            c[b_idx, p_idx] = ctx.score[b_idx] - torch.cat(new)
        return RuleResult(contributions=c)


class IBDBasisRule(Rule):
    """IBD's basis decomposition in logit units (``‖w_k‖‖a‖ s_i q_ci · â``), from the
    context's final features; ``bias + Σ c + residual = score`` (the residual is claimed by no
    part, so the rule is not complete). It reads no part map: contributions do not depend on
    the segmenter, only the painted map does. Contrastive: ``c(k) − c(j)``."""

    name = "basis"
    units = "logit"
    absent_zero = False
    paint = "soft"

    def __init__(self, ibd: Any):
        self.ibd = ibd

    def _basis(self, a: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        from partslib.ibd import ibd_contributions

        ibd = self.ibd
        expl = ibd_contributions(a, ibd.decomposition, k)
        rows = torch.tensor(ibd.part_concepts, dtype=torch.long)[expl.concepts.cpu()]
        c = torch.zeros(len(k), ibd.num_labels, dtype=expl.contributions.dtype)
        c.scatter_(1, rows, expl.contributions.cpu())
        w = ibd.classifier.fc.weight[k]
        scale = (w.norm(dim=1) * a.norm(dim=1)).to(c.dtype).cpu()
        return c * scale[:, None], ibd.classifier.fc.bias[k].to(c.dtype).cpu()

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """IBD's basis contributions and the class bias, in logit units."""
        a = ctx.A.mean(dim=(2, 3))
        c, b = self._basis(a, ctx.target)
        if ctx.contrast is not None:
            cj, bj = self._basis(a, ctx.contrast)
            c, b = c - cj, b - bj
        dev = ctx.score.device
        return RuleResult(contributions=c.to(torch.float32).to(dev),
                          bias=b.to(torch.float32).to(dev))


class HeatmapMassRule(Rule):
    """Share of a heatmap's positive mass inside each part of the argmax map (Grad-CAM of the
    final stage by default, through pytorch-grad-cam; its hooks are released on return)."""

    name = "heatmap-mass"
    units = "share"
    paint = None

    def __init__(self, method: str = "gradcam"):
        self.method = method

    def describe(self) -> str:
        """``heatmap-mass:<pytorch-grad-cam method>``."""
        return f"heatmap-mass:{self.method}"

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """Each part's share of the heatmap's positive mass, and the heatmaps as maps."""
        from partslib.baselines import gradcam_maps, heatmap_part_contributions

        maps = gradcam_maps(ctx.classifier, ctx.images, ctx.target, method=self.method,
                            batch_size=ctx.batch_size)
        c = heatmap_part_contributions(maps, ctx.labels, ctx.num_labels)
        return RuleResult(contributions=c.to(torch.float32).to(ctx.score.device), maps=maps)


class RandomRule(Rule):
    """The chance floor: standard-normal contributions for present parts, 0 for absent ones.

    Each image draws from a generator seeded by ``seed`` and the image's bytes, so an image
    gets the same numbers whatever batch it is in, and the global RNG is untouched.
    """

    name = "random"
    units = "none"
    paint = None

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def describe(self) -> str:
        """``random:<seed>``."""
        return f"random:{self.seed}"

    def _image_seed(self, image: Tensor) -> int:
        h = hashlib.blake2b(image.detach().float().cpu().contiguous().numpy().tobytes(),
                            digest_size=8, key=str(self.seed).encode())
        return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """Seeded standard-normal contributions for present parts, 0 for absent ones."""
        L = ctx.num_labels
        draws = [torch.randn(L, generator=torch.Generator().manual_seed(self._image_seed(x)))
                 for x in ctx.images]
        c = torch.stack(draws) if draws else torch.zeros(0, L)
        present = ctx.present.cpu()
        return RuleResult(contributions=torch.where(present, c, 0.0).to(ctx.score.device))
