"""Folder-format datasets of real photos as tensors: :class:`RealData` and its loader.

:func:`load_real_data` reads a :class:`~partslib.data.folder.FolderDataset`
(``docs/data_format.md``), resizes every photo and mask to one size (bilinear with antialiasing
for the photo, nearest for the mask, aspect ratio not kept) and splits it (the ``split`` column
of ``classes.csv``, or a seeded stratified permutation); the tensors can be cached. A
validation split is carved from the *training* photos (:func:`carve_validation`: seeded,
stratified per class), never from the test photos. :meth:`RealData.split` gives a split in the
pipeline's common interface (:class:`~partslib.data.split.Split`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from partslib.constants import IGNORE_INDEX
from partslib.data.folder import FolderDataset
from partslib.data.images import PathLike
from partslib.data.split import Split
from partslib.io import atomic_write
from partslib.models import _size

__all__ = ["RealData", "carve_validation", "data_tables", "load_real_data"]


@dataclass
class RealData:
    """A folder-format dataset as tensors at one size.

    ``*_images`` uint8 ``[N,3,H,W]``; ``*_masks`` uint8 ``[N,H,W]`` (0 background, 1..P parts,
    255 ignore); ``*_labels`` int64 ``[N]``; ``*_names`` sample names; ``part_names`` with
    ``"background"`` first; ``class_names`` in label order. The ``val_*`` fields hold the
    validation photos carved from the training photos (:func:`carve_validation`; ``None``
    when none were carved).
    """

    name: str
    root: Path
    image_size: tuple[int, int]
    part_names: list[str]
    class_names: list[str]
    train_images: torch.Tensor
    train_masks: torch.Tensor
    train_labels: torch.Tensor
    train_names: list[str]
    test_images: torch.Tensor
    test_masks: torch.Tensor
    test_labels: torch.Tensor
    test_names: list[str]
    split_rule: str = "classes.csv"
    val_images: torch.Tensor | None = None
    val_masks: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    val_names: list[str] | None = None

    @property
    def has_val(self) -> bool:
        """Whether a validation split was carved from the training photos."""
        return self.val_labels is not None and len(self.val_labels) > 0

    @property
    def num_labels(self) -> int:
        return len(self.part_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Hash of what a model trained on this data depends on (names, labels, size)."""
        h = hashlib.sha256()
        h.update(repr((self.name, self.image_size, self.part_names, self.class_names)).encode())
        for names, labels in ((self.train_names, self.train_labels),
                              (self.test_names, self.test_labels),
                              (self.val_names, self.val_labels)):
            if names is None or labels is None:
                continue
            h.update("\n".join(names).encode())
            h.update(labels.numpy().tobytes())
        h.update(self.train_masks.numpy().tobytes()[:: 997])  # a sparse sample of the masks
        return h.hexdigest()[:16]

    def split(self, which: str) -> Split:
        """The ``"train"``, ``"val"`` or ``"test"`` split in the pipeline's common interface
        (identified by :meth:`fingerprint` and the split's name in checkpoint
        configurations)."""
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {which!r}")
        if which == "val" and not self.has_val:
            raise ValueError(f"{self.name}: no validation split; carve one from the training "
                             f"photos with load_real_data(..., val_fraction=0.2)")
        return Split(getattr(self, f"{which}_images"), getattr(self, f"{which}_labels"),
                     getattr(self, f"{which}_masks"), list(self.part_names),
                     list(self.class_names), info=self.fingerprint())

    def image_path(self, split: str, index: int) -> Path:
        """The file of sample ``index`` of ``split`` (for :func:`explain_photo`)."""
        names = {"train": self.train_names, "val": self.val_names, "test": self.test_names}
        if names.get(split) is None:
            raise ValueError(f"split must be 'train', 'val' (when carved) or 'test', got "
                             f"{split!r}")
        name = names[split][index]
        for p in sorted((self.root / "images").glob(f"{name}.*")):
            return p
        raise FileNotFoundError(f"{self.root / 'images'}: no image named {name!r}")


