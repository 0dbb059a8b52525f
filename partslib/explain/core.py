"""The explainer template: one forward pass, one part map, one rule per explanation.

:class:`PartExplainer` validates the images, cuts them into batches, resolves the explained
class ``k`` (and, contrastive, the runner-up ``j``), runs the classifier and the part segmenter
ONCE per batch into an :class:`ExplainContext`, lets a contribution rule
(:mod:`partslib.explain.rules`) compute ``[B, P+1]`` contributions from it, and assembles the
:class:`PartExplanation`.

Region rule (default, SPEC §4). The class activation map ``CAM_k(u) = w_k · A(u)`` satisfies
``logit_k = b_k + mean_u CAM_k(u)``. With ``π_p(u)`` the share of feature cell ``u`` covered by
part ``p`` (mean of the part probability over the pixels the cell covers; soft, or hard from
the argmax), ``c_p = mean_u π_p(u) CAM_k(u)`` and ``b_k + Σ_p c_p = logit_k`` exactly
(completeness), because ``Σ_p π_p(u) = 1``. Background is a part like any other.

Occlusion rule. Each segmented part is removed with an imputer (a removal operator from
:mod:`partslib.removal`) and ``c_p`` is the drop of the class score; no completeness identity,
but it sees nonlinear effects.

Contrastive option. Explain the margin ``logit_k − logit_j`` against the runner-up class ``j``
(``w_k − w_j`` in the region rule); every rule in logit units supports it.

Segmenters. The part map comes from a :class:`Segmenter`: :class:`PDMSegmenter` (the PDM, the
only place it is called), :class:`IBDLinearSegmenter` (IBD's 1×1 linear concept maps) or
:class:`FixedMapsSegmenter` (given label maps, e.g. the ground-truth parts of the images).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.checks import model_dtype
from partslib.constants import INFERENCE_BATCH
from partslib.explain.explanation import (
    PartExplanation,
    paint,
    part_areas,
    part_class_table,
)
from partslib.models import ContractClassifier, check_images
from partslib.pdm import PartsDetectionModule, label_map

__all__ = [
    "MODES",
    "ExplainContext",
    "FinalFeatures",
    "FixedMapsSegmenter",
    "IBDLinearSegmenter",
    "PDMSegmenter",
    "PartExplainer",
    "PartExplanation",
    "Segmenter",
    "as_segmenter",
    "explain",
    "fused_features",
    "paint",
    "part_areas",
    "part_class_table",
    "region_contributions",
    "resolve_targets",
    "runner_up",
    "segment_parts",
]

MODES = ("region", "occlusion")
Targets = int | Sequence[int] | Tensor | None


def region_contributions(features: Tensor, weights: Tensor, part_probs: Tensor,
                         hard: bool = False) -> tuple[Tensor, Tensor]:
    """Region-mode contributions ``c_p = mean_u π_p(u) · CAM(u)`` and the CAM.

    Args:
        features: final feature map ``A`` ``[B, C, h, w]``.
        weights: the explained weight vector per image ``[B, C]`` (``w_k``, or ``w_k − w_j``).
        part_probs: part probabilities ``[B, P+1, H, W]`` at any resolution that the feature
            grid divides (``π_p(u)`` is their mean over the pixels cell ``u`` covers).
        hard: use the argmax part map instead of the probabilities.

    Returns ``(contributions [B, P+1], cam [B, h, w])``; ``Σ_p c_p = mean_u CAM(u)``.
    """
    cam = torch.einsum("bc,bchw->bhw", weights, features)
    if hard:
        occ = F.one_hot(label_map(part_probs), part_probs.shape[1]).permute(0, 3, 1, 2)
        occ = occ.to(features.dtype)
    else:
        occ = part_probs
    # sums to 1 over parts in every cell
    pi = F.adaptive_avg_pool2d(occ, (features.shape[-2], features.shape[-1]))
    return torch.einsum("bphw,bhw->bp", pi, cam) / cam[0].numel(), cam


def resolve_targets(target: Targets, logits: Tensor) -> Tensor:
    """One target class per image: ``None`` = the predicted class; an int is used for all."""
    B, K = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    if t.numel() == 1 and B > 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"need one target per image: got {t.numel()} targets for {B} images")
    bad = t[(t < 0) | (t >= K)]
    if bad.numel():
        raise ValueError(f"unknown target class {int(bad[0])}: the classifier has {K} classes "
                         f"(0..{K - 1})")
    return t.to(logits.device)


def runner_up(logits: Tensor, target: Tensor) -> Tensor:
    """The highest-scoring class other than ``target``, per image ``[B]``."""
    masked = logits.clone()
    masked[torch.arange(len(target)), target] = -math.inf
    return masked.argmax(1)


# ----------------------------------------------------------------------------- models


class FinalFeatures(torch.nn.Module):
    """``x -> A``: the final-stage features of a contract classifier, as one module."""

    def __init__(self, classifier: ContractClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """The final-stage features ``A`` ``[B, C, h, w]`` of images ``x``."""
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
    except Exception:
        return plain
    return fast


def segment_parts(pdm: PartsDetectionModule, classifier: ContractClassifier,
                  features: Mapping[str, Tensor], images: Tensor) -> Tensor:
    """Part logits ``[B, P+1, H, W]`` of ``pdm`` from the classifier's stage features and the
    images in [0, 1]: the one place in partslib's explainers that calls a PDM."""
    return pdm(features, images)


