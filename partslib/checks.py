"""Input checks shared by every public entry point (explainers, training, evaluation, metrics).

Each check raises one ``ValueError`` (``TypeError`` for a value of the wrong type) whose message
names the argument, what it got and what was expected. Conventions (PyTorch's: inputs are cast
to the model's dtype when nothing is lost):

* images are float32 ``[B,3,H,W]`` in [0, 1]; ``uint8`` is divided by 255, other float dtypes
  (``float64``, ``float16``, ``bfloat16``) are converted to ``float32``, the dtype of partslib's
  models (values in [0, 1] keep their meaning); a single ``[3,H,W]`` image gets a batch
  dimension; an empty batch, NaN/Inf, values outside [0, 1] (e.g. 0..255 floats) and other
  dtypes are errors;
* part masks are integer ``[B,H,W]`` of the images' size, values ``0..L-1`` or 255 (ignore);
* class labels are integer ``[B]``, values ``0..K-1``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "IMAGE_DTYPE",
    "check_images",
    "check_labels",
    "check_masks",
    "check_nonempty",
    "model_dtype",
]

#: The dtype images are converted to: partslib's models are float32.
IMAGE_DTYPE = torch.float32
#: Masks may hold this value for unannotated pixels (ignored by losses and metrics).
_IGNORE = 255


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def check_nonempty(n: int, name: str = "images") -> None:
    """Raise a ValueError when a batch or dataset ``name`` holds ``n = 0`` items."""
    if n == 0:
        raise ValueError(f"{name} is empty (0 items); expected at least one")


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 when it has none): the
    dtype its inputs are converted to."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return IMAGE_DTYPE


def check_images(x: Any, name: str = "images", size: tuple[int, int] | None = None,
                 keep_uint8: bool = False, dtype: torch.dtype = IMAGE_DTYPE) -> torch.Tensor:
    """Validate a batch of RGB images and return it as float32 ``[B,3,H,W]`` in [0, 1].

    uint8 input is divided by 255; float input of another dtype (float64, float16, bfloat16)
    is converted to ``dtype`` (float32, the dtype of partslib's models; the explainer passes
    its classifier's, :func:`model_dtype`); a single ``[3,H,W]`` image gets a batch
    dimension. ``size`` (H, W): the size the model needs. ``keep_uint8``: uint8 input is
    checked but returned as it is (training sets are kept as uint8 and converted batch by
    batch). Anything else (not a
    tensor, another dtype, an empty batch, a wrong shape or size, NaN or Inf, values outside
    [0, 1]) raises an error that names the value and says what was expected.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,3,H,W], got {type(x).__name__}")
    as_uint8 = keep_uint8 and x.dtype == torch.uint8
    if x.dtype == torch.uint8 and not as_uint8:
        x = x.to(dtype) / 255.0
    if not x.is_floating_point() and not as_uint8:
        raise ValueError(f"{name} must be float in [0,1] or uint8 in 0..255, got dtype {x.dtype}")
    if x.dtype != dtype and not as_uint8:
        x = x.to(dtype)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        hint = ""
        if x.dim() == 4 and x.shape[1] in (1, 4):
            hint = (" (grayscale or RGBA: convert with partslib.data.images.load_image, "
                    "or x.expand(-1, 3, -1, -1) / x[:, :3])")
        raise ValueError(f"{name} must have shape [B,3,H,W], got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); expected at least "
                         f"one image [B>=1,3,H,W]")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} has an empty side (shape {tuple(x.shape)}); expected H, W >= 1")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"{name} must be {size[0]}x{size[1]} for this model, got "
                         f"{x.shape[-2]}x{x.shape[-1]}; resize first (e.g. "
                         f"torch.nn.functional.interpolate(x, size={tuple(size)}, mode='bilinear', "
                         f"antialias=True), or partslib.studies.realphoto.explain_photo for a "
                         f"photo file)")
    if as_uint8:
        return x
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates, Inf is > 1
    if lo != lo or hi != hi or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise ValueError(f"{name} contains NaN or Inf values")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name} must have values in [0, 1], got range [{lo:.3g}, {hi:.3g}] "
                         f"(partslib models normalise internally; pass unnormalised images, "
                         f"0..255 values as uint8 or divided by 255)")
    return x


def check_masks(masks: Any, images: torch.Tensor | None = None, num_labels: int | None = None,
                name: str = "masks") -> torch.Tensor:
    """Validate part masks and return them as int64 ``[B,H,W]``.

    ``images`` (``[B,3,H,W]``): the masks must match its batch and size. ``num_labels``:
    values must be in ``0..num_labels-1`` or 255 (unannotated).
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,H,W], got {type(masks).__name__}")
    if masks.is_floating_point() or masks.is_complex() or masks.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of part ids, got dtype {masks.dtype}")
    if masks.dim() != 3:
        raise ValueError(f"{name} must have shape [B,H,W], got {_shape(masks)}")
    check_nonempty(masks.shape[0], name)
    if images is not None and (masks.shape[0] != images.shape[0]
                               or tuple(masks.shape[-2:]) != tuple(images.shape[-2:])):
        raise ValueError(f"{name} {_shape(masks)} do not match images {_shape(images)}: expected "
                         f"{(images.shape[0], *images.shape[-2:])}")
    masks = masks.long()
    if num_labels is not None:
        bad = masks[(masks < 0) | ((masks >= num_labels) & (masks != _IGNORE))]
        if bad.numel():
            values = sorted(set(bad.unique()[:10].tolist()))
            raise ValueError(f"{name} hold part ids {values} outside 0..{num_labels - 1} "
                             f"(and 255 = unannotated)")
    return masks


def check_labels(labels: Any, n: int | None = None, num_classes: int | None = None,
                 name: str = "labels") -> torch.Tensor:
    """Validate class labels and return them as int64 ``[B]`` (``n``: the expected B;
    ``num_classes``: values must be in ``0..num_classes-1``)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B], got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class indices, got dtype "
                         f"{labels.dtype}")
    if labels.dim() != 1 or (n is not None and labels.shape[0] != n):
        raise ValueError(f"{name} must have shape [B]" + (f" with B={n}" if n is not None else "")
                         + f", got {_shape(labels)}")
    check_nonempty(labels.shape[0], name)
    labels = labels.long()
    if num_classes is not None:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise ValueError(f"{name} hold classes {sorted(set(bad[:10].tolist()))} outside "
                             f"0..{num_classes - 1}")
    return labels
