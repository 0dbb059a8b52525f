"""Clothing Co-Parsing (Yang, Luo, Lin, CVPR 2014; github.com/bearpaw/clothing-co-parsing).

Layout: ``photos/<name>.jpg``; ``annotations/pixel-level/<name>.mat`` with variable
``groundtruth`` (uint8 H x W, one label per pixel, same size as the photo);
``label_list.mat`` with ``label_list``, a 1 x 59 cell of names (0 = ``null``, background).

``CCP_PART_GROUPS`` merges the 58 labels into 7 part groups (hair, skin, upper_clothes,
lower_clothes, full_body, shoes, accessories); see ``docs/data_format.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.io
from torch.utils.data import Dataset

from .folder import MAX_PARTS, ConversionResult, write_folder
from .images import PathLike, Size, part_sample

#: Part groups over the 58 CCP labels; every label is in exactly one group.
CCP_PART_GROUPS: dict[str, tuple[str, ...]] = {
    "hair": ("hair",),
    "skin": ("skin",),
    "upper_clothes": (
        "blazer", "blouse", "bra", "cape", "cardigan", "coat", "hoodie", "jacket", "jumper",
        "shirt", "sweater", "sweatshirt", "t-shirt", "top", "vest",
    ),
    "lower_clothes": (
        "jeans", "leggings", "panties", "pants", "shorts", "skirt", "socks", "stockings", "tights",
    ),
    "full_body": ("bodysuit", "dress", "intimate", "romper", "suit", "swimwear"),
    "shoes": (
        "boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers",
        "wedges",
    ),
    "accessories": (
        "accessories", "bag", "belt", "bracelet", "earrings", "glasses", "gloves", "hat",
        "necklace", "purse", "ring", "scarf", "sunglasses", "tie", "wallet", "watch",
    ),
}

#: The garments that define the outfit class of ``ccp_lower_garment``.
CCP_LOWER_GARMENTS = ("dress", "jeans", "leggings", "pants", "romper", "shorts", "skirt", "suit")

ClassOf = Callable[[Mapping[str, int]], "str | None"]

__all__ = [
    "CCP_LOWER_GARMENTS",
    "CCP_PART_GROUPS",
    "ClothingCoParsingDataset",
    "ccp_lower_garment",
    "ccp_to_folder",
    "read_ccp_groundtruth",
    "read_ccp_label_list",
]


def read_ccp_label_list(path: PathLike) -> list[str]:
    """``label_list.mat`` -> names indexed by label (0 = "null")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label list")
    try:
        cells = scipy.io.loadmat(path)["label_list"]
        return [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in cells.ravel()]
    except Exception as err:  # scipy raises several unrelated types for bad files
        raise ValueError(f"{path}: not a CCP label list ({err})") from err


