"""The FunnyBirds checks of every registry method, with ground-truth parts and with its own.

FunnyBirds (Hesse et al., ICCV 2023; :mod:`partslib.metrics.funnybirds`) hands every explainer
the ground-truth part map. Here each method runs twice (``parts`` column):

* ``gt`` -- the method's rule on the ground-truth part map of the explained images
  (:class:`~partslib.explain.core.FixedMapsSegmenter`);
* ``pdm`` -- the method as the registry builds it: its rule on its own parts (the PDM's; IBD's
  linear maps for ``ibd`` and ``ibd-linear-region``, as the ``maps`` column says).

**Re-rendering** (:class:`ReRenderPredict`): ``predict`` re-renders a test image without the
dropped parts and distractors (:meth:`SynthParts.render`) and classifies it; dropping nothing
gives the stored image. Every distinct intervention is rendered and classified once per study
(a cache shared by all methods).

**Distractor importance** (the mapping, ``mapping`` column). The metric needs one importance per
background object. For both part sources, each distractor gets a label region of its own: the
ground-truth mask of where it is visible is split off the background label
(:class:`DistractorSplitSegmenter`: label ``P+1+d`` takes the background probability on
distractor ``d``'s pixels, label 0 keeps the rest), so the rule's contribution of that region
is the distractor's importance. The part importances are the rule's contributions of labels
``1..P``; the background column is the background *with* its distractors (label 0 plus the
distractor labels), so the threshold total (signed sum of the ``P+1`` columns) is the rule's
whole attribution. The IBD basis rule reads no part map: its distractors get importance 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.data.synthparts import SynthParts
from partslib.explain.core import FixedMapsSegmenter, PartExplainer, PDMSegmenter, Segmenter
from partslib.explain.registry import REGISTRY, Models, get_method
from partslib.explain.rules import IBDBasisRule
from partslib.metrics.funnybirds import ImportanceFn, PartImportance
from partslib.metrics.funnybirds_protocol import (
    FunnyBirdsResult,
    FunnyBirdsSetup,
    funnybirds_checks,
    funnybirds_setup,
    table_by_part_ids,
)
from partslib.models import ContractClassifier

__all__ = [
    "CHECKS",
    "PART_SOURCES",
    "DistractorSplitSegmenter",
    "FunnyBirdsData",
    "FunnyBirdsStudy",
    "ReRenderPredict",
    "funnybirds_data",
    "importance_fn",
    "metrics_dict",
    "run_funnybirds",
]

PART_SOURCES = ("gt", "pdm")
# the columns of the wide table: the seven checks, the aggregates, the threshold
CHECKS = ("accuracy", "CSDC", "PC", "DC", "D", "BI", "SD", "SD_bg", "TS", "Com", "Cor", "Con",
          "threshold")
MAPPING_SPLIT = ("contributions of labels 1..P; distractor d = contribution of its ground-truth "
                 "region split off the background; background = label 0 + distractors")
MAPPING_BASIS = ("basis contributions of parts 1..P (reads no map); distractors 0; "
                 "background = basis contribution of label 0")


@dataclass(frozen=True)
class FunnyBirdsData:
    """The test images the checks run on (positions ``0..M-1`` are the image indices).

    Attributes:
        split: the SynthParts split; keys: ``[M]`` indices of the images in it.
        images: ``[M,3,H,W]`` float in [0,1]; masks: ``[M,H,W]`` ground-truth parts;
        objects: ``[M,H,W]`` long, ``d + 1`` where distractor ``d`` is visible, 0 elsewhere.
        labels: ``[M]``; distractor_present: ``[M,D]`` bool.
        class_table: per class ``{part id: pattern}``.
    """

    split: SynthParts
    keys: Tensor
    images: Tensor
    masks: Tensor
    objects: Tensor
    labels: Tensor
    distractor_present: Tensor
    class_table: list[dict[int, Any]]

    @property
    def num_parts(self) -> int:
        """P."""
        return self.split.cfg.num_parts

    @property
    def num_distractors(self) -> int:
        """D, distractor slots per image."""
        return int(self.distractor_present.shape[1])


def funnybirds_data(split: SynthParts, n_images: int) -> FunnyBirdsData:
    """The first ``n_images`` images of ``split`` with their distractor maps (rendered)."""
    if not isinstance(n_images, int) or not 1 <= n_images <= len(split):
        raise ValueError(f"n_images must be an int in 1..{len(split)} (the split's size), got "
                         f"{n_images!r}")
    keys = torch.arange(n_images)
    images, masks, labels = split.tensors(slice(0, n_images))
    objects = torch.stack([torch.from_numpy(split.render(int(i)).objects).long()  # type: ignore[arg-type]
                           for i in keys])
    table = table_by_part_ids(split.cfg.class_table(), split.cfg.part_names)
    return FunnyBirdsData(split, keys, images, masks.long(), objects, labels.long(),
                          split.distractor_present[:n_images], table)


class ReRenderPredict:
    """``predict(positions, drop_parts [M,P+1], drop_distractors [M,D]) -> logits [M,K]``:
    re-render each image without the dropped parts and distractors and classify it. Dropping a
    distractor slot the image does not have changes nothing. Each distinct intervention is
    computed once (``calls`` counts the renders)."""

    def __init__(self, data: FunnyBirdsData, classifier: ContractClassifier,
                 batch_size: int = 128):
        self.data, self.classifier, self.batch_size = data, classifier.eval(), batch_size
        self.cache: dict[tuple, Tensor] = {}
        self.op = data.split.rerender()
        self.calls = 0

    @torch.no_grad()
    def __call__(self, positions: Tensor, drop_parts: Tensor, drop_distractors: Tensor) -> Tensor:
        pos = positions.long()
        dis = drop_distractors.bool() & self.data.distractor_present[pos]
        keys = [(int(m), *drop_parts[i].tolist(), *dis[i].tolist()) for i, m in enumerate(pos)]
        todo: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            if k not in self.cache and k not in todo:
                todo[k] = i
        miss = list(todo.values())
        for s in range(0, len(miss), self.batch_size):
            rows = torch.tensor(miss[s:s + self.batch_size], dtype=torch.long)
            p = pos[rows]
            x = self.op(self.data.images[p], self.data.labels[p], drop_parts[rows].bool(),
                        keys=self.data.keys[p].tolist(), drop_distractors=dis[rows])
            self.calls += len(rows)
            for r, out in zip(rows.tolist(), self.classifier(x)):
                self.cache[keys[r]] = out.detach().double()
        return torch.stack([self.cache[k] for k in keys])


class DistractorSplitSegmenter:
    """A segmenter with one more label per distractor: label ``P+1+d`` takes the background
    probability of ``base`` on the pixels where distractor ``d`` is visible (``objects == d+1``),
    label 0 keeps the rest of the background; parts ``1..P`` are unchanged. Returns log
    probabilities (their softmax is the split map)."""

    def __init__(self, base: Segmenter, objects: Tensor, num_distractors: int):
        self.base, self.objects, self.D = base, objects.long(), int(num_distractors)
        self.name = base.name
        self.num_labels = base.num_labels + self.D
        self.input_size = base.input_size

    def check(self, classifier: ContractClassifier) -> None:
        """The base segmenter's check."""
        self.base.check(classifier)

    def __call__(self, classifier: ContractClassifier, features: Mapping[str, Tensor],
                 images: Tensor) -> Tensor:
        """Log probabilities ``[B, P+1+D, H, W]``."""
        probs = self.base(classifier, features, images).softmax(1)
        if self.objects.shape != (probs.shape[0], *probs.shape[-2:]):
            raise ValueError(f"objects must be [B,H,W] = {(probs.shape[0], *probs.shape[-2:])}, "
                             f"got {tuple(self.objects.shape)}")
        obj = F.one_hot(self.objects.to(probs.device), self.D + 1).permute(0, 3, 1, 2)
        obj = obj[:, 1:].to(probs.dtype)
        bg = probs[:, :1]
        out = torch.cat([bg * (1 - obj.sum(1, keepdim=True)), probs[:, 1:], bg * obj], 1)
        return out.log()


