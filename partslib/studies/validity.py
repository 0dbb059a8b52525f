"""Table T2 (SPEC §5, §7): are the quantitative part explanations valid? V1–V5 for every method.

The methods are the entries of the method registry (:mod:`partslib.explain.registry`, whose
names are T2's rows and the metric keys ``validity/<method>/...``); they run through the one
explainer template, :class:`~partslib.explain.core.PartExplainer`, sharing the classifier and
segmenter passes. This module composes them with the model-agnostic metrics of
:mod:`partslib.metrics.validity` and the removal operators of :mod:`partslib.removal`.

**Removal operators** (:func:`default_operators`): ``rerender`` (the exact counterfactual:
SynthParts re-renders the sample without the part; keys = dataset indices), ``mean`` (each
image's mean colour), ``blur`` (kernel 11, σ 5, as RISE) and ``road`` (ROAD's noisy linear
imputation, seeded).

**Measured effects** use the **ground-truth part masks** (on SynthParts) and only the parts
present in them: ``Δ_p = logit_k(x) − logit_k(x without p)``; contrastive methods are scored
against the effect on the margin ``logit_k − logit_j`` with the j of their own explanation.
Every removed image is scored once per operator and reused by all methods, by V2 (logit) and V3
(probability) alike (:class:`~partslib.studies.removal_cache.RemovalCache`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from partslib.explain.core import PDMSegmenter
from partslib.explain.explanation import PartExplanation
from partslib.explain.registry import (
    BLUR_KERNEL,
    BLUR_SIGMA,
    METHODS,
    REGISTRY,
    explain_methods,
    get_method,
)
from partslib.ibd import decompose
from partslib.metrics.bootstrap import bootstrap_intervals
from partslib.metrics.randomisation import SANITY_COLUMNS
from partslib.metrics.validity import (
    cascading_randomisation,
    claimed_order,
    completeness_error,
    decisive_hits,
    decisive_part_accuracy,
    deletion_auc,
    random_order,
    removal_agreement,
)
from partslib.models import ContractClassifier, check_images
from partslib.progress import Progress
from partslib.removal import GaussianBlurFill, MeanFill, NoisyLinearImputer, RemovalOperator
from partslib.studies.removal_cache import RemovalCache, fused_features, margin, region_gap

__all__ = ["CONTRASTIVE", "INTERVAL_COLUMNS", "METHODS", "NEEDS_IBD", "NOTES", "OPERATORS",
           "SANITY_METHODS", "ValidityExtras", "default_operators", "run_validity",
           "sanity_module_names"]

OPERATORS = ("rerender", "mean", "blur", "road")
CONTRASTIVE = tuple(n for n, m in REGISTRY.items() if m.contrastive)
NEEDS_IBD = tuple(n for n, m in REGISTRY.items() if "ibd" in m.needs)
NEEDS_HEAD = tuple(n for n, m in REGISTRY.items() if "head" in m.needs)
SANITY_METHODS = ("pdm-amortised", "pdm-region-soft", "gradcam-mass", "ibd")
ROAD_NOISE = 0.01  # ROAD's noisy linear imputation (evaluation.md §2.2)
NOTES = {n: m.note for n, m in REGISTRY.items()}
# T2's per-image scores that get 95% bootstrap intervals over images (<score>_lo, <score>_hi)
INTERVAL_COLUMNS = ("spearman", "top_part", "decisive", "decisive_ceiling")


def default_operators(dataset: Any = None, seed: int = 0, names: Iterable[str] = OPERATORS
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


@dataclass
class ValidityExtras:
    """Everything behind T2, for figures and further analysis.

    Attributes:
        indices: ``[n]`` positions (in the arrays given) of the images evaluated.
        targets, present, decisive: ``[n]`` class, ``[n,P+1]`` ground-truth presence and
            decisive parts.
        claims: method → its :class:`~partslib.explain.PartExplanation` on those images (CPU).
        effects: operator → ``[n,P+1]`` logit effects Δ (ground-truth masks).
        margin_effects: (operator, method) → ``[n,P+1]`` margin effects of contrastive methods.
        curves: (order, operator) → ``[n,P+2]`` deletion curves (probability); order is a
            method name, ``"random"`` or ``"greedy"`` (parts in the order of
            their single-removal effects).
        per_image: one row per (method, operator, image) of V2 and V4 (``decisive``: the top
            part is decisive; ``decisive_ceiling``: the effects' top part is).
        sanity: V5, one row per (method, step).
        gap: :func:`~partslib.studies.removal_cache.region_gap` per operator on the
            ground-truth masks (why region claims and removal effects differ).
        timings: wall seconds per phase (``cpu:<phase>``: process CPU seconds, all threads);
            removals: removed images scored per operator.
        settings: choices recorded with the results.
    """

    indices: Tensor
    targets: Tensor
    present: Tensor
    decisive: Tensor
    claims: dict[str, PartExplanation]
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


def _ibd_for(ibd: Any, model: ContractClassifier) -> Any:
    """``ibd`` re-attached to a (randomised) copy of its classifier: the concept classifiers are
    kept (they are the explainer's dictionary), the class weights are decomposed again."""
    q = ibd.part_classifiers().concept_vectors()
    dec = decompose(model.fc.weight.detach(), q, ibd.decomposition.n_components)
    return replace(ibd, classifier=model, decomposition=dec)


def _state_key(model: torch.nn.Module) -> tuple:
    """A fingerprint of the model's parameters and buffers (two moments per tensor)."""
    with torch.no_grad():
        return tuple((name, float(t.double().sum()), float(t.double().square().sum()))
                     for name, t in model.state_dict().items() if t.is_floating_point())


def _sanity(classifier: ContractClassifier, pdm: Any, ibd: Any, methods: list[str],
            images: Tensor, targets: Tensor, present: Tensor, seed: int,
            batch_size: int, head: Any = None) -> pd.DataFrame:
    """V5 for each method. The cascades of all methods re-initialise the same modules with the
    same seeds, so the explanations of every method at a step are computed together, once
    (memoised by parameter state), sharing the step's classifier and segmenter passes."""
    if not methods:
        return _empty_sanity()
    names = sanity_module_names(classifier)
    memo: dict[tuple, dict[str, PartExplanation]] = {}
    use_ibd = ibd is not None and any(m in NEEDS_IBD for m in methods)

    def claims_for(model: ContractClassifier) -> dict[str, PartExplanation]:
        key = _state_key(model)
        if key not in memo:
            ib = _ibd_for(ibd, model) if use_ibd else None
            memo[key] = explain_methods(model, images, methods, pdm=pdm, ibd=ib, head=head,
                                        target=targets, seed=seed, batch_size=batch_size)
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
    return pd.DataFrame(columns=["method", *SANITY_COLUMNS])


def _nanmax(x: Tensor) -> float:
    v = x.detach().double().cpu().numpy()
    return float(np.nanmax(v)) if np.isfinite(v).any() else math.nan


def _decisive_chance(decisive: Tensor, present: Tensor) -> float:
    """Expected V4 of a ranking that picks a uniformly random present part."""
    n = present.sum(1).double()
    hits = (decisive & present).sum(1).double()
    use = n > 0
    return float((hits[use] / n[use]).mean()) if bool(use.any()) else math.nan


def _runnable(methods: Iterable[str], ibd: Any, head: Any) -> list[str]:
    """The methods whose models are given (unknown names raise)."""
    names = [get_method(m).name for m in methods]
    return [m for m in names if (ibd is not None or m not in NEEDS_IBD)
            and (head is not None or m not in NEEDS_HEAD)]


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


_METRIC_COLS = ["completeness_error_max", "completeness_error_mean", "spearman", "top_part",
                "norm_abs_error", "auc_claimed", "auc_random", "auc_greedy", "decisive",
                "decisive_ceiling", "decisive_chance"]


def _empty_result(methods: list[str], operators: list[str], seed: int, num_labels: int,
                  n_eval: int) -> tuple[pd.DataFrame, ValidityExtras]:
    """T2 with no evaluated image: one row per (method, operator), every metric NaN."""
    rows = [{"method": m, "operator": op, "units": "", "score_v2": "margin"
             if m in CONTRASTIVE else "logit", "score_v3": "probability", "seed": seed,
             "n_images": 0, "n_images_v3": 0, **dict.fromkeys(_METRIC_COLS, math.nan),
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


@dataclass
class _Eval:
    """The evaluated images and what every operator's scoring shares."""

    idx: Tensor  # positions in the given arrays
    x: Tensor
    gt: Tensor  # [B,H,W] ground-truth masks
    k: Tensor  # [B] targets (CPU)
    keys: list | None
    present: Tensor  # [B,P+1] ground-truth presence (CPU)
    decisive: Tensor
    n3: int  # images of V3
    seed: int
    batch_size: int
    features: Any  # x -> A scorer of removed images, or None
    claims: dict[str, PartExplanation] = field(default_factory=dict)
    orders: dict[str, Tensor] = field(default_factory=dict)
    decisive_acc: dict[str, float] = field(default_factory=dict)


def _check_inputs(images: Tensor, masks: Tensor, labels: Tensor, decisive: Tensor,
                  keys: Sequence[Any] | None) -> None:
    N = len(images)
    if masks.shape != (N, *images.shape[-2:]) or labels.shape != (N,):
        raise ValueError(f"masks must be [N,H,W] and labels [N] for {N} images, got "
                         f"{tuple(masks.shape)} and {tuple(labels.shape)}")
    if decisive.dim() != 2 or decisive.shape[0] != N:
        raise ValueError(f"decisive must be bool [N,P+1] with N={N}, got "
                         f"{tuple(decisive.shape)}")
    if keys is not None and len(keys) != N:
        raise ValueError(f"keys must hold one entry per image ({N}), got {len(keys)}")


def _claims(ev: _Eval, classifier: ContractClassifier, pdm: Any, ibd: Any,
            methods: list[str], use_fused: bool, head: Any = None) -> None:
    """Every method's explanation of the evaluated images, its claimed order and V4."""
    ex = explain_methods(classifier, ev.x, methods, pdm=pdm, ibd=ibd, target=ev.k, seed=ev.seed,
                         batch_size=ev.batch_size, fast=use_fused, head=head)
    ev.claims = {m: e.detach_cpu() for m, e in ex.items()}
    ev.orders = {m: claimed_order(ev.claims[m].contributions, ev.present) for m in methods}
    ev.orders["random"] = random_order(ev.present, seed=ev.seed)
    ones = torch.ones(len(ev.k), dtype=torch.bool)
    ev.decisive_acc = {m: decisive_part_accuracy(ev.claims[m].contributions, ev.decisive, ones,
                                                 ev.present) for m in methods}


def _deletion(ev: _Eval, cache: RemovalCache, op_name: str, delta: Tensor,
              curves: dict[tuple[str, str], Tensor]) -> dict[str, float]:
    """V3 on the first ``n3`` images: claimed orders, random, greedy (by single-removal logit
    effect: not optimal when effects interact)."""
    sub = slice(0, ev.n3)
    aucs = {}
    for name, order in dict(ev.orders, greedy=claimed_order(delta, ev.present)).items():
        curve = cache.deletion_curve(ev.k[sub], order[sub], ev.present[sub])
        curves[(name, op_name)] = curve
        aucs[name] = float(torch.nanmean(deletion_auc(curve, ev.present[sub].sum(1))))
    return aucs


def _method_row(ev: _Eval, m: str, op_name: str, cache: RemovalCache, delta: Tensor,
                aucs: dict[str, float], fc_b: Tensor, chance: float,
                margin_effects: dict[tuple[str, str], Tensor]) -> tuple[dict, pd.DataFrame]:
    """T2's row of method ``m`` under one operator, and its V2 per image."""
    cl, k = ev.claims[m], ev.k
    ones = torch.ones(len(k), dtype=torch.bool)
    if cl.contrast is not None:
        d = cache.effects(k, ev.present, cl.contrast)
        margin_effects[(op_name, m)] = d
        score, bias = margin(cache.base, k, cl.contrast), fc_b[k] - fc_b[cl.contrast]
    else:
        d, score, bias = delta, margin(cache.base, k, None), fc_b[k]
    ceil = decisive_part_accuracy(d, ev.decisive, ones, ev.present)
    agree = removal_agreement(cl.contributions, d, ev.present, logits=score, bias=bias)
    nae = agree.summary["norm_abs_error"] if cl.units in ("logit", "margin") else math.nan
    v1 = v1_mean = math.nan
    if cl.has_bias:
        err = completeness_error(cl.contributions, cl.bias, cl.score)
        v1, v1_mean = _nanmax(err), float(err.double().nanmean())
    row = {"method": m, "operator": op_name, "units": cl.units,
           "score_v2": "margin" if cl.contrast is not None else "logit",
           "score_v3": "probability", "seed": ev.seed, "n_images": len(k),
           "n_images_v3": ev.n3, "completeness_error_max": v1, "completeness_error_mean": v1_mean,
           "spearman": agree.summary["spearman"], "top_part": agree.summary["top_part"],
           "norm_abs_error": nae, "auc_claimed": aucs[m], "auc_random": aucs["random"],
           "auc_greedy": aucs["greedy"], "decisive": ev.decisive_acc[m],
           "decisive_ceiling": ceil, "decisive_chance": chance, "note": NOTES.get(m, "")}
    pi = agree.per_image.copy()
    pi["decisive"] = decisive_hits(cl.contributions, ev.decisive, ev.present).numpy()
    pi["decisive_ceiling"] = decisive_hits(d, ev.decisive, ev.present).numpy()
    pi.insert(0, "image", ev.idx.numpy())
    pi.insert(0, "operator", op_name)
    pi.insert(0, "method", m)
    return row, pi


def _settings(ev: _Eval, n_eval: int, operators: Mapping[str, RemovalOperator],
              classifier: ContractClassifier, use_fused: bool, n_sanity: int) -> dict[str, Any]:
    return {
        "n_eval_requested": n_eval, "n_images": len(ev.k), "n_images_v3": ev.n3,
        "targets": "true class (= predicted: correctly classified images only)",
        "effects": "ground-truth part masks, present parts only",
        "operators": {n: getattr(o, "name", type(o).__name__) for n, o in operators.items()},
        "v2_score": "logit (margin logit_k - logit_j for contrastive methods)",
        "v3_score": "softmax probability of the target class; AUC by RISE's trapezoid, "
                    "lower is better; greedy order = by single-removal logit effect",
        "scorer": "BatchNorm-folded channels-last copy of the classifier" if use_fused
                  else "the classifier",
        "random_order_seed": ev.seed, "random_explainer_seed": ev.seed,
        "sanity_modules": sanity_module_names(classifier), "sanity_images": n_sanity,
        "pdm_occlusion_imputer": f"gaussian blur k={BLUR_KERNEL} sigma={BLUR_SIGMA:g}",
        "ties": "claimed order: ties go to the lower part index",
    }


def _timed(timings: dict[str, float], name: str, t0: float, c0: float) -> None:
    timings[name] = time.perf_counter() - t0
    timings[f"cpu:{name}"] = time.process_time() - c0


def run_validity(classifier: ContractClassifier, pdm: Any, images: Tensor, masks: Tensor,
                 labels: Tensor, *, decisive: Tensor, operators: Mapping[str, RemovalOperator],
                 keys: Sequence[Any] | None = None, ibd: Any = None, n_eval: int = 300,
                 n_deletion: int | None = 100, methods: Iterable[str] = METHODS,
                 sanity_methods: Iterable[str] = SANITY_METHODS, n_sanity: int = 32,
                 seed: int = 0, batch_size: int = 128, use_fused: bool = True,
                 head: Any = None) -> tuple[pd.DataFrame, ValidityExtras]:
    """Table T2: V1–V5 for every method × removal operator.

    The first ``n_eval`` correctly classified images are evaluated, explaining their (true =
    predicted) class. Per operator, the measured effects are computed once on the
    **ground-truth** part masks (parts present in them only) and shared by all methods.

    Args:
        classifier, pdm, ibd: the models (``ibd`` may be None: its methods are then skipped;
            so are the amortised rule's when ``head``, its trained contribution head, is).
        images: ``[N,3,H,W]`` float in [0,1] or uint8; masks ``[N,H,W]`` ground-truth part
            labels; labels ``[N]`` true classes; decisive ``[N,P+1]`` bool decisive parts.
        operators: name → removal operator (:func:`default_operators`).
        keys: one per image for the operators (dataset indices for ``rerender``).
        n_eval: images evaluated (the first correctly classified ones): V1, V2, V4.
        n_deletion: the first ``n_deletion`` of them for V3 (None = all).
        methods: registry names (:data:`~partslib.explain.registry.METHODS`).
        sanity_methods: methods of the V5 cascade, on the first ``n_sanity`` images.
        seed: of the random explainer, the random order and V5's re-initialisations.
        use_fused: score removed images with a BatchNorm-folded copy of the classifier (same
            logits up to float rounding, about 2× faster on CPU).

    Returns:
        ``(t2, extras)``: one row per (method, operator) with ``method``, ``operator``,
        ``units``, ``score_v2``, ``score_v3``, ``seed``, ``n_images``, ``n_images_v3``, V1
        ``completeness_error_max``/``_mean`` (for the basis rule: IBD's residual), V2
        ``spearman``, ``top_part``, ``norm_abs_error``, V3 ``auc_claimed``, ``auc_random``,
        ``auc_greedy`` (lower is better; greedy = by single-removal effect), V4 ``decisive``,
        ``decisive_ceiling``, ``decisive_chance``, ``note``, and 95% bootstrap intervals
        (images, seeded) ``<score>_lo``/``_hi`` of :data:`INTERVAL_COLUMNS`; ``t2.attrs``:
        the settings. V5 is in ``extras.sanity``, the region-rule gap in ``extras.gap``.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    images = check_images(images)
    _check_inputs(images, masks, labels, decisive, keys)
    methods = _runnable(methods, ibd, head)
    sanity_methods = [m for m in sanity_methods if m in methods]
    L = int(decisive.shape[1])
    classifier.eval()
    idx = _select_correct(classifier, images, labels, n_eval, batch_size)
    if len(idx) == 0:
        warnings.warn(f"run_validity: none of the {len(images)} images is correctly "
                      f"classified; T2 is empty (all metrics NaN)", RuntimeWarning, stacklevel=2)
        return _empty_result(methods, list(operators), seed, L, n_eval)
    gt = masks[idx].long()
    ev = _Eval(idx=idx, x=images[idx], gt=gt, k=labels[idx].long().cpu(),
               keys=None if keys is None else [keys[int(i)] for i in idx],
               present=torch.stack([(gt == p).flatten(1).any(1) for p in range(L)], 1).cpu(),
               decisive=decisive[idx].bool().cpu(),
               n3=len(idx) if n_deletion is None else min(int(n_deletion), len(idx)),
               seed=seed, batch_size=batch_size,
               features=fused_features(classifier) if use_fused else None)
    _timed(timings, "select", t_start, cpu_start)
    segmenter = PDMSegmenter(pdm) if pdm is not None else None  # one fused copy for all
    t0, c0 = time.perf_counter(), time.process_time()
    _claims(ev, classifier, segmenter, ibd, methods, use_fused, head)
    _timed(timings, "explain", t0, c0)
    t2, extras = _score_operators(ev, classifier, operators, methods, timings)
    t0, c0 = time.perf_counter(), time.process_time()
    n_s = min(n_sanity, len(idx))
    sanity = _sanity(classifier, segmenter, ibd, sanity_methods if n_s > 0 else [], ev.x[:n_s],
                     ev.k[:n_s], ev.present[:n_s], seed, batch_size, head)
    if len(sanity):
        sanity["n_images"] = n_s
        sanity["seed"] = seed
    _timed(timings, "sanity", t0, c0)
    timings["total"] = time.perf_counter() - t_start
    timings["cpu_total"] = time.process_time() - cpu_start  # all threads
    extras.settings = _settings(ev, n_eval, operators, classifier, use_fused, n_s)
    t2.attrs.update(extras.settings)
    extras.sanity, extras.timings = sanity, timings
    return t2, extras


def _score_operators(ev: _Eval, classifier: ContractClassifier,
                     operators: Mapping[str, RemovalOperator], methods: list[str],
                     timings: dict[str, float]) -> tuple[pd.DataFrame, ValidityExtras]:
    """V1–V4 of every method under every operator (one removal cache per operator)."""
    fc_b = classifier.fc.bias.detach().cpu()
    fc_w = classifier.fc.weight.detach().cpu()
    chance = _decisive_chance(ev.decisive, ev.present)
    rows, per_image, gaps = [], [], []
    effects, margin_effects, curves, removals = {}, {}, {}, {}
    for op_name, op in Progress(list(operators.items()), desc="T2 removal operators",
                                unit="operator"):
        t0, c0 = time.perf_counter(), time.process_time()
        cache = RemovalCache(classifier, ev.x, ev.gt, op, ev.keys, batch_size=ev.batch_size,
                             features=ev.features, pool_labels=ev.gt,
                             num_labels=ev.present.shape[1])
        delta = effects[op_name] = cache.effects(ev.k, ev.present)
        gap = region_gap(cache, fc_w[ev.k], ev.present)
        gap.insert(0, "image", ev.idx.numpy()[gap["row"].to_numpy()])
        gap.insert(0, "operator", op_name)
        gaps.append(gap)
        aucs = _deletion(ev, cache, op_name, delta, curves)
        for m in methods:
            row, pi = _method_row(ev, m, op_name, cache, delta, aucs, fc_b, chance,
                                  margin_effects)
            rows.append(row)
            per_image.append(pi)
        removals[op_name] = cache.n_removals
        del cache
        _timed(timings, f"operator:{op_name}", t0, c0)
    extras = ValidityExtras(indices=ev.idx, targets=ev.k, present=ev.present,
                            decisive=ev.decisive, claims=ev.claims, effects=effects,
                            margin_effects=margin_effects, curves=curves,
                            per_image=pd.concat(per_image, ignore_index=True) if per_image
                            else pd.DataFrame(), sanity=_empty_sanity(),
                            gap=pd.concat(gaps, ignore_index=True) if gaps else pd.DataFrame(),
                            removals=removals)
    t2 = pd.DataFrame(rows)
    if len(extras.per_image):  # paired: every (method, operator) resamples the same images
        t2 = t2.merge(bootstrap_intervals(extras.per_image, ["method", "operator"],
                                          INTERVAL_COLUMNS, seed=ev.seed),
                      on=["method", "operator"], how="left")
    return t2, extras
