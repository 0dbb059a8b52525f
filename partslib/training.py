"""The one training loop of partslib, checkpoints, and classifier evaluation.

``fit`` trains any module on batches ``(inputs, targets)`` where ``inputs`` is a tensor, a dict
of tensors or a tuple of those (the PDM trains on dicts of cached stage features, with the raw
images when it merges them). It is seeded, shows a tqdm bar, and writes an atomic checkpoint
(weights + optimiser + scheduler + config + history) after every epoch, so an interrupted run
resumes where it stopped; a checkpoint of another configuration is moved to ``old/`` beside it.
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from partslib.checks import check_images, check_labels
from partslib.io import atomic_write

__all__ = [
    "FitResult",
    "TensorLoader",
    "archive_if_stale",
    "evaluate_classifier",
    "fit",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "seed_everything",
]

CHECKPOINT_FORMAT = "partslib-checkpoint"
CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


Inputs = torch.Tensor | Mapping[str, "Inputs"] | tuple["Inputs", ...]


def _leaves(x: Any) -> list[torch.Tensor]:
    if isinstance(x, dict):
        return [t for v in x.values() for t in _leaves(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _leaves(v)]
    return [x]


def _take(x: Any, idx: torch.Tensor) -> Any:
    if isinstance(x, dict):
        return {k: _take(v, idx) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_take(v, idx) for v in x)
    return x[idx]


class TensorLoader:
    """Minimal in-memory batch iterator (no worker processes): shuffles with a local generator
    seeded by ``(seed, epoch)`` so a resumed run sees the same order as an uninterrupted one.

    ``inputs`` is a tensor, a dict of tensors or a tuple of those (nested), each with one row
    per target; a batch has the same structure."""

    def __init__(self, inputs: Inputs, targets: torch.Tensor,
                 batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                 transform: Callable[[Any], Any] | None = None):
        n = len(targets)
        sizes = [len(v) for v in _leaves(inputs)]
        if any(s != n for s in sizes):
            raise ValueError(f"inputs have {sizes} rows but targets {n}; expected equal")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.shuffle, self.seed, self.transform, self.epoch = shuffle, seed, transform, 0

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        n = len(self.targets)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            x = _take(self.inputs, idx)
            if self.transform is not None:
                x = self.transform(x)
            yield x, self.targets[idx]


def _to(x: Any, device: torch.device | str) -> Any:
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_to(v, device) for v in x)
    return x.to(device)


def save_checkpoint(path: str | Path, *, state_dict: dict, config: dict, kind: str,
                    **extra: Any) -> Path:
    """Write a checkpoint atomically (:func:`partslib.io.atomic_write`: a hidden temporary file
    replaces ``path`` once complete): never a half file, and a failed write keeps the old one."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind,
               "config": config, "state_dict": state_dict, **extra}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Read a partslib checkpoint; a missing, truncated, corrupted or foreign file raises an error
    that names the file and says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is corrupted or truncated and cannot be read "
                         f"({type(e).__name__}: {str(e)[:200]}); delete it and train again") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a partslib checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {ckpt.get('version')}, this "
                         f"partslib reads version {CHECKPOINT_VERSION}")
    if kind is not None and ckpt.get("kind") != kind:
        raise ValueError(f"checkpoint {path} holds a {ckpt.get('kind')!r}, expected {kind!r}")
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
    """Move a checkpoint written with another configuration than ``config`` (or unreadable) to
    ``old/<kind>-<time>.pt`` beside it, with a warning naming the differing keys, so that
    training starts over instead of resuming from stale weights. Returns the new path, or
    ``None`` when nothing was moved (no checkpoint, or the same configuration)."""
    path = Path(checkpoint)
    if not path.exists():
        return None
    try:
        stored = load_checkpoint(path, kind=kind)["config"]
    except ValueError as e:
        why = f"it cannot be used ({str(e)[:200]})"
    else:
        if stored == config:
            return None
        keys = _differing_keys(stored, config)
        why = (f"it was written with another configuration (differing keys: "
               f"{', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''})")
    old = path.parent / "old" / f"{kind}-{_dt.datetime.now():%Y%m%d-%H%M%S-%f}.pt"
    old.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(old))
    warnings.warn(f"checkpoint {path}: {why}; moved to {old}, training from scratch",
                  stacklevel=3)
    return old


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0