def _segmenter(source: str, method: str, data: FunnyBirdsData, pos: Tensor,
               pdm: PDMSegmenter | None, ibd: Any) -> Segmenter:
    if source == "gt":
        return FixedMapsSegmenter(data.masks[pos], data.num_parts + 1)
    return get_method(method).segmenter(pdm=pdm, ibd=ibd)


def importance_fn(method: str, source: str, data: FunnyBirdsData,
                  classifier: ContractClassifier, pdm: PDMSegmenter | None = None,
                  ibd: Any = None, seed: int = 0, head: Any = None) -> ImportanceFn:
    """``importance(positions, targets) -> PartImportance`` of registry ``method`` on the
    ``source`` parts (``"gt"`` or ``"pdm"``: the method's own), with the distractor mapping of
    the module docstring. Rules that read no part map (IBD's basis) or whose head is trained
    for the part labels alone (the amortised rule) see no distractor labels: distractors get
    0 and stay inside the background."""
    if source not in PART_SOURCES:
        raise ValueError(f"source must be one of {PART_SOURCES}, got {source!r}")
    entry = get_method(method)
    entry.segmenter(pdm, ibd)  # checks that the method's models are given
    rule = entry.rule(Models(classifier, pdm, ibd, seed, head=head))
    basis = isinstance(rule, IBDBasisRule) or "head" in entry.needs
    P, D = data.num_parts, data.num_distractors

    def importance(positions: Tensor, targets: Tensor) -> PartImportance:
        pos = positions.long()
        seg = _segmenter(source, method, data, pos, pdm, ibd)
        if not basis:
            seg = DistractorSplitSegmenter(seg, data.objects[pos], D)
        explainer = PartExplainer(classifier, seg, rule=rule, contrastive=entry.contrastive,
                                  name=method)
        c = explainer(data.images[pos], target=targets.long(),
                      batch_size=max(1, len(pos))).contributions.detach().double().cpu()
        parts = c[:, :P + 1].clone()
        dis = torch.zeros(len(pos), D, dtype=torch.float64) if basis else c[:, P + 1:]
        parts[:, 0] += dis.sum(1)
        return PartImportance(parts, dis)

    return importance


