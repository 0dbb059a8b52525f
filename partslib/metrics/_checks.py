"""Argument checks and the rank correlation shared by the validity metrics
(:mod:`partslib.metrics.validity`, :mod:`partslib.metrics.randomisation`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from partslib.checks import check_nonempty

# ---------------------------------------------------------------------------------- checks

def _check_parts(name: str, x: Any, present: torch.Tensor | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a [B,P+1] tensor, got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")
    check_nonempty(x.shape[0], name)
    if present is not None and tuple(x.shape) != tuple(present.shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)} but present has shape "
                         f"{tuple(present.shape)}; both must be [B,P+1]")


def _check_present(present: Any, batch: int | None = None) -> None:
    if not isinstance(present, torch.Tensor) or present.dim() != 2:
        raise ValueError(f"present must be a bool [B,P+1] tensor, got shape "
                         f"{tuple(getattr(present, 'shape', ()))}")
    if present.dtype != torch.bool:
        raise ValueError(f"present must be a bool tensor, got {present.dtype}")
    if batch is not None and present.shape[0] != batch:
        raise ValueError(f"present has {present.shape[0]} rows, expected one per image ({batch})")


def _check_vector(name: str, x: Any, batch: int) -> None:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (batch,):
        raise ValueError(f"{name} must be a [B] tensor with B={batch}, got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")


def _check_targets(targets: Any, batch: int) -> None:
    _check_vector("targets", targets, batch)
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer (long) tensor, got {targets.dtype}")


# ----------------------------------------------------------------------------- utilities

def spearman(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D arrays, with average ranks for ties.

    NaN when fewer than two values, when either side is constant, or on non-finite input.
    """
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    a, b = a.ravel(), b.ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.size} and {b.size}")
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    ra, rb = rankdata(a) - (a.size + 1) / 2, rankdata(b) - (b.size + 1) / 2
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if den == 0.0:
        return math.nan
    return float(ra @ rb) / den
