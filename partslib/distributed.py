"""Distributed training with PyTorch's own tools: ``torchrun``, ``torch.distributed``,
``DistributedSampler`` and ``DistributedDataParallel``.

:func:`init_distributed` reads the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and starts the process group (gloo on CPUs,
NCCL on CUDA) with a collective timeout, so a rank that dies does not leave the others waiting
forever; without those variables it returns a one-process :class:`DistEnv` and starts nothing.

:class:`StepLoader` turns any map-style ``Dataset`` into the micro-batches of optimiser steps
for one rank: a seeded ``DistributedSampler`` (``set_epoch`` reshuffles) gives the rank its
share of the epoch's permutation, each step takes ``micro × accum`` of them, and micro-batch
``m`` of a step holds every ``accum``-th of those indices. Micro-batch ``m`` of rank ``r``
therefore holds the global positions ``v, v + V, v + 2V, ...`` of the step's global batch, with
``v = m·world + r`` and ``V = world·accum``: the global batch of a step and the composition of
its micro-batches depend on the global batch and the micro-batch size only, not on how they
are split between processes and accumulation steps (one process accumulating 2 micro-batches
sees the batches two processes see). A resumed run skips the steps already taken without
loading them (``steps(start)``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
from torch.distributed.elastic.multiprocessing.errors import record as _record
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["FAULT_ENV", "DistEnv", "StepLoader", "all_mean", "barrier", "check_same",
           "close_distributed", "init_distributed", "maybe_fault", "record"]

#: fault injection for tests: ``"RANK:STEP"`` makes that rank raise after optimiser step STEP,
#: ``"RANK:STEP:kill"`` makes it kill itself (SIGKILL, no clean-up), as a crashed node would,
#: ``"RANK:STEP:hang"`` makes it stop responding (sleep), as a stuck node would
FAULT_ENV = "PARTSLIB_FAULT"


class _AtomicErrorHandler(ErrorHandler):
    """torchrun's error handler, writing the error file atomically.

    A rank that fails writes its traceback to ``TORCHELASTIC_ERROR_FILE``; the launcher reads
    the files of every failed rank. torch writes the file in place, so when the launcher stops
    a rank (SIGTERM) that is still writing its error, it reads an empty file and dies of a
    ``JSONDecodeError`` instead of reporting the failure. Writing a sibling and renaming it
    makes the file appear whole or not at all.
    """

    def record_exception(self, e: BaseException) -> None:
        file = self._get_error_file_path()
        if not file:
            return
        data = {"message": {"message": f"{type(e).__name__}: {e}", "extraInfo": {
            "py_callstack": traceback.format_exc(), "timestamp": str(int(time.time()))}}}
        self._write_error_file(file, json.dumps(data))

    def _write_error_file(self, file_path: str, error_msg: str) -> None:
        from partslib.io import atomic_write

        try:
            with atomic_write(file_path) as tmp:
                tmp.write_text(error_msg)
        except OSError as err:
            warnings.warn(f"could not write the error file {file_path}: {err}", stacklevel=2)


def record(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.distributed.elastic``'s ``@record`` with an atomic error file."""
    return _record(fn, error_handler=_AtomicErrorHandler())


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, the
    ``device`` it trains on; ``initialized`` when a process group was started."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str = "auto", backend: str | None = None,
                     timeout_s: float = 300.0) -> DistEnv:
    """Start ``torch.distributed`` from the environment ``torchrun`` sets.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``; with CUDA
    each process takes the GPU ``LOCAL_RANK``. ``backend``: default gloo on CPU, NCCL on CUDA.
    ``timeout_s``: how long a collective waits for a missing rank before it raises (the
    process group's timeout), so a lost rank ends the run with an error instead of a hang.
    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is started.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent; expected "
                         f"0 <= RANK < WORLD_SIZE")
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' asked for but no CUDA device is available")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world == 1:
        return DistEnv(0, 1, local, dev, False)
    backend = backend or ("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        timeout = _dt.timedelta(seconds=timeout_s)
        if cuda:
            dist.init_process_group(backend=backend, timeout=timeout, device_id=dev)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return DistEnv(rank, world, local, dev, True)


def close_distributed(env: DistEnv) -> None:
    """Destroy the process group that :func:`init_distributed` started (no-op otherwise)."""
    if env.initialized and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv | None) -> None:
    """Wait for every rank (no-op in one process)."""
    if env is not None and env.distributed:
        dist.barrier()


def all_mean(value: float, env: DistEnv | None) -> float:
    """The mean of ``value`` over the ranks (``value`` itself in one process)."""
    if env is None or not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t) / env.world_size


def check_same(value: int, env: DistEnv | None, what: str) -> None:
    """Raise on every rank when the ranks disagree on ``value`` (e.g. the step they resume
    from), naming the range seen and ``what`` it is; no-op in one process."""
    if env is None or not env.distributed:
        return
    t = torch.tensor([value, -value], dtype=torch.int64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = int(t[0]), -int(t[1])
    if hi != lo:
        raise RuntimeError(f"the ranks disagree on {what}: from {lo} to {hi} (rank {env.rank} "
                           f"has {value})")


def maybe_fault(rank: int, step: int) -> None:
    """Fault injection for the tests (:data:`FAULT_ENV`); does nothing when it is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]) or \
            parts[2:] not in ([], ["kill"], ["hang"]):
        raise ValueError(f"{FAULT_ENV} must be 'RANK:STEP', 'RANK:STEP:kill' or "
                         f"'RANK:STEP:hang', got {spec!r}")
    if int(parts[0]) == rank and int(parts[1]) == step:
        if parts[2:] == ["kill"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if parts[2:] == ["hang"]:
            time.sleep(24 * 3600)
        raise RuntimeError(f"fault injected by {FAULT_ENV}={spec}: rank {rank} fails after "
                           f"optimiser step {step}")


class _MicroBatches(Sampler[list[int]]):
    """Batch sampler over a rank's sampler: the micro-batches of steps ``start, start+1, ...``
    (micro-batch ``m`` of a step = every ``accum``-th index of the step's ``micro × accum``)."""

    def __init__(self, sampler: Sampler[int], micro: int, accum: int, start: int = 0):
        self.sampler, self.micro, self.accum, self.start = sampler, micro, accum, start

    def plan(self) -> list[list[int]]:
        """Per step from ``start``: the sizes of its (non-empty) micro-batches."""
        n, c = len(self.sampler), self.micro * self.accum  # type: ignore[arg-type]
        sizes = []
        for s in range(self.start, math.ceil(n / c)):
            size = min(c, n - s * c)
            sizes.append([k for k in (len(range(m, size, self.accum))
                                      for m in range(self.accum)) if k])
        return sizes

    def __iter__(self) -> Iterator[list[int]]:
        idx = list(self.sampler)
        c = self.micro * self.accum
        for s in range(self.start * c, len(idx), c):
            chunk = idx[s:s + c]
            for m in range(self.accum):
                if chunk[m::self.accum]:
                    yield chunk[m::self.accum]

    def __len__(self) -> int:
        return sum(len(p) for p in self.plan())


def _rows(y: Any) -> int:
    if isinstance(y, dict):
        return _rows(next(iter(y.values())))
    if isinstance(y, (tuple, list)):
        return _rows(y[0])
    return len(y)


class StepLoader:
    """The optimiser steps of one rank over a map-style ``dataset`` whose items ``collate``
    turns into ``(inputs, targets)`` batches (default: torch's ``default_collate`` of
    ``(input, target)`` items).

    ``global_batch`` = micro-batch × world size × ``accum``: it must divide evenly. Each step
    yields its micro-batches as ``(inputs, targets, weight)`` with ``weight`` = the micro-batch's
    share of the rank's samples in that step, so that the weighted sum of per-micro-batch mean
    losses, averaged over the ranks by DDP, is the mean over the global batch (ranks have equal
    shares: the ``DistributedSampler`` pads the epoch to a multiple of the world size by
    repeating its first indices, which one process does not see; use a dataset size divisible
    by the world size to compare runs exactly). ``workers``: DataLoader worker processes (the
    DataLoader draws its seeds from its own generator, never from the global RNG, so a resumed
    run draws the same numbers as an uninterrupted one).
    """

    def __init__(self, dataset: Dataset, global_batch: int, *, env: DistEnv | None = None,
                 accum: int = 1, seed: int = 0, shuffle: bool = True, workers: int = 0,
                 collate: Callable[[list[Any]], Any] | None = None, pin_memory: bool = False):
        env = env or DistEnv()
        if accum < 1:
            raise ValueError(f"accum must be >= 1, got {accum}")
        if global_batch < 1 or global_batch % (env.world_size * accum):
            raise ValueError(f"global batch {global_batch} must be a positive multiple of world "
                             f"size {env.world_size} x accum {accum}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.dataset, self.env, self.accum, self.seed = dataset, env, accum, seed
        self.global_batch, self.micro = global_batch, global_batch // (env.world_size * accum)
        self.workers, self.collate, self.pin_memory = workers, collate, pin_memory
        self.sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=shuffle, seed=seed, drop_last=False)

    def __len__(self) -> int:
        """Optimiser steps per epoch."""
        return math.ceil(len(self.sampler) / (self.micro * self.accum))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def info(self) -> dict[str, int]:
        """What a checkpoint's configuration records of the batching (the processes may
        change between a run and its resume; the global batch may not)."""
        return {"global_batch": self.global_batch}

    def steps(self, start: int = 0) -> Iterator[list[tuple[Any, Any, float]]]:
        """The steps of the current epoch from step ``start`` on (earlier ones are skipped
        without loading their samples)."""
        batches = _MicroBatches(self.sampler, self.micro, self.accum, start)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                            collate_fn=self.collate, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(self.seed))
        it = iter(loader)
        for sizes in batches.plan():
            total = sum(sizes)
            step = []
            for _ in sizes:
                x, y = next(it)
                step.append((x, y, _rows(y) / total))
            yield step

