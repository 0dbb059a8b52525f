"""Files of a study run: the study root, atomic writes, and the merged ``metrics.json``.

Every file and folder partslib writes for a user (datasets, checkpoints, results, figures) goes
through :func:`atomic_write` or :func:`atomic_dir`: it is written under a temporary sibling name
that starts with a dot (``.<name>.partial-<pid>-<random>``) and replaces the old one only once
it is complete, so an interrupted or failing write leaves the previous state intact and nothing
half-written under the name a user reads. Temporary siblings left by a killed process are
removed by the next write of the same path.

A run folder ``results/<profile>/`` holds one folder per stage (``<stage>/metrics.json`` among
its outputs), ``metrics.json`` (every stage's metrics under keys ``<stage>/<key>``, merged by the
runner after each stage) and ``timings.json`` (written by the runner after each stage).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "StudyRootError",
    "atomic_dir",
    "atomic_write",
    "clean_stale",
    "find_root",
    "flatten",
    "jsonable",
    "merge_metrics",
    "read_json",
    "replace_dir",
    "stage_name",
    "temp_sibling",
    "write_csv",
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


_TEMP_TAGS = ("partial", "old")


def temp_sibling(path: Path, tag: str = "partial") -> Path:
    """``path``'s hidden temporary sibling: ``.<name>.<tag>-<pid>-<random>`` (``tag`` is
    ``"partial"`` or ``"old"``; :func:`clean_stale` removes those of dead processes)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by processes that no longer run (a write
    killed mid-way); returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:{'|'.join(_TEMP_TAGS)})-(\d+)-[0-9a-f]+$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.iterdir():
        m = pattern.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _remove(p)
            removed.append(p)
    return removed


def _note(err: BaseException, path: Path) -> None:
    """Tell the user, under the error, that ``path`` was not changed."""
    if isinstance(err, Exception):
        state = "left as it was" if path.exists() else "not created"
        err.add_note(f"partslib: nothing half-written; {path} was {state}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager for writing one file atomically: yields a temporary path next to
    ``path`` (parent folders created); when the block ends normally the temporary file
    replaces ``path`` (``os.replace``), when it raises the temporary file is removed and
    ``path`` is left as it was.

    Example: ``with atomic_write(out / "t.csv") as tmp: table.to_csv(tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = temp_sibling(path, "partial")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for {path}")
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _note(err, path)
        raise


def replace_dir(new: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Put the complete folder ``new`` in the place of ``dst``: the old ``dst`` (if any) is
    renamed aside, ``new`` renamed in, and the old one deleted last; if the second rename
    fails the old folder is renamed back. Both must be on one file system (siblings)."""
    new, dst = Path(new), Path(dst)
    if not dst.exists() and not dst.is_symlink():
        os.rename(new, dst)
        return dst
    old = temp_sibling(dst, "old")
    os.rename(dst, old)
    try:
        os.rename(new, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    _remove(old)
    return dst


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike,
               validate: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Context manager for writing a whole folder atomically: yields an empty hidden sibling
    folder of ``dst``; when the block ends normally, ``validate(tmp)`` (if given; it raises to
    refuse) runs and the folder replaces ``dst`` (:func:`replace_dir`). When the block or the
    validation raises, the temporary folder is deleted and ``dst`` is left as it was; one left
    by a killed process is deleted by the next ``atomic_dir`` or ``atomic_write`` of ``dst``.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst}: exists and is not a directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dst)
    tmp = temp_sibling(dst, "partial")
    tmp.mkdir()
    try:
        yield tmp
        if validate is not None:
            validate(tmp)
        replace_dir(tmp, dst)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _note(err, dst)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`atomic_write`), so readers never see
    half a file (the runner rewrites ``timings.json`` while notebooks may read it). Paths,
    numpy values and tensors are converted (:func:`jsonable`)."""
    path = Path(path)
    text = json.dumps(jsonable(obj), indent=1) + "\n"
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def write_csv(table: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """Write a pandas table with ``table.to_csv(path, **to_csv)`` atomically
    (:func:`atomic_write`): a run stopped mid-write leaves the previous file, never half a
    table."""
    path = Path(path)
    with atomic_write(path) as tmp:
        table.to_csv(tmp, **to_csv)
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