class Segmenter(Protocol):
    """Where the parts are: part logits ``[B, P+1, H, W]`` from the classifier's features."""

    name: str  # prefix of the method names built on it ("pdm", "ibd-linear")
    num_labels: int  # P + 1
    input_size: tuple[int, int] | None  # the image size it needs, or None (any)

    def check(self, classifier: ContractClassifier) -> None:
        """Raise ``ValueError`` unless the segmenter can read ``classifier``'s features."""
        ...

    def __call__(self, classifier: ContractClassifier, features: Mapping[str, Tensor],
                 images: Tensor) -> Tensor:
        """Part logits ``[B, P+1, H, W]`` from the stage ``features`` of ``images``."""
        ...


class PDMSegmenter:
    """The PDM as a segmenter. BatchNorm is folded into the convolutions and the weights are
    channels-last (``fuse=True``): the same maps up to float rounding, ~15% less explanation
    time on the CPU, where oneDNN otherwise reorders every small-channel activation."""

    name = "pdm"

    def __init__(self, pdm: PartsDetectionModule, fuse: bool = True):
        missing = [a for a in ("num_labels", "stages", "input_size", "fused")
                   if not hasattr(pdm, a)]
        if missing:
            raise TypeError(f"pdm must be a PartsDetectionModule (or have its {missing}), got "
                            f"{type(pdm).__name__}")
        self.source = pdm
        self.pdm = pdm.eval().fused().to(memory_format=torch.channels_last) if fuse else pdm
        self.num_labels = pdm.num_labels
        h, w = pdm.input_size
        self.input_size: tuple[int, int] | None = (int(h), int(w))

    def check(self, classifier: ContractClassifier) -> None:
        """Raise ``ValueError`` if the PDM reads stages that ``classifier`` does not have."""
        missing = [s for s in self.pdm.stages if s not in classifier.stage_names]
        if missing:
            raise ValueError(f"the PDM reads stages {missing} that the classifier does not have")

    def __call__(self, classifier: ContractClassifier, features: Mapping[str, Tensor],
                 images: Tensor) -> Tensor:
        """The PDM's part logits (:func:`segment_parts`)."""
        return segment_parts(self.pdm, classifier, features, images)


class IBDLinearSegmenter:
    """IBD's 1×1 linear concept maps as a segmenter (softmax over the bilinearly upsampled
    concept scores; labels without a concept classifier get probability 0)."""

    name = "ibd-linear"

    def __init__(self, ibd: Any):
        if not hasattr(ibd, "linear_maps_from_features"):
            raise TypeError(f"ibd must be a partslib.baselines.IBDModel, got "
                            f"{type(ibd).__name__}")
        self.ibd = ibd
        self.num_labels = int(ibd.num_labels)
        self.input_size: tuple[int, int] | None = None

    def check(self, classifier: ContractClassifier) -> None:
        """Raise ``ValueError`` unless IBD's concept classifiers read as many channels as the
        classifier's final stage has."""
        C = self.ibd.concept_classifiers.weight.shape[1]
        if classifier.fc.in_features != C:
            raise ValueError(f"IBD's concept classifiers read {C} channels, the classifier's "
                             f"final stage has {classifier.fc.in_features}")

    def __call__(self, classifier: ContractClassifier, features: Mapping[str, Tensor],
                 images: Tensor) -> Tensor:
        """IBD's linear concept scores at the image size (``-inf`` for labels without a
        concept classifier)."""
        return self.ibd.linear_maps_from_features(features[classifier.final_stage],
                                                  tuple(images.shape[-2:]))


