"""SynthParts: procedural single-object scenes with exact part masks and known decisive parts.

Each class is defined by a *signature*: (part, pattern) pairs from a class table
(:mod:`partslib.data.classtables`; the default table names one or two parts per class, the
``funnybirds`` table all five). Every other attribute (colours, position, scale, flip, the
patterns of parts the signature leaves free, background texture and distractor shapes) is
random. A pattern that is decisive on one part for one class appears as a nuisance on other
parts, so a classifier has to bind pattern to part.

Every sample is a pure function of ``(seed, index)``: all random draws come from a local
``numpy.random.Generator`` seeded with ``[seed, index]`` and are made before anything is painted
(:mod:`partslib.data.scene`), so :meth:`SynthPartsConfig.render` with ``drop_parts`` and
``drop_distractors`` re-renders the *same* scene without the chosen parts and background
distractors (the exact counterfactual used by the validity tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from partslib.data.classtables import (
    CLASS_TABLES,
    DEFAULT_SIGNATURES,
    check_signatures,
    minimal_sufficient_sets,
    signatures_from_table,
)
from partslib.data.scene import GEOMETRY, PATTERNS, draw_scene, paint
from partslib.io import atomic_write

__all__ = [
    "PATTERNS",
    "ReRender",
    "Sample",
    "SynthParts",
    "SynthPartsConfig",
    "generate_split",
    "load_or_generate",
]

DEFAULT_PARTS = ("head", "body", "tail", "legs", "wing")


@dataclass(frozen=True)
class SynthPartsConfig:
    """Parameters of the generator. Two configs with equal fields generate identical data.

    ``signatures``: the class table, one tuple of (part, pattern) pairs per class (see
    :mod:`partslib.data.classtables`); :meth:`funnybirds` and :meth:`from_classes` build the
    named tables. ``n_distractors``: the range (inclusive) of background distractor shapes per
    sample.
    """

    size: int = 64
    parts: tuple[str, ...] = DEFAULT_PARTS
    signatures: tuple[tuple[tuple[str, str], ...], ...] = DEFAULT_SIGNATURES
    class_names: tuple[str, ...] | None = None  # default: "<pattern>-<part>" names
    patterns: tuple[str, ...] = PATTERNS
    n_distractors: tuple[int, int] = (1, 3)
    scale: tuple[float, float] = (0.78, 0.9)
    version: int = 1  # bump when the renderer changes, so caches are invalidated

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"SynthPartsConfig.size must be an int >= 32, got {self.size!r}")
        unknown = [p for p in self.parts if p not in GEOMETRY]
        if unknown or len(set(self.parts)) != len(self.parts) or not self.parts:
            raise ValueError(
                f"SynthPartsConfig.parts must be distinct names from {sorted(GEOMETRY)}, "
                f"got {list(self.parts)!r}")
        bad_pat = [p for p in self.patterns if p not in PATTERNS]
        if bad_pat or "plain" not in self.patterns:
            raise ValueError(f"SynthPartsConfig.patterns must include 'plain' and come from "
                             f"{PATTERNS}, got {list(self.patterns)!r}")
        check_signatures(self.signatures, self.parts, self.patterns)
        if self.class_names is not None and (len(self.class_names) != len(self.signatures)
                                             or len(set(self.class_names)) != len(self.signatures)):
            raise ValueError(f"class_names has {len(self.class_names)} entries "
                             f"({len(set(self.class_names))} distinct) for "
                             f"{len(self.signatures)} signatures")
        lo, hi = self.n_distractors
        if not 0 <= lo <= hi:
            raise ValueError(
                f"n_distractors must be (lo, hi) with 0 <= lo <= hi, got {self.n_distractors}"
            )

    # -- class tables --------------------------------------------------------------------
    @classmethod
    def funnybirds(cls, size: int = 64, **kwargs) -> SynthPartsConfig:
        """The 50-class table in the manner of FunnyBirds (every class fixes all 5 parts)."""
        return cls.from_classes("funnybirds", size=size, **kwargs)

    @classmethod
    def from_classes(cls, classes: str | Sequence[Mapping[str, str]] = "default",
                     size: int = 64, **kwargs) -> SynthPartsConfig:
        """A config for a named class table (``"default"``, ``"funnybirds"``) or an explicit
        one, ``[{part: pattern}, ...]`` (one mapping per class; default ``<pattern>-<part>``
        names). ``kwargs``: other fields."""
        if isinstance(classes, str):
            if classes not in CLASS_TABLES:
                raise ValueError(f"classes must be one of {sorted(CLASS_TABLES)} or a class "
                                 f"table [{{part: pattern}}, ...], got {classes!r}")
            sigs, names = CLASS_TABLES[classes]
            if classes == "default":  # exactly the default config (same fingerprint)
                return cls(size=size, **kwargs)
            return cls(size=size, signatures=sigs, class_names=names, **kwargs)
        return cls(size=size, signatures=signatures_from_table(classes), **kwargs)

    def class_table(self) -> list[dict[str, str]]:
        """The class table as data: ``[{part: pattern}, ...]``, one mapping per class; parts a
        class leaves out carry a nuisance pattern (:meth:`nuisance_patterns`)."""
        return [dict(sig) for sig in self.signatures]

    def minimal_sufficient_sets(self) -> list[list[tuple[str, ...]]]:
        """Per class, the minimal part sets whose patterns single it out (part names)."""
        return minimal_sufficient_sets(self.signatures, self.parts)

    # -- derived facts -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.signatures)

    @property
    def num_parts(self) -> int:
        """P, the number of parts (labels 1..P; 0 is background)."""
        return len(self.parts)

    @property
    def part_names(self) -> list[str]:
        """Names of the P+1 labels, index 0 = background."""
        return ["background", *self.parts]

    @property
    def names(self) -> list[str]:
        if self.class_names is not None:
            return list(self.class_names)
        return ["+".join(f"{pat}-{part}" for part, pat in sig) for sig in self.signatures]

    def decisive_parts(self, label: int) -> list[int]:
        """Part ids (1..P) that carry the signature of class ``label``."""
        return [self.parts.index(part) + 1 for part, _ in self.signatures[label]]

    def decisive_matrix(self) -> torch.Tensor:
        """Bool ``[num_classes, P+1]``: ``[k, p]`` is True when part p is decisive for class k."""
        m = torch.zeros(self.num_classes, self.num_parts + 1, dtype=torch.bool)
        for k in range(self.num_classes):
            m[k, self.decisive_parts(k)] = True
        return m

    def nuisance_patterns(self, part: str) -> list[str]:
        """Patterns a part may carry when it is not decisive: none that forms any signature."""
        taken = {pat for sig in self.signatures for p, pat in sig if p == part}
        return [pat for pat in self.patterns if pat not in taken]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> SynthPartsConfig:
        d = dict(d)
        d["parts"] = tuple(d["parts"])
        d["signatures"] = tuple(tuple(tuple(pair) for pair in sig) for sig in d["signatures"])
        d["class_names"] = None if d.get("class_names") is None else tuple(d["class_names"])
        d["patterns"] = tuple(d["patterns"])
        d["n_distractors"] = tuple(d["n_distractors"])
        d["scale"] = tuple(d["scale"])
        return cls(**d)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    # -- rendering -----------------------------------------------------------------------
    def _scene(self, seed: int, index: int, label: int | None) -> tuple[int, dict]:
        if label is None:
            label = index % self.num_classes
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must be in [0, {self.num_classes}), got {label}")
        rng = np.random.default_rng([int(seed), int(index)])
        return label, draw_scene(self, rng, dict(self.signatures[label]))

    def num_distractors(self, seed: int, index: int, label: int | None = None) -> int:
        """How many distractors sample ``index`` of stream ``seed`` has (draws, paints
        nothing); their indices for ``drop_distractors`` are ``0..n-1``."""
        return len(self._scene(seed, index, label)[1]["distractors"])

    def part_patterns(self, seed: int, index: int, label: int | None = None) -> dict[str, str]:
        """``{part: pattern}`` of sample ``index`` of stream ``seed`` (draws, paints nothing):
        the class's signature patterns and the nuisance patterns of the other parts."""
        scene = self._scene(seed, index, label)[1]
        return {part: spec["pattern"] for part, spec in scene["parts"].items()}

    def render(self, seed: int, index: int, label: int | None = None,
               drop_parts: Iterable[int] = (), drop_distractors: Iterable[int] = ()) -> Sample:
        """Render sample ``index`` of the stream ``seed`` without the parts in ``drop_parts``
        and the distractors in ``drop_distractors``.

        Part ids are 1..P; id 0 removes the background (flat grey, no texture, no distractors).
        Distractor indices are ``0..n-1`` in paint order (``n``: :meth:`num_distractors`, also
        ``Sample.n_distractors``); ``Sample.objects`` maps where each one is visible.
        ``label`` defaults to ``index % num_classes`` (balanced classes).
        """
        drop = {int(p) for p in drop_parts}
        bad = [p for p in drop if not 0 <= p <= self.num_parts]
        if bad:
            raise ValueError(f"drop_parts must be label ids in 0..{self.num_parts} "
                             f"(0 = background), got {sorted(bad)}")
        label, scene = self._scene(seed, index, label)
        n_dis = len(scene["distractors"])
        drop_d = {int(i) for i in drop_distractors}
        bad = [i for i in drop_d if not 0 <= i < n_dis]
        if bad:
            raise ValueError(f"drop_distractors must be distractor indices in 0..{n_dis - 1} "
                             f"(sample {index} of stream {seed} has {n_dis}), got {sorted(bad)}")
        image, mask, objects = paint(self, scene, drop, drop_d)
        return Sample(image=image, mask=mask, label=label,
                      decisive=self.decisive_parts(label), index=int(index),
                      objects=objects, n_distractors=n_dis)