@dataclass
class FunnyBirdsStudy:
    """Results of :func:`run_funnybirds`: ``table`` is tidy (method, parts, maps, check,
    value), ``wide`` one row per (method, parts), ``results`` the full results by (method,
    parts)."""

    setup: FunnyBirdsSetup
    results: dict[tuple[str, str], FunnyBirdsResult]
    wide: pd.DataFrame
    table: pd.DataFrame
    renders: int


def _row(method: str, source: str, res: FunnyBirdsResult, basis: bool) -> dict[str, Any]:
    s = res.scores()
    maps = "gt" if source == "gt" else REGISTRY[method].maps
    return {"method": method, "parts": source, "maps": maps,
            **{k: s[k] for k in CHECKS}, "n": int(s["n_images"]),
            "n_csdc": int(s["n_csdc"]), "n_sd": int(s["n_sd"]), "n_ts": int(s["n_ts"]),
            "mapping": MAPPING_BASIS if basis else MAPPING_SPLIT}


def run_funnybirds(split: SynthParts, classifier: ContractClassifier, pdm: Any = None,
                   ibd: Any = None, methods: Sequence[str] = (), n_images: int = 100,
                   sources: Sequence[str] = PART_SOURCES, seed: int = 0,
                   batch_size: int = 128, head: Any = None) -> FunnyBirdsStudy:
    """The seven FunnyBirds checks of each method (empty: the whole registry) on the first
    ``n_images`` images of ``split``, with each part source of ``sources``.

    ``pdm`` is the trained PDM (or a built :class:`PDMSegmenter`); ``ibd`` the fitted IBD,
    needed by the methods that use it; ``head`` the amortised rule's (without it, the methods
    that need it are skipped).
    """
    names = [n for n in (list(methods) or list(REGISTRY))
             if head is not None or "head" not in get_method(n).needs]
    bad = [s for s in sources if s not in PART_SOURCES]
    if bad or not sources:
        raise ValueError(f"sources must be some of {PART_SOURCES}, got {list(sources)!r}")
    data = funnybirds_data(split, n_images)
    pdm_seg = pdm if pdm is None or isinstance(pdm, PDMSegmenter) else PDMSegmenter(pdm)
    predict = ReRenderPredict(data, classifier, batch_size)
    setup = funnybirds_setup(predict, torch.arange(n_images), data.labels, data.class_table,
                             data.num_parts, data.distractor_present, batch_size=batch_size)
    results: dict[tuple[str, str], FunnyBirdsResult] = {}
    rows = []
    for name in names:
        entry = get_method(name)
        basis = isinstance(entry.rule(Models(classifier, pdm, ibd, seed, head=head)),
                           IBDBasisRule) or "head" in entry.needs
        for source in sources:
            imp = importance_fn(name, source, data, classifier, pdm_seg, ibd, seed, head)
            res = funnybirds_checks(setup, predict, imp)
            results[(name, source)] = res
            rows.append(_row(name, source, res, basis))
    wide = pd.DataFrame(rows)
    table = wide.melt(id_vars=["method", "parts", "maps"], value_vars=list(CHECKS),
                      var_name="check", value_name="value")
    return FunnyBirdsStudy(setup, results, wide, table, predict.calls)


def metrics_dict(wide: pd.DataFrame, prefix: str = "funnybirds") -> dict[str, float]:
    """``<prefix>/<method>/<parts>/<check>`` for every row and check of the wide table."""
    out: dict[str, float] = {}
    for r in wide.to_dict("records"):
        for check in CHECKS:
            out[f"{prefix}/{r['method']}/{r['parts']}/{check}"] = float(r[check])
    return out
