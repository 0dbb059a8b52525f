"""The partslib folder format for real part-annotated photos (see ``docs/data_format.md``).

::

    root/
      images/<name>.jpg|.jpeg|.png   photographs (any mode; EXIF orientation applied on load)
      masks/<name>.png               single-channel 8- or 16-bit PNG, same size as the image:
                                     0 = background, 1..P = parts, 255 = ignore
      parts.csv                      header ``id,name``; ids are exactly 1..P (P <= 254)
      classes.csv                    header ``image,class`` or ``image,class,split``
                                     (image = <name> or <name>.<ext>; split = train | test)
      class_names.txt                optional: one class per line, fixes the label order

``validate_folder`` lists every problem; ``FolderDataset`` loads a valid folder and
``write_folder`` converts any iterable of samples into the format.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import PathLike, Size, load_image, open_image, read_mask, resize_image, resize_mask

#: Mask value for pixels that carry no supervision (borders, crowds, unknown).
IGNORE_INDEX = 255
#: Mask value for pixels outside every part.
BACKGROUND_INDEX = 0
#: Largest number of parts: ids are 1..P and 255 is reserved for ``IGNORE_INDEX``.
MAX_PARTS = 254
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
PARTS_HEADER = ["id", "name"]
CLASSES_HEADERS = (["image", "class"], ["image", "class", "split"])

__all__ = [
    "IGNORE_INDEX",
    "MAX_PARTS",
    "ConversionResult",
    "FolderDataset",
    "FolderSample",
    "Problem",
    "validate_folder",
    "write_folder",
]


@dataclass(frozen=True)
class Problem:
    """One problem found in a folder: the file concerned and what is wrong with it."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class FolderSample(NamedTuple):
    """One sample for ``write_folder``; any 4- or 5-tuple in this order is accepted.

    ``image`` is a uint8 array [H, W, 3] (or [H, W]), a PIL image, or the path of an existing
    .jpg/.jpeg/.png file that is copied byte for byte. ``mask`` is an integer array [H, W]
    (0 background, 1..P parts, 255 ignore) of the image's (oriented) size.
    """

    name: str
    image: np.ndarray | Image.Image | PathLike
    mask: np.ndarray
    class_name: str
    split: str | None = None


@dataclass
class ConversionResult:
    """What a converter wrote: the folder, how many images, and which were skipped and why."""

    root: Path
    written: int
    skipped: dict[str, str] = field(default_factory=dict)


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


# ----------------------------------------------------------------------------- dataset


class FolderDataset(Dataset):
    """A folder in the partslib format as a torch ``Dataset``.

    Items are dicts: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W]
    (0 background, 1..P parts, 255 ignore); ``label`` int (index into ``class_names``);
    ``index`` int; ``name`` str. Images are resized bilinearly with antialiasing and masks
    with nearest neighbour when ``size`` is given.

    Attributes:
        part_names: list, index 0 = "background", index i = part id i.
        class_names: from class_names.txt, else the sorted classes of classes.csv (all splits,
            so labels agree between the train and test datasets of one folder).
        names: sample names (sorted); labels: their class indices.

    Raises:
        ValueError: the folder is invalid (the message lists every problem), or ``split`` is
            asked for but classes.csv has no split column.
    """

    def __init__(
        self,
        root: PathLike,
        size: Size | None = None,
        split: str | None = None,
        validate: bool = True,
    ):
        self.root = Path(root)
        self.size = size
        problems = validate_folder(self.root) if validate else []
        if problems:
            raise _invalid_folder(self.root, problems)
        part_names, _ = _read_parts(self.root, problems)
        images = _list_images(self.root, problems)
        classes = _read_classes(self.root, images, problems)
        class_names = _read_class_names(self.root, problems)
        # part_names and classes are None only when a problem was found
        if problems or part_names is None or classes is None:
            raise _invalid_folder(self.root, problems)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
            if any(s is None for _, s in classes.values()):
                raise ValueError(
                    f"{self.root / 'classes.csv'}: split={split!r} asked for "
                    "but not every row has a split"
                )
        self.part_names: list[str] = part_names
        self.class_names: list[str] = (
            class_names if class_names is not None else sorted({c for c, _ in classes.values()})
        )
        index = {c: i for i, c in enumerate(self.class_names)}
        self.names: list[str] = sorted(
            n for n, (_, s) in classes.items() if n in images and (split is None or s == split)
        )
        self.labels: list[int] = [index[classes[n][0]] for n in self.names]
        self._images = images

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        name = self.names[index]
        image = load_image(self._images[name])
        mask_path = self.root / "masks" / f"{name}.png"
        mask = torch.from_numpy(read_mask(mask_path))
        if mask.shape != image.shape[1:]:
            raise ValueError(
                f"{mask_path}: mask is {tuple(mask.shape)} "
                f"but the image is {tuple(image.shape[1:])}"
            )
        if self.size is not None:
            image = resize_image(image, self.size)
            mask = resize_mask(mask, self.size)
        return {
            "image": image, "mask": mask, "label": self.labels[index], "index": index, "name": name,
        }


# ----------------------------------------------------------------------------- writing


