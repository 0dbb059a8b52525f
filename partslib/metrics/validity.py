"""Validity of quantitative part explanations (SPEC §5, V1-V5).

A part explanation claims a contribution ``c_p`` per part (column 0 = background, 1..P = parts)
to the score of a target class. These metrics check the claim against what the model does
when the part is removed by a removal operator (:mod:`partslib.removal`):

* V1 :func:`completeness_error` -- ``b + Σ_p c_p`` against the logit.
* V2 :func:`removal_effects`, :func:`removal_agreement` -- measured effects ``Δ_p`` and their
  agreement with the claim (Spearman, top part, normalised absolute error).
* V3 :func:`deletion_curve`, :func:`deletion_auc` -- cumulative part deletion, AUC as RISE
  (Petsiuk et al., BMVC 2018, https://arxiv.org/abs/1806.07421).
* V4 :func:`decisive_part_accuracy` -- top-ranked part against known decisive parts.
* V5 :func:`cascading_randomisation` -- the model-parameter randomisation test of Adebayo et
  al., NeurIPS 2018 (https://arxiv.org/abs/1810.03292), cascading from the head downwards.

:class:`RandomExplainer` gives the chance floor; V5 and the floor live in
:mod:`partslib.metrics.randomisation` and are re-exported here. Every function takes callables
and tensors (Captum style) and never imports a concrete model or dataset. Conventions: contributions
``(B,P+1)`` float, ``present`` ``(B,P+1)`` bool (a metric only looks at present parts),
targets ``(B,)`` long, ``score_fn(images) -> (B,K)`` logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from partslib.checks import check_nonempty
from partslib.constants import INFERENCE_BATCH
from partslib.metrics._checks import (
    _check_parts,
    _check_present,
    _check_targets,
    _check_vector,
    spearman,
)
from partslib.metrics.randomisation import RandomExplainer, cascading_randomisation
from partslib.removal import RemovalOperator

__all__ = [
    "ORDER_PAD",
    "SCORES",
    "RandomExplainer",
    "RemovalAgreement",
    "cascading_randomisation",
    "claimed_order",
    "completeness_error",
    "decisive_hits",
    "decisive_part_accuracy",
    "deletion_auc",
    "deletion_curve",
    "random_order",
    "removal_agreement",
    "removal_effects",
    "spearman",
]

ORDER_PAD = -1  # fills the tail of a part order after the present parts
SCORES = ("logit", "probability")  # what removal_effects / deletion_curve measure

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------- checks

def _check_images_labels(images: Any, labels: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a [B,3,H,W] tensor, got shape "
                         f"{tuple(getattr(images, 'shape', ()))}")
    B, _, H, W = images.shape
    check_nonempty(B, "images")
    if images.dtype == torch.float64:
        raise ValueError("images are float64; expected float32 (or uint8) like the model's "
                         "inputs: pass images.float()")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (B, H, W):
        raise ValueError(f"labels must have shape {(B, H, W)} to match images, got "
                         f"{tuple(getattr(labels, 'shape', ()))}")


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _target_scores(score_fn: ScoreFn, images: torch.Tensor, targets: torch.Tensor,
                   score: str) -> torch.Tensor:
    """``(n,)`` logit or softmax probability of each image's target class."""
    out = score_fn(images)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(f"score_fn must return [B,K] logits for {images.shape[0]} images, got "
                         f"shape {tuple(getattr(out, 'shape', ()))}")
    t = targets.to(out.device).long()
    if bool(((t < 0) | (t >= out.shape[1])).any()):
        raise ValueError(f"targets must lie in 0..{out.shape[1] - 1} (K = score_fn's width)")
    if score == "probability":
        out = torch.softmax(out.float(), dim=1)
    return out.gather(1, t[:, None])[:, 0]


# ----------------------------------------------------------------------------- utilities

