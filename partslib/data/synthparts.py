"""SynthParts: procedural single-object scenes with exact part masks and known decisive parts.

Each class is defined by a *signature*: one or two (part, pattern) pairs. Every other attribute
(colours, position, scale, flip, the patterns of non-decisive parts, background texture and
distractor shapes) is random. A pattern that is decisive on one part for one class appears as a
nuisance on other parts, so a classifier has to bind pattern to part.

Every sample is a pure function of ``(seed, index)``: all random draws come from a local
``numpy.random.Generator`` seeded with ``[seed, index]`` and are made before anything is painted,
so :meth:`SynthPartsConfig.render` with ``drop_parts`` re-renders the *same* scene without the
chosen parts (the exact counterfactual used by the validity tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "PATTERNS",
    "ReRender",
    "Sample",
    "SynthParts",
    "SynthPartsConfig",
    "generate_split",
    "load_or_generate",
]

PATTERNS = ("plain", "stripes", "dots", "checker")

DEFAULT_PARTS = ("head", "body", "tail", "legs", "wing")

# Each class: tuple of (part, pattern) pairs that define it (its decisive parts).
DEFAULT_SIGNATURES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("head", "stripes"),),
    (("body", "stripes"),),  # same pattern as class 0, other part
    (("tail", "dots"),),
    (("body", "dots"),),  # same pattern as class 2, other part
    (("wing", "checker"),),
    (("legs", "stripes"), ("tail", "checker")),  # two decisive parts
)

# Geometry of each part in object coordinates (units of image size, object centred at 0).
# kind: ("ellipse", cx, cy, rx, ry) | ("poly", [(x, y), ...]) | ("rects", [(x0, y0, x1, y1), ...])
_GEOMETRY: dict[str, tuple] = {
    "tail": ("poly", [(-0.22, -0.06), (-0.50, -0.24), (-0.50, 0.14), (-0.22, 0.08)]),
    "legs": ("rects", [(-0.22, 0.08, -0.08, 0.42), (0.07, 0.08, 0.21, 0.42)]),
    "body": ("ellipse", 0.0, 0.0, 0.30, 0.19),
    "wing": ("poly", [(-0.16, -0.08), (0.14, -0.08), (-0.04, -0.44)]),
    "head": ("ellipse", 0.34, -0.13, 0.16, 0.16),
}
# Paint order (later parts occlude earlier ones).
_Z_ORDER = ("tail", "legs", "body", "wing", "head")


@dataclass(frozen=True)
class SynthPartsConfig:
    """Parameters of the generator. Two configs with equal fields generate identical data."""

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
        unknown = [p for p in self.parts if p not in _GEOMETRY]
        if unknown or len(set(self.parts)) != len(self.parts) or not self.parts:
            raise ValueError(
                f"SynthPartsConfig.parts must be distinct names from {sorted(_GEOMETRY)}, "
                f"got {list(self.parts)!r}")
        bad_pat = [p for p in self.patterns if p not in PATTERNS]
        if bad_pat or "plain" not in self.patterns:
            raise ValueError(f"SynthPartsConfig.patterns must include 'plain' and come from "
                             f"{PATTERNS}, got {list(self.patterns)!r}")
        if len(self.signatures) < 2:
            raise ValueError(f"need at least 2 classes (signatures), got {len(self.signatures)}")
        seen = set()
        for k, sig in enumerate(self.signatures):
            if not 1 <= len(sig) <= 2:
                raise ValueError(f"signature of class {k} must have 1 or 2 (part, pattern) pairs, "
                                 f"got {sig!r}")
            for part, pat in sig:
                if part not in self.parts:
                    raise ValueError(f"signature of class {k} uses part {part!r}, "
                                     f"not in parts {list(self.parts)!r}")
                if pat not in self.patterns or pat == "plain":
                    raise ValueError(f"signature of class {k} uses pattern {pat!r}; expected one "
                                     f"of {[p for p in self.patterns if p != 'plain']}")
            key = frozenset(sig)
            if key in seen:
                raise ValueError(f"signature of class {k} duplicates another class: {sig!r}")
            seen.add(key)
        if self.class_names is not None and len(self.class_names) != len(self.signatures):
            raise ValueError(f"class_names has {len(self.class_names)} entries for "
                             f"{len(self.signatures)} signatures")
        lo, hi = self.n_distractors
        if not 0 <= lo <= hi:
            raise ValueError(
                f"n_distractors must be (lo, hi) with 0 <= lo <= hi, got {self.n_distractors}"
            )

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
    def render(self, seed: int, index: int, label: int | None = None,
               drop_parts: Iterable[int] = ()) -> Sample:
        """Render sample ``index`` of the stream ``seed``; parts in ``drop_parts`` omitted.

        Part ids are 1..P; id 0 removes the background (flat grey, no texture, no distractors).

        ``label`` defaults to ``index % num_classes`` (balanced classes).
        """
        if label is None:
            label = index % self.num_classes
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must be in [0, {self.num_classes}), got {label}")
        drop = {int(p) for p in drop_parts}
        bad = [p for p in drop if not 0 <= p <= self.num_parts]
        if bad:
            raise ValueError(f"drop_parts must be label ids in 0..{self.num_parts} "
                             f"(0 = background), got {sorted(bad)}")
        rng = np.random.default_rng([int(seed), int(index)])
        scene = _draw_scene(self, rng, label)
        image, mask = _paint(self, scene, drop)
        return Sample(image=image, mask=mask, label=label,
                      decisive=self.decisive_parts(label), index=int(index))


@dataclass
class Sample:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W], 0 background, 1..P parts
    label: int
    decisive: list[int] = field(default_factory=list)
    index: int = 0


# ---------------------------------------------------------------------------------------
# Scene drawing: every random number is drawn here, in a fixed order, before painting.

def _random_colour(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _draw_pattern_params(rng: np.random.Generator) -> dict:
    return {
        "phase": rng.uniform(0, 1, size=2),
        "period": rng.uniform(5.0, 6.0),
        "contrast": rng.uniform(0.5, 0.7),
        "dark": bool(rng.random() < 0.5),
    }


def _draw_scene(cfg: SynthPartsConfig, rng: np.random.Generator, label: int) -> dict:
    s = cfg.size
    sig = dict(cfg.signatures[label])
    parts = {}
    for part in cfg.parts:
        if part in sig:
            pattern = sig[part]
        else:
            # half of the nuisance parts are plain, the others carry a non-signature pattern
            choices = [p for p in cfg.nuisance_patterns(part) if p != "plain"]
            u = rng.random()
            if u < 0.5 or not choices:
                pattern = "plain"
            else:
                pattern = choices[int((u - 0.5) * 2 * len(choices))]
        parts[part] = {"colour": _random_colour(rng), "pattern": pattern,
                       "pp": _draw_pattern_params(rng)}
    scale = rng.uniform(*cfg.scale) * s
    flip = -1.0 if rng.random() < 0.5 else 1.0
    cx = s / 2 + rng.uniform(-0.05, 0.05) * s
    cy = s / 2 + rng.uniform(-0.05, 0.05) * s
    bg = {
        "c0": _random_colour(rng, 0.1, 0.9), "c1": _random_colour(rng, 0.1, 0.9),
        "angle": rng.uniform(0, 2 * np.pi),
        "noise": rng.normal(0, 1, size=(s // 8 + 2, s // 8 + 2)),
        "grain": rng.normal(0, 0.03, size=(s, s, 3)),
    }
    n_dis = int(rng.integers(cfg.n_distractors[0], cfg.n_distractors[1] + 1))
    distractors = []
    for _ in range(cfg.n_distractors[1]):  # always draw the max so the stream stays aligned
        distractors.append({
            "kind": "circle" if rng.random() < 0.5 else "square",
            "centre": rng.uniform(0, s, size=2),
            "radius": rng.uniform(0.05, 0.10) * s,
            "colour": _random_colour(rng),
            "pattern": cfg.patterns[rng.integers(len(cfg.patterns))],
            "pp": _draw_pattern_params(rng),
        })
    return {"parts": parts, "scale": scale, "flip": flip, "centre": (cx, cy), "bg": bg,
            "distractors": distractors[:n_dis]}


def _pattern_field(kind: str, pp: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Pattern intensity in [0, 1] on the pixel grid (1 = pattern colour)."""
    T = pp["period"]
    u = xx / T + pp["phase"][0]
    v = yy / T + pp["phase"][1]
    if kind == "plain":
        return np.zeros_like(xx)
    if kind == "stripes":
        return ((u + v) % 1.0 < 0.5).astype(np.float64)
    if kind == "checker":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    if kind == "dots":
        du = (u % 1.0) - 0.5
        dv = (v % 1.0) - 0.5
        return (du * du + dv * dv < 0.1).astype(np.float64)
    raise ValueError(f"unknown pattern {kind!r}")


