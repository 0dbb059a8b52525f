"""IBD's concept heatmaps (ibd.md §4): linear concept scores per cell, gated and normalised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.ibd._checks import as_tensor, check_ndim
from partslib.ibd.concepts import ConceptClassifiers
from partslib.ibd.decomposition import IBDDecomposition, ibd_contributions

__all__ = ["concept_score_maps", "ibd_heatmaps"]


def concept_score_maps(features: Tensor | np.ndarray, classifiers: ConceptClassifiers) -> Tensor:
    """Linear concept scores per cell, as the reference heatmaps use them (ibd.md §4).

    Score = centred (not normalised) weight . a_xy + bias, without sigmoid.

    Args:
        features: (B, C, h, w) feature maps.
        classifiers: trained :class:`ConceptClassifiers`.

    Returns:
        (B, M, h, w) scores.
    """
    x = as_tensor(features, "features")
    check_ndim(x, 4, "features", "(B, C, h, w)")
    weight = classifiers.centred_weight()
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"features must have C={weight.shape[1]} channels, got {x.shape[1]}")
    x = x.to(weight.dtype)
    return (
        torch.einsum("bchw,mc->bmhw", x, weight)
        + classifiers.bias.to(weight.dtype)[None, :, None, None]
    )


def ibd_heatmaps(
    features: Tensor | np.ndarray,
    classifiers: ConceptClassifiers,
    decomposition: IBDDecomposition,
    targets: Tensor | Sequence[int],
    out_size: tuple[int, int],
) -> Tensor:
    """IBD concept heatmaps per image (ibd.md §4).

    The n maps are ordered as :func:`ibd_contributions` on the GAP of ``features``
    orders the concepts (by contribution, descending). Each map is the linear score
    of its concept times 1[s_i > 0], ReLU'd, divided by one maximum shared by all n maps
    of the image (all-zero maps stay zero), then bilinearly upsampled (align_corners=False).

    Args:
        features: (B, C, h, w) feature maps.
        classifiers: the classifiers whose centred-normalised weights were decomposed.
        decomposition: output of :func:`decompose` over ``classifiers.concept_vectors()``.
        targets: (B,) class to explain per image.
        out_size: (H, W) output size.

    Returns:
        (B, n, H, W) maps in [0, 1].
    """
    x = as_tensor(features, "features")
    check_ndim(x, 4, "features", "(B, C, h, w)")
    if classifiers.weight.shape[0] != decomposition.concept_vectors.shape[0]:
        raise ValueError(
            f"classifiers has {classifiers.weight.shape[0]} concepts but the decomposition used "
            f"{decomposition.concept_vectors.shape[0]} concept vectors"
        )
    explanation = ibd_contributions(x.mean(dim=(2, 3)), decomposition, targets)
    scores = concept_score_maps(x, classifiers)  # (B, M, h, w)
    idx = explanation.concepts[:, :, None, None].expand(-1, -1, *scores.shape[2:])
    maps = scores.gather(1, idx) * (explanation.coefficients > 0).to(scores.dtype)[:, :, None, None]
    maps = maps.clamp_min(0)
    peak = maps.amax(dim=(1, 2, 3), keepdim=True)
    maps = maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    return F.interpolate(maps, size=tuple(out_size), mode="bilinear", align_corners=False)
