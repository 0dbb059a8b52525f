"""Files of a study run: the study root, atomic JSON writes, and the merged ``metrics.json``.

A run folder ``results/<profile>/`` holds one folder per stage (``<stage>/metrics.json`` among
its outputs), ``metrics.json`` (every stage's metrics under keys ``<stage>/<key>``, merged by the
runner after each stage) and ``timings.json`` (written by the runner after each stage).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "StudyRootError",
    "find_root",
    "flatten",
    "jsonable",
    "merge_metrics",
    "read_json",
    "stage_name",
    "write_json",
]


class StudyRootError(FileNotFoundError):
    """No folder holding ``profiles/`` was found."""


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The study root: the first of ``start`` (default cwd) and the source checkout of partslib
    that holds a ``profiles/`` folder."""
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parents[1]]
    for c in candidates:
        if (c / "profiles").is_dir():
            return c
    raise StudyRootError(f"no profiles/ folder in {candidates[0]} or {candidates[1]}; run from "
                         f"the repository root or pass --root")


def stage_name(notebook: str) -> str:
    """``"02_classifier"`` -> ``"classifier"``: the folder and metric prefix of a notebook."""
    return re.sub(r"^\d+[_-]", "", notebook)


def jsonable(obj: Any) -> Any:
    """``obj`` with paths, numpy scalars and tensors turned into JSON types (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays, tensors
        return obj.tolist()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through a temporary file, so readers never see half a
    file (the runner rewrites ``timings.json`` while notebooks may read it). Paths, numpy
    values and tensors are converted (:func:`jsonable`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON content of ``path``, or None when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def flatten(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` with prefix ``"s"`` -> ``{"s/a/b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def merge_metrics(run_dir: str | os.PathLike,
                  notebooks: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``{"<stage>/<key>": value}`` from ``run_dir/<stage>/metrics.json`` of each notebook, in
    the order given, and the notebooks that wrote none."""
    run_dir = Path(run_dir)
    merged: dict[str, Any] = {}
    missing = []
    for name in notebooks:
        stage = stage_name(name)
        stage_metrics = read_json(run_dir / stage / "metrics.json")
        if stage_metrics is None:
            missing.append(name)
            continue
        merged.update(flatten(stage_metrics, stage))
    return merged, missing
