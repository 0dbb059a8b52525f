"""partslib's checkpoint files: atomic writes, clear errors for unreadable or foreign files,
and archiving of a checkpoint whose configuration differs from the run's (moved to ``old/``
beside it, never deleted). Re-exported by :mod:`partslib.training`."""

from __future__ import annotations

import datetime as _dt
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "archive_if_stale",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "partslib-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, *, state_dict: dict, config: dict, kind: str,
                    **extra: Any) -> Path:
    """Write a checkpoint atomically (:func:`partslib.io.atomic_write`: a hidden temporary file
    replaces ``path`` once complete): never a half file, and a failed write keeps the old one."""
    from partslib.io import atomic_write

    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
               "config": config, "state_dict": state_dict, **extra}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used. ``reason`` says why: ``"unreadable"`` (truncated,
    corrupted or empty), ``"foreign"`` (not a partslib checkpoint), ``"version"`` (another
    format version) or ``"kind"`` (another model); ``detail`` is the why without the path."""

    def __init__(self, path: Path, reason: str, detail: str, advice: str = "") -> None:
        super().__init__(f"checkpoint {path} {detail}" + (f"; {advice}" if advice else ""))
        self.path, self.reason, self.detail = path, reason, detail


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    import zipfile

    size = path.stat().st_size
    if size == 0:
        what, cause = "is empty (0 bytes)", "nothing was written"
    elif not zipfile.is_zipfile(path):  # torch.save writes a zip archive, its index last
        what = f"is truncated or corrupted ({size} bytes)"
        cause = "not a complete zip archive as torch.save writes: its end is missing or damaged"
    else:
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
        what = f"is corrupted ({size} bytes)"
        cause = f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__
    return CheckpointError(path, "unreadable", f"could not be read: the file {what}; {cause}",
                           "delete it and train again")


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Read a partslib checkpoint; a missing file raises ``FileNotFoundError``, a truncated,
    corrupted or foreign one a :class:`CheckpointError` that names the file and says what is
    wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unreadable(path, e) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, "foreign", f"is not a partslib checkpoint (no "
                              f"'{CHECKPOINT_FORMAT}' header)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(path, "version", f"has format version {ckpt.get('version')}, "
                              f"this partslib reads version {CHECKPOINT_VERSION}")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(path, "kind", f"holds a {ckpt.get('kind')!r}, expected {kind!r}")
    return ckpt


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            path = f"{prefix}{k}"
            if k not in a or k not in b:
                out.append(path)
            else:
                out += _differing_keys(a[k], b[k], path + ".")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(config)"]


def archive_if_stale(checkpoint: str | Path, kind: str, config: dict) -> Path | None:
    """Move a checkpoint written with another configuration than ``config``, or one that cannot
    be read or used, to ``old/<kind>-<time>.pt`` beside it, with a warning that says which (the
    differing keys; why the file could not be read: truncated, corrupted, empty), so that
    training starts over instead of resuming from stale weights. Returns the new path, or
    ``None`` when nothing was moved (no checkpoint, or the same configuration)."""
    path = Path(checkpoint)
    if not path.exists():
        return None
    try:
        stored = load_checkpoint(path, kind=kind)["config"]
    except CheckpointError as e:
        why = e.detail if e.reason == "unreadable" else f"cannot be resumed: it {e.detail}"
    else:
        if stored == config:
            return None
        keys = _differing_keys(stored, config)
        why = (f"was written with another configuration (differing keys: "
               f"{', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''})")
    old = path.parent / "old" / f"{kind}-{_dt.datetime.now():%Y%m%d-%H%M%S-%f}.pt"
    old.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(old))
    warnings.warn(f"checkpoint {path} {why}; moved to {old}, training from scratch",
                  stacklevel=3)
    return old
