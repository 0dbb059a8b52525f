"""``python -m partslib.explain_dataset``: explain every image of a folder-format dataset.

::

    python -m partslib.explain_dataset --results results/default --data data/myparts \\
        --rule pdm-amortised --out runs/myparts
    python -m partslib.explain_dataset --classifier c.pt --pdm p.pt --head h.pt --data ... --out ...
    torchrun --nproc_per_node 2 -m partslib.explain_dataset --results ... --data ... --out ...

Models come from checkpoints (``--results DIR``: ``DIR/checkpoints/{classifier,pdm,head}.pt``;
or each file named). The data is a folder in the partslib format, or with ``--format`` COCO
parts (PartImageNet, Car Parts), PASCAL-Part or Broden on disk
(:func:`partslib.data.streaming.open_parts`); it is read lazily and resized to the
classifier's input size;
rows go to Parquet shards under ``--out`` with a summary table and figures
(:mod:`partslib.explain.dataset`). Rerunning the same command resumes an interrupted run.
Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every rank joins a gloo
process group, explains its share of the shards and writes them; rank 0 writes the summary.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["main", "model_identity"]


def _parser() -> argparse.ArgumentParser:
    from partslib.data.streaming import FORMATS
    from partslib.explain.registry import METHODS

    p = argparse.ArgumentParser(prog="python -m partslib.explain_dataset",
                                description="Explain every image of a part dataset folder "
                                            "into Parquet shards, a summary and figures.")
    p.add_argument("--data", required=True,
                   help="folder in the partslib format (or see --format)")
    p.add_argument("--format", default="folder", choices=FORMATS,
                   help="folder (default); coco: --data images folder, --annotations json; "
                        "pascal-part: --data JPEGImages, --annotations Annotations_Part; "
                        "broden: --data the Broden root")
    p.add_argument("--annotations", default=None, help="COCO json or PASCAL-Part folder")
    p.add_argument("--out", required=True, help="output folder (an existing run is resumed)")
    p.add_argument("--results", default=None,
                   help="a run folder: its checkpoints/classifier.pt, pdm.pt and head.pt")
    p.add_argument("--classifier", default=None, help="classifier checkpoint")
    p.add_argument("--pdm", default=None, help="PDM checkpoint")
    p.add_argument("--head", default=None, help="contribution head checkpoint (amortised rule)")
    p.add_argument("--rule", default="pdm-amortised", choices=METHODS,
                   help="registry method (default: pdm-amortised, which needs the head)")
    p.add_argument("--split", default=None,
                   help="only this split: train or test (folder), train or val (broden)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-batches", type=int, default=16, help="batches per Parquet shard")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (under torchrun: cuda:LOCAL_RANK) or cuda:N")
    p.add_argument("--examples", type=int, default=4, help="images in examples.png")
    p.add_argument("--no-validate", action="store_true",
                   help="skip checking every file of the folder before starting")
    p.add_argument("--no-progress", action="store_true")
    return p


def model_identity(path: Path) -> dict[str, Any]:
    """What the manifest records of a checkpoint: its resolved path, size and change time."""
    st = path.stat()
    return {"file": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _checkpoints(args: argparse.Namespace) -> dict[str, Path | None]:
    base = Path(args.results) / "checkpoints" if args.results else None
    out: dict[str, Path | None] = {}
    for name in ("classifier", "pdm", "head"):
        given = getattr(args, name)
        path = Path(given) if given else (base / f"{name}.pt" if base else None)
        if path is not None and not path.is_file() and (given or name != "head"):
            raise FileNotFoundError(f"--{name}: no checkpoint at {path}")
        out[name] = path if path is not None and path.is_file() else None
    for name in ("classifier", "pdm"):
        if out[name] is None:
            raise ValueError(f"no {name} checkpoint: pass --results DIR or --{name} FILE")
    return out


def _load_models(paths: dict[str, Path | None], device: str) -> tuple[Any, Any, Any]:
    from partslib.explain.amortised_training import load_head
    from partslib.pdm import load_pdm
    from partslib.pipeline import load_classifier

    clf_path, pdm_path, head_path = paths["classifier"], paths["pdm"], paths["head"]
    assert clf_path is not None and pdm_path is not None
    classifier = load_classifier(clf_path.parent, device, checkpoint=clf_path.name)
    pdm = load_pdm(pdm_path).to(device)
    head = load_head(str(head_path.parent), head_path.name).to(device) if head_path else None
    return classifier, pdm, head


def _class_names(names: Sequence[str], num_classes: int) -> list[str]:
    """The dataset's class names when they can name the classifier's outputs, else
    ``class 0 ..`` (with a warning): the explained class is the classifier's."""
    if len(names) == num_classes:
        return list(names)
    if names:
        import warnings

        warnings.warn(f"the dataset has {len(names)} classes, the classifier {num_classes} "
                      f"outputs: the summary names the explained classes 'class 0'.."
                      f"'class {num_classes - 1}'", stacklevel=2)
    return [f"class {k}" for k in range(num_classes)]


def _distributed() -> tuple[int, int, Any]:
    """(rank, world, barrier) from torchrun's environment; one process without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size(), dist.barrier


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from partslib.data.streaming import PartStream, open_parts
    from partslib.explain.dataset import explain_dataset

    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    paths = _checkpoints(args)
    rank, world, barrier = _distributed()
    device = args.device
    if device == "cuda" and world > 1:  # one GPU per rank of the node
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    classifier, pdm, head = _load_models(paths, device)
    size = tuple(classifier.input_size)
    source = open_parts(args.format, args.data, args.annotations, args.split,
                        validate=not args.no_validate)
    data = PartStream(source, size=size, dtype="uint8")
    class_names = _class_names(getattr(source, "class_names", []), classifier.num_classes)
    manifest = {"data": str(Path(args.data).resolve()), "format": args.format,
                "annotations": str(Path(args.annotations).resolve()) if args.annotations
                else None, "split": args.split,
                "size": list(size), **{k: model_identity(p) if p else None
                                       for k, p in paths.items()}}
    try:
        run = explain_dataset(classifier, pdm, data, args.out, method=args.rule, head=head,
                              batch_size=args.batch_size, shard_batches=args.shard_batches,
                              workers=args.workers, rank=rank, world=world,
                              manifest=manifest, barrier=barrier, class_names=class_names,
                              progress=not args.no_progress, device=device,
                              examples=args.examples)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        print(f"explained {run.images} images in {run.shards} shards "
              f"({len(run.skipped)} found done, {len(run.written)} written by rank 0) -> "
              f"{Path(args.out) / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
