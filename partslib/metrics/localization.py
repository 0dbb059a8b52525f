"""Localisation of parts against ground-truth masks (SPEC §5, V6).

* :func:`confusion_matrix`, :func:`part_iou`, :func:`mean_iou` -- segmentation IoU,
  accumulated over a dataset (torchvision references convention: rows = ground truth).
* :func:`pointing_game` -- the argmax pixel of a part map falls in that part (Zhang et al.,
  ECCV 2016; Quantus ``PointingGame`` without a tolerance radius).
* :func:`netdissect_iou` -- Network Dissection IoU (Bau et al., CVPR 2017,
  https://arxiv.org/abs/1704.05796; ``CSAILVision/NetDissect-Lite``): top-0.5% quantile
  threshold per unit, bilinear upsampling, IoU summed over the dataset before dividing.
* :func:`relevance_mass` -- share of positive map mass inside each part (Relevance Mass
  Accuracy, Arras et al. 2022, per part); used for Grad-CAM part contributions.

Pixels labelled ``ignore_index`` (255) are unannotated and left out of every tally, except
the total mass of :func:`relevance_mass` (see there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX

__all__ = [
    "confusion_matrix",
    "mean_iou",
    "netdissect_iou",
    "part_iou",
    "pointing_game",
    "relevance_mass",
]

NETDISSECT_QUANTILE = 0.005  # NetDissect-Lite settings.QUANTILE


def _check_labels(name: str, x: object, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name} must be a [B,H,W] tensor, got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {shape}")


def _class_ids(classes: Sequence[int] | torch.Tensor, m: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(classes).long().flatten().cpu()
    if ids.numel() != m:
        raise ValueError(f"{what} must give one class per map channel ({m}), got {ids.numel()}")
    return ids


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel confusion matrix; sum the results of several batches to accumulate.

    Args:
        pred: ``(B,H,W)`` predicted labels in ``0..num_classes-1``.
        gt: ``(B,H,W)`` ground-truth labels, ``ignore_index`` pixels skipped.
    Returns:
        ``(num_classes, num_classes)`` int64, ``[gt, pred]`` counts.
    """
    _check_labels("gt", gt)
    _check_labels("pred", pred, tuple(gt.shape))
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    keep = gt != ignore_index
    g, p = gt[keep].long(), pred.to(gt.device)[keep].long()
    if bool(((g < 0) | (g >= num_classes)).any()):
        raise ValueError(f"gt holds labels outside 0..{num_classes - 1} and {ignore_index}")
    if bool(((p < 0) | (p >= num_classes)).any()):
        raise ValueError(f"pred holds labels outside 0..{num_classes - 1} (at annotated pixels)")
    counts = torch.bincount(g * num_classes + p, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes).cpu()


def _check_confusion(confusion: object) -> None:
    if (not isinstance(confusion, torch.Tensor) or confusion.dim() != 2
            or confusion.shape[0] != confusion.shape[1]):
        raise ValueError(f"confusion must be a square [C,C] tensor, got shape "
                         f"{tuple(getattr(confusion, 'shape', ()))}")


