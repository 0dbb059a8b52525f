"""The one training loop of partslib, checkpoints, and classifier evaluation.

``fit`` trains any module on batches ``(inputs, targets)`` where ``inputs`` is a tensor, a dict
of tensors or a tuple of those (the PDM trains on dicts of cached stage features, with the raw
images when it merges them). It is seeded, shows a tqdm bar, and writes an atomic checkpoint
(weights + optimiser + scheduler + config + history + RNG states) after every epoch and, on
request, every k optimiser steps, so an interrupted run resumes where it stopped, mid-epoch
included; a checkpoint of another configuration is moved to ``old/`` beside it. The same loop
runs in each process of a ``torchrun`` job (DDP, gradient accumulation:
:mod:`partslib.distributed`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from partslib.checkpoints import (
    CheckpointError,
    archive_if_stale,
    load_checkpoint,
    save_checkpoint,
)
from partslib.checks import check_images, check_labels
from partslib.constants import INFERENCE_BATCH
from partslib.distributed import DistEnv, all_mean, barrier, check_same, maybe_fault
from partslib.progress import Progress

__all__ = [
    "CheckpointError",
    "FitResult",
    "TensorLoader",
    "archive_if_stale",
    "evaluate_classifier",
    "fit",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "seed_everything",
    "set_epoch",
]

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
        for [(x, y, _)] in self.steps():
            yield x, y

    def steps(self, start: int = 0) -> Iterator[list[tuple[Any, torch.Tensor, float]]]:
        """The batches of the current epoch from batch ``start`` on (earlier ones are skipped
        without being taken or transformed), each as one step of one micro-batch
        ``[(inputs, targets, 1.0)]``."""
        n = len(self.targets)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(start * self.batch_size, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            x = _take(self.inputs, idx)
            if self.transform is not None:
                x = self.transform(x)
            yield [(x, self.targets[idx], 1.0)]


def _to(x: Any, device: torch.device | str, channels_last: bool = False) -> Any:
    """Tensors of a nested batch on ``device`` (4-d floating ones channels-last on request)."""
    if isinstance(x, dict):
        return {k: _to(v, device, channels_last) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_to(v, device, channels_last) for v in x)
    x = x.to(device)
    if channels_last and x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass
class FitResult:
    """What :func:`fit` returns: one record per epoch (``history``), the loss of every optimiser
    step (mean over the global batch, ``step_losses``), and where a resumed run started
    (``resumed_from_epoch``: completed epochs; ``resumed_from_step``: optimiser steps)."""

    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0
    step_losses: list[float] = field(default_factory=list)
    resumed_from_step: int = 0


def _rng_state() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, Python) in a form ``weights_only`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos),
                      int(has_gauss), float(cached)],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _loader_generator(loader: Any) -> torch.Generator | None:
    """The private generator of a loader's transform (``Augment``), part of the RNG state."""
    g = getattr(getattr(loader, "transform", None), "g", None)
    return g if isinstance(g, torch.Generator) else None


@dataclass
class _Position:
    """Where training stands: completed epochs, steps of the current epoch, steps in all, and
    the current epoch's loss sum and sample count so far."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    total: float = 0.0
    count: int = 0


def _restore(ckpt: dict, model: nn.Module, opt: Any, sched: Any, loader: Any,
             result: FitResult) -> _Position:
    """Load a checkpoint's weights, optimiser, schedule, history, position and RNG states."""
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    result.history = list(ckpt["history"])
    result.step_losses = list(ckpt.get("step_losses", []))
    pos = _Position(ckpt["epoch"], ckpt.get("step_in_epoch", 0),
                    ckpt.get("global_step", ckpt["epoch"] * len(loader)),
                    *ckpt.get("epoch_totals", (0.0, 0)))
    if "rng" in ckpt:
        _set_rng_state(ckpt["rng"])
    g = _loader_generator(loader)
    if g is not None and ckpt.get("loader_rng") is not None:
        g.set_state(ckpt["loader_rng"])
    result.resumed_from_epoch, result.resumed_from_step = pos.epoch, pos.global_step
    return pos


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell a loader which epoch starts: the loader itself (:class:`TensorLoader`,
    :class:`~partslib.distributed.StepLoader`), else a ``DataLoader``'s sampler
    (``DistributedSampler``) and dataset, where they have ``set_epoch``."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if part is not None and hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def _steps(loader: Any, start: int) -> Iterator[list[tuple[Any, Any, float]]]:
    """Optimiser steps as lists of ``(inputs, targets, weight)`` micro-batches: a loader's own
    ``steps`` (:class:`TensorLoader`, :class:`~partslib.distributed.StepLoader`), or any
    iterable of ``(inputs, targets)`` batches, one per step."""
    if hasattr(loader, "steps"):
        yield from loader.steps(start)
        return
    for i, (x, y) in enumerate(loader):
        if i >= start:
            yield [(x, y, 1.0)]


