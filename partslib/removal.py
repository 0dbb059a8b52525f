"""Part removal operators: "x without part p" for the validity metrics (SPEC §5).

A removal operator is any callable object with a ``name`` and the signature

    op(images[B,3,H,W], labels[B,H,W], drop[B,P+1] bool, keys=None) -> images[B,3,H,W]

that removes all pixels of every part flagged in ``drop`` (column 0 is the background) and
returns a new tensor; inputs are never modified in place. ``keys`` optionally identifies each
image (dataset indices) for operators that re-render the sample exactly
(:class:`partslib.data.synthparts.ReRender`). Pixels labelled ``IGNORE_INDEX`` (255) belong to
no part and are never removed.

Fill operators, for real images:

* :class:`MeanFill` -- a constant colour (default: the image's per-channel mean).
* :class:`GaussianBlurFill` -- the Gaussian-blurred image, as RISE's blur substrate
  (Petsiuk et al., BMVC 2018, https://arxiv.org/abs/1806.07421; ``klen=11, sigma=5``).
* :class:`NoisyLinearImputer` -- ROAD's noisy linear imputation (Rong, Leemann et al.,
  ICML 2022, https://arxiv.org/abs/2202.00449; reference ``tleemann/road_evaluation``).
* :class:`BackgroundFill` -- removed parts are inpainted from the kept background (label 0);
  a removed background becomes flat grey. Removing every label gives the same grey image for
  every photo, so ``f(all removed)`` is one constant per class.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve

from partslib.constants import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "BackgroundFill",
    "FillRemover",
    "GaussianBlurFill",
    "MeanFill",
    "NoisyLinearImputer",
    "RemovalOperator",
    "Remover",
    "check_removal_inputs",
    "removal_mask",
]


@runtime_checkable
class RemovalOperator(Protocol):
    """Structural type of every removal operator (see the module docstring)."""

    @property
    def name(self) -> str:
        """What the operator does, with its parameters (read only: a class attribute or a
        property both satisfy it)."""
        ...

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
                 keys: Sequence[Any] | None = None) -> torch.Tensor: ...


def check_removal_inputs(images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
                         keys: Sequence[Any] | None = None,
                         ignore_index: int = IGNORE_INDEX) -> None:
    """Raise ``ValueError`` unless the arguments follow the removal-operator protocol."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a [B,3,H,W] tensor, got shape "
                         f"{tuple(getattr(images, 'shape', ()))}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    B, _, H, W = images.shape
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (B, H, W):
        raise ValueError(f"labels must have shape {(B, H, W)} to match images, got "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not isinstance(drop, torch.Tensor) or drop.dim() != 2 or drop.shape[0] != B:
        raise ValueError(f"drop must be a bool [B,P+1] tensor with B={B}, got shape "
                         f"{tuple(getattr(drop, 'shape', ()))}")
    if drop.dtype != torch.bool:
        raise ValueError(f"drop must be a bool tensor, got {drop.dtype}")
    num_parts = drop.shape[1] - 1
    bad = ((labels < 0) | (labels > num_parts)) & (labels != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"labels hold values outside 0..{num_parts} (P+1 = drop.shape[1] = "
                         f"{num_parts + 1}) and other than ignore_index={ignore_index}: "
                         f"{sorted(set(labels[bad].unique().tolist()))[:10]}")
    if keys is not None and len(keys) != B:
        raise ValueError(f"keys must hold one entry per image ({B}), got {len(keys)}")


def removal_mask(labels: torch.Tensor, drop: torch.Tensor,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixels to remove: ``mask[b,y,x] = drop[b, labels[b,y,x]]``; ignored pixels stay.

    Args:
        labels: ``(B,H,W)`` integer part labels, 0..P or ``ignore_index``.
        drop: ``(B,P+1)`` bool, the parts to remove from each image.
    Returns:
        ``(B,H,W)`` bool.
    """
    B, H, W = labels.shape
    num_cols = drop.shape[1]
    # Route ignored pixels to an extra always-False column.
    drop_ext = torch.cat([drop, drop.new_zeros(B, 1)], dim=1)
    idx = torch.where(labels == ignore_index, torch.full_like(labels, num_cols), labels).long()
    return drop_ext.gather(1, idx.reshape(B, -1)).reshape(B, H, W)


class Remover(ABC):
    """Base class of removal operators: validates the inputs, then calls :meth:`remove`."""

    name: str = "remover"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
                 keys: Sequence[Any] | None = None) -> torch.Tensor:
        check_removal_inputs(images, labels, drop, keys)
        return self.remove(images, labels, drop.to(images.device), keys)

    @abstractmethod
    def remove(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
               keys: Sequence[Any] | None) -> torch.Tensor:
        """Return a new ``(B,3,H,W)`` tensor without the parts flagged in ``drop``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FillRemover(Remover):
    """Removal by substitution: removed pixels take the values of a substitute image."""

    def remove(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
               keys: Sequence[Any] | None) -> torch.Tensor:
        mask = removal_mask(labels.to(images.device), drop)  # (B,H,W)
        if not bool(mask.any()):
            return images.clone()
        fill = self.fill(images, mask, keys)  # (B,3,H,W)
        return torch.where(mask[:, None], fill.to(images.dtype), images)

    @abstractmethod
    def fill(self, images: torch.Tensor, mask: torch.Tensor,
             keys: Sequence[Any] | None) -> torch.Tensor:
        """Substitute image ``(B,3,H,W)``; only its values under ``mask`` are used."""


class MeanFill(FillRemover):
    """Fill removed pixels with one colour.

    Args:
        color: RGB in image units, e.g. ``(0, 0, 0)``. ``None`` (default) uses each image's
            per-channel mean over all its pixels (those removed included), as a grey-world
            baseline that does not depend on the other images in the batch.
    """

    def __init__(self, color: Sequence[float] | None = None):
        if color is not None:
            color = tuple(float(c) for c in color)
            if len(color) != 3 or not all(math.isfinite(c) for c in color):
                raise ValueError(f"color must be 3 finite numbers (RGB), got {color!r}")
        self.color: tuple[float, float, float] | None = color  # type: ignore[assignment]

    @property
    def name(self) -> str:  # type: ignore[override]
        if self.color is None:
            return "mean_fill(image_mean)"
        return "mean_fill(" + ",".join(f"{c:g}" for c in self.color) + ")"

    def fill(self, images: torch.Tensor, mask: torch.Tensor,
             keys: Sequence[Any] | None) -> torch.Tensor:
        if self.color is None:
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        col = torch.tensor(self.color, dtype=images.dtype, device=images.device)
        return col.view(1, 3, 1, 1).expand_as(images)


def gaussian_kernel(kernel_size: int, sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian ``(kernel_size, kernel_size)``, float64."""
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


class GaussianBlurFill(FillRemover):
    """Fill removed pixels with the Gaussian-blurred image (RISE's blur substrate).

    The blur is a per-channel ``conv2d`` with a normalised ``kernel_size``² Gaussian of std
    ``sigma``. Borders use **replicate** padding, so a constant image blurs to itself; RISE
    zero-pads (``padding=klen//2``), which darkens the border, and torch's reflect padding
    fails on images smaller than the kernel radius. The blur is computed on the whole original
    image, removed pixels included -- a blur keeps the part's coarse shape and colour, which is
    the point of comparing it with re-rendering (SPEC §5).
    """

    def __init__(self, kernel_size: int = 11, sigma: float = 5.0):
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
        self.kernel_size, self.sigma = kernel_size, float(sigma)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"gaussian_blur(k={self.kernel_size},sigma={self.sigma:g},pad=replicate)"

    def fill(self, images: torch.Tensor, mask: torch.Tensor,
             keys: Sequence[Any] | None) -> torch.Tensor:
        return self.blur(images)

    def blur(self, images: torch.Tensor) -> torch.Tensor:
        """Blur every channel of ``(B,3,H,W)`` images."""
        k = self.kernel_size
        kern = gaussian_kernel(k, self.sigma).to(images.device, images.dtype)
        weight = kern.expand(3, 1, k, k)  # depthwise: one kernel per channel
        pad = k // 2
        x = F.pad(images, (pad, pad, pad, pad), mode="replicate") if pad else images
        return F.conv2d(x, weight, groups=3)


# ROAD's neighbourhood (road/imputations.py): 1/6 for direct, 1/12 for diagonal neighbours.
_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (0, 1, 1 / 6), (0, -1, 1 / 6), (1, 0, 1 / 6), (-1, 0, 1 / 6),
    (1, 1, 1 / 12), (1, -1, 1 / 12), (-1, 1, 1 / 12), (-1, -1, 1 / 12),
)


def _linear_impute(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Solve ROAD's system for the removed pixels of one image.

    Each removed pixel equals the weighted mean of its in-image 8 neighbours (weights
    renormalised at the border, as ROAD does by subtracting out-of-image weights from the
    diagonal). Args: ``img`` ``(C,H,W)`` float64, ``mask`` ``(H,W)`` bool (True = removed).
    Returns ``(C,n)`` values of the n removed pixels in row-major order.
    """
    C, H, W = img.shape
    flat_mask = mask.ravel()
    unknown = np.flatnonzero(flat_mask)
    n = unknown.size
    if n == H * W:
        # No known pixel: every constant solves the system. Take the image's channel means,
        # the same fallback as MeanFill's default.
        return np.repeat(img.reshape(C, -1).mean(axis=1, keepdims=True), n, axis=1)
    var_of = np.full(H * W, -1, dtype=np.int64)
    var_of[unknown] = np.arange(n)
    ys, xs = np.divmod(unknown, W)
    flat_img = img.reshape(C, -1)
    diag = np.zeros(n)
    rhs = np.zeros((n, C))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    for dy, dx, w in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        eq = np.flatnonzero(inside)
        nb = ny[inside] * W + nx[inside]
        diag[eq] += w
        nb_unknown = flat_mask[nb]
        # unknown neighbour -> off-diagonal coefficient; known neighbour -> right-hand side
        rows.append(eq[nb_unknown])
        cols.append(var_of[nb[nb_unknown]])
        vals.append(np.full(int(nb_unknown.sum()), -w))
        known_eq, known_nb = eq[~nb_unknown], nb[~nb_unknown]
        rhs[known_eq] += w * flat_img[:, known_nb].T  # each equation once per offset
    vals.insert(0, diag)
    A = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(n, n))
    sol = spsolve(A, rhs)
    return np.asarray(sol, dtype=np.float64).reshape(n, C).T


def _key_entropy(key: Any) -> int:
    """A non-negative int identifying ``key`` (ints as themselves, else CRC32 of its repr)."""
    if isinstance(key, torch.Tensor) and key.numel() == 1:
        key = key.item()
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and int(key) >= 0:
        return int(key)
    return zlib.crc32(repr(key).encode())


class NoisyLinearImputer(FillRemover):
    """ROAD's noisy linear imputation (Rong, Leemann et al., ICML 2022).

    Removed pixels become the solution of the sparse linear system in which every removed
    pixel equals the weighted mean of its 8 neighbours (1/6 direct, 1/12 diagonal; weights
    renormalised at the image border), solved per image with ``scipy.sparse.linalg.spsolve``;
    then Gaussian noise of std ``noise`` is added to the removed pixels and the result is
    clipped to [0, 1].

    Differences from the reference ``tleemann/road_evaluation``: noise is added only to the
    removed pixels (the reference perturbs the whole image), so kept pixels are untouched;
    values are clipped to the image range; if *every* pixel is removed the system is singular
    and the pixels take the image's channel means (as :class:`MeanFill`).

    Determinism: the noise field of an image is drawn from
    ``numpy.random.default_rng([seed, k])``, where ``k`` is the image's key when ``keys`` is
    given, else a CRC32 of the image's bytes. An image therefore gets the same noise field in
    every call, whatever batch it sits in and whichever parts are removed (common random
    numbers across removals).
    """

    def __init__(self, noise: float = 0.01, seed: int = 0):
        if not (noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"noise must be a finite std >= 0, got {noise!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.noise, self.seed = float(noise), int(seed)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"noisy_linear_imputation(noise={self.noise:g},seed={self.seed})"

    def fill(self, images: torch.Tensor, mask: torch.Tensor,
             keys: Sequence[Any] | None) -> torch.Tensor:
        imgs = images.detach().cpu()
        masks = mask.cpu().numpy()
        out = imgs.to(torch.float64).numpy().copy()
        for b in range(imgs.shape[0]):
            m = masks[b]
            if not m.any():
                continue
            img = out[b]
            values = _linear_impute(img, m)  # (C, n)
            if self.noise > 0:
                key = (_key_entropy(keys[b]) if keys is not None
                       else zlib.crc32(imgs[b].contiguous().numpy().tobytes()))
                rng = np.random.default_rng([self.seed, key])
                field = rng.standard_normal(img.shape)  # (C,H,W), independent of the mask
                values = values + self.noise * field.reshape(img.shape[0], -1)[:, m.ravel()]
            img.reshape(img.shape[0], -1)[:, m.ravel()] = np.clip(values, 0.0, 1.0)
        return torch.from_numpy(out).to(images.device, images.dtype)


class BackgroundFill(Remover):
    """Removed parts are inpainted from the kept **background** pixels; a removed background
    becomes a constant ``grey``.

    The object reads as if its removed parts had never been drawn over the scene: each removed
    pixel takes the normalised-convolution average of the nearest kept background pixels
    (Gaussian windows of growing ``sigma``, the smallest window that holds background wins, as
    in Knutsson & Westin's normalised convolution). Kept object parts never leak into the
    fill (unlike a blur or ROAD's imputation). When the background itself is removed, its
    pixels and those of every removed part become ``grey``; when every label is removed the
    image is a flat ``grey`` whatever the photo, so the value of the empty coalition of a
    part game is one constant per class (:mod:`partslib.explain.shapley`).

    Args:
        grey: the fill of a removed background, in image units.
        sigmas: the window widths tried, smallest first; pixels no window reaches take the
            mean of the kept background (or ``grey``).
    """

    def __init__(self, grey: float = 128 / 255, sigmas: Sequence[float] = (2.0, 4.0, 8.0, 16.0)):
        if not (0.0 <= grey <= 1.0):
            raise ValueError(f"grey must be in [0, 1], got {grey!r}")
        if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
            raise ValueError(f"sigmas must be positive finite numbers, got {sigmas!r}")
        self.grey, self.sigmas = float(grey), tuple(float(s) for s in sorted(sigmas))

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"background_fill(grey={self.grey:.3g})"

    def remove(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
               keys: Sequence[Any] | None) -> torch.Tensor:
        labels = labels.to(images.device)
        mask = removal_mask(labels, drop)  # (B,H,W)
        if not bool(mask.any()):
            return images.clone()
        out = images.clone()
        bg_gone = drop[:, 0][:, None, None] & (labels == 0)
        out = torch.where(bg_gone[:, None], torch.full_like(out, self.grey), out)
        parts = mask & ~bg_gone
        source = ((labels == 0) & ~drop[:, 0][:, None, None]).to(images.dtype)[:, None]
        if bool(parts.any()):
            fill = self._inpaint(images, source)
            out = torch.where(parts[:, None], fill, out)
        return out

    def _inpaint(self, images: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Per pixel: the normalised-convolution mean of the ``source`` pixels."""
        B = images.shape[0]
        total = source.sum(dim=(2, 3), keepdim=True)
        mean = (images * source).sum(dim=(2, 3), keepdim=True) / total.clamp_min(1)
        fill = torch.where(total > 0, mean, torch.full_like(mean, self.grey)).expand_as(images)
        fill = fill.clone()
        done = torch.zeros_like(source, dtype=torch.bool)
        for sigma in self.sigmas:
            num = _gauss(images * source, sigma)
            den = _gauss(source, sigma)
            ok = (den > 1e-3) & ~done
            fill = torch.where(ok, num / den.clamp_min(1e-12), fill)
            done = done | ok
            if bool(done.all()):
                break
        return fill.view(B, 3, *images.shape[-2:])


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (so normalised convolution is exact at the
    borders)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    C = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(C, 1, 1, -1), padding=(0, r), groups=C)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(C, 1, -1, 1), padding=(r, 0), groups=C)
