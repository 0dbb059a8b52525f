"""Broden (Bau et al., "Network Dissection", CVPR 2017, netdissect.csail.mit.edu) on disk.

Layout read here (``broden1_224`` / ``broden1_227``)::

    root/index.csv     image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
    root/label.csv     number,name,category,frequency,coverage,syns
    root/category.csv  name,first,last,count,frequency
    root/images/<source>/<name>.jpg and its segmentation PNGs

In ``index.csv`` each category cell is empty or a ``;``-separated list: PNG paths relative to
``images/`` for pixel-level categories (several *planes* when a pixel has several labels of
that category, typical for parts), decimal label numbers for image-level ones (scene,
texture). A PNG pixel's label is **R + 256·G** (B unused), 0 = unlabelled, and labels are
the global ``label.csv`` numbers. Segmentations are ``sh x sw`` (half the image size).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .folder import MAX_PARTS, ConversionResult, write_folder
from .images import PathLike, Size, load_image, resize_image, resize_mask

INDEX_COLUMNS = [
    "image", "split", "ih", "iw", "sh", "sw",
    "color", "object", "part", "material", "scene", "texture",
]
LABEL_COLUMNS = ["number", "name", "category", "frequency", "coverage", "syns"]
CATEGORY_COLUMNS = ["name", "first", "last", "count", "frequency"]
#: Categories whose index entries are label numbers rather than PNG paths.
IMAGE_LEVEL_CATEGORIES = ("scene", "texture")
#: Broden split -> folder-format split.
BRODEN_SPLITS = {"train": "train", "val": "test"}

__all__ = [
    "BrodenDataset",
    "BrodenLabel",
    "BrodenPartsDataset",
    "broden_to_folder",
    "decode_broden_png",
    "planes_to_multilabel",
    "read_broden_labels",
]


@dataclass(frozen=True)
class BrodenLabel:
    """One row of ``label.csv``; ``categories`` maps category -> the count given in brackets."""

    number: int
    name: str
    categories: dict[str, int] = field(default_factory=dict)
    frequency: int = 0
    coverage: float = 0.0
    syns: tuple[str, ...] = ()


def _read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing Broden file (header {','.join(columns)})")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if [h.strip() for h in header] != list(columns):
            raise ValueError(
                f"{path}: bad header {','.join(header)!r}, expected {','.join(columns)!r}"
            )
        return list(reader)


_CATEGORY_RE = re.compile(r"^\s*([A-Za-z_]+)\((\d+)\)\s*$")


def read_broden_labels(root: PathLike) -> list[BrodenLabel | None]:
    """``label.csv`` as a dense list indexed by label number (None where a number is absent)."""
    path = Path(root) / "label.csv"
    labels: dict[int, BrodenLabel] = {}
    for line, row in enumerate(_read_rows(path, LABEL_COLUMNS), start=2):
        try:
            number = int(row["number"])
            if number in labels:
                raise ValueError(f"duplicate label number {number}")
            cats = {}
            for item in filter(None, (row["category"] or "").split(";")):
                m = _CATEGORY_RE.match(item)
                if m is None:
                    if item.strip() == "-":
                        continue  # label 0 ("-") has no category
                    raise ValueError(f"category {item!r} is not like 'part(12)'")
                cats[m.group(1)] = int(m.group(2))
            labels[number] = BrodenLabel(
                number=number,
                name=row["name"],
                categories=cats,
                frequency=int(float(row["frequency"] or 0)),
                coverage=float(row["coverage"] or 0),
                syns=tuple(s for s in (row["syns"] or "").split(";") if s),
            )
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: line {line}: {err}") from err
    dense: list[BrodenLabel | None] = [None] * (max(labels, default=0) + 1)
    for n, lab in labels.items():
        dense[n] = lab
    return dense


def decode_broden_png(path: PathLike) -> np.ndarray:
    """A Broden segmentation PNG -> int64 labels [H, W] = R + 256·G."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing Broden segmentation")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("RGB", "RGBA"):
                raise ValueError(
                    f"{path}: Broden segmentation must be RGB (label = R + 256*G), "
                    f"got mode {img.mode}"
                )
            rgb = np.asarray(img, dtype=np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read Broden segmentation ({err})") from err
    return rgb[..., 0] + 256 * rgb[..., 1]


@dataclass(frozen=True)
class _Row:
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    entries: dict[str, list[str]]


class BrodenDataset(Dataset):
    """Broden images with their label planes, as a torch ``Dataset``.

    Items: ``image`` float32 [3, H, W]; for every pixel-level category ``c`` in
    ``categories``, ``item[c]`` int64 [K_c, h, w] of global label numbers (K_c = the most
    planes any image has for ``c``; missing planes are 0); for an image-level category, int64
    [K_c] label numbers padded with 0; ``index``; ``name`` (the ``image`` column).

    With ``size=None`` images keep ``ih x iw`` and planes keep ``sh x sw``; with
    ``size=(H, W)`` both are resized to it (image bilinear + antialias, planes nearest).
    ``planes_to_multilabel`` turns planes into a per-pixel multi-label tensor.

    Attributes:
        labels: dense ``label.csv`` (``read_broden_labels``); label_names: names by number.
        planes: category -> K_c.  pixel_categories / image_categories: the kinds.
    """

    def __init__(
        self,
        root: PathLike,
        categories: Sequence[str] = ("object", "part"),
        size: Size | None = None,
        split: str | None = None,
    ):
        self.root = Path(root)
        self.size = size
        self.categories = tuple(categories)
        self.labels = read_broden_labels(self.root)
        self.label_names = [lab.name if lab else "" for lab in self.labels]
        index_path = self.root / "index.csv"
        known = set(INDEX_COLUMNS[6:])
        for c in self.categories:
            if c not in known:
                raise ValueError(f"unknown Broden category {c!r}; index.csv has {sorted(known)}")
        cat_path = self.root / "category.csv"
        if cat_path.is_file():
            # header check only; the kinds come from index.csv
            _read_rows(cat_path, CATEGORY_COLUMNS)
        rows = []
        for line, r in enumerate(_read_rows(index_path, INDEX_COLUMNS), start=2):
            try:
                ih, iw, sh, sw = (int(r[k]) for k in ("ih", "iw", "sh", "sw"))
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"{index_path}: line {line}: ih/iw/sh/sw must be integers ({err})"
                ) from err
            if split is not None and r["split"] != split:
                continue
            entries = {c: [s for s in (r[c] or "").split(";") if s] for c in self.categories}
            rows.append(_Row(r["image"], r["split"], ih, iw, sh, sw, entries))
        if not rows:
            raise ValueError(f"{index_path}: no images" + (f" with split {split!r}" if split
                             else "") + "; expected at least one row after the header")
        self._rows = rows
        self.image_categories = tuple(
            c for c in self.categories
            if c in IMAGE_LEVEL_CATEGORIES or any(e.isdigit() for r in rows for e in r.entries[c])
        )
        self.pixel_categories = tuple(c for c in self.categories if c not in self.image_categories)
        for c in self.image_categories:
            for r in rows:
                bad = [e for e in r.entries[c] if not e.isdigit()]
                if bad:
                    raise ValueError(
                        f"{index_path}: image {r.image}: {c} entries {bad} are not label numbers"
                    )
        self.planes = {c: max([len(r.entries[c]) for r in rows] + [1]) for c in self.categories}
        self.names = [r.image for r in rows]

    def __len__(self) -> int:
        return len(self._rows)

    def read_planes(self, index: int, category: str) -> np.ndarray:
        """Native-size planes int64 [K_c, sh, sw] of one pixel-level category."""
        r = self._rows[index]
        out = np.zeros((self.planes[category], r.sh, r.sw), dtype=np.int64)
        for k, rel in enumerate(r.entries[category]):
            path = self.root / "images" / rel
            plane = decode_broden_png(path)
            if plane.shape != (r.sh, r.sw):
                raise ValueError(
                    f"{path}: segmentation is {plane.shape[0]}x{plane.shape[1]}, "
                    f"index.csv says sh x sw = {r.sh}x{r.sw}"
                )
            out[k] = plane
        return out

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        r = self._rows[index]
        path = self.root / "images" / r.image
        image = load_image(path)
        if tuple(image.shape[1:]) != (r.ih, r.iw):
            raise ValueError(
                f"{path}: image is {image.shape[1]}x{image.shape[2]}, "
                f"index.csv says ih x iw = {r.ih}x{r.iw}"
            )
        if self.size is not None:
            image = resize_image(image, self.size)
        item: dict = {"image": image}
        for c in self.categories:
            if c in self.image_categories:
                values = [int(e) for e in r.entries[c]]
                padding = [0] * (self.planes[c] - len(values))
                item[c] = torch.tensor(values + padding, dtype=torch.int64)
            else:
                planes = torch.from_numpy(self.read_planes(index, c))
                item[c] = resize_mask(planes, self.size) if self.size is not None else planes
        item["index"] = index
        item["name"] = r.image
        return item


