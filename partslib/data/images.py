"""Reading photographs and part masks into tensors, with one resize policy for both.

Every real-data loader in ``partslib.data`` goes through these functions, so every photo is
read the same way:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so the tensor shows the
  photo the way a viewer shows it;
* grayscale (``1``, ``L``) and palette (``P``) images become 3 equal/looked-up channels;
* transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent index) is composited on
  **white**, the colour most viewers show behind a transparent photo;
* 16-bit grayscale (``I;16*``, ``I``) is scaled by 1/65535, float images (``F``) are
  clipped to [0, 1];
* ``resize_image`` / ``resize_mask`` resize to exactly ``(H, W)`` (aspect ratio not kept; what
  the dataset loaders and training use): images with bilinear interpolation and antialiasing,
  masks with nearest neighbour on pixel centres (``nearest-exact``), so a mask never gets a
  label that is not in the file;
* ``load_image(..., size=(H, W))`` and ``load_photo`` (one photo for a model) fit the photo
  into ``size``: ``fit="pad"`` (default) keeps the aspect ratio, scales the photo to fit and
  centres it on flat grey (:data:`PAD_VALUE`), ``load_photo`` says where (its ``box``);
  ``fit="squash"`` resizes to exactly ``size``. A large photo is reduced while it is decoded
  (JPEG: ``Image.draft``, decoded at 1/2, 1/4 or 1/8 scale; others: ``Image.reduce``) to no
  less than four times the size it is fitted to, so a 6000x4000 photo never exists as a full-size float
  array; a photo smaller than :data:`TINY_SIDE` pixels on a side gives a warning.

Unreadable files raise ``FileNotFoundError`` (missing) or ``ValueError`` (anything else),
and the message names the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, Union, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = Union[str, "os.PathLike[str]"]
ImageSource = PathLike | Image.Image
Size = tuple[int, int]

#: Colour behind transparent pixels (RGB, 0-255).
TRANSPARENT_BACKGROUND = (255, 255, 255)
#: Full scale of 16-bit grayscale images.
UINT16_MAX = 65535
#: How a photo is fitted into a model's size: keep the aspect ratio and pad, or resize exactly.
FITS = ("pad", "squash")
#: Value (in [0, 1], every channel) of the padding around a photo fitted with ``fit="pad"``.
PAD_VALUE = 0.5
#: Photos smaller than this on a side give a warning when fitted for a model.
TINY_SIDE = 16
#: Modes whose pixels may be box-averaged when a large photo is reduced while decoding.
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F")
#: EXIF orientations that swap width and height.
_SWAPS_SIDES = (5, 6, 7, 8)

__all__ = [
    "FITS",
    "PAD_VALUE",
    "TINY_SIDE",
    "Photo",
    "fit_box",
    "fit_image",
    "image_to_tensor",
    "load_image",
    "load_photo",
    "open_image",
    "read_mask",
    "resize_image",
    "resize_mask",
]


@overload
def _check_size(size: Size) -> Size: ...


@overload
def _check_size(size: None) -> None: ...


def _check_size(size: Size | None) -> Size | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _check_fit(fit: str) -> str:
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    return fit


def fit_box(hw: Sequence[int], size: Size, fit: str = "pad") -> tuple[int, int, int, int]:
    """Where a photo of ``hw`` = (H, W) lands in ``size`` = (H, W): ``(top, left, height,
    width)``; with ``fit="squash"`` the whole output."""
    size, fit = _check_size(size), _check_fit(fit)
    H, W = size
    if fit == "squash":
        return 0, 0, H, W
    scale = min(H / hw[0], W / hw[1])
    h = min(H, max(1, round(hw[0] * scale)))
    w = min(W, max(1, round(hw[1] * scale)))
    return (H - h) // 2, (W - w) // 2, h, w


def fit_image(image: torch.Tensor, size: Size, fit: str = "pad", pad_value: float = PAD_VALUE,
              hw: Sequence[int] | None = None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A float ``[C, H, W]`` image fitted into ``size`` (see :func:`fit_box`): the resized
    image (bilinear, antialiased) and the box ``(top, left, height, width)`` it fills; with
    ``fit="pad"`` the rest is ``pad_value``. ``hw``: the (H, W) whose aspect ratio is kept
    (default the image's own; a photo decoded at reduced size passes its full size)."""
    size = _check_size(size)
    top, left, h, w = fit_box(image.shape[-2:] if hw is None else hw, size, fit)
    inner = resize_image(image, (h, w))
    if (h, w) == size:
        return inner, (top, left, h, w)
    out = torch.full((image.shape[0], *size), float(pad_value), dtype=image.dtype)
    out[:, top:top + h, left:left + w] = inner
    return out, (top, left, h, w)