def _order_from_keys(keys: np.ndarray, present: np.ndarray) -> torch.Tensor:
    """Present parts by ascending key (stable: ties keep the lower part index first)."""
    keys = np.where(present, keys, 0.0)
    order = np.lexsort((keys, ~present), axis=-1)  # last key is primary: present parts first
    order = np.where(np.arange(present.shape[1])[None] < present.sum(1, keepdims=True),
                     order, ORDER_PAD)
    return torch.from_numpy(order.astype(np.int64))


# --------------------------------------------------------------------------- V1 complete

def completeness_error(contributions: torch.Tensor, bias: torch.Tensor,
                       logits: torch.Tensor) -> torch.Tensor:
    """V1: relative completeness error ``|b + Σ_p c_p − logit| / max(|b| + Σ_p |c_p|, tiny)``.

    The denominator is the total magnitude of the terms being summed, so the error is scale
    free and stays bounded when the logit itself is near zero (cancellation); ``tiny`` is the
    smallest positive float64 and only guards 0/0 (all terms zero gives error 0 or inf).

    Args:
        contributions: ``(B,P+1)`` claimed contributions, all columns summed.
        bias: ``(B,)`` the class bias ``b_k`` of each image's target.
        logits: ``(B,)`` the target logit of each image.
    Returns:
        ``(B,)`` float64.
    """
    _check_parts("contributions", contributions)
    B = contributions.shape[0]
    _check_vector("bias", bias, B)
    _check_vector("logits", logits, B)
    c = contributions.detach().double()
    b, z = bias.detach().double().to(c.device), logits.detach().double().to(c.device)
    num = (b + c.sum(1) - z).abs()
    den = (b.abs() + c.abs().sum(1)).clamp_min(torch.finfo(torch.float64).tiny)
    return num / den


# ---------------------------------------------------------------------------- V2 removal

@torch.no_grad()
def removal_effects(score_fn: ScoreFn, images: torch.Tensor, labels: torch.Tensor,
                    targets: torch.Tensor, present: torch.Tensor, remover: RemovalOperator,
                    keys: Sequence[Any] | None = None, score: str = "logit",
                    batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """V2: measured effect ``Δ_p = s_k(x) − s_k(x without p)`` of removing each present part.

    All (image, part) removals are run together in chunks of ``batch_size`` images.

    Args:
        score_fn: ``images -> (n,K)`` logits.
        images: ``(B,3,H,W)`` in [0,1]; labels ``(B,H,W)`` part labels.
        targets: ``(B,)`` class k of each image.
        present: ``(B,P+1)`` bool; only present parts are removed.
        remover: a removal operator (:mod:`partslib.removal`).
        keys: per-image identifiers passed on to the remover (e.g. dataset indices).
        score: ``"logit"`` or ``"probability"`` (softmax of the logits).
    Returns:
        ``(B,P+1)`` effects, NaN where the part is not present.
    """
    _check_images_labels(images, labels)
    B = images.shape[0]
    _check_targets(targets, B)
    _check_present(present, B)
    _check_score(score)
    _check_batch_size(batch_size)
    if keys is not None and len(keys) != B:
        raise ValueError(f"keys must hold one entry per image ({B}), got {len(keys)}")
    s0 = _target_scores(score_fn, images, targets, score)
    dtype = s0.dtype if s0.is_floating_point() else torch.float32
    effects = torch.full(tuple(present.shape), math.nan, dtype=dtype, device=s0.device)
    pairs = present.nonzero().to(images.device)  # (n,2) rows (image, part)
    for chunk in pairs.split(batch_size):
        idx, part = chunk[:, 0], chunk[:, 1]
        drop = torch.zeros(len(chunk), present.shape[1], dtype=torch.bool, device=images.device)
        drop[torch.arange(len(chunk), device=images.device), part] = True
        sub_keys = None if keys is None else [keys[i] for i in idx.tolist()]
        removed = remover(images[idx], labels[idx], drop, sub_keys)
        s = _target_scores(score_fn, removed, targets.to(images.device)[idx], score)
        effects[idx.to(s0.device), part.to(s0.device)] = (s0[idx.to(s0.device)] - s).to(dtype)
    return effects


@dataclass(frozen=True)
class RemovalAgreement:
    """Result of :func:`removal_agreement`.

    Attributes:
        per_image: one row per image with columns ``n_present``, ``spearman``, ``top_part``
            (1.0 / 0.0) and ``norm_abs_error``; NaN where undefined.
        summary: the mean of each column ignoring NaN, plus ``n_images`` (rows with a finite
            Spearman) -- the aggregate to report.
    """

    per_image: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)