def fit(model: nn.Module, train_loader: TensorLoader, *, epochs: int,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        lr: float = 2e-3, weight_decay: float = 1e-4,
        evaluate: Callable[[nn.Module], dict] | None = None, evaluate_info: Any = None,
        checkpoint: str | Path | None = None, config: dict | None = None, kind: str = "model",
        resume: bool = True, seed: int = 0, device: str | torch.device = "cpu",
        forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        progress: bool = True, desc: str = "train") -> FitResult:
    """Train ``model`` with AdamW and a one-cycle schedule.

    Args:
        train_loader: yields ``(inputs, targets)``; needs ``set_epoch`` for reproducible resumes.
        evaluate: called after each epoch with the model in eval mode; its dict joins the history.
            It must draw no random numbers (the weights would then depend on it).
        evaluate_info: what ``evaluate`` runs on (JSON-able, e.g. the validation split's
            identity); it joins the checkpoint configuration, so a checkpoint whose history was
            recorded on other data is not resumed.
        checkpoint: file to write after each epoch (atomically) and to resume from when it exists
            and ``resume`` is true. A checkpoint whose configuration (``config`` with the
            optimisation settings) differs, or that cannot be read, is moved to ``old/`` beside
            it with a warning naming the differing keys, and training starts over.
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    from tqdm.auto import tqdm

    seed_everything(seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                total_steps=epochs * len(train_loader),
                                                pct_start=0.15)
    result, start = FitResult(), 0
    full_config = {"model": config or {}, "epochs": epochs, "lr": lr,
                   "weight_decay": weight_decay, "seed": seed}
    if evaluate_info is not None:
        full_config["evaluate"] = evaluate_info
    if checkpoint is not None and resume:
        archive_if_stale(checkpoint, kind, full_config)
    if checkpoint is not None and resume and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint, kind=kind)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        result.history = list(ckpt["history"])
        start = result.resumed_from_epoch = ckpt["epoch"]
    forward = forward or (lambda m, x: m(x))
    for epoch in range(start, epochs):
        model.train()
        train_loader.set_epoch(epoch)
        total, count = 0.0, 0
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        for inputs, targets in bar:
            inputs, targets = _to(inputs, device), targets.to(device)
            loss = loss_fn(forward(model, inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
            bar.set_postfix(loss=f"{total / count:.4f}")
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                record.update(evaluate(model))
        result.history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, state_dict=model.state_dict(), config=full_config,
                            kind=kind, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                            epoch=epoch + 1, history=result.history)
    model.eval()
    return result


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for a stack of images (uint8 or float), batched, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        out.append(model(x))
    return torch.cat(out)


def evaluate_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        num_classes: int | None = None) -> dict:
    """Accuracy, balanced accuracy and the confusion matrix (rows = true class).

    ``images``: uint8 or float ``[N,3,H,W]`` (see :func:`partslib.checks.check_images`);
    ``labels``: integer ``[N]`` in ``0..num_classes-1``."""
    images = check_images(images, keep_uint8=True)
    labels = check_labels(labels, len(images), num_classes)
    pred = predict(model, images).argmax(1)
    k = num_classes or int(max(labels.max(), pred.max())) + 1
    cm = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    recall = cm.diag().float() / cm.sum(1).clamp(min=1).float()
    return {"accuracy": float((pred == labels).float().mean()),
            "balanced_accuracy": float(recall[cm.sum(1) > 0].mean()),
            "confusion_matrix": cm.tolist(), "predictions": pred}
