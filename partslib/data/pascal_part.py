"""PASCAL-Part (Chen et al., "Detect What You Can", CVPR 2014) ``Annotations_Part/*.mat``.

Each ``<name>.mat`` holds a struct ``anno`` with ``imname`` and ``objects`` (1 x N struct
array) whose fields are ``class`` (e.g. "cat"), ``class_ind`` (1..20, VOC order), ``mask``
(H x W) and ``parts`` (1 x K struct array of ``part_name`` and ``mask``, or empty). Images
are the VOC2010 ``JPEGImages/<name>.jpg``.

Part masks: a part's name goes through ``part_name_fn(class, part_name)`` (default: drop the
instance suffix, ``wheel_2`` -> ``wheel``; None drops the part); objects and then their
parts are painted in file order; pixels outside every kept part are background (0), also
the pixels of objects that carry no part annotation. The image class is the class of the
largest object (by mask area).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.io
from torch.utils.data import Dataset

from .folder import MAX_PARTS, ConversionResult, write_folder
from .images import PathLike, Size, part_sample

#: The 20 PASCAL VOC classes, ``class_ind`` 1..20.
PASCAL_VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

PartNameFn = Callable[[str, str], "str | None"]

__all__ = [
    "PASCAL_VOC_CLASSES",
    "PascalObject",
    "PascalPartDataset",
    "pascal_part_to_folder",
    "read_pascal_part",
    "strip_instance_suffix",
]

_SUFFIX_RE = re.compile(r"_\d+$")


def strip_instance_suffix(class_name: str, part_name: str) -> str:
    """Default ``part_name_fn``: ``wheel_1`` -> ``wheel``, ``head`` -> ``head`` (class ignored)."""
    return _SUFFIX_RE.sub("", part_name)


class PascalObject:
    """One object of an annotation: class name, class index (1..20), mask, parts [(name, mask)]."""

    __slots__ = ("class_ind", "class_name", "mask", "parts")

    def __init__(
        self, class_name: str, class_ind: int, mask: np.ndarray, parts: list[tuple[str, np.ndarray]]
    ):
        self.class_name, self.class_ind, self.mask, self.parts = class_name, class_ind, mask, parts


def _text(value) -> str:
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return str(arr.ravel()[0]) if arr.size else ""
    raise ValueError(f"expected a string, got {arr.dtype}")


def _records(value) -> list:
    """A MATLAB struct array (any shape, possibly empty 0x0 double) -> list of records."""
    arr = np.asarray(value)
    if arr.dtype.names is None:
        if arr.size == 0:
            return []
        raise ValueError(f"expected a struct array, got {arr.dtype}")
    return list(arr.ravel())


def read_pascal_part(path: PathLike) -> tuple[str, list[PascalObject]]:
    """Reads one ``Annotations_Part`` file -> (imname, objects).

    Raises:
        FileNotFoundError / ValueError naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PASCAL-Part annotation")
    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several unrelated types for bad files
        raise ValueError(f"{path}: cannot read .mat file ({err})") from err
    try:
        if "anno" not in data:
            raise ValueError("no variable 'anno'")
        anno = _records(data["anno"])[0]
        imname = _text(anno["imname"]) if "imname" in anno.dtype.names else path.stem
        objects = []
        for k, obj in enumerate(_records(anno["objects"])):
            try:
                mask = np.asarray(obj["mask"]) > 0
                parts = [
                    (_text(p["part_name"]), np.asarray(p["mask"]) > 0)
                    for p in _records(obj["parts"])
                ]
                for name, m in parts:
                    if m.shape != mask.shape:
                        raise ValueError(
                            f"part {name!r} mask is {m.shape}, object mask is {mask.shape}"
                        )
                class_ind = int(np.asarray(obj["class_ind"]).ravel()[0])
                objects.append(PascalObject(_text(obj["class"]), class_ind, mask, parts))
            except (ValueError, KeyError, IndexError) as err:
                raise ValueError(f"object {k + 1}: {err}") from err
    except (ValueError, KeyError, IndexError) as err:
        raise ValueError(f"{path}: not a PASCAL-Part annotation ({err})") from err
    return imname, objects