def open_image(path: PathLike, min_size: Size | None = None) -> Image.Image:
    """Opens, decodes and EXIF-orients an image file.

    ``min_size`` (H, W, after orientation): a larger photo may be decoded smaller, but never
    below it on either side (JPEG at 1/2, 1/4 or 1/8 scale; other formats reduced by an
    integer factor by box averaging): a photo meant for a small model input never exists at
    full size. None decodes at full size.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but is not a readable image (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    min_size = _check_size(min_size)
    try:
        with Image.open(path) as img:
            if min_size is not None and img.format == "JPEG":
                swap = img.getexif().get(0x0112) in _SWAPS_SIDES
                h, w = min_size
                img.draft(img.mode, (h, w) if swap else (w, h))  # (width, height) as stored
            img.load()  # decode now, so a truncated file fails here and not later
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err
    if min_size is not None and img.mode in _REDUCIBLE_MODES:
        # box averaging is right for colours and intensities, not for palette indices (P)
        # or bilevel images, which keep their full size
        factor = min(img.height // min_size[0], img.width // min_size[1])
        if factor >= 2:
            img = img.reduce(factor)
    return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 array [H, W, 3] in [0, 1]."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        gray = np.asarray(img, dtype=np.float32) / UINT16_MAX
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX ...
    return np.asarray(rgb, dtype=np.float32) / 255.0


def image_to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL image (any mode, already oriented) or uint8 array [H, W(, 3)] -> float32 [3, H, W]."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise ValueError(
                f"expected a uint8 array [H, W] or [H, W, 3], got {img.dtype} {img.shape}"
            )
        img = Image.fromarray(img)
    return torch.from_numpy(np.ascontiguousarray(_to_rgb_array(img).transpose(2, 0, 1)))


def resize_image(image: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear, antialiased resize of a [C, H, W] float image to ``size`` = (H, W)."""
    size = _check_size(size)
    if tuple(image.shape[-2:]) == size:
        return image
    out = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """Nearest-neighbour (pixel-centre) resize of an integer mask [..., H, W] to (H, W)."""
    size = _check_size(size)
    if tuple(mask.shape[-2:]) == size:
        return mask
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()  # float32 is exact for labels < 2**24
    out = F.interpolate(flat, size=size, mode="nearest-exact")
    return out.to(mask.dtype).reshape(*lead, *size)


class Photo(NamedTuple):
    """One photo fitted for a model (:func:`load_photo`)."""

    image: torch.Tensor  #: float32 [3, H, W] in [0, 1] of the requested size
    box: tuple[int, int, int, int]  #: (top, left, height, width) the photo fills in ``image``
    original_size: tuple[int, int]  #: (H, W) of the photo as a viewer shows it


def _oriented_size(source: ImageSource) -> tuple[int, int]:
    """(H, W) of a photo after EXIF orientation, read from the header only."""
    if isinstance(source, Image.Image):
        img = source
        w, h = img.size
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as img:
                w, h = img.size
                swap = img.getexif().get(0x0112) in _SWAPS_SIDES
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{path}: cannot read image ({err})") from err
        return (w, h) if swap else (h, w)
    swap = img.getexif().get(0x0112) in _SWAPS_SIDES
    return (w, h) if swap else (h, w)


