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
* ``size=(H, W)`` resizes to exactly that size (aspect ratio is not kept): images with
  bilinear interpolation and antialiasing, masks with nearest neighbour on pixel centres
  (``nearest-exact``), so a mask never gets a label that is not in the file.

Unreadable files raise ``FileNotFoundError`` (missing) or ``ValueError`` (anything else),
and the message names the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, Union, overload

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

__all__ = [
    "image_to_tensor",
    "load_image",
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


def open_image(path: PathLike) -> Image.Image:
    """Opens, fully decodes and EXIF-orients an image file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but is not a readable image (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err


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


def load_image(source: ImageSource, size: Size | None = None) -> torch.Tensor:
    """Loads any photograph as a float32 tensor [3, H, W] in [0, 1].

    Args:
        source: a path or an opened PIL image.
        size: (H, W) to resize to (bilinear, antialiased), or None for the file's size.

    Returns:
        float32 tensor [3, H, W] in [0, 1], EXIF orientation applied, transparency
        composited on white.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, or ``size`` is invalid.
    """
    size = _check_size(size)
    if isinstance(source, Image.Image):
        img = ImageOps.exif_transpose(source)
    else:
        img = open_image(source)
    tensor = image_to_tensor(img)
    return resize_image(tensor, size) if size is not None else tensor


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