class FixedMapsSegmenter:
    """Given label maps as a segmenter: the one-hot map of exactly the images being explained
    (e.g. their ground-truth parts), so any rule can run on ground-truth parts.

    It returns ``log(one_hot)`` (0 on the label, ``-inf`` elsewhere), whose softmax is the
    one-hot map itself. It reads no features and ignores the images except for their count and
    size, which must be those of ``maps``: explain the images in one batch
    (``batch_size >= len(maps)``) in the order of ``maps``.
    """

    name = "gt"

    def __init__(self, maps: Tensor, num_labels: int):
        if maps.dim() != 3 or maps.dtype.is_floating_point:
            raise ValueError(f"maps must be integer label maps [B, H, W], got dtype {maps.dtype} "
                             f"and shape {tuple(maps.shape)}")
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if maps.numel() and (int(maps.min()) < 0 or int(maps.max()) >= num_labels):
            raise ValueError(f"maps must hold labels in 0..{num_labels - 1}, got values in "
                             f"{int(maps.min())}..{int(maps.max())}")
        self.maps = maps.long()
        self.num_labels = int(num_labels)
        self.input_size: tuple[int, int] | None = (int(maps.shape[1]), int(maps.shape[2]))

    def check(self, classifier: ContractClassifier) -> None:
        """Nothing to check: the maps read no features."""

    def __call__(self, classifier: ContractClassifier, features: Mapping[str, Tensor],
                 images: Tensor) -> Tensor:
        """``log`` of the one-hot maps ``[B, L, H, W]`` (``images`` must match them)."""
        if images.shape[0] != self.maps.shape[0] or tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(f"FixedMapsSegmenter holds {self.maps.shape[0]} maps of "
                             f"{self.input_size}, got {images.shape[0]} images of "
                             f"{tuple(images.shape[-2:])}: explain them in one batch")
        onehot = F.one_hot(self.maps.to(images.device), self.num_labels).permute(0, 3, 1, 2)
        return onehot.to(images.dtype).log()


def as_segmenter(parts: PartsDetectionModule | Segmenter) -> Segmenter:
    """A PDM (any module with the PDM's interface) is wrapped in a :class:`PDMSegmenter`; a
    segmenter is returned as is."""
    if isinstance(parts, torch.nn.Module):
        return PDMSegmenter(parts)
    return parts


# ---------------------------------------------------------------------------- context


@dataclass(frozen=True)
class ExplainContext:
    """What every rule reads, computed once per batch by :class:`PartExplainer`."""

    classifier: ContractClassifier
    images: Tensor  # [B,3,H,W] in [0,1]
    features: Mapping[str, Tensor]  # the classifier's stage features
    A: Tensor  # [B,C,h,w] final-stage features
    logits: Tensor  # [B,K]
    target: Tensor  # [B] k
    contrast: Tensor | None  # [B] j (contrastive) or None
    score: Tensor  # [B] logit_k or logit_k - logit_j
    probs: Tensor  # [B,P+1,H,W] part probabilities
    labels: Tensor  # [B,H,W] argmax part map
    batch_size: int = INFERENCE_BATCH

    @property
    def num_labels(self) -> int:
        """``P + 1``: the labels of the part map, background included."""
        return self.probs.shape[1]

    @functools.cached_property
    def present(self) -> Tensor:
        """Bool ``[B,P+1]``: parts with at least one pixel in the argmax map (computed once)."""
        B = self.labels.shape[0]
        out = torch.zeros(B, self.num_labels, dtype=torch.bool, device=self.labels.device)
        return out.scatter_(1, self.labels.reshape(B, -1), True)

    def weights(self) -> tuple[Tensor, Tensor]:
        """The explained head weights and bias per image: ``(w_k − w_j, b_k − b_j)``."""
        fc, k, j = self.classifier.fc, self.target, self.contrast
        w = fc.weight[k] - (fc.weight[j] if j is not None else 0)
        b = fc.bias[k] - (fc.bias[j] if j is not None else 0)
        return w, b


