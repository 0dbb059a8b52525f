"""Reading and checking a folder in the partslib format (see ``docs/data_format.md``).

The format's constants, the readers of its csv files, and :func:`validate_folder`, which
lists every problem of a folder. :mod:`partslib.data.folder` re-exports the public names and
builds ``FolderDataset`` and ``write_folder`` on these readers.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import IGNORE_INDEX
from .images import PathLike, open_image, read_mask

# IGNORE_INDEX (255, from partslib.constants) marks pixels without supervision.
#: Mask value for pixels outside every part.
BACKGROUND_INDEX = 0
#: Largest number of parts: ids are 1..P and 255 is reserved for ``IGNORE_INDEX``.
MAX_PARTS = 254
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
PARTS_HEADER = ["id", "name"]
CLASSES_HEADERS = (["image", "class"], ["image", "class", "split"])

__all__ = [
    "BACKGROUND_INDEX",
    "CLASSES_HEADERS",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "MAX_PARTS",
    "PARTS_HEADER",
    "SPLITS",
    "Problem",
    "validate_folder",
]


@dataclass(frozen=True)
class Problem:
    """One problem found in a folder: the file concerned and what is wrong with it."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# ----------------------------------------------------------------------------- reading csv


def _read_csv(
    path: Path, headers: Sequence[Sequence[str]], problems: list[Problem]
) -> list[dict[str, str]] | None:
    """Rows of a csv whose header is one of ``headers``.

    Appends what is wrong to ``problems``, and returns None when the file is unusable.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        problems.append(Problem(path, f"not UTF-8 text ({err})"))
        return None
    rows = list(csv.reader(io.StringIO(text)))
    expected = " or ".join(",".join(h) for h in headers)
    if not rows:
        problems.append(Problem(path, f"empty file (expected header {expected})"))
        return None
    header = [h.strip() for h in rows[0]]
    if header not in [list(h) for h in headers]:
        problems.append(Problem(path, f"bad header {','.join(rows[0])!r}, expected {expected!r}"))
        return None
    out = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            problems.append(
                Problem(path, f"line {line_no}: expected {len(header)} fields, got {len(row)}")
            )
            continue
        out.append({k: v.strip() for k, v in zip(header, row)} | {"_line": str(line_no)})
    return out


def _read_parts(root: Path, problems: list[Problem]) -> tuple[list[str] | None, set[int] | None]:
    """(part names indexed by id, index 0 = "background"; or None when parts.csv has problems)
    and the set of ids it declares (best effort, for checking masks; None when unreadable)."""
    path = root / "parts.csv"
    if not path.is_file():
        problems.append(Problem(path, "missing (expected header 'id,name')"))
        return None, None
    rows = _read_csv(path, [PARTS_HEADER], problems)
    if rows is None:
        return None, None
    if not rows:
        problems.append(Problem(path, "no parts: the header has no rows below it (expected at "
                                      "least one line 'id,name', ids 1..P)"))
        return None, set()
    names: dict[int, str] = {}
    ok = True
    seen_names: dict[str, int] = {}
    for row in rows:
        line = row["_line"]
        try:
            pid = int(row["id"])
        except ValueError:
            problems.append(Problem(path, f"line {line}: id {row['id']!r} is not an integer"))
            ok = False
            continue
        if not 1 <= pid <= MAX_PARTS:
            problems.append(Problem(
                path,
                f"line {line}: id {pid} out of range 1..{MAX_PARTS} (0 = background, 255 = ignore)",
            ))
            ok = False
            continue
        if not row["name"]:
            problems.append(Problem(path, f"line {line}: part {pid} has an empty name"))
            ok = False
        if pid in names:
            problems.append(Problem(path, f"line {line}: duplicate part id {pid}"))
            ok = False
            continue
        if row["name"] in seen_names:
            problems.append(Problem(
                path,
                f"line {line}: duplicate part name {row['name']!r} "
                f"(also id {seen_names[row['name']]})",
            ))
            ok = False
        seen_names[row["name"]] = pid
        names[pid] = row["name"]
    if names and sorted(names) != list(range(1, len(names) + 1)):
        missing = sorted(set(range(1, max(names) + 1)) - set(names))
        problems.append(Problem(path, f"part ids must be 1..P without gaps; missing {missing}"))
        ok = False
    if not ok:
        return None, set(names)
    return ["background", *(names[i] for i in range(1, len(names) + 1))], set(names)


def _read_class_names(root: Path, problems: list[Problem]) -> list[str] | None:
    path = root / "class_names.txt"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    names = [line.strip() for line in lines if line.strip()]
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(Problem(path, f"duplicate class name {name!r}"))
    if not names:
        problems.append(Problem(path, "no class names"))
    return names


def _list_images(root: Path, problems: list[Problem]) -> dict[str, Path]:
    folder = root / "images"
    if not folder.is_dir():
        problems.append(Problem(folder, "missing images folder"))
        return {}
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(
                Problem(path, f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
            )
            continue
        if path.stem in images:
            problems.append(
                Problem(path, f"duplicate image name {path.stem!r} (also {images[path.stem].name})")
            )
            continue
        images[path.stem] = path
    return images


def _image_key(value: str) -> str:
    """classes.csv may name an image with or without its extension."""
    p = Path(value)
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else value


def _read_classes(
    root: Path, images: dict[str, Path], problems: list[Problem]
) -> dict[str, tuple[str, str | None]] | None:
    """image name -> (class, split) from classes.csv."""
    path = root / "classes.csv"
    if not path.is_file():
        problems.append(
            Problem(path, "missing (expected header 'image,class' or 'image,class,split')")
        )
        return None
    rows = _read_csv(path, CLASSES_HEADERS, problems)
    if rows is None:
        return None
    if not rows:
        problems.append(Problem(path, "no images: the header has no rows below it (expected "
                                      "one line 'image,class' per image)"))
        return None
    table: dict[str, tuple[str, str | None]] = {}
    for row in rows:
        line, name = row["_line"], _image_key(row["image"])
        if not name:
            problems.append(Problem(path, f"line {line}: empty image name"))
            continue
        if name in table:
            problems.append(Problem(path, f"line {line}: duplicate image {name!r}"))
            continue
        if not row["class"]:
            problems.append(Problem(path, f"line {line}: image {name!r} has an empty class"))
            continue
        split = row.get("split") or None
        if "split" in row and split not in SPLITS:
            problems.append(Problem(
                path,
                f"line {line}: image {name!r} has split {row['split']!r}, "
                f"expected one of {SPLITS}",
            ))
            continue
        if name not in images:
            problems.append(Problem(
                path, f"line {line}: image {name!r} is listed but images/{name}.* does not exist"
            ))
        table[name] = (row["class"], split)
    return table


# ----------------------------------------------------------------------------- validation


def validate_folder(root: PathLike) -> list[Problem]:
    """Checks a folder against the format and returns every problem found (empty = valid).

    Checks: the csv files (presence, header, ids, duplicates), that every image has a class
    and every listed image exists, that every image and mask decodes, that every image has a
    single-channel mask of the same size, that masks hold only 0, 255 and known part ids, and
    that no mask is left without an image. Each problem names the file concerned.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(root, "not a directory")]
    problems: list[Problem] = []
    _, part_ids = _read_parts(root, problems)
    class_names = _read_class_names(root, problems)
    images = _list_images(root, problems)
    classes = _read_classes(root, images, problems)
    if classes is not None and class_names is not None:
        known = set(class_names)
        for name, (cls, _) in classes.items():
            if cls not in known:
                problems.append(Problem(
                    root / "classes.csv",
                    f"image {name!r} has class {cls!r} not in class_names.txt",
                ))

    allowed = None if part_ids is None else part_ids | {BACKGROUND_INDEX, IGNORE_INDEX}
    masks_dir = root / "masks"
    if not masks_dir.is_dir():
        problems.append(Problem(masks_dir, "missing masks folder"))
    for name, image_path in images.items():
        if classes is not None and name not in classes:
            problems.append(Problem(image_path, "image has no class (not listed in classes.csv)"))
        try:
            size = open_image(image_path).size  # (W, H) after EXIF orientation
        except (ValueError, FileNotFoundError) as err:
            problems.append(Problem(image_path, f"unreadable image: {_reason(err)}"))
            size = None
        mask_path = masks_dir / f"{name}.png"
        if not mask_path.is_file():
            if masks_dir.is_dir():
                problems.append(Problem(mask_path, f"missing mask for image {image_path.name}"))
            continue
        try:
            mask = read_mask(mask_path)
        except (ValueError, FileNotFoundError) as err:
            problems.append(Problem(mask_path, f"unreadable mask: {_reason(err)}"))
            continue
        if size is not None and mask.shape != (size[1], size[0]):
            problems.append(Problem(
                mask_path,
                f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW) "
                f"but image {image_path.name} is {size[1]}x{size[0]}",
            ))
        if allowed is not None:
            unknown = sorted(set(np.unique(mask).tolist()) - allowed)
            if unknown:
                shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
                problems.append(Problem(mask_path, f"unknown part ids {shown} (not in parts.csv)"))
    if masks_dir.is_dir():
        for mask_path in sorted(masks_dir.iterdir()):
            if mask_path.name.startswith("."):
                continue
            if mask_path.suffix.lower() != ".png" or mask_path.is_dir():
                problems.append(Problem(mask_path, "not a .png mask"))
            elif mask_path.stem not in images:
                problems.append(Problem(mask_path, "mask has no image in images/"))
    return problems


def _invalid_folder(root: Path, problems: Sequence[Problem]) -> ValueError:
    """The error for a folder that has problems; it lists every one."""
    listing = "\n".join(f"  - {p}" for p in problems)
    return ValueError(
        f"{root}: not a valid partslib folder ({len(problems)} problems):\n{listing}"
    )


def _reason(err: Exception) -> str:
    """The message of a loader error without the leading file name (the Problem carries it)."""
    text = str(err)
    head, sep, tail = text.partition(": ")
    return tail if sep and Path(head).name else text
