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
flat grey), so ``v(∅) = f(baseline)`` is one logit vector, stored with the head. The raw
outputs ``φ̂`` of the present labels are shifted by the same amount so that
``Σ_p φ_p = f(x) − f(baseline)`` (FastSHAP's additive efficient normalisation); absent labels
get 0. The rule's bias is ``f(baseline)_k``, so ``bias + Σ c = logit_k`` exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partslib.explain.core import ExplainContext
from partslib.explain.explanation import part_areas
from partslib.explain.rules import Rule, RuleResult
from partslib.explain.shapley import select_scores

__all__ = ["AmortisedRule", "ContributionHead", "head_inputs"]


def _pooled(F_map: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean feature of each label ``[B, L, C]`` (weights ``π_p`` on the map's grid) and the
    label's mass ``[B, L, 1]`` on that grid."""
    size = (int(F_map.shape[-2]), int(F_map.shape[-1]))
    pi = F.adaptive_avg_pool2d(probs, size).flatten(2)  # [B, L, hw]
    mass = pi.sum(-1, keepdim=True)
    return torch.einsum("blu,bcu->blc", pi, F_map.flatten(2)) / mass.clamp_min(1e-6), mass


def head_inputs(A: Tensor, probs: Tensor, labels: Tensor, fc: nn.Linear,
                extra: tuple[Tensor, ...] = ()) -> tuple[Tensor, Tensor]:
    """Per-label inputs ``[B, L, C + C_extra + 1 + K + L]`` and presence ``[B, L]``.

    ``A`` final features ``[B, C, h, w]``; ``probs`` part probabilities ``[B, L, H, W]``;
    ``labels`` the argmax map ``[B, H, W]`` (presence); ``fc`` the classifier's linear head;
    ``extra``: earlier stage maps whose per-part means join the final ones.
    """
    B, _C, h, w = A.shape
    L = probs.shape[1]
    q, mass = _pooled(A, probs)
    area = mass / (h * w)
    region = area * (q @ fc.weight.t())  # [B, L, K]
    onehot = torch.eye(L, dtype=A.dtype, device=A.device).expand(B, L, L)
    present = part_areas(labels, L) > 0
    more = [_pooled(f.float(), probs)[0] for f in extra]
    return torch.cat([q, *more, area, region, onehot], dim=-1), present


class ContributionHead(nn.Module):
    """Predicts the ``[B, L, K]`` part Shapley values of every class from
    :func:`head_inputs`, the logits and the baseline logits; complete by construction.

    Args:
        channels: pooled channels per label (the final stage's plus those of ``stages``).
        num_labels: ``L = P + 1``.
        num_classes: ``K``.
        hidden: width of the per-part MLP.
        baseline: ``[K]`` logits of the game's empty coalition (``f(baseline image)``).
        game: what the head was trained to predict (recorded; e.g. ``"rerender"``).
        stages: earlier classifier stages whose per-part mean features it also reads.
    """

    baseline: Tensor
    in_mean: Tensor
    in_std: Tensor

    def __init__(self, channels: int, num_labels: int, num_classes: int, hidden: int = 128,
                 baseline: Tensor | None = None, game: str = "",
                 stages: tuple[str, ...] = ()):
        super().__init__()
        self.channels, self.num_labels, self.num_classes = channels, num_labels, num_classes
        self.hidden, self.game, self.stages = hidden, game, tuple(stages)
        d_in = channels + 1 + num_classes + num_labels
        self.embed = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(),
                                   nn.Linear(hidden, hidden), nn.GELU())
        self.out = nn.Sequential(nn.Linear(2 * hidden + num_classes, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_classes))
        self.register_buffer("baseline", torch.zeros(num_classes) if baseline is None
                             else baseline.detach().float().clone())
        self.register_buffer("in_mean", torch.zeros(d_in))
        self.register_buffer("in_std", torch.ones(d_in))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (checkpoints)."""
        return {"channels": self.channels, "num_labels": self.num_labels,
                "num_classes": self.num_classes, "hidden": self.hidden, "game": self.game,
                "stages": list(self.stages)}

    def forward(self, inputs: Tensor, present: Tensor, logits: Tensor) -> Tensor:
        """Part Shapley values ``[B, L, K]``: 0 for absent labels, and
        ``Σ_p φ_p = logits − baseline`` over the present ones."""
        z = (inputs - self.in_mean) / self.in_std
        e = self.embed(z)  # [B, L, H]
        pm = present.to(e.dtype)[..., None]
        ctx = (e * pm).sum(1) / pm.sum(1).clamp_min(1)  # [B, H]
        gap = logits - self.baseline  # [B, K]
        raw = self.out(torch.cat([e, ctx[:, None].expand_as(e),
                                  gap[:, None].expand(-1, e.shape[1], -1)], dim=-1))
        raw = raw * pm
        n = pm.sum(1).clamp_min(1)  # [B, 1]
        shift = (gap - raw.sum(1)) / n  # [B, K]
        return (raw + shift[:, None]) * pm

    def explain(self, features: Any, A: Tensor, probs: Tensor, labels: Tensor, logits: Tensor,
                fc: nn.Linear) -> Tensor:
        """``[B, L, K]`` values from the explainer's context tensors (``features``: the
        classifier's stage outputs by name)."""
        x, present = head_inputs(A, probs, labels, fc, tuple(features[s] for s in self.stages))
        return self(x, present, logits)


class AmortisedRule(Rule):
    """Part Shapley values predicted by a trained :class:`ContributionHead`: one classifier +
    PDM pass, complete (``bias = f(baseline)_k``)."""

    units = "logit"
    complete = True
    paint = "hard"

    def __init__(self, head: ContributionHead):
        if not isinstance(head, ContributionHead):
            raise TypeError(f"head must be a ContributionHead, got {type(head).__name__}")
        self.head = head.eval()

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
        head = self.head.to(ctx.A.device)
        A = ctx.A.contiguous() if ctx.A.is_contiguous(memory_format=torch.channels_last) \
            else ctx.A
        values = head.explain(ctx.features, A.float(), ctx.probs.float(), ctx.labels,
                              ctx.logits.float(), fc)
        base = head.baseline.expand(len(values), -1)
        c, b = select_scores(values, base, ctx.target, ctx.contrast, ctx.score)
        return RuleResult(contributions=c, bias=b)
