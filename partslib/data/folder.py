"""The partslib folder format for real part-annotated photos (see ``docs/data_format.md``).

::

    root/
      images/<name>.jpg|.jpeg|.png   photographs (any mode; EXIF orientation applied on load)
      masks/<name>.png               single-channel 8- or 16-bit PNG, same size as the image:
                                     0 = background, 1..P = parts, 255 = ignore
      parts.csv                      header ``id,name``; ids are exactly 1..P (P <= 254)
      classes.csv                    header ``image,class`` or ``image,class,split``
                                     (image = <name> or <name>.<ext>; split = train | test)
      class_names.txt                optional: one class per line, fixes the label order

``validate_folder`` lists every problem; ``FolderDataset`` loads a valid folder and
``write_folder`` converts any iterable of samples into the format. The format's constants,
its readers and ``validate_folder`` live in :mod:`partslib.data.folder_format`; the public
ones are re-exported here.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..io import atomic_dir
from .folder_format import (
    CLASSES_HEADERS,
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    MAX_PARTS,
    PARTS_HEADER,
    SPLITS,
    Problem,
    _invalid_folder,
    _list_images,
    _read_class_names,
    _read_classes,
    _read_parts,
    validate_folder,
)
from .images import PathLike, Size, load_image, open_image, read_mask, resize_image, resize_mask

__all__ = [
    "IGNORE_INDEX",
    "MAX_PARTS",
    "ConversionResult",
    "FolderDataset",
    "FolderSample",
    "Problem",
    "validate_folder",
    "write_folder",
]


class FolderSample(NamedTuple):
    """One sample for ``write_folder``; any 4- or 5-tuple in this order is accepted.

    ``image`` is a uint8 array [H, W, 3] (or [H, W]), a PIL image, or the path of an existing
    .jpg/.jpeg/.png file that is copied byte for byte. ``mask`` is an integer array [H, W]
    (0 background, 1..P parts, 255 ignore) of the image's (oriented) size.
    """

    name: str
    image: np.ndarray | Image.Image | PathLike
    mask: np.ndarray
    class_name: str
    split: str | None = None


@dataclass
class ConversionResult:
    """What a converter wrote: the folder, how many images, and which were skipped and why."""

    root: Path
    written: int
    skipped: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- dataset


class FolderDataset(Dataset):
    """A folder in the partslib format as a torch ``Dataset``.

    Items are dicts: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W]
    (0 background, 1..P parts, 255 ignore); ``label`` int (index into ``class_names``);
    ``index`` int; ``name`` str. Images are resized bilinearly with antialiasing and masks
    with nearest neighbour when ``size`` is given.

    Attributes:
        part_names: list, index 0 = "background", index i = part id i.
        class_names: from class_names.txt, else the sorted classes of classes.csv (all splits,
            so labels agree between the train and test datasets of one folder).
        names: sample names (sorted); labels: their class indices.

    Raises:
        ValueError: the folder is invalid (the message lists every problem), or ``split`` is
            asked for but classes.csv has no split column.
    """

    def __init__(
        self,
        root: PathLike,
        size: Size | None = None,
        split: str | None = None,
        validate: bool = True,
    ):
        self.root = Path(root)
        self.size = size
        problems = validate_folder(self.root) if validate else []
        if problems:
            raise _invalid_folder(self.root, problems)
        part_names, _ = _read_parts(self.root, problems)
        images = _list_images(self.root, problems)
        classes = _read_classes(self.root, images, problems)
        class_names = _read_class_names(self.root, problems)
        # part_names and classes are None only when a problem was found
        if problems or part_names is None or classes is None:
            raise _invalid_folder(self.root, problems)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
            if any(s is None for _, s in classes.values()):
                raise ValueError(
                    f"{self.root / 'classes.csv'}: split={split!r} asked for "
                    "but not every row has a split"
                )
        self.part_names: list[str] = part_names
        self.class_names: list[str] = (
            class_names if class_names is not None else sorted({c for c, _ in classes.values()})
        )
        index = {c: i for i, c in enumerate(self.class_names)}
        self.names: list[str] = sorted(
            n for n, (_, s) in classes.items() if n in images and (split is None or s == split)
        )
        if not self.names:
            raise ValueError(f"{self.root / 'classes.csv'}: no images with split {split!r}; "
                             f"expected at least one")
        self.labels: list[int] = [index[classes[n][0]] for n in self.names]
        self._images = images

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        name = self.names[index]
        image = load_image(self._images[name])
        mask_path = self.root / "masks" / f"{name}.png"
        mask = torch.from_numpy(read_mask(mask_path))
        if mask.shape != image.shape[1:]:
            raise ValueError(
                f"{mask_path}: mask is {tuple(mask.shape)} "
                f"but the image is {tuple(image.shape[1:])}"
            )
        if self.size is not None:
            image = resize_image(image, self.size)
            mask = resize_mask(mask, self.size)
        return {
            "image": image, "mask": mask, "label": self.labels[index], "index": index, "name": name,
        }


# ----------------------------------------------------------------------------- writing


def _check_name(name: str) -> None:
    if not name or name != Path(name).name or name.startswith(".") or "," in name:
        raise ValueError(
            f"sample name {name!r} must be a plain file name without '/', ',' or a leading '.'"
        )


_FORMAT_ENTRIES = ("images", "masks", "parts.csv", "classes.csv", "class_names.txt")


def _check_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise ValueError(
            f"{root}: folder is not empty; pass overwrite=True to replace its partslib content"
        )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_other_entries(root: Path, tmp: Path) -> None:
    """Hard-links (or copies) what ``root`` holds besides the format's own entries into
    ``tmp``, so that replacing ``root`` by ``tmp`` keeps them; ``root`` itself is not touched."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name in _FORMAT_ENTRIES or (tmp / p.name).exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, tmp / p.name, symlinks=True, copy_function=_link_or_copy)
        elif p.is_symlink():
            os.symlink(os.readlink(p), tmp / p.name)
        else:
            _link_or_copy(str(p), str(tmp / p.name))