def load_photo(source: ImageSource, size: Size, fit: str = "pad",
               pad_value: float = PAD_VALUE) -> Photo:
    """Loads one photograph of any size and mode fitted into ``size`` = (H, W) for a model.

    ``fit="pad"`` (default) keeps the aspect ratio (the photo scaled to fit, centred, the rest
    ``pad_value``); ``fit="squash"`` resizes to exactly ``size``. Large photos are reduced
    while decoding to no less than four times the fitted size (:func:`open_image` with
    ``min_size``; what the model sees changes by little: a mean absolute difference of 0.0004
    for a JPEG, 0.008 for a PNG of fine noise, on a [0, 1] scale); a photo smaller than
    :data:`TINY_SIDE` pixels on a side gives a ``UserWarning`` (it is upsampled, and what a
    model sees in it is mostly interpolation).

    Returns:
        :class:`Photo`: the image, the box the photo fills in it, the photo's own size.
    """
    size, fit = _check_size(size), _check_fit(fit)
    hw = _oriented_size(source)
    if min(hw) < TINY_SIDE:
        name = getattr(source, "filename", None) or source
        warnings.warn(f"{name if not isinstance(name, Image.Image) else 'photo'}: the photo is "
                      f"{hw[0]}x{hw[1]} pixels, smaller than {TINY_SIDE} on a side; it is "
                      f"upsampled to {size[0]}x{size[1]} and its explanation shows little",
                      UserWarning, stacklevel=2)
    _, _, h, w = fit_box(hw, size, fit)
    if isinstance(source, Image.Image):
        img = ImageOps.exif_transpose(source)
    else:  # decoded at no less than 4x the box: the final antialiased resize does the rest
        img = open_image(source, min_size=(4 * h, 4 * w))
    # the box of the photo's own size: a photo reduced while decoding keeps it to the pixel
    image, box = fit_image(image_to_tensor(img), size, fit, pad_value, hw=hw)
    return Photo(image, box, hw)


def load_image(source: ImageSource, size: Size | None = None, fit: str = "pad") -> torch.Tensor:
    """Loads any photograph as a float32 tensor [3, H, W] in [0, 1].

    Args:
        source: a path or an opened PIL image.
        size: (H, W) to fit the photo into (see :func:`load_photo`; large photos are reduced
            while decoding), or None for the file's size.
        fit: with ``size``: ``"pad"`` keeps the aspect ratio and pads with flat grey,
            ``"squash"`` resizes to exactly ``size`` (bilinear, antialiased).

    Returns:
        float32 tensor [3, H, W] in [0, 1], EXIF orientation applied, transparency
        composited on white.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, or ``size`` or ``fit`` is invalid.
    """
    size = _check_size(size)
    if size is not None:
        return load_photo(source, size, fit).image
    if isinstance(source, Image.Image):
        img = ImageOps.exif_transpose(source)
    else:
        img = open_image(source)
    return image_to_tensor(img)


def read_mask(path: PathLike) -> np.ndarray:
    """Reads a single-channel label PNG (8-bit, 16-bit or palette indices) as an int64 array [H, W].

    Masks are never EXIF-transposed: label maps are written by programs, not cameras.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, or not single-channel (the message names the file and its mode).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in ("L", "P", "I", "1") and not mode.startswith("I;16"):
                raise ValueError(
                    f"{path}: mask must be a single-channel PNG (8 or 16 bit), got mode {mode}"
                )
            return np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read mask ({err})") from err


class PartPhotoDataset(Protocol):
    """What ``part_sample`` reads from a part-annotated photo dataset."""

    def __len__(self) -> int: ...

    def image_path(self, index: int) -> Path: ...

    def part_mask(self, index: int) -> np.ndarray: ...

    @property
    def labels(self) -> Sequence[int]: ...

    @property
    def names(self) -> Sequence[str]: ...

    @property
    def size(self) -> Size | None: ...


def part_sample(
    dataset: PartPhotoDataset, index: int, mask_source: PathLike | None = None
) -> dict:
    """One item of a part-annotated photo dataset: the photo, its part mask, class and name.

    ``dataset`` provides ``image_path(i)``, ``part_mask(i)`` (``[H, W]`` integer numpy),
    ``labels``, ``names`` and ``size`` (``None`` keeps the photo's size). A mask whose size
    differs from the photo's is an error naming ``mask_source`` (the annotation file) and the
    photo.
    """
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} out of range for {len(dataset)} samples")
    path = dataset.image_path(index)
    image = load_image(path)
    mask = torch.from_numpy(dataset.part_mask(index))
    if mask.shape != image.shape[1:]:
        raise ValueError(f"{mask_source or path}: the part mask is {tuple(mask.shape)} but "
                         f"{path.name} is {tuple(image.shape[1:])}")
    if dataset.size is not None:
        image, mask = resize_image(image, dataset.size), resize_mask(mask, dataset.size)
    return {"image": image, "mask": mask, "label": dataset.labels[index], "index": index,
            "name": dataset.names[index]}