def _textured(colour: np.ndarray, kind: str, pp: dict, yy, xx) -> np.ndarray:
    f = _pattern_field(kind, pp, yy, xx)[..., None]
    other = colour * (1 - pp["contrast"]) if pp["dark"] else colour + (1 - colour) * pp["contrast"]
    return colour * (1 - f) + other * f


def _part_mask(part: str, scene: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    cx, cy = scene["centre"]
    # object coordinates of each pixel centre
    u = (xx + 0.5 - cx) / scene["scale"] * scene["flip"]
    v = (yy + 0.5 - cy) / scene["scale"]
    geom = _GEOMETRY[part]
    if geom[0] == "ellipse":
        _, ex, ey, rx, ry = geom
        return ((u - ex) / rx) ** 2 + ((v - ey) / ry) ** 2 <= 1.0
    if geom[0] == "rects":
        m = np.zeros(u.shape, dtype=bool)
        for x0, y0, x1, y1 in geom[1]:
            m |= (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)
        return m
    pts = geom[1]  # convex polygon, counter-clockwise or clockwise
    n = len(pts)
    signs = []
    for i in range(n):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        signs.append((x1 - x0) * (v - y0) - (y1 - y0) * (u - x0))
    signs = np.stack(signs)
    return np.all(signs >= 0, axis=0) | np.all(signs <= 0, axis=0)


def _paint(cfg: SynthPartsConfig, scene: dict, drop: set[int]) -> tuple[np.ndarray, np.ndarray]:
    s = cfg.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    bg = scene["bg"]
    # background: two-colour gradient modulated by smooth noise, plus grain
    t = (np.cos(bg["angle"]) * xx + np.sin(bg["angle"]) * yy) / s
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    noise = torch.nn.functional.interpolate(
        torch.from_numpy(bg["noise"])[None, None], size=(s, s), mode="bilinear",
        align_corners=False)[0, 0].numpy()
    t = np.clip(t + 0.15 * noise, 0, 1)[..., None]
    img = bg["c0"] * (1 - t) + bg["c1"] * t + bg["grain"]
    for d in scene["distractors"]:
        dy, dx = yy + 0.5 - d["centre"][1], xx + 0.5 - d["centre"][0]
        if d["kind"] == "circle":
            m = dx * dx + dy * dy <= d["radius"] ** 2
        else:
            m = (np.abs(dx) <= d["radius"]) & (np.abs(dy) <= d["radius"])
        img[m] = _textured(d["colour"], d["pattern"], d["pp"], yy, xx)[m]
    if 0 in drop:  # "without the background": flat grey, no texture, no distractors
        img = np.full((s, s, 3), 0.5)
    mask = np.zeros((s, s), dtype=np.uint8)
    for part in _Z_ORDER:
        if part not in cfg.parts:
            continue
        pid = cfg.parts.index(part) + 1
        if pid in drop:
            continue
        m = _part_mask(part, scene, yy, xx)
        p = scene["parts"][part]
        img[m] = _textured(p["colour"], p["pattern"], p["pp"], yy, xx)[m]
        mask[m] = pid
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, mask


# ---------------------------------------------------------------------------------------
# Splits, caching and the torch Dataset.

def generate_split(cfg: SynthPartsConfig, seed: int, n: int, progress: bool = False) -> dict:
    """Render samples ``0..n-1`` of stream ``seed`` into arrays."""
    from tqdm.auto import tqdm

    s = cfg.size
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    masks = np.empty((n, s, s), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in tqdm(range(n), desc=f"SynthParts seed={seed}", disable=not progress, leave=False):
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
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, npz)
    manifest["sha256"] = _checksum(arrays)
    tmp_m = manifest_path.with_suffix(".tmp")
    tmp_m.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp_m, manifest_path)
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

    def rerender(self) -> ReRender:
        return ReRender(self.cfg, self.seed, self.labels)