def _validator(root: Path):
    def validated(tmp: Path) -> None:
        problems = validate_folder(tmp)
        if problems:
            raise ValueError(f"{root}: the converted folder is not valid, nothing was changed; "
                             f"{_invalid_folder(tmp, problems)}")
    return validated


def _write_image(image, dst_stem: Path) -> tuple[Path, tuple[int, int]]:
    """Writes (or copies) an image; returns its path and its oriented (H, W)."""
    if isinstance(image, (str, Path)) or hasattr(image, "__fspath__"):
        src = Path(image)
        if src.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{src}: image files must be {', '.join(IMAGE_EXTENSIONS)}")
        w, h = open_image(src).size
        dst = dst_stem.with_suffix(src.suffix.lower())
        shutil.copyfile(src, dst)
        return dst, (h, w)
    if isinstance(image, np.ndarray):
        channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
        if image.dtype != np.uint8 or not channels_ok:
            raise ValueError(
                f"{dst_stem.name}: image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], "
                f"got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"{dst_stem.name}: image must be a uint8 array, a PIL image or a file path, "
            f"got {type(image).__name__}"
        )
    dst = dst_stem.with_suffix(".png")
    image.save(dst)
    return dst, (image.height, image.width)


def write_folder(
    root: PathLike,
    samples: Iterable[Sequence],
    part_names: Sequence[str],
    class_names: Sequence[str],
    overwrite: bool = False,
) -> Path:
    """Writes samples into the partslib folder format.

    Args:
        root: destination folder; created if needed.
        samples: iterable of ``(name, image, mask, class_name)`` or
            ``(name, image, mask, class_name, split)`` (see ``FolderSample``). Array and PIL
            images are written as lossless PNG; image paths are copied unchanged.
        part_names: names of parts 1..P, in id order (without "background").
        class_names: every class, in label order (written to class_names.txt).
        overwrite: replace images/, masks/ and the csv files of a non-empty ``root``; other
            files in it are kept. Without it a non-empty ``root`` is refused.

    The folder is written under a hidden temporary sibling (``.<root name>.partial-...``),
    checked with ``validate_folder``, and only then put in the place of ``root``: a sample
    that fails, an exception or a killed process leaves the previous ``root`` exactly as it
    was and nothing half-written under its name.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: non-empty ``root`` without ``overwrite``; no samples; a bad name, class,
            split, mask shape or mask value (the message names the sample); a written folder
            that does not validate.
    """
    root = Path(root)
    part_names = list(part_names)
    class_names = list(class_names)
    if part_names and part_names[0] == "background":
        raise ValueError("part_names lists parts 1..P; do not include 'background'")
    if len(part_names) > MAX_PARTS:
        raise ValueError(
            f"{len(part_names)} parts; the folder format holds at most {MAX_PARTS} (255 = ignore)"
        )
    for label, names in (("part", part_names), ("class", class_names)):
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup or any(not n or "\n" in n for n in names):
            raise ValueError(f"{label} names must be unique and non-empty; duplicates: {dup}")
    _check_root(root, overwrite)
    with atomic_dir(root, validate=_validator(root)) as tmp:
        rows = _write_samples(tmp, samples, part_names, class_names)
        if not rows:
            raise ValueError(f"{root}: no samples to write (the samples iterable was empty); "
                             f"nothing was changed")
        _write_tables(tmp, rows, part_names, class_names)
        if overwrite:
            _carry_other_entries(root, tmp)
    return root


