"""Input checks and dtype rules shared by the IBD modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def as_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_ndim(x: Tensor, ndim: int, name: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")


def check_targets(targets: Tensor | Sequence[int], batch: int, num_classes: int) -> Tensor:
    t = torch.as_tensor(targets).long().reshape(-1)
    if t.numel() != batch:
        raise ValueError(f"targets must have one entry per image ({batch}), got {t.numel()}")
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def float_dtype(*xs: Tensor) -> torch.dtype:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()