def _train_step(net: nn.Module, step: list[tuple[Any, Any, float]], opt: Any, sched: Any, *,
                loss_fn: Callable, forward: Callable, device: torch.device | str,
                amp: str | None, channels_last: bool) -> tuple[float, int]:
    """One optimiser step over its micro-batches (gradients summed with their weights; DDP
    all-reduces them once, after the last). Returns this rank's weighted loss and samples."""
    import contextlib

    loss_sum, n = 0.0, 0
    dev_type = torch.device(device).type
    opt.zero_grad(set_to_none=True)
    for i, (inputs, targets, weight) in enumerate(step):
        last = i == len(step) - 1
        no_sync = getattr(net, "no_sync", None)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            inputs, targets = _to(inputs, device, channels_last), _to(targets, device)
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                loss = loss_fn(forward(net, inputs), targets)
            (loss if weight == 1.0 else loss * weight).backward()
        loss_sum += float(loss.detach()) * weight
        n += len(_leaves(targets)[0])
    opt.step()
    sched.step()
    return loss_sum, n


def _wrap(model: nn.Module, env: DistEnv | None) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when ``env`` has several ranks."""
    if env is None or not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda"
                                   else None)


def _check_fit_args(epochs: int, checkpoint_every: int, amp: str | None) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 steps, got {checkpoint_every}")
    if amp not in (None, "bf16"):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")


def fit(model: nn.Module, train_loader: Any, *, epochs: int,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        lr: float = 2e-3, weight_decay: float = 1e-4,
        evaluate: Callable[[nn.Module], dict] | None = None, evaluate_info: Any = None,
        checkpoint: str | Path | None = None, config: dict | None = None, kind: str = "model",
        resume: bool = True, seed: int = 0, device: str | torch.device = "cpu",
        forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        progress: bool = True, desc: str = "train", checkpoint_every: int = 0,
        env: DistEnv | None = None, amp: str | None = None, channels_last: bool = False,
        on_resume: Callable[[FitResult], None] | None = None) -> FitResult:
    """Train ``model`` with AdamW and a one-cycle schedule, in one process or in each process
    of a ``torchrun`` job (``env``: the model is wrapped in ``DistributedDataParallel``).

    Args:
        train_loader: a :class:`TensorLoader`, a :class:`~partslib.distributed.StepLoader`
            (map-style datasets, ``DistributedSampler``, gradient accumulation), or any
            iterable of ``(inputs, targets)``; it needs ``set_epoch`` for reproducible resumes.
        evaluate: called after each epoch with the model in eval mode (on every rank); its
            dict joins the history. It must draw no random numbers.
        evaluate_info: what ``evaluate`` runs on (JSON-able); it joins the checkpoint
            configuration, so a checkpoint whose history was recorded on other data is not
            resumed.
        checkpoint: file written (atomically, by rank 0 alone; the others wait) after each
            epoch and every ``checkpoint_every`` optimiser steps (0: epochs only), holding
            weights, optimiser, scheduler, the epoch and step reached, the epoch's running
            loss, and the RNG states; resumed when it exists and ``resume`` is true, so a run
            killed mid-epoch ends with the same weights as an uninterrupted one. A checkpoint
            whose configuration (``config`` with the optimisation and batching settings)
            differs, or that cannot be read or used, is moved to ``old/`` beside it with a
            warning that says which (:func:`archive_if_stale`), and training starts over.
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``).
        amp: ``"bf16"``: forward and loss under bfloat16 autocast (CPU or CUDA); ``None``: fp32.
        channels_last: the model's weights and 4-d inputs in channels-last memory format.
        on_resume: called with the restored result (history) when a checkpoint is resumed.
    """
    _check_fit_args(epochs, checkpoint_every, amp)
    seed_everything(seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                total_steps=epochs * len(train_loader),  # pyright: ignore[reportArgumentType]
                                                pct_start=0.15)
    full_config = {"model": config or {}, "epochs": epochs, "lr": lr,
                   "weight_decay": weight_decay, "seed": seed}
    if evaluate_info is not None:
        full_config["evaluate"] = evaluate_info
    if hasattr(train_loader, "info"):
        full_config["batching"] = train_loader.info()
    result, pos = FitResult(), _Position()
    main = env is None or env.is_main
    if checkpoint is not None and resume:
        if main:
            archive_if_stale(checkpoint, kind, full_config)
        barrier(env)
        if Path(checkpoint).exists():
            pos = _restore(load_checkpoint(checkpoint, kind=kind), model, opt, sched,
                           train_loader, result)
            if on_resume is not None:
                on_resume(result)
        check_same(pos.global_step, env, f"the optimiser step to resume from (checkpoint "
                   f"{checkpoint}: it must be a file every rank reads, on a shared folder)")
    net = _wrap(model, env)

    def save() -> None:
        if checkpoint is not None:
            _save(checkpoint, main, env, model, opt, sched, pos, result, full_config, kind,
                  _loader_generator(train_loader))

    _run(net, model, train_loader, pos, result, save=save, epochs=epochs, opt=opt,
         sched=sched, step_args={"loss_fn": loss_fn, "forward": forward or (lambda m, x: m(x)),
                                 "device": device, "amp": amp, "channels_last": channels_last},
         evaluate=evaluate, checkpoint_every=checkpoint_every, env=env,
         progress=progress and main, desc=desc)
    model.eval()
    return result


def _save(checkpoint: str | Path, main: bool, env: DistEnv | None, model: nn.Module,
          opt: Any, sched: Any, pos: _Position, result: FitResult, config: dict, kind: str,
          g: torch.Generator | None) -> None:
    """Rank 0 writes the checkpoint of ``pos``; every rank waits until it is written."""
    if main:
        save_checkpoint(checkpoint, state_dict=model.state_dict(), config=config,
                        kind=kind, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        epoch=pos.epoch, step_in_epoch=pos.step,
                        global_step=pos.global_step, epoch_totals=(pos.total, pos.count),
                        history=result.history, step_losses=result.step_losses,
                        rng=_rng_state(), loader_rng=None if g is None else g.get_state())
    barrier(env)


def _run(net: nn.Module, model: nn.Module, loader: Any, pos: _Position, result: FitResult, *,
         save: Callable[[], None], epochs: int, opt: Any, sched: Any, step_args: dict,
         evaluate: Callable[[nn.Module], dict] | None, checkpoint_every: int,
         env: DistEnv | None, progress: bool, desc: str) -> None:
    """The epochs of :func:`fit` from ``pos`` on."""
    from tqdm.auto import tqdm

    rank = 0 if env is None else env.rank
    # the run's steps for the runner's terminal (partslib.progress); tqdm draws each epoch's
    events = Progress(total=epochs * len(loader), initial=pos.epoch * len(loader) + pos.step,
                      desc=desc, unit="batch")
    for epoch in range(pos.epoch, epochs):
        model.train()
        set_epoch(loader, epoch)
        events.set_postfix(epoch=f"{epoch + 1}/{epochs}")
        bar = tqdm(_steps(loader, pos.step), desc=f"{desc} {epoch + 1}/{epochs}",
                   total=len(loader) - pos.step, disable=not progress, leave=False)
        for step in bar:
            loss, n = _train_step(net, step, opt, sched, **step_args)
            world = 1 if env is None else env.world_size
            loss = all_mean(loss, env)
            result.step_losses.append(loss)
            pos.total += loss * n * world
            pos.count += n * world
            pos.step += 1
            pos.global_step += 1
            bar.set_postfix(loss=f"{pos.total / pos.count:.4f}")
            events.info["loss"] = f"{pos.total / pos.count:.4f}"
            events.update()
            maybe_fault(rank, pos.global_step)
            if checkpoint_every and pos.global_step % checkpoint_every == 0 \
                    and pos.step < len(loader):
                save()
        record = {"epoch": epoch + 1, "train_loss": pos.total / max(pos.count, 1)}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                record.update(evaluate(model))
        result.history.append(record)
        pos.epoch, pos.step, pos.total, pos.count = epoch + 1, 0, 0.0, 0
        save()
    events.close()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor,
            batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
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
