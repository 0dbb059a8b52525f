"""Explain every image of a dataset: per-image, per-part contributions in Parquet shards.

:func:`explain_dataset` streams a map-style part dataset (any reader of :mod:`partslib.data`,
through :class:`~partslib.data.streaming.PartStream`) in batches through one method of the
registry and writes, under ``out_dir``:

* ``contributions/shard-<s>.parquet``: one row per (image, label) -- ``index``, ``name``,
  ``label`` (true class, -1 when unknown), ``target`` (the explained class, the predicted one),
  ``part_id``, ``part``, ``contribution``, ``share``, ``area``, ``score``, ``bias``. Shard ``s``
  holds batches ``s·k .. s·k+k-1`` (``k = shard_batches``), i.e. images
  ``s·k·batch .. (s+1)·k·batch-1``; it is written whole through a temporary file and a rename,
  so a shard on disk is complete;
* ``manifest.json``: what the run explains (data, models, rule, sizes); a rerun into the same
  folder resumes only when it matches, and skips every shard already written, so an
  interrupted run (even by ``SIGKILL``) ends with every row exactly once;
* ``summary.csv`` (mean contribution, share and area by explained class x part, and how many
  images), ``summary_heatmap.png``, ``examples.png`` and ``run.json``, written at the end.

Ranks: with ``world > 1`` rank ``r`` explains shards ``r, r + world, ...`` and writes them
itself; after a barrier rank 0 checks that every shard is there, exactly once per image, and
writes the summary. Shard numbers do not depend on the world size, so a run can resume with
another number of ranks. Memory stays flat: one shard of rows is held at a time and the summary
is accumulated shard by shard.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from partslib.explain.explanation import PartExplanation
from partslib.explain.registry import get_method

__all__ = ["SHARD_DIR", "ExplainRun", "explain_dataset", "manifest_mismatch", "read_rows",
           "shard_path", "summarise"]

SHARD_DIR = "contributions"
COLUMNS = ("index", "name", "label", "target", "part_id", "part", "contribution", "share",
           "area", "score", "bias")


@dataclass
class ExplainRun:
    """What :func:`explain_dataset` did on this rank."""

    out_dir: Path
    images: int  # in the dataset
    shards: int  # in the whole run
    written: list[int]  # shards this call wrote
    skipped: list[int]  # shards of this rank found done
    seconds: float
    summary: pd.DataFrame | None = None  # rank 0: the class x part table


def shard_path(out_dir: str | os.PathLike, shard: int) -> Path:
    return Path(out_dir) / SHARD_DIR / f"shard-{shard:06d}.parquet"


def manifest_mismatch(stored: dict, wanted: dict) -> list[str]:
    """The keys whose values differ between a stored manifest and this run's."""
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _check_manifest(out_dir: Path, manifest: dict, rank: int) -> None:
    """Rank 0 writes the manifest of a new run; every rank refuses a folder of another run."""
    path = out_dir / "manifest.json"
    if path.exists():
        stored = json.loads(path.read_text())
        diff = manifest_mismatch(stored, manifest)
        if diff:
            raise ValueError(f"{out_dir} holds a run of other settings (differing: "
                             f"{', '.join(diff)}); choose another output folder or delete it")
    elif rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda p: p.write_text(json.dumps(manifest, indent=1)))
    if rank == 0:  # what a killed run was writing (no rank writes before the barrier)
        for tmp in (out_dir / SHARD_DIR).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _rows(e: PartExplanation, index: torch.Tensor, names: Sequence[str], labels: torch.Tensor,
          part_names: Sequence[str]) -> pd.DataFrame:
    B, L = e.contributions.shape

    def per_image(t: torch.Tensor) -> np.ndarray:
        return np.repeat(t.detach().cpu().numpy(), L)

    def per_row(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().reshape(-1).numpy()

    return pd.DataFrame({
        "index": per_image(index.long()), "name": np.repeat(np.asarray(names, dtype=object), L),
        "label": per_image(labels.int()), "target": per_image(e.target.int()),
        "part_id": np.tile(np.arange(L, dtype=np.int16), B),
        "part": pd.Categorical(np.tile(np.asarray(part_names, dtype=object), B),
                               categories=list(part_names)),
        "contribution": per_row(e.contributions.float()), "share": per_row(e.shares.float()),
        "area": per_row(e.area.float()), "score": per_image(e.score.float()),
        "bias": per_image(e.bias.float())})


def _write_shard(path: Path, frames: list[pd.DataFrame]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    _write_atomic(path, lambda p: pq.write_table(table, p))


def _pending(out_dir: Path, n_shards: int, rank: int, world: int) -> tuple[list[int], list[int]]:
    mine = list(range(rank, n_shards, world))
    done = [s for s in mine if shard_path(out_dir, s).exists()]
    return [s for s in mine if s not in set(done)], done


def explain_dataset(classifier: Any, pdm: Any, dataset: Dataset, out_dir: str | os.PathLike, *,
                    method: str = "pdm-amortised", head: Any = None, batch_size: int = 64,
                    shard_batches: int = 16, workers: int = 0, rank: int = 0, world: int = 1,
                    part_names: Sequence[str] | None = None,
                    class_names: Sequence[str] | None = None, manifest: dict | None = None,
                    barrier: Callable[[], None] | None = None, progress: bool = True,
                    device: str | torch.device = "cpu", examples: int = 4) -> ExplainRun:
    """Explain every image of ``dataset`` with registry method ``method``, resumably.

    Args:
        dataset: items with ``image`` (float or uint8 ``[3, H, W]`` at the classifier's size),
            ``label`` and ``index`` (``name`` optional): a
            :class:`~partslib.data.streaming.PartStream`.
        out_dir: the run's folder (see the module's documentation); an existing one is resumed.
        batch_size, shard_batches: images per batch; batches per Parquet shard.
        workers: DataLoader processes decoding images.
        rank, world: this process's share (shards ``rank::world``); ``barrier`` waits for every
            rank (``torch.distributed.barrier`` when launched by torchrun) before rank 0
            summarises.
        manifest: what identifies the run besides the sizes and the method (data, models);
            an existing folder whose manifest differs is refused with the differing keys.
        examples: images of the example figure (0: none).

    Returns:
        :class:`ExplainRun`; on rank 0 its ``summary`` is the class x part table.
    """
    from partslib.data.streaming import make_loader

    if batch_size < 1 or shard_batches < 1:
        raise ValueError(f"batch_size and shard_batches must be >= 1, got {batch_size} and "
                         f"{shard_batches}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    n = len(dataset)  # pyright: ignore[reportArgumentType]
    if n == 0:
        raise ValueError("the dataset has no images to explain")
    per_shard = batch_size * shard_batches
    n_shards = math.ceil(n / per_shard)
    part_names = list(part_names or getattr(dataset, "part_names", None) or [])
    explainer = get_method(method).build(classifier, pdm=pdm, head=head,
                                         part_names=part_names or None)
    part_names = explainer.part_names
    spec = {**(manifest or {}), "method": method, "images": n, "batch_size": batch_size,
            "shard_batches": shard_batches, "part_names": part_names,
            "class_names": list(class_names or getattr(dataset, "class_names", []) or [])}
    _check_manifest(out, spec, rank)
    if barrier is not None:
        barrier()  # the manifest exists before any rank writes a shard
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    todo, done = _pending(out, n_shards, rank, world)
    indices = [i for s in todo for i in range(s * per_shard, min(n, (s + 1) * per_shard))]
    loader = make_loader(Subset(dataset, indices), batch_size, workers=workers)
    _explain_shards(explainer, loader, todo, per_shard, n, out, part_names, progress, rank,
                    device)
    run = ExplainRun(out, n, n_shards, todo, done, 0.0)
    if barrier is not None:
        barrier()
    if rank == 0:
        run.summary = summarise(out, n_shards, n, per_shard, spec["class_names"], part_names)
        if examples > 0:
            _example_figure(explainer, dataset, out, min(examples, n), spec["class_names"],
                            device)
    run.seconds = time.perf_counter() - t0
    if rank == 0:
        _write_atomic(out / "run.json", lambda p: p.write_text(json.dumps(
            {"images": n, "rows": n * len(part_names), "shards": n_shards,
             "seconds_last_call": run.seconds, "method": method}, indent=1)))
    return run


def _explain_shards(explainer: Any, loader: Any, todo: list[int], per_shard: int, n: int,
                    out: Path, part_names: list[str], progress: bool, rank: int,
                    device: str | torch.device) -> None:
    """Explain the pending shards' images in loader order, writing each shard when full."""
    from tqdm.auto import tqdm

    frames: list[pd.DataFrame] = []
    have, k = 0, 0
    bar = tqdm(loader, desc=f"explain (rank {rank})", disable=not progress, position=rank)
    for batch in bar:
        images = batch["image"].to(device)
        e = explainer(images)
        names = batch.get("name") or [str(int(i)) for i in batch["index"]]
        frames.append(_rows(e, batch["index"], names, torch.as_tensor(batch["label"]),
                            part_names))
        have += len(images)
        s = todo[k]
        if have == min(n, (s + 1) * per_shard) - s * per_shard:
            _write_shard(shard_path(out, s), frames)
            frames, have, k = [], 0, k + 1
    if frames or k != len(todo):
        raise RuntimeError(f"rank {rank}: the loader ended inside shard {todo[k]} "
                           f"({have} images of it); the dataset changed length during the run")


def read_rows(out_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every shard's rows as one table (for small runs and tests; a large run is better read
    shard by shard with pyarrow)."""
    import pyarrow.parquet as pq

    files = sorted((Path(out_dir) / SHARD_DIR).glob("shard-*.parquet"))
    frames = [pq.read_table(f, columns=list(columns) if columns else None).to_pandas()
              for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def summarise(out_dir: str | os.PathLike, n_shards: int, n: int, per_shard: int,
              class_names: Sequence[str], part_names: Sequence[str]) -> pd.DataFrame:
    """Check that every shard holds exactly its images, each with every label once, and
    write ``summary.csv`` and ``summary_heatmap.png``: mean contribution, share and area by
    explained class x part, read one shard at a time."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    missing = [s for s in range(n_shards) if not shard_path(out, s).exists()]
    if missing:
        raise RuntimeError(f"{out / SHARD_DIR}: shards {missing[:10]} missing after every rank "
                           f"finished ({len(missing)} of {n_shards}); rerun to complete them")
    L = len(part_names)
    keys = ["target", "part_id"]
    acc: pd.DataFrame | None = None
    for s in range(n_shards):
        t = pq.read_table(shard_path(out, s), columns=["index", "part_id", "target",
                                                       "contribution", "share", "area"])
        df = t.to_pandas()
        want = np.repeat(np.arange(s * per_shard, min(n, (s + 1) * per_shard)), L)
        parts = np.tile(np.arange(L), len(want) // L)
        if not (np.array_equal(df["index"].to_numpy(), want)
                and np.array_equal(df["part_id"].to_numpy(), parts)):
            raise RuntimeError(f"{shard_path(out, s)}: rows are not images "
                               f"{want[0]}..{want[-1]} with each of {L} labels once")
        g = df.groupby(keys)[["contribution", "share", "area"]].sum()
        g["images"] = df.groupby(keys).size()
        acc = g if acc is None else acc.add(g, fill_value=0)
    assert acc is not None
    table = acc[["contribution", "share", "area"]].div(acc["images"], axis=0)
    table.columns = ["mean_contribution", "mean_share", "mean_area"]
    table["images"] = acc["images"].astype(int)
    table = table.reset_index()
    cls = list(class_names)
    table.insert(0, "class", [cls[k] if 0 <= k < len(cls) else str(k) for k in table["target"]])
    table.insert(2, "part", [part_names[p] for p in table["part_id"]])
    _write_atomic(out / "summary.csv", lambda p: table.to_csv(p, index=False))
    _heatmap(table, out / "summary_heatmap.png", part_names)
    return table


def _heatmap(table: pd.DataFrame, path: Path, part_names: Sequence[str]) -> None:
    from partslib import viz

    wide = table.pivot(index="part", columns="class", values="mean_contribution")
    wide = wide.reindex([p for p in part_names if p in wide.index])
    fig = viz.plot_part_class_heatmap(wide, title="mean part contribution by explained class")
    viz.save_figure(fig, path)


def _example_figure(explainer: Any, dataset: Dataset, out: Path, k: int,
                    class_names: Sequence[str], device: str | torch.device) -> None:
    """The first ``k`` images, their parts and contributions (``examples.png``)."""
    from partslib import viz

    items = [dataset[i] for i in range(k)]
    images = torch.stack([it["image"] for it in items])
    e = explainer(images.to(device)).detach_cpu()
    images = images.float() / 255 if images.dtype == torch.uint8 else images
    labels = [int(it["label"]) for it in items]
    fig = viz.plot_gallery(e, images, list(range(k)), class_names=list(class_names) or None,
                           true_labels=labels if min(labels) >= 0 else None)
    viz.save_figure(fig, out / "examples.png")
