"""SynthParts scenes: drawing every random number of one sample, then painting it.

:func:`draw_scene` makes all random draws of a sample, in a fixed order, from the generator it
is given; :func:`paint` turns the drawn scene into an image, its part mask and its object map,
optionally without some parts or some distractors. Painting draws nothing, so any subset of
parts and distractors can be removed from the *same* scene.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

import numpy as np
import torch

__all__ = ["GEOMETRY", "PATTERNS", "Z_ORDER", "SceneSpec", "draw_scene", "paint"]

PATTERNS = ("plain", "stripes", "dots", "checker")

# Geometry of each part in object coordinates (units of image size, object centred at 0).
# kind: ("ellipse", cx, cy, rx, ry) | ("poly", [(x, y), ...]) | ("rects", [(x0, y0, x1, y1), ...])
GEOMETRY: dict[str, tuple] = {
    "tail": ("poly", [(-0.22, -0.06), (-0.50, -0.24), (-0.50, 0.14), (-0.22, 0.08)]),
    "legs": ("rects", [(-0.22, 0.08, -0.08, 0.42), (0.07, 0.08, 0.21, 0.42)]),
    "body": ("ellipse", 0.0, 0.0, 0.30, 0.19),
    "wing": ("poly", [(-0.16, -0.08), (0.14, -0.08), (-0.04, -0.44)]),
    "head": ("ellipse", 0.34, -0.13, 0.16, 0.16),
}
# Paint order (later parts occlude earlier ones).
Z_ORDER = ("tail", "legs", "body", "wing", "head")


class SceneSpec(Protocol):
    """What drawing and painting read from a generator configuration."""

    @property
    def size(self) -> int: ...
    @property
    def parts(self) -> tuple[str, ...]: ...
    @property
    def patterns(self) -> tuple[str, ...]: ...
    @property
    def n_distractors(self) -> tuple[int, int]: ...
    @property
    def scale(self) -> tuple[float, float]: ...
    def nuisance_patterns(self, part: str) -> list[str]: ...


# ---------------------------------------------------------------------------------------
# Drawing: every random number is drawn here, in a fixed order, before painting.

def _random_colour(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _draw_pattern_params(rng: np.random.Generator) -> dict:
    return {
        "phase": rng.uniform(0, 1, size=2),
        "period": rng.uniform(5.0, 6.0),
        "contrast": rng.uniform(0.5, 0.7),
        "dark": bool(rng.random() < 0.5),
    }


def _nuisance(cfg: SceneSpec, part: str, u: float) -> str:
    """The pattern of a non-signature part from one uniform draw ``u``.

    When ``plain`` is free on the part, half of the draws are plain and the others a free
    non-plain pattern; when a class takes ``plain`` on the part, the draw picks among the free
    patterns only (the configuration guarantees there is one).
    """
    free = cfg.nuisance_patterns(part)
    choices = [p for p in free if p != "plain"]
    if "plain" not in free:
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    if u < 0.5 or not choices:
        return "plain"
    return choices[int((u - 0.5) * 2 * len(choices))]


def draw_scene(cfg: SceneSpec, rng: np.random.Generator, signature: Mapping[str, str]) -> dict:
    """All random draws of one sample whose class fixes the patterns in ``signature``."""
    s = cfg.size
    parts = {}
    for part in cfg.parts:
        pattern = signature[part] if part in signature else _nuisance(cfg, part, rng.random())
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


# ---------------------------------------------------------------------------------------
# Painting: a pure function of the drawn scene.

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
    geom = GEOMETRY[part]
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


def _background(s: int, bg: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Two-colour gradient modulated by smooth noise, plus grain (float [s, s, 3])."""
    t = (np.cos(bg["angle"]) * xx + np.sin(bg["angle"]) * yy) / s
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    noise = torch.nn.functional.interpolate(
        torch.from_numpy(bg["noise"])[None, None], size=(s, s), mode="bilinear",
        align_corners=False)[0, 0].numpy()
    t = np.clip(t + 0.15 * noise, 0, 1)[..., None]
    return bg["c0"] * (1 - t) + bg["c1"] * t + bg["grain"]


def paint(cfg: SceneSpec, scene: dict, drop: Collection[int],
          drop_distractors: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8 [s,s,3], part mask uint8 [s,s], object map uint8 [s,s])`` of a scene.

    Part ids in ``drop`` (1..P) are not painted; id 0 replaces the background by flat grey
    without texture or distractors. Distractors whose index (0..n-1, in paint order) is in
    ``drop_distractors`` are not painted. The object map holds ``i + 1`` where distractor ``i``
    is visible (not covered by a later distractor or by a part), 0 elsewhere.
    """
    s = cfg.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    img = _background(s, scene["bg"], yy, xx)
    objects = np.zeros((s, s), dtype=np.uint8)
    for i, d in enumerate(scene["distractors"]):
        if i in drop_distractors:
            continue
        dy, dx = yy + 0.5 - d["centre"][1], xx + 0.5 - d["centre"][0]
        if d["kind"] == "circle":
            m = dx * dx + dy * dy <= d["radius"] ** 2
        else:
            m = (np.abs(dx) <= d["radius"]) & (np.abs(dy) <= d["radius"])
        img[m] = _textured(d["colour"], d["pattern"], d["pp"], yy, xx)[m]
        objects[m] = i + 1
    if 0 in drop:  # "without the background": flat grey, no texture, no distractors
        img = np.full((s, s, 3), 0.5)
        objects[:] = 0
    mask = np.zeros((s, s), dtype=np.uint8)
    for part in Z_ORDER:
        if part not in cfg.parts:
            continue
        pid = cfg.parts.index(part) + 1
        if pid in drop:
            continue
        m = _part_mask(part, scene, yy, xx)
        p = scene["parts"][part]
        img[m] = _textured(p["colour"], p["pattern"], p["pp"], yy, xx)[m]
        mask[m] = pid
    objects[mask > 0] = 0
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, mask, objects

