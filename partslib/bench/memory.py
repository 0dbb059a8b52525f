"""Peak memory per method, measured in fresh subprocesses (one per size, or per method)."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from partslib.bench.cases import build_case, method_fns

if TYPE_CHECKING:
    from partslib.bench.timing import BenchConfig

__all__ = ["child_memory", "peak_memory"]


def _maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    kib = resource.getrusage(who).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kib / (1024 ** 2 if sys.platform == "darwin" else 1024)


def _reset_peak_rss() -> bool:
    """Lower the process's RSS high-water mark (what ``ru_maxrss`` reports) to its current RSS.

    Frees what the allocator holds first (``gc`` + glibc ``malloc_trim``), then writes 5 to
    ``/proc/self/clear_refs`` (Linux >= 4.0). Returns False where that is not possible.
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB, from ``/proc/self/status`` (Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def child_memory(methods: Sequence[str], size: int, batch: int, results_dir: str | None,
                  seed: int, threads: int, captum_baseline: str) -> dict[str, dict[str, Any]]:
    """In a fresh process: per method, the peak RSS of two calls above the RSS before them.

    The setup (models, batch, imports) can peak higher than a method, and one method's peak
    must not hide the next one's, so before each method the allocator hands back what it holds
    and the high-water mark is reset (:func:`_reset_peak_rss`); where the kernel does not allow
    that, the deltas are lower bounds (``reset`` False).
    """
    torch.set_num_threads(threads)
    case = build_case(size, batch, results_dir, seed)
    fns = method_fns(case, list(methods), captum_baseline)
    setup_peak = _proc_status_mib("VmHWM") or _maxrss_mib()
    out = {}
    for method in methods:
        # VmHWM, not ru_maxrss: a process started by vfork+exec (subprocess) inherits its
        # parent's peak in ru_maxrss (the kernel keeps the larger of the pre-exec and current)
        reset = _reset_peak_rss() and _proc_status_mib("VmHWM") is not None
        rss = _proc_status_mib("VmRSS") if reset else None
        reset = reset and rss is not None
        before = rss if rss is not None else setup_peak
        fns[method]()
        fns[method]()
        hwm = _proc_status_mib("VmHWM") if reset else None
        after = hwm if hwm is not None else _maxrss_mib()
        out[method] = {"setup_peak_mib": setup_peak, "rss_before_mib": before,
                       "peak_mib": after, "delta_mib": max(after - before, 0.0), "reset": reset}
    return out


def peak_memory(cfg: BenchConfig, size: int) -> dict[str, dict[str, float]]:
    """Per method, the peak RSS growth over the RSS before it, in one fresh subprocess per
    size (``cfg.memory == "process"``: one per method, slower and fully isolated)."""
    from partslib.progress import Progress

    groups = ([[m] for m in cfg.methods] if cfg.memory == "process" else [list(cfg.methods)])
    out = {}
    for group in Progress(groups, desc=f"memory@{size}", unit="run", disable=not cfg.progress,
                          leave=False):
        cmd = [sys.executable, "-m", "partslib.bench", "--child-memory", ",".join(group),
               "--sizes", str(size), "--batch", str(cfg.batches[size]), "--results-dir",
               cfg.results_dir, "--seed", str(cfg.seed), "--threads", str(cfg.threads),
               "--captum-baseline", cfg.captum_baseline]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"memory subprocess for {group}@{size} failed:\n"
                               f"{res.stderr[-2000:]}")
        out.update(json.loads(res.stdout.strip().splitlines()[-1]))
    return out
