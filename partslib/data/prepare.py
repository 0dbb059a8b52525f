"""Data preparation: convert the public real-photo sets into the partslib folder format.

    python -m partslib.data.prepare carparts SRC DST [--overwrite]
    python -m partslib.data.prepare ccp SRC DST [--overwrite] [--test-every 5]

* ``carparts``: Car Parts (``dsmlr/Car-Parts-Segmentation``; ``SRC`` holds ``trainingset/``
  and ``testset/``) -> 18 parts, viewpoint classes ``back, front, side``
  (:func:`partslib.data.coco_parts.carparts_viewpoint`), the upstream train/test split.
* ``ccp``: Clothing Co-Parsing (``bearpaw/clothing-co-parsing``; ``SRC`` holds ``photos/``,
  ``annotations/pixel-level/`` and ``label_list.mat``) -> the 7 part groups of
  :data:`~partslib.data.clothing_parsing.CCP_PART_GROUPS` (hair, skin, clothing groups,
  shoes, accessories), outfit classes of :func:`ccp_outfit` (dress / shorts / skirt /
  trousers), and a deterministic split: every ``test_every``-th photo (sorted names) is test.

A conversion writes into a hidden sibling of ``DST`` (:func:`partslib.io.atomic_dir`) and
puts it in the place of ``DST`` only when complete and valid, so an interrupted or failing run
never leaves a half-written dataset behind and an earlier ``DST`` is kept until then.
:func:`ensure_dataset` converts only when ``DST`` does not exist yet (what the study's
notebooks call); the source folder defaults to ``$PARTSLIB_CARPARTS_SRC`` /
``$PARTSLIB_CCP_SRC``. See ``docs/real_data.md`` for the download step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from partslib.data.clothing_parsing import (
    CCP_PART_GROUPS,
    ClothingCoParsingDataset,
    ccp_lower_garment,
)
from partslib.data.coco_parts import carparts_to_folder
from partslib.data.folder import ConversionResult, write_folder
from partslib.data.images import PathLike
from partslib.io import atomic_dir

__all__ = [
    "CCP_OUTFITS",
    "DATASETS",
    "SOURCE_ENV",
    "ccp_outfit",
    "default_source",
    "ensure_dataset",
    "main",
    "prepare",
    "prepare_carparts",
    "prepare_ccp",
]

DATASETS = ("carparts", "ccp")
#: Environment variable naming each dataset's downloaded source folder.
SOURCE_ENV = {"carparts": "PARTSLIB_CARPARTS_SRC", "ccp": "PARTSLIB_CCP_SRC"}
#: Where the sources are in this workplace when the variables are unset (relative to the
#: repository root): a read-only copy next to the checkout.
_DEFAULT_SOURCE = {"carparts": "../shared/realdata/car-parts",
                   "ccp": "../shared/realdata/clothing-co-parsing"}
#: Upstream repositories (the download step of docs/real_data.md).
UPSTREAM = {"carparts": "https://github.com/dsmlr/Car-Parts-Segmentation",
            "ccp": "https://github.com/bearpaw/clothing-co-parsing"}
MANIFEST = "prepared.json"

#: Coarse outfit classes of CCP by the largest lower-body garment (``ccp_lower_garment``).
#: Rompers go with dresses (one piece); suits with trousers (the suit label covers jacket and
#: trousers).
CCP_OUTFITS: dict[str, tuple[str, ...]] = {
    "dress": ("dress", "romper"),
    "shorts": ("shorts",),
    "skirt": ("skirt",),
    "trousers": ("pants", "jeans", "leggings", "suit"),
}


def ccp_outfit(pixels_by_label: Mapping[str, int]) -> str | None:
    """Outfit class of a CCP photo: the :data:`CCP_OUTFITS` group of its largest lower-body
    garment; None when it shows none of them (such photos are skipped)."""
    garment = ccp_lower_garment(pixels_by_label)
    if garment is None:
        return None
    for outfit, members in CCP_OUTFITS.items():
        if garment in members:
            return outfit
    return None  # pragma: no cover - every CCP_LOWER_GARMENTS entry is in a group


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def _check_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ValueError(f"{dst}: exists and is not empty; pass overwrite=True (--overwrite) "
                         f"to convert again")


def _need_dir(src: Path, *children: str) -> None:
    missing = [c for c in children if not (src / c).exists()]
    if not src.is_dir() or missing:
        raise FileNotFoundError(
            f"{src}: not a downloaded dataset folder (missing {missing or [str(src)]}); "
            f"see docs/real_data.md for the download step")


def prepare_carparts(src: PathLike, dst: PathLike, overwrite: bool = False) -> ConversionResult:
    """Car Parts -> folder format at ``dst`` (viewpoint classes, upstream train/test split)."""
    src, dst = Path(src), Path(dst)
    _need_dir(src, "trainingset/annotations.json", "testset/annotations.json")
    _check_dst(dst, overwrite)
    t0 = time.perf_counter()
    with atomic_dir(dst) as partial:
        result = carparts_to_folder(src, partial)
        _write_manifest(partial, {"dataset": "carparts", "source": str(src.resolve()),
                                  "upstream": UPSTREAM["carparts"],
                                  "written": result.written, "skipped": result.skipped,
                                  "classes": "carparts_viewpoint",
                                  "seconds": round(time.perf_counter() - t0, 1)})
    return ConversionResult(dst, result.written, result.skipped)


def prepare_ccp(src: PathLike, dst: PathLike, overwrite: bool = False, test_every: int = 5,
                groups: Mapping[str, Sequence[str]] = CCP_PART_GROUPS,
                names: Sequence[str] | None = None) -> ConversionResult:
    """Clothing Co-Parsing -> folder format at ``dst``.

    Parts: ``groups`` (default the 7 groups of ``CCP_PART_GROUPS``). Classes: :func:`ccp_outfit`;
    photos without a lower-body garment are skipped. Split: the ``test_every``-th photo of
    each run of sorted names is ``test`` (a deterministic 1/``test_every`` hold-out).
    """
    src, dst = Path(src), Path(dst)
    _need_dir(src, "photos", "annotations/pixel-level", "label_list.mat")
    if test_every < 2:
        raise ValueError(f"test_every must be >= 2, got {test_every}")
    _check_dst(dst, overwrite)
    t0 = time.perf_counter()
    ds = ClothingCoParsingDataset(src, groups=groups, class_of=ccp_outfit, names=names)
    skipped: dict[str, str] = {}

    def samples():
        for i in range(len(ds)):
            if ds.labels[i] < 0:
                skipped[ds.names[i]] = "no lower-body garment (no outfit class)"
                continue
            split = "test" if i % test_every == test_every - 1 else "train"
            yield (ds.names[i], ds.image_path(i), ds.part_mask(i),
                   ds.class_names[ds.labels[i]], split)

    with atomic_dir(dst) as partial:
        write_folder(partial, samples(), ds.part_names[1:], ds.class_names)
        written = len(ds) - len(skipped)
        _write_manifest(partial, {"dataset": "ccp", "source": str(src.resolve()),
                                  "upstream": UPSTREAM["ccp"], "written": written,
                                  "skipped": skipped, "classes": "ccp_outfit",
                                  "test_every": test_every,
                                  "seconds": round(time.perf_counter() - t0, 1)})
    return ConversionResult(dst, written, skipped)


def prepare(dataset: str, src: PathLike, dst: PathLike, overwrite: bool = False, **kwargs
            ) -> ConversionResult:
    """Convert ``dataset`` (``"carparts"`` or ``"ccp"``) from ``src`` into ``dst``."""
    if dataset == "carparts":
        return prepare_carparts(src, dst, overwrite=overwrite, **kwargs)
    if dataset == "ccp":
        return prepare_ccp(src, dst, overwrite=overwrite, **kwargs)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_source(dataset: str) -> Path:
    """The source folder of ``dataset``: ``$PARTSLIB_CARPARTS_SRC`` / ``$PARTSLIB_CCP_SRC``,
    else this workplace's copy (``../shared/realdata/...`` from the repository root)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
    env = os.environ.get(SOURCE_ENV[dataset])
    if env:
        return Path(env).expanduser()
    return (_repo_root() / _DEFAULT_SOURCE[dataset]).resolve()