def _write_samples(tmp: Path, samples: Iterable[Sequence], part_names: Sequence[str],
                   class_names: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """Checks and writes every sample into ``tmp``; returns the classes.csv rows."""
    known_classes = set(class_names)
    allowed = np.array(sorted(set(range(len(part_names) + 1)) | {IGNORE_INDEX}))
    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    rows: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    for sample in samples:
        s = FolderSample(*sample)
        _check_name(s.name)
        if s.name in seen:
            raise ValueError(f"duplicate sample name {s.name!r}")
        seen.add(s.name)
        if s.class_name not in known_classes:
            raise ValueError(f"sample {s.name!r}: class {s.class_name!r} is not in class_names")
        if s.split is not None and s.split not in SPLITS:
            raise ValueError(f"sample {s.name!r}: split {s.split!r} is not one of {SPLITS}")
        mask = np.asarray(s.mask)
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"sample {s.name!r}: mask must be an integer array [H, W], "
                f"got {mask.dtype} {mask.shape}"
            )
        bad = np.setdiff1d(np.unique(mask), allowed)
        if bad.size:
            raise ValueError(
                f"sample {s.name!r}: mask values {bad[:10].tolist()} "
                f"are not 0, 255 or part ids 1..{len(part_names)}"
            )
        _, hw = _write_image(s.image, tmp / "images" / s.name)
        if mask.shape != hw:
            raise ValueError(
                f"sample {s.name!r}: mask is {mask.shape} but the image is {hw} (H, W)"
            )
        Image.fromarray(mask.astype(np.uint8), mode="L").save(tmp / "masks" / f"{s.name}.png")
        rows.append((s.name, s.class_name, s.split))
    return rows


def _write_tables(root: Path, rows: Sequence[tuple[str, str, str | None]],
                  part_names: Sequence[str], class_names: Sequence[str]) -> None:
    """parts.csv, classes.csv (with a split column when the samples have splits) and
    class_names.txt."""
    splits = {r[2] for r in rows}
    if None in splits and len(splits) > 1:
        raise ValueError("either every sample has a split or none has")
    with open(root / "parts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PARTS_HEADER)
        writer.writerows((i, n) for i, n in enumerate(part_names, start=1))
    with open(root / "classes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        has_split = bool(rows) and rows[0][2] is not None
        writer.writerow(CLASSES_HEADERS[1] if has_split else CLASSES_HEADERS[0])
        writer.writerows(r if has_split else r[:2] for r in rows)
    (root / "class_names.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