class PascalPartDataset(Dataset):
    """PASCAL-Part images and part masks as a torch ``Dataset`` (items as ``FolderDataset``).

    Args:
        images_dir: VOC ``JPEGImages``.
        annotations_dir: ``Annotations_Part`` (every ``*.mat`` is a sample, sorted by name).
        size: (H, W) to resize to (image bilinear + antialias, mask nearest), or None.
        part_names: parts 1..P in order (after ``part_name_fn``); by default every annotation
            is read once and the sorted set of part names is used.
        part_name_fn: (class, part_name) -> part name or None (dropped to background).

    ``class_names`` is ``PASCAL_VOC_CLASSES``; ``label`` is the largest object's class.
    """

    def __init__(
        self,
        images_dir: PathLike,
        annotations_dir: PathLike,
        size: Size | None = None,
        part_names: Sequence[str] | None = None,
        part_name_fn: PartNameFn = strip_instance_suffix,
    ):
        self.images_dir = Path(images_dir)
        self.annotations_dir = Path(annotations_dir)
        if not self.annotations_dir.is_dir():
            raise FileNotFoundError(f"{self.annotations_dir}: no such annotation folder")
        self.size = size
        self.part_name_fn = part_name_fn
        self._files = sorted(self.annotations_dir.glob("*.mat"))
        if not self._files:
            raise ValueError(f"{self.annotations_dir}: no .mat files; expected one PASCAL-Part "
                             f"annotation (<name>.mat) per image")
        self.names = [f.stem for f in self._files]
        self.class_names = list(PASCAL_VOC_CLASSES)
        self.labels: list[int] = []
        found: set[str] = set()
        for f in self._files:
            _, objects = read_pascal_part(f)
            if not objects:
                raise ValueError(f"{f}: no objects")
            largest = max(objects, key=lambda o: int(o.mask.sum()))
            if not 1 <= largest.class_ind <= len(PASCAL_VOC_CLASSES):
                raise ValueError(
                    f"{f}: class_ind {largest.class_ind} outside 1..{len(PASCAL_VOC_CLASSES)}"
                )
            self.labels.append(largest.class_ind - 1)
            if part_names is None:
                found.update(
                    n for o in objects for p, _ in o.parts
                    if (n := part_name_fn(o.class_name, p)) is not None
                )
        names = list(part_names) if part_names is not None else sorted(found)
        if len(names) > MAX_PARTS:
            raise ValueError(
                f"{len(names)} part names; at most {MAX_PARTS}: "
                "pass part_names or a merging part_name_fn"
            )
        self.part_names = ["background", *names]
        self._part_id = {n: i for i, n in enumerate(self.part_names) if i > 0}

    def __len__(self) -> int:
        return len(self._files)

    def image_path(self, index: int) -> Path:
        return self.images_dir / f"{self.names[index]}.jpg"

    def part_mask(self, index: int) -> np.ndarray:
        """Native-size part mask int64 [H, W]."""
        _, objects = read_pascal_part(self._files[index])
        mask = np.zeros(objects[0].mask.shape, dtype=np.int64)
        for obj in objects:
            if obj.mask.shape != mask.shape:
                raise ValueError(f"{self._files[index]}: objects have different mask sizes")
            for part, m in obj.parts:
                name = self.part_name_fn(obj.class_name, part)
                if name is not None and name in self._part_id:
                    mask[m] = self._part_id[name]
        return mask

    def __getitem__(self, index: int) -> dict:
        return part_sample(self, index, self._files[index])


def pascal_part_to_folder(
    images_dir: PathLike,
    annotations_dir: PathLike,
    out_root: PathLike,
    part_names: Sequence[str] | None = None,
    part_name_fn: PartNameFn = strip_instance_suffix,
    overwrite: bool = False,
) -> ConversionResult:
    """Converts PASCAL-Part into the folder format (images copied, class = largest object)."""
    ds = PascalPartDataset(
        images_dir, annotations_dir, part_names=part_names, part_name_fn=part_name_fn
    )
    samples = (
        (ds.names[i], ds.image_path(i), ds.part_mask(i), ds.class_names[ds.labels[i]])
        for i in range(len(ds))
    )
    root = write_folder(out_root, samples, ds.part_names[1:], ds.class_names, overwrite=overwrite)
    return ConversionResult(root, len(ds))