def planes_to_multilabel(planes: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Label planes [..., K, h, w] -> bool [..., num_labels, h, w].

    Label 0 (unlabelled) is never set.
    """
    if planes.numel() and (planes.min() < 0 or planes.max() >= num_labels):
        raise ValueError(
            f"label numbers in [{int(planes.min())}, {int(planes.max())}] "
            f"do not fit num_labels={num_labels}"
        )
    one_hot = torch.zeros(*planes.shape[:-3], num_labels, *planes.shape[-2:], dtype=torch.bool)
    one_hot.scatter_(-3, planes, torch.ones_like(planes, dtype=torch.bool))
    one_hot[..., 0, :, :] = False
    return one_hot


def _folder_name(image: str) -> str:
    """``pascal/2008_000001.jpg`` -> ``pascal__2008_000001``."""
    return str(Path(image).with_suffix("")).replace("\\", "/").replace("/", "__")


def _image_class(ds: BrodenDataset, i: int, class_category: str) -> str | None:
    """Image ``i``'s class name by the rule of ``broden_to_folder`` (None: no label of the
    category)."""
    if class_category in ds.image_categories:
        entries = ds._rows[i].entries[class_category]
        number = int(entries[0]) if entries else 0
    else:
        counts = Counter(ds.read_planes(i, class_category).ravel().tolist())
        counts.pop(0, None)
        number = min(counts, key=lambda n: (-counts[n], n)) if counts else 0
    known = 0 < number < len(ds.labels) and ds.labels[number]
    return ds.label_names[number] if known else None


def _image_classes(ds: BrodenDataset, class_category: str) -> list[str | None]:
    """Per image the class name of ``broden_to_folder`` (None: no label of the category)."""
    return [_image_class(ds, i, class_category) for i in range(len(ds))]


def _part_mask(ds: BrodenDataset, i: int, part_category: str, lut: np.ndarray) -> np.ndarray:
    """Image ``i``'s part ids (``lut``: label number -> id) at the image's size: a pixel takes
    the id of the first plane (``index.csv`` order) with a part there, else 0."""
    r = ds._rows[i]
    planes = ds.read_planes(i, part_category)
    if planes.max(initial=0) >= len(lut):
        raise ValueError(f"{ds.root / 'images' / r.image}: {part_category} label "
                         f"{int(planes.max())} not in label.csv")
    ids = lut[planes]  # [K, sh, sw]
    mask = np.zeros(ids.shape[1:], dtype=np.int64)
    for plane in ids[::-1]:  # the first plane is painted last, so it wins
        mask = np.where(plane > 0, plane, mask)
    return resize_mask(torch.from_numpy(mask), (r.ih, r.iw)).numpy()


def _part_table(ds: BrodenDataset, part_category: str, part_labels: Sequence[int] | None
                ) -> tuple[list[str], np.ndarray]:
    """The part names (ids 1..P) and the lookup table label number -> part id (0: none) of
    ``part_labels``, by default every label of ``part_category`` in ``label.csv``."""
    if part_category in ds.image_categories:
        raise ValueError(
            f"part_category {part_category!r} is image-level in {ds.root / 'index.csv'}"
        )
    if part_labels is None:
        part_labels = [lab.number for lab in ds.labels if lab and part_category in lab.categories]
    part_labels = sorted({int(n) for n in part_labels})
    if len(part_labels) > MAX_PARTS:
        raise ValueError(
            f"{len(part_labels)} {part_category} labels; the folder format holds {MAX_PARTS}: "
            "pass part_labels to choose"
        )
    found = [ds.labels[n] if n < len(ds.labels) else None for n in part_labels]
    missing = [n for n, lab in zip(part_labels, found) if lab is None]
    if missing:
        raise ValueError(f"part_labels {missing} are not in {ds.root / 'label.csv'}")
    names = [lab.name for lab in found if lab is not None]
    dup = {n for n, c in Counter(names).items() if c > 1}
    part_names = [f"{n}-{num}" if n in dup else n for n, num in zip(names, part_labels)]
    lut = np.zeros(max(len(ds.labels), max(part_labels, default=0) + 1), dtype=np.int64)
    lut[part_labels] = np.arange(1, len(part_labels) + 1)
    return part_names, lut


class BrodenPartsDataset(Dataset):
    """Broden as part-annotated photos, read lazily: items as ``FolderDataset``'s (``image``
    float32 [3, H, W], ``mask`` int64 [H, W] of part ids, ``label``, ``index``, ``name``).

    Parts, masks and classes follow ``broden_to_folder`` (same arguments), one image at a
    time: nothing is read ahead. ``class_names`` defaults to the sorted names of every
    ``label.csv`` label of ``class_category`` (the converter keeps only those that occur,
    which takes a pass over the data); an image without a class gets ``label`` -1.
    """

    def __init__(self, root: PathLike, part_category: str = "part",
                 class_category: str = "object", part_labels: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None, size: Size | None = None,
                 split: str | None = None):
        if class_category == part_category:
            raise ValueError("part_category and class_category must differ")
        self.broden = BrodenDataset(root, categories=(part_category, class_category),
                                    split=split)
        self.part_category, self.class_category, self.size = part_category, class_category, size
        part_names, self._lut = _part_table(self.broden, part_category, part_labels)
        self.part_names = ["background", *part_names]
        if class_names is None:
            class_names = sorted({lab.name for lab in self.broden.labels
                                  if lab and class_category in lab.categories})
        self.class_names = list(class_names)
        self._class_index = {c: i for i, c in enumerate(self.class_names)}
        self.names = [_folder_name(n) for n in self.broden.names]

    def __len__(self) -> int:
        return len(self.broden)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        r = self.broden._rows[index]
        image = load_image(self.broden.root / "images" / r.image)
        mask = torch.from_numpy(_part_mask(self.broden, index, self.part_category, self._lut))
        if mask.shape != image.shape[1:]:
            raise ValueError(f"{self.broden.root / 'images' / r.image}: image is "
                             f"{tuple(image.shape[1:])}, index.csv says {(r.ih, r.iw)}")
        if self.size is not None:
            image, mask = resize_image(image, self.size), resize_mask(mask, self.size)
        cls = _image_class(self.broden, index, self.class_category)
        return {"image": image, "mask": mask, "label": self._class_index.get(cls, -1)
                if cls is not None else -1, "index": index, "name": self.names[index]}


def broden_to_folder(
    root: PathLike,
    out_root: PathLike,
    part_category: str = "part",
    class_category: str = "object",
    part_labels: Sequence[int] | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Converts Broden into the folder format: one part label per pixel and one class per image.

    * Parts: ``part_labels`` (global numbers), by default every label whose ``label.csv``
      category includes ``part_category``; they become ids 1..P in number order (P <= 254).
      A pixel takes the label of the **first plane** (in ``index.csv`` order) that holds one
      of these labels, else background. Masks are upsampled (nearest) from sh x sw to the
      image size.
    * Class: for an image-level ``class_category`` (scene, texture) the first listed label;
      for a pixel-level one (object) the label covering the most pixels over all its planes
      (ties: lower number). Images without one are skipped. ``class_names`` are sorted.
    * Names: the ``image`` path without extension, ``/`` -> ``__``; images are copied;
      split train -> train, val -> test.
    """
    if class_category == part_category:
        raise ValueError("part_category and class_category must differ")
    ds = BrodenDataset(root, categories=(part_category, class_category))
    part_names, lut = _part_table(ds, part_category, part_labels)
    classes = _image_classes(ds, class_category)
    class_names = sorted({c for c in classes if c is not None})
    skipped: dict[str, str] = {}

    def samples():
        for i, r in enumerate(ds._rows):
            name = _folder_name(r.image)
            if classes[i] is None:
                skipped[name] = f"no {class_category} label"
                continue
            mask = _part_mask(ds, i, part_category, lut)
            split = BRODEN_SPLITS.get(r.split)
            if split is None:
                raise ValueError(
                    f"{ds.root / 'index.csv'}: image {r.image} has split {r.split!r}, "
                    "expected train or val"
                )
            yield (name, ds.root / "images" / r.image, mask, classes[i], split)

    out = write_folder(out_root, samples(), part_names, class_names, overwrite=overwrite)
    return ConversionResult(out, len(ds) - len(skipped), skipped)