class ReRender:
    """Exact removal operator: re-render each sample without the dropped parts.

    Follows the removal-operator protocol of :mod:`partslib.removal`: ``op(images, labels, drop,
    keys)`` where ``keys`` are the samples' indices in their split.
    """

    name = "rerender"

    def __init__(self, cfg: SynthPartsConfig, seed: int, labels: torch.Tensor | None = None):
        self.cfg, self.seed, self.labels = cfg, seed, labels

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, drop: torch.Tensor,
                 keys: Sequence[int] | None = None) -> torch.Tensor:
        if keys is None:
            raise ValueError("ReRender needs keys: the dataset index of every image")
        if len(keys) != images.shape[0] or drop.shape[0] != images.shape[0]:
            raise ValueError(f"ReRender got {images.shape[0]} images, {len(keys)} keys and "
                             f"{drop.shape[0]} drop rows; expected one of each per image")
        out = images.clone()
        for b, key in enumerate(keys):
            parts = torch.nonzero(drop[b]).flatten().tolist()
            if not parts:
                continue
            lab = None if self.labels is None else int(self.labels[int(key)])
            smp = self.cfg.render(self.seed, int(key), label=lab, drop_parts=parts)
            out[b] = torch.from_numpy(smp.image).permute(2, 0, 1).float().div(255.0)
        return out