def removal_agreement(claimed: torch.Tensor, effects: torch.Tensor, present: torch.Tensor,
                      logits: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> RemovalAgreement:
    """V2: agreement between claimed contributions and measured removal effects, per image.

    Over the present parts of each image:

    * ``spearman``: Spearman correlation of ``c`` and ``Δ`` (average ranks for ties); NaN when
      fewer than 2 parts are present or either side is constant.
    * ``top_part``: 1 if the argmax of ``c`` is the argmax of ``Δ`` (ties go to the lower part
      index), else 0; NaN when fewer than 2 parts are present (no ranking to agree on).
    * ``norm_abs_error``: ``mean_p |c_p − Δ_p| / |logit_k − b_k|``; NaN when ``logits`` is not
      given or the denominator is 0. ``bias=None`` means ``b_k = 0``.

    Args:
        claimed: ``(B,P+1)`` claimed contributions.
        effects: ``(B,P+1)`` measured effects (:func:`removal_effects`).
        present: ``(B,P+1)`` bool.
        logits: ``(B,)`` target logits; bias ``(B,)`` target biases.
    """
    _check_present(present)
    _check_parts("claimed", claimed, present)
    _check_parts("effects", effects, present)
    B = present.shape[0]
    if logits is not None:
        _check_vector("logits", logits, B)
    if bias is not None:
        _check_vector("bias", bias, B)
    c = claimed.detach().double().cpu().numpy()
    d = effects.detach().double().cpu().numpy()
    pr = present.cpu().numpy()
    n = pr.sum(1)
    if logits is not None:
        z = logits.detach().double().cpu().numpy()
        b = np.zeros(B) if bias is None else bias.detach().double().cpu().numpy()
        scale = np.abs(z - b)
    rows = []
    for i in range(B):
        ci, di = c[i, pr[i]], d[i, pr[i]]
        rho, top, nae = math.nan, math.nan, math.nan
        if n[i] >= 2:
            rho = spearman(ci, di)
            if np.isfinite(ci).all() and np.isfinite(di).all():
                top = float(np.argmax(ci) == np.argmax(di))
        if logits is not None and n[i] >= 1 and scale[i] > 0:
            nae = float(np.abs(ci - di).mean() / scale[i])
        rows.append((int(n[i]), rho, top, nae))
    df = pd.DataFrame(rows, columns=["n_present", "spearman", "top_part", "norm_abs_error"])
    summary: dict[str, float] = {}
    for col in ("spearman", "top_part", "norm_abs_error"):
        values = df[col].to_numpy(dtype=np.float64)
        known = ~np.isnan(values)
        summary[col] = float(np.nanmean(values)) if known.any() else math.nan
    summary["n_images"] = float((~np.isnan(df["spearman"].to_numpy(dtype=np.float64))).sum())
    return RemovalAgreement(per_image=df, summary=summary)


# --------------------------------------------------------------------------- V3 deletion

def claimed_order(contributions: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Present parts ranked by decreasing contribution (ties: lower part index first).

    The greedy order (by single-removal effect) is ``claimed_order(effects, present)``.

    Returns:
        ``(B,P+1)`` long: the first ``n_present`` entries of each row are part indices, the
        rest ``ORDER_PAD`` (-1).
    """
    _check_present(present)
    _check_parts("contributions", contributions, present)
    c = contributions.detach().double().cpu().numpy()
    pr = present.cpu().numpy()
    if np.isnan(c[pr]).any():
        raise ValueError("contributions are NaN at present parts")
    return _order_from_keys(-c, pr).to(present.device)


def random_order(present: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Present parts in a random order drawn from ``numpy.random.default_rng(seed)``.

    Same layout as :func:`claimed_order`.
    """
    _check_present(present)
    pr = present.cpu().numpy()
    keys = np.random.default_rng(seed).random(pr.shape)
    return _order_from_keys(keys, pr).to(present.device)


def _check_order(order: Any, present: torch.Tensor) -> None:
    if not isinstance(order, torch.Tensor) or tuple(order.shape) != tuple(present.shape):
        raise ValueError(f"order must be a [B,P+1] tensor shaped like present "
                         f"{tuple(present.shape)}, got {tuple(getattr(order, 'shape', ()))}")
    if order.is_floating_point() or order.dtype == torch.bool:
        raise ValueError(f"order must be an integer tensor, got {order.dtype}")
    o, pr = order.cpu().long(), present.cpu()
    n = pr.sum(1)
    valid = o != ORDER_PAD
    prefix = torch.arange(o.shape[1])[None] < n[:, None]
    if not torch.equal(valid, prefix) or bool(((o[valid] < 0) | (o[valid] >= o.shape[1])).any()):
        raise ValueError("each row of order must list the n present part indices first, then "
                         f"{ORDER_PAD} (see claimed_order)")
    counts = torch.zeros_like(o).scatter_add_(1, torch.where(valid, o, 0), valid.long())
    if not torch.equal(counts, pr.long()):
        raise ValueError("each row of order must hold every present part exactly once and no "
                         "absent part")


@torch.no_grad()
def deletion_curve(score_fn: ScoreFn, images: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor, order: torch.Tensor, present: torch.Tensor,
                   remover: RemovalOperator, keys: Sequence[Any] | None = None,
                   score: str = "probability", batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """V3: target score after removing the first 0, 1, ..., n parts of ``order`` cumulatively.

    As RISE's deletion game, with parts as the units and the softmax probability of the target
    as the default score. All steps of all images are batched in chunks of ``batch_size``.
    Step 0 is ``score_fn(images)`` (no removal).

    Args:
        order: ``(B,P+1)`` long from :func:`claimed_order` / :func:`random_order`.
        Others as :func:`removal_effects`.
    Returns:
        ``(B,P+2)``; column j is the score after j removals. A row with n < P+1 present parts
        is padded after column n by repeating its last value; pass ``present.sum(1)`` to
        :func:`deletion_auc`.
    """
    _check_images_labels(images, labels)
    B = images.shape[0]
    _check_targets(targets, B)
    _check_present(present, B)
    _check_order(order, present)
    _check_score(score)
    _check_batch_size(batch_size)
    if keys is not None and len(keys) != B:
        raise ValueError(f"keys must hold one entry per image ({B}), got {len(keys)}")
    dev = images.device
    L = present.shape[1]
    n = present.sum(1).to(dev)
    o = order.to(dev).long()
    # rank[i, p] = position of part p in image i's order (L for absent parts)
    rank = torch.full((B, L), L, dtype=torch.long, device=dev)
    valid = o != ORDER_PAD
    rows = torch.arange(B, device=dev)[:, None].expand(B, L)
    rank[rows[valid], o[valid]] = torch.arange(L, device=dev)[None].expand(B, L)[valid]
    s0 = _target_scores(score_fn, images, targets, score)
    curve = torch.empty(B, L + 1, dtype=s0.dtype if s0.is_floating_point() else torch.float32,
                        device=s0.device)
    curve[:, 0] = s0
    steps = torch.arange(1, L + 1, device=dev)
    jobs = (steps[None] <= n[:, None]).nonzero()  # (m,2) rows (image, step-1)
    for chunk in jobs.split(batch_size):
        idx, j = chunk[:, 0], chunk[:, 1] + 1
        drop = rank[idx] < j[:, None]  # the first j parts of the order
        sub_keys = None if keys is None else [keys[i] for i in idx.tolist()]
        removed = remover(images[idx], labels[idx], drop, sub_keys)
        s = _target_scores(score_fn, removed, targets.to(dev)[idx], score)
        curve[idx.to(curve.device), j.to(curve.device)] = s.to(curve.dtype)
    # pad: column j > n repeats column n
    cols = torch.arange(L + 1, device=curve.device)[None]
    nn_ = n.to(curve.device)[:, None]
    last = curve.gather(1, nn_)
    return torch.where(cols > nn_, last, curve)


def deletion_auc(curve: torch.Tensor, n_parts: torch.Tensor) -> torch.Tensor:
    """V3: area under each deletion curve, RISE's trapezoid on [0, 1].

    For a row with n removal steps: ``(Σ_{j=0..n} a_j − a_0/2 − a_n/2) / n``. Only the first
    n+1 values count, so the padding of :func:`deletion_curve` does not change the area.
    Lower is better. NaN for rows with no present part.

    Args:
        curve: ``(B,L)`` from :func:`deletion_curve`.
        n_parts: ``(B,)`` number of present parts of each image (``present.sum(1)``).
    Returns:
        ``(B,)`` float.
    """
    if not isinstance(curve, torch.Tensor) or curve.dim() != 2:
        raise ValueError(f"curve must be a [B,L] tensor, got shape "
                         f"{tuple(getattr(curve, 'shape', ()))}")
    B, L = curve.shape
    _check_vector("n_parts", n_parts, B)
    n = n_parts.to(curve.device).long()
    if bool(((n < 0) | (n > L - 1)).any()):
        raise ValueError(f"n_parts must lie in 0..{L - 1} (curve has {L} columns)")
    a = curve.double()
    cols = torch.arange(L, device=curve.device)[None]
    total = torch.where(cols <= n[:, None], a, 0.0).sum(1)
    a_n = a.gather(1, n[:, None])[:, 0]
    auc = (total - a[:, 0] / 2 - a_n / 2) / n.clamp_min(1).double()
    return torch.where(n > 0, auc, torch.full_like(auc, math.nan)).to(
        curve.dtype if curve.is_floating_point() else torch.float64)


# --------------------------------------------------------------------------- V4 decisive

def decisive_hits(contributions: torch.Tensor, decisive: torch.Tensor,
                  present: torch.Tensor) -> torch.Tensor:
    """V4 per image: 1.0 if the top-ranked present part (largest contribution, ties: lower
    index) is decisive, 0.0 if not, NaN for an image with no present part.

    Args:
        contributions: ``(B,P+1)``; decisive ``(B,P+1)`` bool; present ``(B,P+1)`` bool.
    Returns:
        ``(B,)`` float64 on the CPU.
    """
    _check_present(present)
    _check_parts("contributions", contributions, present)
    _check_parts("decisive", decisive, present)
    if decisive.dtype != torch.bool:
        raise ValueError(f"decisive must be a bool tensor, got {decisive.dtype}")
    top = claimed_order(contributions, present)[:, 0].cpu()
    hits = torch.full((len(top),), math.nan, dtype=torch.float64)
    use = top != ORDER_PAD
    hits[use] = decisive.cpu()[use].gather(1, top[use][:, None])[:, 0].double()
    return hits


def decisive_part_accuracy(contributions: torch.Tensor, decisive: torch.Tensor,
                           correct: torch.Tensor, present: torch.Tensor) -> float:
    """V4: share of correctly classified images whose top-ranked present part is decisive.

    The top part is the present part with the largest contribution (ties: lower index).
    Images with no present part are skipped. Pass the measured effects as ``contributions``
    for the ceiling set by the model. NaN when no image qualifies. Per image:
    :func:`decisive_hits`.

    Args:
        contributions: ``(B,P+1)``; decisive ``(B,P+1)`` bool; correct ``(B,)`` bool;
            present ``(B,P+1)`` bool.
    """
    hits = decisive_hits(contributions, decisive, present)
    _check_vector("correct", correct, present.shape[0])
    if correct.dtype != torch.bool:
        raise ValueError(f"correct must be a bool tensor, got {correct.dtype}")
    use = correct.cpu() & ~hits.isnan()
    if not bool(use.any()):
        return math.nan
    return float(hits[use].mean())