def _stack(ds: FolderDataset, indices: Sequence[int]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    n = len(indices)
    if ds.size is None:
        raise ValueError(f"{ds.root}: stacking photos into tensors needs one image size; "
                         f"open the FolderDataset with size=(H, W)")
    H, W = ds.size
    images = torch.empty(n, 3, H, W, dtype=torch.uint8)
    masks = torch.empty(n, H, W, dtype=torch.uint8)
    for row, i in enumerate(indices):
        item = ds[i]
        images[row] = (item["image"] * 255).round_().to(torch.uint8)
        masks[row] = item["mask"].to(torch.uint8)
    labels = torch.tensor([ds.labels[i] for i in indices], dtype=torch.long)
    return images, masks, labels, [ds.names[i] for i in indices]


def _folder_key(root: Path, size: tuple[int, int], test_fraction: float, split_seed: int
                ) -> str:
    """Hash of a folder's files (names, sizes, modification times) and the loading options."""
    h = hashlib.sha256(repr((str(root.resolve()), size, test_fraction, split_seed)).encode())
    for sub in ("images", "masks"):
        for p in sorted((root / sub).iterdir()) if (root / sub).is_dir() else []:
            st = p.stat()
            h.update(f"{sub}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for f in ("parts.csv", "classes.csv", "class_names.txt"):
        if (root / f).is_file():
            h.update((root / f).read_bytes())
    return h.hexdigest()[:16]


def load_real_data(dataset_path: PathLike, image_size: int | Sequence[int] = 128,
                   name: str | None = None, test_fraction: float = 0.2, split_seed: int = 0,
                   validate: bool = True, cache_dir: PathLike | None = None,
                   val_fraction: float = 0.0, val_seed: int = 0) -> RealData:
    """Load a folder-format dataset as uint8 tensors resized to ``image_size`` (H, W).

    The split comes from the ``split`` column of ``classes.csv``; a folder without one is split
    by a seeded permutation, stratified by class (``test_fraction`` of each class to test).
    ``val_fraction > 0`` then moves that share of the *training* photos to a validation split
    (:func:`carve_validation`, seed ``val_seed``); the test photos are never touched.

    ``cache_dir``: keep the tensors there (``<name>-<key>.pt``); the key hashes the folder's
    file names, sizes and modification times and the options, so any change to the folder
    loads it again (decoding and resizing 500 photos takes tens of seconds on 2 cores).
    """
    root = Path(dataset_path)
    size = _size(image_size)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder (see docs/real_data.md)")
    cache = None
    if cache_dir is not None:
        key = _folder_key(root, size, test_fraction, split_seed)
        cache = Path(cache_dir) / f"{name or root.name}-{key}.pt"
        if cache.is_file():
            try:
                fields = torch.load(cache, weights_only=True)
                fields.update(root=root, name=name or root.name)
                return carve_validation(RealData(**fields), val_fraction, val_seed)
            except Exception:  # unreadable cache: load again
                cache.unlink(missing_ok=True)
    data = _load_real_data(root, size, name, test_fraction, split_seed, validate)
    if cache is not None:  # the whole training split is cached; the carve is cheap
        cache.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in data.__dict__.items()
                  if k not in ("root", "name") and not k.startswith("val_")}
        with atomic_write(cache) as tmp:
            torch.save(fields, tmp)
    return carve_validation(data, val_fraction, val_seed)


def carve_validation(data: RealData, fraction: float, seed: int = 0) -> RealData:
    """``data`` with ``fraction`` of its training photos moved to a validation split.

    Stratified per class where possible: ``round(fraction * n_k)`` photos of each class ``k``,
    chosen by a permutation seeded with ``seed``, but never all training photos of a class (a
    class with one training photo gives none). The test photos are left as they are. Returns
    ``data`` itself for ``fraction == 0``; a ``data`` that already has a validation split
    raises ``ValueError``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return data
    if data.has_val:
        raise ValueError(f"{data.name}: a validation split was already carved")
    g = np.random.default_rng(seed)
    labels = data.train_labels.numpy()
    val_idx: list[int] = []
    for k in range(data.num_classes):
        idx = np.flatnonzero(labels == k)
        n_val = min(round(fraction * len(idx)), max(len(idx) - 1, 0))
        val_idx += idx[g.permutation(len(idx))][:n_val].tolist()
    if not val_idx:
        raise ValueError(f"{data.name}: val_fraction {fraction:g} of {len(labels)} training "
                         f"photos leaves no validation photo; raise it")
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    keep, take = torch.from_numpy(np.flatnonzero(~is_val)), torch.from_numpy(np.flatnonzero(is_val))
    fields = dict(data.__dict__)
    fields.update(
        train_images=data.train_images[keep], train_masks=data.train_masks[keep],
        train_labels=data.train_labels[keep],
        train_names=[data.train_names[i] for i in keep.tolist()],
        val_images=data.train_images[take], val_masks=data.train_masks[take],
        val_labels=data.train_labels[take],
        val_names=[data.train_names[i] for i in take.tolist()],
        split_rule=f"{data.split_rule}; validation: {fraction:g} of each class's training "
                   f"photos, seed {seed}")
    return RealData(**fields)


def _load_real_data(root: Path, size: tuple[int, int], name: str | None, test_fraction: float,
                    split_seed: int, validate: bool) -> RealData:
    ds = FolderDataset(root, size=size, validate=validate)
    splits = _read_splits(root)
    if splits is not None:
        train_idx = [i for i, n in enumerate(ds.names) if splits[n] == "train"]
        test_idx = [i for i, n in enumerate(ds.names) if splits[n] == "test"]
        rule = "classes.csv split column"
    else:
        g = np.random.default_rng(split_seed)
        train_idx, test_idx = [], []
        labels = np.asarray(ds.labels)
        for k in range(len(ds.class_names)):
            idx = np.flatnonzero(labels == k)
            idx = idx[g.permutation(len(idx))]
            n_test = round(test_fraction * len(idx))
            test_idx += idx[:n_test].tolist()
            train_idx += idx[n_test:].tolist()
        train_idx, test_idx = sorted(train_idx), sorted(test_idx)
        rule = f"stratified random {test_fraction:g} to test, seed {split_seed}"
    if not train_idx or not test_idx:
        raise ValueError(f"{root}: the split leaves {len(train_idx)} training and "
                         f"{len(test_idx)} test images; both must be non-empty")
    tr, te = _stack(ds, train_idx), _stack(ds, test_idx)
    return RealData(name=name or root.name, root=root, image_size=size,
                    part_names=list(ds.part_names), class_names=list(ds.class_names),
                    train_images=tr[0], train_masks=tr[1], train_labels=tr[2], train_names=tr[3],
                    test_images=te[0], test_masks=te[1], test_labels=te[2], test_names=te[3],
                    split_rule=rule)


def _read_splits(root: Path) -> dict[str, str] | None:
    import csv

    with open(root / "classes.csv", encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r and any(v.strip() for v in r.values() if v)]
    if not rows or "split" not in rows[0]:
        return None
    return {Path(r["image"].strip()).stem if Path(r["image"].strip()).suffix.lower() in
            (".jpg", ".jpeg", ".png") else r["image"].strip(): r["split"].strip() for r in rows}


def data_tables(data: RealData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images per class and split -- train, val when carved, test; per part and split: share
    of images where it is present and its mean area share of the annotated pixels)."""
    splits = {"train": (data.train_labels, data.train_masks)}
    if data.has_val and data.val_labels is not None and data.val_masks is not None:
        splits["val"] = (data.val_labels, data.val_masks)
    splits["test"] = (data.test_labels, data.test_masks)
    counts = pd.DataFrame({split: np.bincount(labels.numpy(), minlength=data.num_classes)
                           for split, (labels, _) in splits.items()},
                          index=pd.Index(data.class_names, name="class"))
    counts.loc["all"] = counts.sum()
    rows = {}
    for split, (_, masks) in splits.items():
        m = masks.long().flatten(1)
        known = (m != IGNORE_INDEX).sum(1).clamp(min=1).double()
        pix = torch.stack([(m == p).sum(1) for p in range(data.num_labels)], 1).double()
        rows[(split, "present")] = (pix > 0).double().mean(0).numpy()
        rows[(split, "area")] = (pix / known[:, None]).mean(0).numpy()
    parts = pd.DataFrame(rows, index=pd.Index(data.part_names, name="part"))
    return counts, parts
