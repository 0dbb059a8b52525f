"""Train the classifier, the PDM or the amortised rule's head from the command line, in one
process or under ``torchrun`` (DistributedDataParallel on every rank)::

    python -m partslib.train classifier --data synthparts --out runs/a --epochs 14
    torchrun --nproc_per_node 2 -m partslib.train classifier --data synthparts --out runs/a
    python -m partslib.train pdm --data synthparts --out runs/a       # reads runs/a's classifier
    python -m partslib.train head --data synthparts --out runs/a      # classifier + PDM

``--data`` is ``synthparts`` (generated: ``--n-train``, ``--n-val``, ``--image-size``,
``--data-cache``) or a folder-format dataset (``docs/data_format.md``; its ``train`` split
when ``classes.csv`` has a split column, else every image, less ``--val-fraction`` of each
class held out for validation). Any map-style
dataset whose items are dicts with ``image`` (float ``[3,H,W]`` in [0, 1]), ``mask`` and
``label`` trains the same way (:func:`train_on`).

``--batch-size`` is the **global** batch: each of the ``world`` processes takes
``batch / (world × accum)`` samples per micro-batch and accumulates ``--accum`` of them per
optimiser step, so the optimisation does not depend on how many processes run it. Rank 0 alone
writes ``OUT/checkpoints/<kind>.pt`` (what :func:`partslib.pipeline.load_classifier`,
``load_pdm`` and ``load_head`` read) and ``OUT/train/<kind>.json`` (metrics, per-epoch history,
the loss of every optimiser step, the layout of the run); the others wait at a barrier. A run
started again with the same arguments resumes from the last checkpoint (``--checkpoint-every``
steps within an epoch, and after every epoch). BatchNorm keeps per-rank batch statistics (no
SyncBatchNorm): a micro-batch is normalised with its own statistics in one process and in
many, and DDP broadcasts rank 0's running statistics at every forward.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from partslib.constants import INFERENCE_BATCH
from partslib.distributed import (
    DistEnv,
    StepLoader,
    barrier,
    close_distributed,
    init_distributed,
    record,
)
from partslib.io import write_json
from partslib.training import FitResult, fit

__all__ = ["main", "train_on"]

KINDS = ("classifier", "pdm", "head")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partslib.train", description=(__doc__ or "")
                                .split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, help="what to train")
    p.add_argument("--data", required=True,
                   help="'synthparts' or the root of a folder-format dataset")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints/, train/)")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: the study's (classifier 14, PDM 20, head 100)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch per optimiser step (default: the study's)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also checkpoint every k optimiser steps (0: after each epoch only)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint "
                   "exists")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16 autocast (CPU or CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a collective waits for a missing rank before it fails")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: keep)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=5000, help="synthparts: training images")
    p.add_argument("--n-val", type=int, default=1000, help="synthparts: validation images")
    p.add_argument("--data-cache", default=None, help="synthparts: cache folder")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="folder data: share of each class's training images held out for "
                   "validation")
    p.add_argument("--widths", default="24,48,96", help="classifier: SmallResNet stage widths")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- data ------------------------------------------------------------------------------------

def load_data(args: argparse.Namespace, env: DistEnv) -> dict[str, Any]:
    """The training and validation datasets of ``--data``, their names and identity."""
    if args.data == "synthparts":
        from partslib.config import DataConfig
        from partslib.data.synthparts import SynthParts, SynthPartsConfig

        d = DataConfig()
        gen = SynthPartsConfig.from_classes("default", size=args.image_size)
        splits = {}
        for name, seed, n in (("train", d.train_seed, args.n_train), ("val", d.val_seed,
                                                                          args.n_val)):
            if args.data_cache and not env.is_main:
                barrier(env)  # rank 0 writes the cache first
            splits[name] = SynthParts(gen, seed=seed, n=n, cache_dir=args.data_cache,
                                      progress=False)
            if args.data_cache and env.is_main:
                barrier(env)
        train, val = splits["train"], splits["val"]
        info = {"generator": gen.fingerprint(), "n_train": args.n_train, "n_val": args.n_val}
        return {"train": train, "val": val, "part_names": gen.part_names,
                "class_names": gen.names, "size": (args.image_size, args.image_size),
                "info": info}
    from partslib.data.folder import FolderDataset

    root = Path(args.data)
    if not root.is_dir():
        raise ValueError(f"--data must be 'synthparts' or a folder-format dataset, got "
                         f"{args.data!r} (no such folder)")
    size = (args.image_size, args.image_size)
    try:
        full = FolderDataset(root, size, split="train")
    except ValueError as e:
        if "asked for but not every row has a split" not in str(e):
            raise
        full = FolderDataset(root, size)
    train, val = _carve(full, args.val_fraction, args.seed)
    return {"train": train, "val": val, "part_names": full.part_names,
            "class_names": full.class_names, "size": size,
            "info": {"folder": str(root.resolve()), "n_train": len(train),  # type: ignore[arg-type]
                     "val_fraction": args.val_fraction}}


def _carve(data: Any, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """``data`` split into training and validation subsets: ``round(fraction × n_k)`` items of
    each class ``k`` (never all of a class) chosen by a permutation seeded with ``seed``, the
    rule of :func:`partslib.data.realphotos.carve_validation`."""
    import numpy as np
    from torch.utils.data import Subset

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return data, None
    g = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    val_idx: list[int] = []
    for k in range(len(data.class_names)):
        idx = np.flatnonzero(labels == k)
        n_val = min(round(fraction * len(idx)), max(len(idx) - 1, 0))
        val_idx += idx[g.permutation(len(idx))][:n_val].tolist()
    keep = sorted(set(range(len(labels))) - set(val_idx))
    return Subset(data, keep), (Subset(data, sorted(val_idx)) if val_idx else None)


def _pairs(target: str):
    """Collate dict items into ``(images [B,3,H,W], targets)`` (labels or masks)."""
    def collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([torch.as_tensor(it["image"]) for it in items])
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if target == "label":
            return images, torch.tensor([int(it["label"]) for it in items])
        return images, torch.stack([torch.as_tensor(it["mask"]).long() for it in items])
    return collate


def _batches(dataset: Dataset, target: str, batch: int = INFERENCE_BATCH,
             workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                      collate_fn=_pairs(target))


# -- the three kinds -------------------------------------------------------------------------

def _classifier(args: argparse.Namespace, env: DistEnv, data: dict) -> dict[str, Any]:
    from partslib.config import ClassifierConfig
    from partslib.models import create_classifier

    c = ClassifierConfig()
    widths = tuple(int(w) for w in args.widths.split(","))
    torch.manual_seed(args.seed)
    model = create_classifier("small_resnet", len(data["class_names"]), data["size"],
                              widths=widths)
    batch = args.batch_size or c.batch_size
    val = data["val"]

    def evaluate(m: nn.Module) -> dict:
        return _accuracy(m, val, env) if val is not None else {}

    config = {"classifier": model.config(), "image_size": list(data["size"]), "weights": None,
              "data": data["info"], "batch_size": batch, "augment": False,
              "class_weighted": False}
    result = train_on(model, data["train"], "label", args, env, kind="classifier",
                      epochs=args.epochs or c.epochs, batch=batch, lr=args.lr or c.lr,
                      weight_decay=c.weight_decay, loss_fn=F.cross_entropy,
                      evaluate=evaluate, config=config)
    metrics = evaluate(model.eval()) if val is not None else {}
    return {"result": result, "metrics": metrics, "batch": batch}


@torch.no_grad()
def _accuracy(model: nn.Module, dataset: Dataset, env: DistEnv) -> dict[str, float]:
    correct, loss, n = 0, 0.0, 0
    for x, y in _batches(dataset, "label"):
        logits = model(x.to(env.device)).float().cpu()
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    return {"val_accuracy": correct / max(n, 1), "val_loss": loss / max(n, 1)}


def _pdm(args: argparse.Namespace, env: DistEnv, data: dict) -> dict[str, Any]:
    from partslib.config import PDMConfig
    from partslib.pdm import IGNORE_INDEX, PartsDetectionModule
    from partslib.pipeline import load_classifier

    c = PDMConfig()
    classifier = load_classifier(args.out, device=env.device)
    torch.manual_seed(args.seed)
    pdm = PartsDetectionModule.from_config(classifier, len(data["part_names"]), c)
    val = data["val"]

    def forward(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = classifier.features(images)
        return net(feats, images) if pdm.uses_image else net(feats)

    def loss_fn(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)

    def evaluate(m: nn.Module) -> dict:
        return _miou(classifier, m, val, len(data["part_names"]), env) if val is not None \
            else {}

    batch = args.batch_size or c.batch_size
    result = train_on(pdm, data["train"], "mask", args, env, kind="pdm",
                      epochs=args.epochs or c.epochs, batch=batch,
                      lr=args.lr or c.lr, weight_decay=1e-4, loss_fn=loss_fn,
                      evaluate=evaluate, config={**pdm.config(), "data": data["info"]},
                      forward=forward)
    return {"result": result, "metrics": evaluate(pdm.eval()), "batch": batch}


@torch.no_grad()
def _miou(classifier: nn.Module, pdm: nn.Module, dataset: Dataset, num_labels: int,
          env: DistEnv) -> dict[str, float]:
    from partslib.metrics import confusion_matrix, mean_iou
    from partslib.pdm import label_map

    cm = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for x, m in _batches(dataset, "mask"):
        x = x.to(env.device)
        logits = pdm(classifier.features(x), x)  # type: ignore[operator]
        cm += confusion_matrix(label_map(logits).cpu(), m, num_labels)
    return {"val_miou": float(mean_iou(cm))}


def _head(args: argparse.Namespace, env: DistEnv, data: dict) -> dict[str, Any]:
    from partslib.explain.amortised_steps import head_training_set
    from partslib.pipeline import load_classifier, load_pdm

    classifier, pdm = load_classifier(args.out), load_pdm(args.out)
    val = data["val"]
    if val is None:
        raise ValueError("training the head needs validation images (its epoch is chosen on "
                         "them): give --data a dataset with a 'val' split")
    hs = head_training_set(classifier, pdm, data["train"], val, seed=args.seed,
                           progress=not args.quiet and env.is_main)
    best = {"score": -float("inf")}
    head_path = args.out / "checkpoints" / "head.pt"

    def evaluate(m: nn.Module) -> dict:
        record = hs.validate(m)
        if record["val_score"] > best["score"]:
            best["score"] = record["val_score"]
            if env.is_main:
                hs.save(m, head_path)
        return record

    batch = args.batch_size or 128
    result = train_on(hs.head, hs.dataset, "head", args, env, kind="head-fit",
                      epochs=args.epochs or hs.epochs, batch=batch,
                      lr=args.lr or 2e-3, weight_decay=1e-4, loss_fn=hs.loss,
                      evaluate=evaluate, config=hs.config, forward=hs.forward,
                      resume_hook=lambda r: best.update(score=max(
                          [h["val_score"] for h in r.history], default=-float("inf"))))
    return {"result": result, "metrics": {"val_score": best["score"]}, "batch": batch}


# -- the loop ----------------------------------------------------------------------------------

def train_on(model: nn.Module, dataset: Dataset, target: str, args: argparse.Namespace,
             env: DistEnv, *, kind: str, epochs: int, batch: int, lr: float,
             weight_decay: float, loss_fn: Any, evaluate: Any, config: dict,
             forward: Any = None, resume_hook: Any = None) -> FitResult:
    """Train ``model`` on ``dataset`` with :func:`partslib.training.fit` and a
    :class:`~partslib.distributed.StepLoader` (``target``: ``"label"`` or ``"mask"`` for dict
    items, anything else: items that are already ``(inputs, targets)`` pairs). The checkpoint
    is ``OUT/checkpoints/<kind>.pt``."""
    collate = _pairs(target) if target in ("label", "mask") else None
    loader = StepLoader(dataset, batch, env=env, accum=args.accum, seed=args.seed,
                        workers=args.workers, collate=collate,
                        pin_memory=env.device.type == "cuda")
    path = args.out / "checkpoints" / f"{kind}.pt"
    return fit(model, loader, epochs=epochs, loss_fn=loss_fn, lr=lr, weight_decay=weight_decay,
               evaluate=evaluate, checkpoint=path, config=config, kind=kind,
               resume=not args.no_resume, seed=args.seed, device=env.device, forward=forward,
               progress=not args.quiet, desc=kind, checkpoint_every=args.checkpoint_every,
               env=env, amp=None if args.amp == "none" else args.amp,
               channels_last=args.channels_last, on_resume=resume_hook)


@record
def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    for name in ("epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    env = init_distributed(args.device, timeout_s=args.dist_timeout)
    try:
        t0 = time.perf_counter()
        data = load_data(args, env)
        out = {"classifier": _classifier, "pdm": _pdm, "head": _head}[args.kind](args, env,
                                                                                  data)
        result: FitResult = out["result"]
        if env.is_main:
            summary = {"kind": args.kind, "world_size": env.world_size, "accum": args.accum,
                       "global_batch": out["batch"], "amp": args.amp,
                       "channels_last": args.channels_last, "device": str(env.device),
                       "seconds": time.perf_counter() - t0, "metrics": out["metrics"],
                       "history": result.history, "step_losses": result.step_losses,
                       "resumed_from_step": result.resumed_from_step}
            path = write_json(args.out / "train" / f"{args.kind}.json", summary)
            print(f"[rank 0/{env.world_size}] {args.kind}: {len(result.step_losses)} steps, "
                  f"final train loss {result.history[-1]['train_loss']:.4f}, "
                  f"{out['metrics']} -> {path}", flush=True)
        barrier(env)
    finally:
        close_distributed(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
