"""The amortised part-contribution rule: part Shapley values at the cost of one pass.

A :class:`ContributionHead` (FastSHAP's idea, Jethani et al., ICLR 2022, applied to parts) is
a small network on what the explainer has already computed -- the classifier's final features
``A``, its logits and the PDM's part probabilities -- trained (:mod:`partslib.explain.
amortised_training`) on training images to predict the part Shapley values of a removal game
(:mod:`partslib.explain.shapley`) for every class. At explanation time it costs one classifier
+ PDM pass and a few hundred multiply-adds per part.

Inputs per label ``p`` (``π_p``: the part's share of each feature cell, as in the region rule):
the part's mean feature ``q_p = Σ_u π_p(u) A(u) / Σ_u π_p(u)``, its area ``a_p = mean_u π_p``,
its region contributions to every class ``a_p (W q_p)`` and the label's identity; a DeepSets
context (the mean of the present parts' embeddings) and the image's logits relative to the
baseline join them before the output layer.

Complete by construction: the games' empty coalition is one image for every input (SynthParts'
re-render without any label, or :class:`~partslib.removal.BackgroundFill` without any label:
flat grey), so ``v(∅) = f(grey)`` is one logit vector, which the rule scores with the explained
classifier itself (one image per batch). The raw outputs ``φ̂`` of the present labels are
shifted by the same amount so that ``Σ_p φ_p = f(x) − f(grey)`` (FastSHAP's additive efficient
normalisation); absent labels get 0. The rule's bias is ``f(grey)_k``, so ``bias + Σ c =
logit_k`` exactly, for the trained classifier and any other with the same architecture.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partslib.explain.core import ExplainContext
from partslib.explain.explanation import part_areas
from partslib.explain.rules import Rule, RuleResult
from partslib.explain.shapley import select_scores

__all__ = ["GREY", "AmortisedRule", "ContributionHead", "head_inputs"]

GREY = 128 / 255  # the image with every label removed (SynthParts' re-render, BackgroundFill)


def _pooled(F_map: Tensor, pi: Tensor) -> tuple[Tensor, Tensor]:
    """Mean feature of each label ``[B, L, C]`` (weights ``π_p`` ``[B, L, h, w]`` on the map's
    grid) and the label's mass ``[B, L, 1]`` on that grid."""
    pi = pi.flatten(2)  # [B, L, hw]
    mass = pi.sum(-1, keepdim=True)
    return torch.einsum("blu,bcu->blc", pi, F_map.flatten(2)) / mass.clamp_min(1e-6), mass


