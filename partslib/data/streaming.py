"""Part datasets read lazily, one sample at a time, and batched by ``torch.utils.data``.

Every dataset reader of :mod:`partslib.data` is a map-style ``Dataset`` that decodes one photo
and its part mask per ``__getitem__`` (:class:`~partslib.data.folder.FolderDataset`,
:class:`~partslib.data.coco_parts.CocoPartsDataset` for PartImageNet and Car Parts,
:class:`~partslib.data.pascal_part.PascalPartDataset`,
:class:`~partslib.data.broden.BrodenPartsDataset`); :class:`SynthPartsStream` renders SynthParts
samples on the fly. :class:`PartStream` puts any of them in one shape -- image ``[3, H, W]``
(float32 in [0, 1] or uint8) at the requested size, part mask int64 ``[H, W]``, class label --
with optional training augmentation, and :func:`make_loader` batches it with worker processes::

    data = PartStream(FolderDataset(root), size=(64, 64), augment=True, keys=("image", "label"))
    loader = make_loader(data, 128, shuffle=True, workers=2, seed=0)
    fit(model, loader, epochs=10, loss_fn=nn.functional.cross_entropy)

Nothing is held in memory but the sample list, so memory stays flat as the dataset grows
(``python -m partslib.bench.streaming`` measures it).

Reproducibility: the shuffle order is a permutation seeded by ``(seed, epoch)``
(:class:`EpochSampler`, the order :class:`~partslib.training.TensorLoader` uses) and an
augmentation is drawn from ``(seed, epoch, index)`` alone, so batches do not depend on the
number of workers, on which worker decodes a sample, or on how a ``DistributedSampler`` spreads
the indices over ranks. :func:`~partslib.training.fit` calls ``set_epoch`` on the loader's
sampler and dataset; workers are started afresh every epoch (no ``persistent_workers``), so they
see the new epoch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from partslib.data.images import Size, resize_image, resize_mask
from partslib.data.synthparts import SynthPartsConfig

__all__ = [
    "EpochSampler",
    "PartStream",
    "SynthPartsStream",
    "make_loader",
    "open_parts",
    "seed_worker",
]

DTYPES = ("float32", "uint8")
FORMATS = ("folder", "coco", "pascal-part", "broden")
ITEM_KEYS = ("image", "mask", "label", "index")


class SynthPartsStream(Dataset):
    """SynthParts samples ``0..n-1`` of stream ``seed``, rendered when asked for.

    Item ``i`` equals item ``i`` of ``SynthParts(cfg, seed, n)`` (the same pure function of
    ``(seed, i)``) without generating or caching the split: image uint8 ``[3, H, W]``, mask
    int64 ``[H, W]``, label int, index int.
    """

    def __init__(self, cfg: SynthPartsConfig | None = None, seed: int = 0, n: int = 1000):
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of samples, got {n}")
        self.cfg = cfg or SynthPartsConfig()
        self.seed, self.n = int(seed), int(n)

    @property
    def part_names(self) -> list[str]:
        return self.cfg.part_names

    @property
    def class_names(self) -> list[str]:
        return self.cfg.names

    @property
    def labels(self) -> list[int]:
        """Sample ``i``'s class is ``i % num_classes`` (balanced; nothing is rendered)."""
        return [i % self.cfg.num_classes for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        s = self.cfg.render(self.seed, int(index))
        return {"image": torch.from_numpy(s.image).permute(2, 0, 1).contiguous(),
                "mask": torch.from_numpy(s.mask).long(), "label": s.label, "index": int(index),
                "name": f"{self.seed}-{index}"}

    def folder_samples(self, prefix: str = "img", digits: int = 6) -> Iterator[tuple]:
        """The samples as :func:`~partslib.data.folder.write_folder` takes them: ``(name,
        image HWC uint8, mask, class name)``, named ``<prefix><index>`` (``digits`` wide)."""
        for i in range(self.n):
            item = self[i]
            yield (f"{prefix}{i:0{digits}d}", item["image"].permute(1, 2, 0).numpy(),
                   item["mask"].numpy(), self.cfg.names[item["label"]])


def _to_dtype(image: torch.Tensor, dtype: str) -> torch.Tensor:
    if dtype == "uint8":
        if image.dtype == torch.uint8:
            return image
        return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()


def _shift(t: torch.Tensor, dy: int, dx: int, ph: int, pw: int) -> torch.Tensor:
    """``t[..., H, W]`` moved by ``(dy - ph, dx - pw)`` with edge pixels repeated: the crop at
    ``(dy, dx)`` of ``t`` padded by ``(ph, pw)`` in replicate mode (as ``Augment`` does)."""
    H, W = t.shape[-2:]
    rows = (torch.arange(H) + dy - ph).clamp_(0, H - 1)
    cols = (torch.arange(W) + dx - pw).clamp_(0, W - 1)
    return t[..., rows, :][..., cols]


class PartStream(Dataset):
    """Any part dataset as uniform samples: image, part mask and label at one size.

    Args:
        source: a map-style dataset whose items are dicts with ``image`` (float ``[3, h, w]``
            in [0, 1] or uint8), ``mask`` (integer ``[h, w]``) and ``label``: every reader of
            :mod:`partslib.data`, :class:`SynthPartsStream`, an in-memory ``SynthParts``.
        size: ``(H, W)`` every sample is resized to (image bilinear + antialias, mask nearest,
            :mod:`partslib.data.images`), or None to keep the source's size.
        dtype: ``"float32"`` (in [0, 1]) or ``"uint8"`` images (a quarter of the bytes to
            move between processes).
        augment: a horizontal flip with probability 1/2 and a shift of up to ``shift`` of each
            side with edge pixels repeated, applied to image and mask alike: what
            :class:`partslib.pipeline.Augment` does to a batch, drawn per sample from
            ``(seed, epoch, index)``.
        keys: the item's fields as a tuple in this order (``("image", "label")`` gives the
            ``(inputs, targets)`` pairs :func:`~partslib.training.fit` trains on); None: a
            dict with ``image``, ``mask``, ``label``, ``index`` (and ``name`` when the source
            has one).
    """

    def __init__(self, source: Dataset, size: Size | None = None, *, dtype: str = "float32",
                 augment: bool = False, shift: float = 0.08, seed: int = 0,
                 keys: Sequence[str] | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if not 0 <= shift < 0.5:
            raise ValueError(f"shift must be a fraction of the side in [0, 0.5), got {shift}")
        if keys is not None and (not keys or any(k not in (*ITEM_KEYS, "name") for k in keys)):
            raise ValueError(f"keys must name some of {(*ITEM_KEYS, 'name')}, got {keys!r}")
        self.source, self.size, self.dtype = source, size, dtype
        self.augment, self.shift, self.seed, self.epoch = augment, shift, int(seed), 0
        self.keys = None if keys is None else tuple(keys)

    @property
    def part_names(self) -> list[str]:
        """The source's label names (0 = background); empty when it has none."""
        return list(getattr(self.source, "part_names", None) or [])

    @property
    def class_names(self) -> list[str]:
        """The source's class names; empty when it has none."""
        return list(getattr(self.source, "class_names", None) or [])

    def __len__(self) -> int:
        return len(self.source)  # pyright: ignore[reportArgumentType]

    def set_epoch(self, epoch: int) -> None:
        """The epoch the augmentations are drawn for (``fit`` calls it before each epoch)."""
        self.epoch = int(epoch)

    def _augment(self, image: torch.Tensor, mask: torch.Tensor, index: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        if rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.shift > 0:
            H, W = image.shape[-2:]
            ph, pw = max(1, int(self.shift * H)), max(1, int(self.shift * W))
            dy, dx = int(rng.integers(0, 2 * ph + 1)), int(rng.integers(0, 2 * pw + 1))
            image, mask = _shift(image, dy, dx, ph, pw), _shift(mask, dy, dx, ph, pw)
        return image.contiguous(), mask.contiguous()

    def __getitem__(self, index: int) -> Any:
        item = self.source[index]
        image, mask = item["image"], torch.as_tensor(item["mask"]).long()
        if self.size is not None:
            if image.dtype == torch.uint8 and tuple(image.shape[-2:]) != tuple(self.size):
                image = image.float().div_(255.0)
            image, mask = resize_image(image, self.size), resize_mask(mask, self.size)
        if self.augment:
            image, mask = self._augment(image, mask, index)
        out = {"image": _to_dtype(image, self.dtype), "mask": mask,
               "label": int(item["label"]), "index": int(index)}
        if "name" in item:
            out["name"] = item["name"]
        if self.keys is None:
            return out
        missing = [k for k in self.keys if k not in out]
        if missing:
            raise KeyError(f"the source's items have no {missing}")
        return tuple(out[k] for k in self.keys)


class EpochSampler(Sampler[int]):
    """Indices ``0..n-1``, shuffled by a permutation seeded by ``(seed, epoch)``; the order a
    resumed run sees is the order the interrupted one saw (call ``set_epoch`` before each
    epoch, as :func:`~partslib.training.fit` does)."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = int(n), shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seeds Python's and NumPy's generators in each worker from the seed
    torch gives it (drawn from the loader's seeded generator), so any random draw a dataset
    makes outside :class:`PartStream`'s own is reproducible too."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, workers: int = 0,
                seed: int = 0, sampler: Sampler | None = None, pin_memory: bool | None = None,
                drop_last: bool = False, prefetch_factor: int | None = None) -> DataLoader:
    """A reproducible ``DataLoader`` over ``dataset``.

    Args:
        shuffle: without ``sampler``, an :class:`EpochSampler` seeded by ``seed`` shuffles
            every epoch (``set_epoch``); False keeps the dataset order.
        workers: worker processes that decode samples (0: in this process). Each is seeded by
            :func:`seed_worker`; workers are not persistent, so ``set_epoch`` reaches them.
        seed: seeds the shuffle and the loader's generator (the workers' base seed).
        sampler: e.g. a ``DistributedSampler`` for one rank's share; it then does the shuffling
            (``shuffle`` must be False, the sampler's own ``shuffle`` applies).
        pin_memory: page-locked batches for fast copies to the GPU; None: when CUDA is
            available.
        prefetch_factor: batches each worker loads ahead (None: torch's default, 2).

    Raises:
        ValueError: a bad batch size or worker count, or ``shuffle`` with a ``sampler``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle=False with a sampler: the sampler shuffles "
                         "(DistributedSampler(..., shuffle=True, seed=...))")
    if sampler is None:
        sampler = EpochSampler(len(dataset), shuffle=shuffle,  # pyright: ignore[reportArgumentType]
                               seed=seed)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if workers > 0 and prefetch_factor is not None:
        extra["prefetch_factor"] = int(prefetch_factor)
    return DataLoader(dataset, batch_size=int(batch_size), sampler=sampler,
                      num_workers=int(workers), pin_memory=bool(pin_memory),
                      drop_last=drop_last, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(int(seed)), **extra)


def open_parts(fmt: str, data: str | os.PathLike, annotations: str | os.PathLike | None = None,
               split: str | None = None, validate: bool = True) -> Dataset:
    """A lazy reader of a part dataset on disk, by format name (its native size; wrap it in
    :class:`PartStream` for one size).

    * ``folder``: ``data`` is a folder in the partslib format; ``split`` train or test.
    * ``coco`` (PartImageNet, Car Parts): ``data`` the images folder, ``annotations`` the COCO
      json; labels are -1 (no class rule; the explained class is the predicted one).
    * ``pascal-part``: ``data`` VOC ``JPEGImages``, ``annotations`` ``Annotations_Part``.
    * ``broden``: ``data`` the Broden root; ``split`` train or val; parts and classes as
      ``broden_to_folder`` makes them.

    Raises:
        ValueError: an unknown format, or ``annotations`` missing where it is needed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    needs = fmt in ("coco", "pascal-part")
    if needs and annotations is None:
        raise ValueError(f"format {fmt!r} needs annotations= (the "
                         f"{'COCO json' if fmt == 'coco' else 'Annotations_Part folder'})")
    if split is not None and fmt in ("coco", "pascal-part"):
        raise ValueError(f"format {fmt!r} has no split; point data/annotations at one split")
    if fmt == "folder":
        from partslib.data.folder import FolderDataset

        return FolderDataset(data, split=split, validate=validate)
    if fmt == "coco":
        from partslib.data.coco_parts import CocoPartsDataset

        return CocoPartsDataset(data, annotations)  # pyright: ignore[reportArgumentType]
    if fmt == "pascal-part":
        from partslib.data.pascal_part import PascalPartDataset

        return PascalPartDataset(data, annotations)  # pyright: ignore[reportArgumentType]
    from partslib.data.broden import BrodenPartsDataset

    return BrodenPartsDataset(data, split=split)