def part_iou(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a dataset-summed confusion matrix.

    Returns ``(C,)`` float64, NaN for classes neither in the ground truth nor predicted.
    """
    _check_confusion(confusion)
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean of :func:`part_iou` over the classes present in the ground truth (background
    included). Classes only predicted, never annotated, do not enter the mean."""
    _check_confusion(confusion)
    in_gt = confusion.sum(1) > 0
    if not bool(in_gt.any()):
        return math.nan
    return float(part_iou(confusion)[in_gt].mean())


def pointing_game(maps: torch.Tensor, labels: torch.Tensor,
                  classes: Sequence[int] | torch.Tensor) -> float:
    """Hit rate: the argmax pixel of map channel m lies inside the region of part
    ``classes[m]``, counted over the (image, channel) pairs whose part is present.

    Args:
        maps: ``(B,M,H,W)`` part maps at label resolution (upsample first); ties in the
            argmax go to the first pixel in row-major order.
        labels: ``(B,H,W)`` ground-truth part labels.
        classes: ``M`` part labels, one per map channel.
    Returns:
        hit rate in [0, 1], NaN if no part of ``classes`` is present anywhere.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        raise ValueError(f"maps must be a [B,M,H,W] tensor, got shape "
                         f"{tuple(getattr(maps, 'shape', ()))}")
    B, M, H, W = maps.shape
    _check_labels("labels", labels, (B, H, W))
    ids = _class_ids(classes, M, "classes").to(labels.device)
    lab = labels.reshape(B, 1, H * W)
    region = lab == ids.view(1, M, 1)  # (B,M,HW)
    present = region.any(2)
    top = maps.reshape(B, M, H * W).to(labels.device).argmax(2, keepdim=True)
    hit = region.gather(2, top)[..., 0]
    trials = int(present.sum())
    return float((hit & present).sum()) / trials if trials else math.nan


def netdissect_iou(maps: torch.Tensor, labels: torch.Tensor,
                   concept_ids: Sequence[int] | torch.Tensor,
                   quantile: float = NETDISSECT_QUANTILE,
                   ignore_index: int = IGNORE_INDEX, batch_size: int = 64) -> torch.Tensor:
    """Network Dissection IoU of each map channel with its concept (part) mask.

    Threshold ``T_m`` = the ``1 − quantile`` percentile of channel m over all N·h·w values
    (``np.percentile``, linear interpolation, as NetDissect-Lite); each map is upsampled to
    the label resolution (bilinear, ``align_corners=False``) and thresholded ``> T_m``;
    ``IoU_m = Σ|M ∩ L| / Σ|M ∪ L|`` summed over the whole dataset before dividing.

    Args:
        maps: ``(N,M,h,w)`` activation or part maps.
        labels: ``(N,H,W)`` part labels; ``ignore_index`` pixels are left out.
        concept_ids: ``M`` label values, the concept each channel is scored against.
        batch_size: images upsampled at a time (memory only).
    Returns:
        ``(M,)`` float64, NaN where the union is empty.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        raise ValueError(f"maps must be a [N,M,h,w] tensor, got shape "
                         f"{tuple(getattr(maps, 'shape', ()))}")
    N, M = maps.shape[:2]
    _check_labels("labels", labels)
    if labels.shape[0] != N:
        raise ValueError(f"labels has {labels.shape[0]} images, maps has {N}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    ids = _class_ids(concept_ids, M, "concept_ids")
    feats = maps.detach().cpu().double()
    flat = feats.transpose(0, 1).reshape(M, -1).numpy()
    thr = torch.from_numpy(np.percentile(flat, 100 * (1 - quantile), axis=1))  # (M,)
    H, W = labels.shape[1:]
    inter = torch.zeros(M, dtype=torch.float64)
    area_map = torch.zeros(M, dtype=torch.float64)
    area_lab = torch.zeros(M, dtype=torch.float64)
    for start in range(0, N, batch_size):
        f = feats[start:start + batch_size]
        lab = labels[start:start + batch_size].cpu()
        up = F.interpolate(f, size=(H, W), mode="bilinear", align_corners=False)
        mask = up > thr.view(1, M, 1, 1)  # (n,M,H,W)
        known = (lab != ignore_index)[:, None]
        concept = lab[:, None] == ids.view(1, M, 1, 1)
        mask = mask & known
        inter += (mask & concept).sum((0, 2, 3)).double()
        area_map += mask.sum((0, 2, 3)).double()
        area_lab += concept.sum((0, 2, 3)).double()
    union = area_map + area_lab - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, math.nan))


def relevance_mass(maps: torch.Tensor, labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Share of each image's positive relevance that falls inside each part.

    ``mass[b,p] = Σ_{u∈p} max(map,0) / Σ_u max(map,0)``. The total runs over all pixels,
    ``ignore_index`` ones included, so a row sums to 1 minus the mass on unannotated pixels.

    Args:
        maps: ``(B,H,W)`` one saliency map per image (e.g. Grad-CAM of the target class) at
            label resolution.
        labels: ``(B,H,W)`` part labels in ``0..num_parts`` or 255.
        num_parts: P.
    Returns:
        ``(B,P+1)`` float64; a row of NaN where the map has no positive mass.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise ValueError(f"maps must be a [B,H,W] tensor, got shape "
                         f"{tuple(getattr(maps, 'shape', ()))}")
    _check_labels("labels", labels, tuple(maps.shape))
    if not isinstance(num_parts, int) or num_parts < 0:
        raise ValueError(f"num_parts must be an int >= 0, got {num_parts!r}")
    lab = labels.to(maps.device).long()
    bad = ((lab < 0) | (lab > num_parts)) & (lab != IGNORE_INDEX)
    if bool(bad.any()):
        raise ValueError(f"labels hold values outside 0..{num_parts} and {IGNORE_INDEX}")
    B = maps.shape[0]
    pos = maps.detach().double().clamp_min(0).reshape(B, -1)
    idx = torch.where(lab == IGNORE_INDEX, num_parts + 1, lab).reshape(B, -1)
    mass = torch.zeros(B, num_parts + 2, dtype=torch.float64, device=maps.device)
    mass.scatter_add_(1, idx, pos)
    total = pos.sum(1, keepdim=True)
    share = mass[:, :num_parts + 1] / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, share, torch.full_like(share, math.nan))