def _shares(probs: Tensor, maps: tuple[Tensor, ...]) -> dict[tuple[int, int], Tensor]:
    """``π_p`` on the grid of every map, each pooled from the next finer one when it divides
    it (one pass over the full-resolution probabilities)."""
    sizes = sorted({(int(m.shape[-2]), int(m.shape[-1])) for m in maps}, reverse=True)
    out: dict[tuple[int, int], Tensor] = {}
    src = probs
    for size in sizes:
        fine = tuple(src.shape[-2:])
        if fine[0] % size[0] or fine[1] % size[1]:
            src = probs
            fine = tuple(src.shape[-2:])
        if fine[0] % size[0] or fine[1] % size[1]:
            out[size] = src = F.adaptive_avg_pool2d(src, size)
        else:  # the same means; a fixed kernel is faster than the adaptive one on the CPU
            kernel = (fine[0] // size[0], fine[1] // size[1])
            out[size] = src = F.avg_pool2d(src, kernel) if kernel != (1, 1) else src
    return out


def head_inputs(A: Tensor, probs: Tensor, labels: Tensor, fc: nn.Linear,
                extra: tuple[Tensor, ...] = (), present: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Per-label inputs ``[B, L, C + C_extra + 1 + K + L]`` and presence ``[B, L]``.

    ``A`` final features ``[B, C, h, w]``; ``probs`` part probabilities ``[B, L, H, W]``;
    ``labels`` the argmax map ``[B, H, W]`` (presence, unless ``present`` is given); ``fc`` the
    classifier's linear head; ``extra``: earlier stage maps whose per-part means join the final
    ones.
    """
    B, _, h, w = A.shape
    L = probs.shape[1]
    shares = _shares(probs, (A, *extra))
    q, mass = _pooled(A, shares[(h, w)])
    area = mass / (h * w)
    region = area * (q @ fc.weight.t())  # [B, L, K]
    onehot = torch.eye(L, dtype=A.dtype, device=A.device).expand(B, L, L)
    if present is None:
        present = part_areas(labels, L) > 0
    more = [_pooled(f.float(), shares[(int(f.shape[-2]), int(f.shape[-1]))])[0] for f in extra]
    return torch.cat([q, *more, area, region, onehot], dim=-1), present


class ContributionHead(nn.Module):
    """Predicts the ``[B, L, K]`` part values of every class from :func:`head_inputs`, the
    logits and the baseline logits; complete by construction.

    With the classifier's linear weights ``weight`` ``[K, C]`` (the head of a GAP + linear
    classifier, as every contract classifier has), the head predicts for each part the change
    ``Δ_p`` of the pooled final features that removing it causes, and its value for class
    ``k`` is ``w_k · Δ_p``: the identity ``logit_k(x) − logit_k(x ∖ p) = w_k · (ā(x) − ā(x ∖
    p))`` holds exactly for such classifiers, one ``Δ_p`` serves every class, and the values
    follow the weights they are given (re-initialise ``fc`` and they change with it). Without
    ``weight`` it predicts the ``K`` values directly.

    Args:
        channels: pooled channels per label (the final stage's plus those of ``stages``).
        num_labels: ``L = P + 1``.
        num_classes: ``K``.
        hidden: width of the per-part MLP.
        baseline: ``[K]`` logits of the game's empty coalition (``f(baseline image)``).
        game: what the head was trained to predict (recorded; e.g. ``"rerender"``).
        stages: earlier classifier stages whose per-part mean features it also reads.
        weight: the classifier's ``fc.weight`` ``[K, C]`` (stored; the rule passes the
            explained classifier's own at explanation time).
        feature_dim: ``C`` of ``weight`` when it is loaded from a checkpoint (0: no weight).
    """

    baseline: Tensor
    in_mean: Tensor
    in_std: Tensor
    weight: Tensor

    def __init__(self, channels: int, num_labels: int, num_classes: int, hidden: int = 128,
                 baseline: Tensor | None = None, game: str = "",
                 stages: tuple[str, ...] = (), weight: Tensor | None = None,
                 feature_dim: int = 0):
        super().__init__()
        self.channels, self.num_labels, self.num_classes = channels, num_labels, num_classes
        self.hidden, self.game, self.stages = hidden, game, tuple(stages)
        if weight is not None:
            if weight.dim() != 2 or weight.shape[0] != num_classes:
                raise ValueError(f"weight must be the classifier's fc.weight [K={num_classes}, "
                                 f"C], got shape {tuple(weight.shape)}")
            feature_dim = int(weight.shape[1])
        self.feature_dim = int(feature_dim)
        d_in = channels + 1 + num_classes + num_labels
        self.embed = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(),
                                   nn.Linear(hidden, hidden), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * hidden + num_classes, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.feature_dim or num_classes))
        self.register_buffer("baseline", torch.zeros(num_classes) if baseline is None
                             else baseline.detach().float().clone())
        self.register_buffer("in_mean", torch.zeros(d_in))
        self.register_buffer("in_std", torch.ones(d_in))
        self.register_buffer("weight", torch.zeros(num_classes, self.feature_dim)
                             if weight is None else weight.detach().float().clone())

    def config(self) -> dict[str, Any]:
        """Constructor arguments (checkpoints)."""
        return {"channels": self.channels, "num_labels": self.num_labels,
                "num_classes": self.num_classes, "hidden": self.hidden, "game": self.game,
                "stages": list(self.stages), "feature_dim": self.feature_dim}

    def forward(self, inputs: Tensor, present: Tensor, logits: Tensor,
                weight: Tensor | None = None, baseline: Tensor | None = None) -> Tensor:
        """Part values ``[B, L, K]``: 0 for absent labels, and ``Σ_p φ_p = logits − baseline``
        over the present ones (``weight``, ``baseline``: the explained classifier's, default
        the stored ones)."""
        z = (inputs - self.in_mean) / self.in_std
        e = self.embed(z)  # [B, L, H]
        pm = present.to(e.dtype)[..., None]
        ctx = (e * pm).sum(1) / pm.sum(1).clamp_min(1)  # [B, H]
        gap = logits - (self.baseline if baseline is None else baseline)  # [B, K]
        raw = self.out(torch.cat([e, ctx[:, None].expand_as(e),
                                  gap[:, None].expand(-1, e.shape[1], -1)], dim=-1))
        if self.feature_dim:
            raw = raw @ (self.weight if weight is None else weight).t()  # w_k · Δ_p
        raw = raw * pm
        n = pm.sum(1).clamp_min(1)  # [B, 1]
        shift = (gap - raw.sum(1)) / n  # [B, K]
        return (raw + shift[:, None]) * pm

    def explain(self, features: Any, A: Tensor, probs: Tensor, labels: Tensor, logits: Tensor,
                fc: nn.Linear, present: Tensor | None = None,
                baseline: Tensor | None = None) -> Tensor:
        """``[B, L, K]`` values from the explainer's context tensors (``features``: the
        classifier's stage outputs by name; ``fc``: its linear head, whose weights the values
        are read with)."""
        x, present = head_inputs(A, probs, labels, fc, tuple(features[s] for s in self.stages),
                                 present)
        return self(x, present, logits, fc.weight.float() if self.feature_dim else None,
                    baseline)


class AmortisedRule(Rule):
    """Part Shapley values predicted by a trained :class:`ContributionHead`: one classifier +
    PDM pass, complete (``bias = f(baseline)_k``)."""

    units = "logit"
    complete = True
    paint = "soft"

    def __init__(self, head: ContributionHead):
        if not isinstance(head, ContributionHead):
            raise TypeError(f"head must be a ContributionHead, got {type(head).__name__}")
        self.head = head.eval()
        self._grey: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _baseline(self, ctx: ExplainContext) -> Tensor:
        """``[K]`` logits of the flat grey image (the game's empty coalition) under the
        explained classifier, computed once per classifier state: the key holds every
        parameter's storage and in-place version counter, so a re-initialised or fine-tuned
        classifier is scored again."""
        clf, x = ctx.classifier, ctx.images
        key = (tuple(x.shape[1:]), x.dtype, x.device,
               tuple((t.data_ptr(), t._version) for t in (*clf.parameters(), *clf.buffers())))
        hit = self._grey.get(clf)
        if hit is not None and hit[0] == key:
            return hit[1]
        grey = torch.full((1, *x.shape[1:]), GREY, dtype=x.dtype, device=x.device)
        base = clf(grey)[0].float()
        self._grey[clf] = (key, base)
        return base

    @property
    def name(self) -> str:
        """``amortised``."""
        return "amortised"

    def describe(self) -> str:
        """``amortised:<game>``."""
        return f"amortised:{self.head.game or 'shapley'}"

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """The head's values of the explained score and the baseline's score as bias."""
        fc = ctx.classifier.fc
        if self.head.num_labels != ctx.num_labels or self.head.num_classes != fc.out_features:
            raise ValueError(f"the contribution head explains {self.head.num_labels} labels and "
                             f"{self.head.num_classes} classes; the explainer has "
                             f"{ctx.num_labels} labels and {fc.out_features} classes")
        missing = [st for st in self.head.stages if st not in ctx.features]
        if missing:
            raise ValueError(f"the contribution head reads stages {missing} that the "
                             f"classifier does not have ({list(ctx.features)})")
        channels = ctx.A.shape[1] + sum(ctx.features[st].shape[1] for st in self.head.stages)
        if channels != self.head.channels:
            raise ValueError(f"the contribution head reads {self.head.channels} channels per "
                             f"part; this classifier gives {channels} (final stage"
                             f"{' + ' + ', '.join(self.head.stages) if self.head.stages else ''})"
                             f": train a head for this classifier (train_head)")
        head = self.head if self.head.baseline.device == ctx.A.device \
            else self.head.to(ctx.A.device)
        A = ctx.A.contiguous() if ctx.A.is_contiguous(memory_format=torch.channels_last) \
            else ctx.A
        base = self._baseline(ctx)
        values = head.explain(ctx.features, A.float(), ctx.probs.float(), ctx.labels,
                              ctx.logits.float(), fc, ctx.present, base)
        base = base.expand(len(values), -1)
        c, b = select_scores(values, base, ctx.target, ctx.contrast, ctx.score)
        return RuleResult(contributions=c, bias=b)