@dataclass
class Sample:
    """One rendered sample. ``objects``: uint8 ``[H, W]``, ``i + 1`` where distractor ``i`` is
    visible, 0 elsewhere; ``n_distractors``: how many the scene has (dropped ones included)."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W], 0 background, 1..P parts
    label: int
    decisive: list[int] = field(default_factory=list)
    index: int = 0
    objects: np.ndarray | None = None
    n_distractors: int = 0


# ---------------------------------------------------------------------------------------
# Splits, caching and the torch Dataset.

def generate_split(cfg: SynthPartsConfig, seed: int, n: int, progress: bool = False) -> dict:
    """Render samples ``0..n-1`` of stream ``seed`` into arrays."""
    from partslib.progress import Progress

    s = cfg.size
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    masks = np.empty((n, s, s), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in Progress(range(n), desc=f"SynthParts seed={seed}", unit="image",
                      disable=not progress, leave=False):
        smp = cfg.render(seed, i)
        images[i], masks[i], labels[i] = smp.image, smp.mask, smp.label
    return {"images": images, "masks": masks, "labels": labels}


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def load_or_generate(cfg: SynthPartsConfig, seed: int, n: int, cache_dir: str | os.PathLike | None,
                     progress: bool = True) -> dict:
    """Return split ``(seed, n)``, reading ``cache_dir`` when its manifest matches exactly.

    The cache file is named by a hash of the config, seed and size, and its manifest stores the
    parameters and a SHA-256 checksum of the arrays: a changed parameter never reuses stale data,
    and a corrupted file is regenerated (with a warning) instead of being trusted.
    """
    if cache_dir is None:
        return generate_split(cfg, seed, n, progress)
    cache_dir = Path(cache_dir)
    key = hashlib.sha256(f"{cfg.fingerprint()}-{seed}-{n}".encode()).hexdigest()[:16]
    npz, manifest_path = cache_dir / f"synthparts-{key}.npz", cache_dir / f"synthparts-{key}.json"
    manifest = {"generator": "SynthParts", "config": cfg.to_dict(), "seed": seed, "n": n}
    if npz.exists() and manifest_path.exists():
        try:
            stored = json.loads(manifest_path.read_text())
            with np.load(npz) as f:
                arrays = {k: f[k] for k in ("images", "masks", "labels")}
            if ({k: stored.get(k) for k in manifest} == manifest
                    and stored.get("sha256") == _checksum(arrays)):
                return arrays
        except Exception:  # unreadable cache: fall through and regenerate
            pass
        import warnings
        warnings.warn(f"SynthParts cache {npz} does not match its manifest; regenerating",
                      stacklevel=2)
    arrays = generate_split(cfg, seed, n, progress)
    with atomic_write(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # a file object: savez would append .npz to a temporary name
    manifest["sha256"] = _checksum(arrays)
    with atomic_write(manifest_path) as tmp_m:
        tmp_m.write_text(json.dumps(manifest, indent=1))
    return arrays


class SynthParts(Dataset):
    """Torch dataset over one SynthParts split.

    Items are dicts ``{"image": float32 [3,H,W] in [0,1], "mask": int64 [H,W], "label": int,
    "index": int}``. ``decisive`` (bool ``[N, P+1]``) marks each sample's decisive parts.
    """

    def __init__(self, cfg: SynthPartsConfig | None = None, seed: int = 0, n: int = 1000,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True):
        self.cfg = cfg or SynthPartsConfig()
        self.seed, self.n = int(seed), int(n)
        if self.n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n}")
        arrays = load_or_generate(self.cfg, self.seed, self.n, cache_dir, progress)
        self.images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(arrays["masks"]).long()
        self.labels = torch.from_numpy(arrays["labels"])
        self.decisive = self.cfg.decisive_matrix()[self.labels]
        self._num_distractors: torch.Tensor | None = None

    @property
    def part_names(self) -> list[str]:
        return self.cfg.part_names

    @property
    def class_names(self) -> list[str]:
        return self.cfg.names

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float() / 255.0, "mask": self.masks[i],
                "label": int(self.labels[i]), "index": i}

    def tensors(self, idx: Sequence[int] | slice | None = None) -> tuple[torch.Tensor, ...]:
        """``(images float [B,3,H,W], masks [B,H,W], labels [B])`` for many samples at once."""
        idx = slice(None) if idx is None else idx
        return self.images[idx].float() / 255.0, self.masks[idx], self.labels[idx]

    @property
    def num_distractors(self) -> torch.Tensor:
        """int64 ``[N]``: how many distractors each sample has (indices ``0..n-1`` for
        ``drop_distractors``); drawn, not painted, on first use."""
        if self._num_distractors is None:
            self._num_distractors = torch.tensor(
                [self.cfg.num_distractors(self.seed, i, int(self.labels[i]))
                 for i in range(self.n)], dtype=torch.int64)
        return self._num_distractors

    @property
    def distractor_present(self) -> torch.Tensor:
        """Bool ``[N, D]`` (``D = cfg.n_distractors[1]``, the most a sample can have): column
        ``i`` is True where the sample has distractor ``i``; a row of it, or any subset of its
        True entries, is a valid ``drop_distractors`` row for :class:`ReRender`."""
        slots = torch.arange(self.cfg.n_distractors[1])
        return slots[None, :] < self.num_distractors[:, None]

    def render(self, i: int, drop_parts: Iterable[int] = (),
               drop_distractors: Iterable[int] = ()) -> Sample:
        """Sample ``i`` rendered again without the given parts (1..P, 0 = background) and
        distractors (``0..num_distractors[i]-1``); with nothing dropped it equals item ``i``."""
        if not 0 <= int(i) < self.n:
            raise ValueError(f"sample index must be in [0, {self.n}), got {i}")
        return self.cfg.render(self.seed, int(i), label=int(self.labels[int(i)]),
                               drop_parts=drop_parts, drop_distractors=drop_distractors)

    def rerender(self) -> ReRender:
        return ReRender(self.cfg, self.seed, self.labels)


class ReRender:
    """Exact removal operator: re-render each sample without the dropped parts (and, on
    request, without some of its distractors).

    Follows the removal-operator protocol of :mod:`partslib.removal`: ``op(images, labels, drop,
    keys)`` where ``keys`` are the samples' indices in their split. The optional
    ``drop_distractors`` holds one entry per image: the distractor indices to remove (a list of
    ints, or a bool row whose column ``i`` removes distractor ``i``; see
    :attr:`SynthParts.num_distractors`).
    """

    name = "rerender"

    def __init__(self, cfg: SynthPartsConfig, seed: int, labels: torch.Tensor | None = None):
        self.cfg, self.seed, self.labels = cfg, seed, labels

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
                 keys: Sequence[int] | None = None,
                 drop_distractors: Sequence[Iterable[int]] | torch.Tensor | None = None,
                 ) -> torch.Tensor:
        if keys is None:
            raise ValueError("ReRender needs keys: the dataset index of every image")
        B = images.shape[0]
        if len(keys) != B or drop.shape[0] != B or (
                drop_distractors is not None and len(drop_distractors) != B):
            n_dis = "no" if drop_distractors is None else len(drop_distractors)
            raise ValueError(f"ReRender got {B} images, {len(keys)} keys, {drop.shape[0]} drop "
                             f"rows and {n_dis} drop_distractors rows; expected one of each "
                             f"per image")
        out = images.clone()
        for b, key in enumerate(keys):
            parts = torch.nonzero(drop[b]).flatten().tolist()
            dis = [] if drop_distractors is None else _indices(drop_distractors[b])
            if not parts and not dis:
                continue
            lab = None if self.labels is None else int(self.labels[int(key)])
            smp = self.cfg.render(self.seed, int(key), label=lab, drop_parts=parts,
                                  drop_distractors=dis)
            out[b] = torch.from_numpy(smp.image).permute(2, 0, 1).float().div(255.0)
        return out


def _indices(row: Iterable[int] | torch.Tensor) -> list[int]:
    """Distractor indices from a list of ints or a bool row."""
    if isinstance(row, torch.Tensor) and row.dtype == torch.bool:
        return torch.nonzero(row).flatten().tolist()
    return [int(i) for i in row]