def read_ccp_groundtruth(path: PathLike) -> np.ndarray:
    """One ``pixel-level/<name>.mat`` -> int64 labels [H, W]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CCP annotation")
    try:
        gt = scipy.io.loadmat(path)["groundtruth"]
    except Exception as err:
        raise ValueError(
            f"{path}: not a CCP annotation with variable 'groundtruth' ({err})"
        ) from err
    if gt.ndim != 2:
        raise ValueError(f"{path}: groundtruth must be H x W, got shape {gt.shape}")
    return gt.astype(np.int64)


def ccp_lower_garment(pixels_by_label: Mapping[str, int]) -> str | None:
    """Outfit class: the garment of ``CCP_LOWER_GARMENTS`` with the most pixels (None if none;
    ties go to the alphabetically first)."""
    # ties: max keeps the first, and the tuple is sorted
    best = max(CCP_LOWER_GARMENTS, key=lambda g: pixels_by_label.get(g, 0))
    return best if pixels_by_label.get(best, 0) > 0 else None


class ClothingCoParsingDataset(Dataset):
    """CCP photos with part masks, as a torch ``Dataset`` (items as ``FolderDataset``).

    Args:
        root: folder with ``photos/``, ``annotations/pixel-level/`` and ``label_list.mat``.
        size: (H, W) to resize to (image bilinear + antialias, mask nearest), or None.
        groups: None keeps the 58 labels as parts 1..58 (label numbers unchanged); a mapping
            group name -> label names (e.g. ``CCP_PART_GROUPS``) makes the groups parts 1..G in
            mapping order; labels in no group become background.
        class_of: label name -> pixel count of an image -> class name or None (label -1);
            e.g. ``ccp_lower_garment``. Without it every label is -1. With it every
            annotation is read once at construction (about 1 ms each).
        names: restrict to these sample names (e.g. the first few); default all annotations.
    """

    def __init__(
        self,
        root: PathLike,
        size: Size | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        class_of: ClassOf | None = None,
        names: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        self.size = size
        self.label_names = read_ccp_label_list(self.root / "label_list.mat")
        ann_dir = self.root / "annotations" / "pixel-level"
        if not ann_dir.is_dir():
            raise FileNotFoundError(f"{ann_dir}: no such annotation folder")
        self.names: list[str] = (
            list(names) if names is not None else sorted(p.stem for p in ann_dir.glob("*.mat"))
        )
        if not self.names:
            raise ValueError(f"{ann_dir}: no images; expected one CCP annotation "
                             f"(<name>.mat) per photo" if names is None
                             else "names is empty; expected at least one photo name")
        index = {n: i for i, n in enumerate(self.label_names)}
        lut = np.zeros(max(len(self.label_names), 256), dtype=np.int64)
        if groups is None:
            self.part_names = ["background", *self.label_names[1:]]
            lut[: len(self.label_names)] = np.arange(len(self.label_names))
        else:
            if len(groups) > MAX_PARTS:
                raise ValueError(f"{len(groups)} groups; at most {MAX_PARTS}")
            self.part_names = ["background", *groups]
            seen: dict[str, str] = {}
            for gid, (group, members) in enumerate(groups.items(), start=1):
                for m in members:
                    if m not in index or index[m] == 0:
                        raise ValueError(
                            f"group {group!r}: {m!r} is not a label of "
                            f"{self.root / 'label_list.mat'}"
                        )
                    if m in seen:
                        raise ValueError(f"label {m!r} is in groups {seen[m]!r} and {group!r}")
                    seen[m] = group
                    lut[index[m]] = gid
        self._lut = lut
        if class_of is not None:
            results = [class_of(self.pixels_by_label(i)) for i in range(len(self))]
        else:
            results = [None] * len(self)
        self.class_names: list[str] = sorted({r for r in results if r is not None})
        cindex = {c: i for i, c in enumerate(self.class_names)}
        self.labels: list[int] = [cindex[r] if r is not None else -1 for r in results]

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.root / "photos" / f"{self.names[index]}.jpg"

    def annotation_path(self, index: int) -> Path:
        return self.root / "annotations" / "pixel-level" / f"{self.names[index]}.mat"

    def raw_labels(self, index: int) -> np.ndarray:
        """The ``groundtruth`` labels [H, W] (0..58), checked against label_list."""
        path = self.annotation_path(index)
        gt = read_ccp_groundtruth(path)
        if gt.size and (gt.min() < 0 or gt.max() >= len(self.label_names)):
            raise ValueError(
                f"{path}: label {int(gt.max())} outside label_list "
                f"(0..{len(self.label_names) - 1})"
            )
        return gt

    def pixels_by_label(self, index: int) -> dict[str, int]:
        counts = np.bincount(self.raw_labels(index).ravel(), minlength=len(self.label_names))
        return {self.label_names[k]: int(c) for k, c in enumerate(counts) if c and k > 0}

    def part_mask(self, index: int) -> np.ndarray:
        return self._lut[self.raw_labels(index)]

    def __getitem__(self, index: int) -> dict:
        return part_sample(self, index, self.annotation_path(index))


def ccp_to_folder(
    root: PathLike,
    out_root: PathLike,
    groups: Mapping[str, Sequence[str]] | None = CCP_PART_GROUPS,
    class_of: ClassOf = ccp_lower_garment,
    names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Converts CCP into the folder format (photos copied); images without a class are skipped."""
    ds = ClothingCoParsingDataset(root, groups=groups, class_of=class_of, names=names)
    skipped: dict[str, str] = {}

    def samples():
        for i in range(len(ds)):
            if ds.labels[i] < 0:
                skipped[ds.names[i]] = "no class"
                continue
            yield (ds.names[i], ds.image_path(i), ds.part_mask(i), ds.class_names[ds.labels[i]])

    out = write_folder(out_root, samples(), ds.part_names[1:], ds.class_names, overwrite=overwrite)
    return ConversionResult(out, len(ds) - len(skipped), skipped)