def _check_name(name: str) -> None:
    if not name or name != Path(name).name or name.startswith(".") or "," in name:
        raise ValueError(
            f"sample name {name!r} must be a plain file name without '/', ',' or a leading '.'"
        )


def _prepare_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(
                f"{root}: folder is not empty; pass overwrite=True to replace its partslib content"
            )
        for sub in ("images", "masks"):
            if (root / sub).is_dir():
                shutil.rmtree(root / sub)
        for f in ("parts.csv", "classes.csv", "class_names.txt"):
            (root / f).unlink(missing_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)


def _write_image(image, dst_stem: Path) -> tuple[Path, tuple[int, int]]:
    """Writes (or copies) an image; returns its path and its oriented (H, W)."""
    if isinstance(image, (str, Path)) or hasattr(image, "__fspath__"):
        src = Path(image)
        if src.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{src}: image files must be {', '.join(IMAGE_EXTENSIONS)}")
        w, h = open_image(src).size
        dst = dst_stem.with_suffix(src.suffix.lower())
        shutil.copyfile(src, dst)
        return dst, (h, w)
    if isinstance(image, np.ndarray):
        channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
        if image.dtype != np.uint8 or not channels_ok:
            raise ValueError(
                f"{dst_stem.name}: image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], "
                f"got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"{dst_stem.name}: image must be a uint8 array, a PIL image or a file path, "
            f"got {type(image).__name__}"
        )
    dst = dst_stem.with_suffix(".png")
    image.save(dst)
    return dst, (image.height, image.width)


def write_folder(
    root: PathLike,
    samples: Iterable[Sequence],
    part_names: Sequence[str],
    class_names: Sequence[str],
    overwrite: bool = False,
) -> Path:
    """Writes samples into the partslib folder format.

    Args:
        root: destination folder; created if needed.
        samples: iterable of ``(name, image, mask, class_name)`` or
            ``(name, image, mask, class_name, split)`` (see ``FolderSample``). Array and PIL
            images are written as lossless PNG; image paths are copied unchanged.
        part_names: names of parts 1..P, in id order (without "background").
        class_names: every class, in label order (written to class_names.txt).
        overwrite: replace images/, masks/ and the csv files of a non-empty ``root``; other
            files in it are left alone. Without it a non-empty ``root`` is refused.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: non-empty ``root`` without ``overwrite``; a bad name, class, split, mask
            shape or mask value (the message names the sample).
    """
    root = Path(root)
    part_names = list(part_names)
    class_names = list(class_names)
    if part_names and part_names[0] == "background":
        raise ValueError("part_names lists parts 1..P; do not include 'background'")
    if len(part_names) > MAX_PARTS:
        raise ValueError(
            f"{len(part_names)} parts; the folder format holds at most {MAX_PARTS} (255 = ignore)"
        )
    for label, names in (("part", part_names), ("class", class_names)):
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup or any(not n or "\n" in n for n in names):
            raise ValueError(f"{label} names must be unique and non-empty; duplicates: {dup}")
    known_classes = set(class_names)
    allowed = np.array(sorted(set(range(len(part_names) + 1)) | {IGNORE_INDEX}))
    _prepare_root(root, overwrite)

    rows: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    for sample in samples:
        s = FolderSample(*sample)
        _check_name(s.name)
        if s.name in seen:
            raise ValueError(f"duplicate sample name {s.name!r}")
        seen.add(s.name)
        if s.class_name not in known_classes:
            raise ValueError(f"sample {s.name!r}: class {s.class_name!r} is not in class_names")
        if s.split is not None and s.split not in SPLITS:
            raise ValueError(f"sample {s.name!r}: split {s.split!r} is not one of {SPLITS}")
        mask = np.asarray(s.mask)
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(
                f"sample {s.name!r}: mask must be an integer array [H, W], "
                f"got {mask.dtype} {mask.shape}"
            )
        bad = np.setdiff1d(np.unique(mask), allowed)
        if bad.size:
            raise ValueError(
                f"sample {s.name!r}: mask values {bad[:10].tolist()} "
                f"are not 0, 255 or part ids 1..{len(part_names)}"
            )
        image_path, hw = _write_image(s.image, root / "images" / s.name)
        if mask.shape != hw:
            image_path.unlink()
            raise ValueError(
                f"sample {s.name!r}: mask is {mask.shape} but the image is {hw} (H, W)"
            )
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{s.name}.png")
        rows.append((s.name, s.class_name, s.split))

    _write_tables(root, rows, part_names, class_names)
    return root


def _write_tables(root: Path, rows: Sequence[tuple[str, str, str | None]],
                  part_names: Sequence[str], class_names: Sequence[str]) -> None:
    """parts.csv, classes.csv (with a split column when the samples have splits) and
    class_names.txt."""
    splits = {r[2] for r in rows}
    if None in splits and len(splits) > 1:
        raise ValueError("either every sample has a split or none has")
    with open(root / "parts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PARTS_HEADER)
        writer.writerows((i, n) for i, n in enumerate(part_names, start=1))
    with open(root / "classes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        has_split = bool(rows) and rows[0][2] is not None
        writer.writerow(CLASSES_HEADERS[1] if has_split else CLASSES_HEADERS[0])
        writer.writerows(r if has_split else r[:2] for r in rows)
    (root / "class_names.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
