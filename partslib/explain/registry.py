"""The method table: every part explainer of the study, by one name.

T1, T2 (:mod:`partslib.studies.validity`), the real-photo study, the explorer and the
benchmark read :data:`REGISTRY`; its names are the T2 method names and the metric keys
``validity/<method>/...``. An entry says what the method needs (a PDM, IBD), its units, and
builds a configured :class:`~partslib.explain.core.PartExplainer` from the models::

    explainer = get_method("pdm-occlusion").build(classifier, pdm=pdm)
    e = explainer(images)                  # e.mode == "pdm-occlusion"

Adding a method: a rule in :mod:`partslib.explain.rules` (if it is new) and one
:class:`Method` entry below; ``tests/test_rules.py`` checks every entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor

from partslib.explain.amortised import AmortisedRule
from partslib.explain.core import (
    IBDLinearSegmenter,
    PartExplainer,
    PDMSegmenter,
    Segmenter,
    Targets,
    fused_features,
)
from partslib.explain.explanation import PartExplanation
from partslib.explain.rules import (
    HeatmapMassRule,
    IBDBasisRule,
    OcclusionRule,
    RandomRule,
    RegionRule,
    Rule,
)
from partslib.explain.shapley import ShapleyRule
from partslib.models import ContractClassifier

__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "DEFAULT_METHOD",
    "METHODS",
    "REGISTRY",
    "Method",
    "Models",
    "explain_methods",
    "get_method",
    "methods_needing",
]

BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's blur substrate (evaluation.md §2.1)


@dataclass(frozen=True)
class Models:
    """What a rule factory may read: the models and settings of one explainer."""

    classifier: ContractClassifier
    pdm: Any = None
    ibd: Any = None
    seed: int = 0
    fast: bool = False  # occlusion scores removed images with fused_features
    head: Any = None  # a trained ContributionHead (partslib.explain.amortised)


def _amortised(m: Models) -> Rule:
    if m.head is None:
        raise ValueError("the amortised rule needs a trained contribution head: pass head=... "
                         "(partslib.explain.amortised_training.load_head(results_dir))")
    return AmortisedRule(m.head)


def _shapley(m: Models) -> Rule:
    from partslib.removal import BackgroundFill

    return ShapleyRule(BackgroundFill(), features=fused_features(m.classifier) if m.fast
                       else None, seed=m.seed)


def _blur_occlusion(m: Models) -> Rule:
    from partslib.removal import GaussianBlurFill

    return OcclusionRule(GaussianBlurFill(BLUR_KERNEL, BLUR_SIGMA),
                         features=fused_features(m.classifier) if m.fast else None)


@dataclass(frozen=True)
class Method:
    """One explainer of the study.

    Attributes:
        name: registry name (T2 method name, metric key part).
        display: name shown to readers (explorer dropdown, tables).
        units: ``"logit"``, ``"margin"``, ``"share"`` or ``"none"``.
        note: one line on what to keep in mind when reading its numbers.
        needs: models it needs beyond the classifier (``"pdm"``, ``"ibd"``).
        maps: where its parts come from: ``"pdm"`` or ``"ibd"`` (IBD's linear maps).
        contrastive: explains the margin against the runner-up class.
        rule: factory of the rule from :class:`Models`.
        operator: the removal operator of T2 (:mod:`partslib.studies.validity`) its claim is
            itself made with (occlusion by blur: ``"blur"``), or None; its decisive-part
            accuracy is compared with that operator's ceiling only.
    """

    name: str
    display: str
    units: str
    note: str
    needs: tuple[str, ...]
    maps: str
    contrastive: bool
    rule: Callable[[Models], Rule]
    operator: str | None = None

    def segmenter(self, pdm: Any = None, ibd: Any = None) -> Segmenter:
        """The part map of this method from the given models (a built segmenter is kept)."""
        for need, model in (("pdm", pdm), ("ibd", ibd)):
            if need in self.needs and model is None:
                raise ValueError(f"method {self.name!r} needs {need}=...")
        src = pdm if self.maps == "pdm" else ibd
        if src is None:
            raise ValueError(f"method {self.name!r} draws its parts from {self.maps}: pass "
                             f"{self.maps}=...")
        if _is_built_segmenter(src):
            return src
        return PDMSegmenter(src) if self.maps == "pdm" else IBDLinearSegmenter(src)

    def build(self, classifier: ContractClassifier, pdm: Any = None, ibd: Any = None, *,
              seed: int = 0, part_names: Sequence[str] | None = None,
              fast: bool = False, head: Any = None) -> PartExplainer:
        """A :class:`PartExplainer` running this method (``pdm`` may be a built
        :class:`PDMSegmenter`, to share its fused copy between explainers; ``head`` is the
        trained contribution head of the amortised rule)."""
        _check_ibd(classifier, ibd)
        seg = self.segmenter(pdm, ibd)
        rule = self.rule(Models(classifier, pdm, ibd, seed, fast, head))
        return PartExplainer(classifier, seg, part_names, rule=rule,
                             contrastive=self.contrastive, name=self.name)


def _is_built_segmenter(obj: object) -> TypeGuard[Segmenter]:
    """A segmenter already built (it has ``check`` and is no module), not a model to wrap."""
    return not isinstance(obj, torch.nn.Module) and hasattr(obj, "check")


def _check_ibd(classifier: ContractClassifier, ibd: Any) -> None:
    if ibd is not None and getattr(ibd, "classifier", classifier) is not classifier:
        raise ValueError("ibd was fitted to another classifier object: pass the same classifier "
                         "(IBD's decomposition is of that classifier's weights)")


_BLUR_NOTE = "its claim is the blur counterfactual on PDM masks: against 'blur' it is nearly " \
             "scored by its own operator"

_AMORTISED_NOTE = ("a head on the classifier's features and the PDM's parts, trained on training "
                   "images to predict each part's removal effect (SynthParts: exact re-render; "
                   "photos: the PDM's parts inpainted from the kept background); one "
                   "classifier + PDM pass; complete: bias f(grey) + sum = logit")
_SHAPLEY_NOTE = ("exact part Shapley values over the PDM's parts (2^n classifier passes), "
                 "parts inpainted from the kept background; complete: v(empty) + sum = logit")

REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("pdm-amortised", "amortised (default)", "logit", _AMORTISED_NOTE, ("pdm", "head"),
           "pdm", False, _amortised),
    Method("pdm-shapley", "part Shapley", "logit", _SHAPLEY_NOTE, ("pdm",), "pdm", False,
           _shapley),
    Method("pdm-region-soft", "region (soft)", "logit",
           "CAM x PDM part probabilities; complete: bias + sum = logit", ("pdm",), "pdm", False,
           lambda m: RegionRule(hard=False)),
    Method("pdm-region-hard", "region (hard)", "logit",
           "CAM x argmax PDM part map; complete", ("pdm",), "pdm", False,
           lambda m: RegionRule(hard=True)),
    Method("pdm-occlusion", "occlusion (blur)", "logit", _BLUR_NOTE, ("pdm",), "pdm", False,
           _blur_occlusion, operator="blur"),
    Method("pdm-region-soft-contrastive", "region, vs runner-up", "margin",
           "region rule on the margin logit_k - logit_j", ("pdm",), "pdm", True,
           lambda m: RegionRule(hard=False)),
    Method("pdm-occlusion-contrastive", "occlusion, vs runner-up", "margin",
           "blur on PDM masks, margin", ("pdm",), "pdm", True, _blur_occlusion,
           operator="blur"),
    Method("pdm-basis", "IBD basis, PDM maps", "logit",
           "same numbers as ibd: the basis rule reads no map (2x2 cell pdm x basis = "
           "linear x basis)", ("pdm", "ibd"), "pdm", False, lambda m: IBDBasisRule(m.ibd)),
    Method("ibd", "IBD", "logit", "IBD = (linear maps, basis rule)", ("ibd",), "ibd", False,
           lambda m: IBDBasisRule(m.ibd)),
    Method("ibd-linear-region", "region, IBD linear maps", "logit",
           "2x2 cell (linear maps, region rule)", ("ibd",), "ibd", False,
           lambda m: RegionRule(hard=False)),
    Method("gradcam-mass", "Grad-CAM mass", "share",
           "share of positive Grad-CAM mass per PDM part (no logit units)", ("pdm",), "pdm",
           False, lambda m: HeatmapMassRule("gradcam")),
    Method("random", "random", "none", "chance floor", ("pdm",), "pdm", False,
           lambda m: RandomRule(m.seed)),
)}

# Peer explainers (partslib.explain.peers), each mapped onto the PDM's argmax parts as its
# own documentation maps its output; the mapping is the note shown next to the T2 row.
SHAPLEY_SAMPLES = 25  # Captum ShapleyValueSampling's permutations per image (its default)
DFF_COMPONENTS = 5  # DeepFeatureFactorization's concepts per image (its dff() default)


def _peer(name: str) -> Callable[[Models], Rule]:
    def build(m: Models) -> Rule:
        from partslib.explain import peers

        feats = fused_features(m.classifier) if m.fast else None
        if name == "captum-ablation":
            return peers.CaptumAblationRule(features=feats)
        if name == "captum-shapley":
            return peers.CaptumShapleyRule(SHAPLEY_SAMPLES, m.seed, features=feats)
        return peers.DFFRule(DFF_COMPONENTS) if name == "dff" else peers.CRPRule()
    return build


_PEERS = (
    Method("captum-ablation", "Captum FeatureAblation", "logit",
           "Captum FeatureAblation, feature_mask = PDM argmax map broadcast over channels, "
           "baseline 0 (Captum's default; black): part = score drop when set to 0", ("pdm",),
           "pdm",
           False, _peer("captum-ablation")),
    Method("captum-shapley", "Captum ShapleyValueSampling", "logit",
           f"Captum ShapleyValueSampling, same mask and baseline 0, {SHAPLEY_SAMPLES} seeded "
           f"permutations: part = its Shapley estimate; complete with bias f(black)",
           ("pdm",), "pdm", False, _peer("captum-shapley")),
    Method("dff", "grad-cam DeepFeatureFactorization", "none",
           f"pytorch-grad-cam DFF, {DFF_COMPONENTS} NMF concepts of the final stage per image, "
           f"scored by softmax(fc(concept)): part = sum over concepts of score_k x share of "
           f"the concept's heatmap mass in the part", ("pdm",), "pdm", False, _peer("dff")),
    Method("crp", "CRP (zennit, EpsilonPlusFlat)", "none",
           "zennit-crp CondAttribution {y: k}, EpsilonPlusFlat, BatchNorm merged, residual "
           "sums canonised: part = input relevance summed inside it (~logit units)", ("pdm",),
           "pdm", False, _peer("crp")),
)
REGISTRY.update({m.name: m for m in _PEERS})

METHODS: tuple[str, ...] = tuple(REGISTRY)
# PartExplainer's default rule when it has a trained head: the best rule of T2 at <= 2x a
# forward pass (README); the paper's region rule is the default without a head
DEFAULT_METHOD = "pdm-amortised"


def get_method(name: str) -> Method:
    """The registry entry ``name``; a clear error names the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {list(REGISTRY)}") from None


def methods_needing(model: str) -> tuple[str, ...]:
    """Names of the methods that need ``model`` (``"pdm"`` or ``"ibd"``)."""
    return tuple(n for n, m in REGISTRY.items() if model in m.needs)


def explain_methods(classifier: ContractClassifier, images: Tensor, methods: Iterable[str],
                    pdm: Any = None, ibd: Any = None, target: Targets = None, seed: int = 0,
                    batch_size: int = 128, fast: bool = False,
                    part_names: Sequence[str] | None = None,
                    head: Any = None) -> dict[str, PartExplanation]:
    """Every method of ``methods`` on ``images``, sharing the classifier and segmenter passes:
    the methods on one part map run from one context per batch."""
    names = list(methods)
    entries = [get_method(n) for n in names]
    _check_ibd(classifier, ibd)
    segs: dict[str, Segmenter] = {}
    groups: dict[str, dict[str, tuple[Rule, bool]]] = {}
    models = Models(classifier, pdm, ibd, seed, fast, head)
    for e in entries:
        if e.maps not in segs:
            segs[e.maps] = e.segmenter(pdm, ibd)
        else:
            e.segmenter(pdm, ibd)  # checks the needs
        groups.setdefault(e.maps, {})[e.name] = (e.rule(models), e.contrastive)
    out: dict[str, PartExplanation] = {}
    for maps, rules in groups.items():
        explainer = PartExplainer(classifier, segs[maps], part_names)
        res = explainer.explain_many(images, rules, target, batch_size)
        for name, expl in res.items():
            expl.mode = name
            out[name] = expl
    return {n: out[n] for n in names}


def display_names(methods: Iterable[str] | None = None) -> Mapping[str, str]:
    """Registry name -> display name."""
    return {n: REGISTRY[n].display for n in (methods or REGISTRY)}