def ensure_dataset(dataset: str, dst: PathLike, src: PathLike | None = None, log=print,
                   **kwargs) -> Path:
    """``dst`` as a prepared folder: converted from ``src`` (default :func:`default_source`)
    when it does not exist yet, left alone when it does (delete it to convert again)."""
    dst = Path(dst)
    if dst.is_dir() and (dst / "classes.csv").is_file():
        return dst
    src = Path(src) if src else default_source(dataset)
    if not src.exists():
        raise FileNotFoundError(
            f"{dst} does not exist and the {dataset} source {src} is missing: download it "
            f"(git clone {UPSTREAM[dataset]}) and set {SOURCE_ENV[dataset]} to the clone; "
            f"see docs/real_data.md")
    t0 = time.perf_counter()
    result = prepare(dataset, src, dst, **kwargs)
    log(f"converted {dataset} from {src} into {dst}: {result.written} images "
        f"({len(result.skipped)} skipped) in {time.perf_counter() - t0:.1f} s")
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partslib.data.prepare",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("src", type=Path, help="the downloaded dataset (a git clone)")
    ap.add_argument("dst", type=Path, help="output folder (partslib folder format)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    ap.add_argument("--test-every", type=int, default=5,
                    help="ccp only: every N-th photo is in the test split (default 5)")
    args = ap.parse_args(argv)
    kwargs = {"test_every": args.test_every} if args.dataset == "ccp" else {}
    try:
        t0 = time.perf_counter()
        result = prepare(args.dataset, args.src, args.dst, overwrite=args.overwrite, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dataset}: wrote {result.written} images to {result.root} "
          f"({len(result.skipped)} skipped) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