# -------------------------------------------------------------------------- explainer

RuleSpec = tuple[Any, bool]  # (rule, contrastive)


class PartExplainer:
    """Explain a classifier through the parts a segmenter (the PDM) finds.

    >>> explainer = PartExplainer(classifier, pdm, part_names, head=head)
    >>> e = explainer(images)                       # amortised rule, predicted class
    >>> e = explainer(images, target=3, contrastive=True)
    >>> e = explainer(images, mode="occlusion", imputer=GaussianBlurFill())
    >>> e = explainer(images, rule=OcclusionRule(MeanFill()))
    >>> e.to_dataframe(class_names)

    Args:
        classifier: a contract classifier, used as is (eval mode, no hooks, no changes): the
            logits reported are bit-identical to ``classifier(images)``.
        pdm: a :class:`~partslib.pdm.PartsDetectionModule` or any :class:`Segmenter`.
        part_names: one name per label (default ``background, part1, ...``).
        rule: the default rule: the amortised rule of ``head`` when a trained contribution
            head is given (:class:`~partslib.explain.amortised.AmortisedRule`; partslib's
            most faithful rule at one pass, T2), else the paper's region rule
            (:class:`~partslib.explain.rules.RegionRule`).
        head: a trained :class:`~partslib.explain.amortised.ContributionHead`
            (:func:`~partslib.explain.amortised_training.load_head`).
        contrastive: explain the margin against the runner-up by default.
        name: the method name written to :attr:`PartExplanation.mode` for the default rule
            (default ``<segmenter>-<rule>``, e.g. ``pdm-region-soft``).
    """

    def __init__(self, classifier: ContractClassifier, pdm: PartsDetectionModule | Segmenter,
                 part_names: Sequence[str] | None = None, rule: Any = None,
                 contrastive: bool = False, name: str | None = None, head: Any = None):
        self.segmenter = as_segmenter(pdm)
        L = self.segmenter.num_labels
        if part_names is not None and len(part_names) != L:
            raise ValueError(f"part_names has {len(part_names)} names, the segmenter gives "
                             f"{L} labels (background + parts)")
        self.segmenter.check(classifier)
        self.classifier = classifier.eval()
        self.part_names = list(part_names) if part_names else [
            "background", *[f"part{p}" for p in range(1, L)]]
        if rule is None and head is not None:
            from partslib.explain.amortised import AmortisedRule

            rule = AmortisedRule(head)
        self.rule, self.contrastive, self.name = rule, bool(contrastive), name

    @property
    def pdm(self) -> Any:
        """The (fused) PDM the explainer runs, when its segmenter is a PDM."""
        return getattr(self.segmenter, "pdm", None)

    def _resolve_rule(self, mode: str | None, hard: bool, imputer: Any, rule: Any) -> Any:
        from partslib.explain.rules import OcclusionRule, RegionRule

        if rule is not None:
            return rule
        if mode is None:
            return self.rule if self.rule is not None else RegionRule(hard=hard)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return RegionRule(hard=hard) if mode == "region" else OcclusionRule(imputer)

    def method_name(self, rule: Any, contrastive: bool) -> str:
        """The name written to :attr:`PartExplanation.mode`."""
        if rule is self.rule and self.name is not None and contrastive == self.contrastive:
            return self.name
        return f"{self.segmenter.name}-{rule.name}" + ("-contrastive" if contrastive else "")

    @torch.no_grad()
    def __call__(self, images: Tensor, target: Targets = None, mode: str | None = None,
                 hard: bool = False, contrastive: bool | None = None, imputer: Any = None,
                 batch_size: int = INFERENCE_BATCH, rule: Any = None) -> PartExplanation:
        """Explain ``images`` (float ``[B,3,H,W]`` in [0,1] or uint8) for one target per image.

        Args:
            target: class per image (tensor/list), one int for all, or None (predicted class).
            mode: ``"region"`` (CAM × part occupancy, complete) or ``"occlusion"``; None = the
                explainer's rule (amortised with a head, else region).
            hard: region mode with the argmax part map instead of probabilities.
            contrastive: explain ``logit_k − logit_j`` against the runner-up class ``j``
                (None = the explainer's default).
            imputer: removal operator for occlusion mode (default Gaussian blur, kernel 11, σ 5).
            rule: a rule object (:mod:`partslib.explain.rules`); overrides mode/hard/imputer.
        """
        r = self._resolve_rule(mode, hard, imputer, rule)
        c = self.contrastive if contrastive is None else bool(contrastive)
        return self.explain_many(images, {"_": (r, c)}, target, batch_size)["_"]

    @torch.no_grad()
    def explain_many(self, images: Tensor, rules: Mapping[str, RuleSpec], target: Targets = None,
                     batch_size: int = INFERENCE_BATCH) -> dict[str, PartExplanation]:
        """Explain ``images`` with several ``(rule, contrastive)`` pairs, running the classifier
        and the segmenter once per batch for all of them."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for key, (rule, contrastive) in rules.items():
            if contrastive and rule.units != "logit":
                raise ValueError(f"{key}: the {rule.name} rule is in {rule.units!r} units; only "
                                 f"rules in logit units explain a contrastive margin")
        images = check_images(images, size=self.segmenter.input_size,
                              dtype=model_dtype(self.classifier))
        out: dict[str, list[PartExplanation]] = {key: [] for key in rules}
        for i in range(0, len(images), batch_size):
            ctx = self.context(images[i:i + batch_size], _target_chunk(target, i, batch_size),
                               batch_size)
            for key, (rule, contrastive) in rules.items():
                out[key].append(self._apply(ctx, rule, contrastive))
        return {key: PartExplanation.concat(parts) for key, parts in out.items()}

    def context(self, x: Tensor, target: Targets,
                batch_size: int = INFERENCE_BATCH) -> ExplainContext:
        """Classifier features, logits and part map of one batch (no contrast class)."""
        clf = self.classifier
        feats = clf.features(x)
        A = feats[clf.final_stage]
        logits = clf.head(A)
        k = resolve_targets(target, logits)
        part_logits = self.segmenter(clf, feats, x)
        probs = part_logits.softmax(1)
        labels = label_map(part_logits)  # softmax keeps the order
        score = logits[torch.arange(len(k), device=logits.device), k]
        return ExplainContext(classifier=clf, images=x, features=feats, A=A, logits=logits,
                              target=k, contrast=None, score=score, probs=probs, labels=labels,
                              batch_size=batch_size)

    def _apply(self, ctx: ExplainContext, rule: Any, contrastive: bool) -> PartExplanation:
        if contrastive:
            j = runner_up(ctx.logits, ctx.target)
            rows = torch.arange(len(j), device=j.device)
            ctx = replace(ctx, contrast=j, score=ctx.score - ctx.logits[rows, j])
        res = rule(ctx)
        c = res.contributions
        bias = res.bias if res.bias is not None else torch.full_like(ctx.score, math.nan)
        maps = res.maps
        if maps is None and rule.paint is not None:
            shown = ctx.probs if rule.paint == "soft" else F.one_hot(
                ctx.labels, ctx.num_labels).permute(0, 3, 1, 2).to(ctx.probs.dtype)
            maps = paint(c, shown)
        units = "margin" if contrastive else rule.units
        return PartExplanation(
            part_names=self.part_names, part_probs=ctx.probs, labels=ctx.labels, contributions=c,
            score=ctx.score, bias=bias, target=ctx.target, contrast=ctx.contrast,
            mode=self.method_name(rule, contrastive), logits=ctx.logits, cam=res.cam,
            units=units, rule=rule.describe(), maps=maps)


def _target_chunk(target: Targets, start: int, batch_size: int) -> Targets:
    if target is None or isinstance(target, int):
        return target
    t = torch.as_tensor(target).flatten()
    return t[start:start + batch_size] if t.numel() > 1 else t


def explain(classifier: ContractClassifier, pdm: PartsDetectionModule, images: Tensor,
            target: Targets = None, part_names: Sequence[str] | None = None,
            **kwargs: Any) -> PartExplanation:
    """Functional form of :class:`PartExplainer` (see there for the arguments)."""
    return PartExplainer(classifier, pdm, part_names)(images, target=target, **kwargs)
