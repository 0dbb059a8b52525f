"""Timing: interleaved repeats of every method, the ratios and the ``bench.json`` payload."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from partslib.bench.cases import (
    DEFAULT_METHODS,
    DEFAULT_SIZES,
    BenchCase,
    build_case,
    method_fns,
)
from partslib.bench.memory import _maxrss_mib, peak_memory
from partslib.explain.registry import get_method

__all__ = [
    "REFERENCE",
    "SUBJECT",
    "TARGETS",
    "BenchConfig",
    "profile_ops",
    "run_bench",
    "time_methods",
]

REFERENCE = "forward"
SUBJECT = "pdm-region-soft"
# SPEC §8: PDM-region ≤ 2× a forward pass at batch 64, and faster than GradCAM; issue 12: the
# amortised rule (one classifier + PDM pass and its head) ≤ 2× a forward pass too.
TARGETS = {"pdm-region-soft_vs_forward@64": 2.0, "pdm-region-soft_vs_gradcam@64": 1.0,
           "pdm-amortised_vs_forward@64": 2.0}


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures (all of it is written to ``bench.json``)."""

    results_dir: str
    sizes: tuple[int, ...] = DEFAULT_SIZES
    methods: tuple[str, ...] = DEFAULT_METHODS
    repeats: int = 15  # timed rounds per size; every method runs once per round
    warmup: int = 2  # untimed rounds first
    threads: int = 2  # torch.set_num_threads
    batch: int | Sequence[int] = 64  # one batch for every size, or one per size (a tuple)
    seed: int = 0
    captum_baseline: str = "blur"  # "blur" (the PDM-occlusion imputer) or "zero"
    # per-method peak RSS: True / "size" = one subprocess per size, methods one after another
    # (allocator trimmed and high-water mark reset between them); "process" = one subprocess per
    # method; False = not measured
    memory: bool | str = True
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int):
            batch = tuple(int(b) for b in self.batch)
            object.__setattr__(self, "batch", batch[0] if len(batch) == 1 else batch)  # frozen
            if len(batch) not in (1, len(self.sizes)):
                raise ValueError(f"batch {list(batch)} needs one entry per size "
                                 f"{list(self.sizes)} (or a single number)")
        if min(self.batches.values()) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch}")

    @property
    def batches(self) -> dict[int, int]:
        """The batch of each size (every method of a size explains the same batch)."""
        if isinstance(self.batch, int):
            return dict.fromkeys(self.sizes, self.batch)
        return dict(zip(self.sizes, self.batch))


def time_methods(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2,
                 progress: bool = True, desc: str = "bench"
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of every method, interleaved round-robin: ``(wall, cpu)``.

    Each round runs every method once, starting one method later than the previous round, so
    that no method always follows the same one. ``warmup`` untimed rounds come first. ``cpu`` is
    the process CPU time of the call (all threads): unlike wall time it does not count the time
    other processes hold the cores, so with one thread it is the contention-robust cost.
    """
    from partslib.progress import Progress

    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(fns)
    wall: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    with Progress(total=(warmup + repeats) * len(names), desc=desc, unit="call",
                  disable=not progress, leave=False) as bar:
        for r in range(warmup + repeats):
            for i in range(len(names)):
                m = names[(r + i) % len(names)]
                bar.set_postfix_str(m, refresh=False)
                c0, t0 = time.process_time(), time.perf_counter()
                fns[m]()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if r >= warmup:
                    wall[m].append(dt)
                    cpu[m].append(dc)
                bar.update()
    return wall, cpu


def _machine() -> dict[str, Any]:
    from partslib.pipeline import library_versions

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu,
                            "cpu_count": os.cpu_count(), "versions": library_versions(),
                            "hostname": platform.node(),
                            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                            "torch_parallel": torch.__config__.parallel_info().splitlines()[:4]}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    return info


def _key(method: str, size: int) -> str:
    return f"{method}@{size}"


def _ratios(ms: dict[str, float], methods: Sequence[str], size: int) -> dict[str, float]:
    """``<subject>_vs_<other>@size``: PDM-region against every other method, every method
    against the forward pass, and PDM-occlusion against Captum's occlusion."""
    out: dict[str, float] = {}
    t = {m: ms[_key(m, size)] for m in methods}
    if SUBJECT in t:
        out.update({f"{SUBJECT}_vs_{m}@{size}": t[SUBJECT] / t[m] for m in t if m != SUBJECT})
    if REFERENCE in t:
        out.update({f"{m}_vs_{REFERENCE}@{size}": t[m] / t[REFERENCE] for m in t
                    if m not in (REFERENCE, SUBJECT)})
    if "pdm-occlusion" in t and "captum_occlusion" in t:
        out[f"pdm-occlusion_vs_captum_occlusion@{size}"] = (t["pdm-occlusion"]
                                                            / t["captum_occlusion"])
    return out


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns the ``bench.json`` payload (nothing is written)."""
    torch.set_num_threads(cfg.threads)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    stats: dict[str, dict[str, float]] = {"min": {}, "median": {}, "cpu_min": {}}
    samples: dict[str, list[float]] = {}
    setups: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    ratios_median: dict[str, float] = {}
    ratios_cpu: dict[str, float] = {}
    for size in cfg.sizes:
        case = build_case(size, cfg.batches[size], cfg.results_dir, cfg.seed)
        fns = method_fns(case, cfg.methods, cfg.captum_baseline)
        wall, cpu = time_methods(fns, cfg.repeats, cfg.warmup, cfg.progress,
                                 desc=f"bench@{size}")
        with torch.inference_mode():
            present = get_method(SUBJECT).build(case.classifier, pdm=case.pdm)(case.images).present
        setups[str(size)] = {**case.weights, "image_size": size, "batch": len(case.images),
                             "num_classes": case.classifier.num_classes,
                             "num_labels": case.pdm.num_labels,
                             # images PDM-occlusion runs through the classifier (one per part
                             # present); Captum runs num_labels + 1 batches whatever is present
                             "occlusion_present_parts": int(present.sum())}
        del fns, case
        for m in cfg.methods:
            k = _key(m, size)
            stats["min"][k] = 1e3 * min(wall[m])
            stats["median"][k] = 1e3 * statistics.median(wall[m])
            stats["cpu_min"][k] = 1e3 * min(cpu[m])
            samples[k] = [round(1e3 * t, 3) for t in wall[m]]
        ratios.update(_ratios(stats["min"], cfg.methods, size))
        ratios_median.update(_ratios(stats["median"], cfg.methods, size))
        ratios_cpu.update(_ratios(stats["cpu_min"], cfg.methods, size))
        if cfg.memory:
            memory[str(size)] = peak_memory(cfg, size)
    payload: dict[str, Any] = dict(ratios)
    payload.update({
        "ratios_median": ratios_median,
        "ratios_cpu": ratios_cpu,
        "targets": {k: {"target": f"<= {v:g}", "value": ratios[k], "met": ratios[k] <= v}
                    for k, v in TARGETS.items() if k in ratios},
        "ms_per_batch": stats["min"],
        "ms_per_batch_median": stats["median"],
        "cpu_ms_per_batch": stats["cpu_min"],
        "images_per_s": {k: cfg.batches[int(k.rsplit("@", 1)[1])] / (v / 1e3)
                         for k, v in stats["min"].items()},
        "samples_ms": samples,
        "statistic": ("top-level ratios and ms_per_batch: minimum wall time over the repeats; "
                      "ratios_median: medians; ratios_cpu / cpu_ms_per_batch: minimum process "
                      "CPU time (all threads), robust to other processes on the cores"),
        "batch": {str(s): b for s, b in cfg.batches.items()}, "threads": cfg.threads,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup, "sizes": list(cfg.sizes), "methods": list(cfg.methods),
        "captum_baseline": ("Gaussian blur k=11 sigma=5, replicate padding (computed in the "
                            "timed call)" if cfg.captum_baseline == "blur" else "0"),
        "setup": setups,
        "torch": torch.__version__,
        "peak_rss_mib": {"process": _maxrss_mib(),
                         "per_method_delta": {f"{m}@{s}": v["delta_mib"]
                                              for s, d in memory.items() for m, v in d.items()},
                         "per_method": memory,
                         "isolation": ("one subprocess per method" if cfg.memory == "process"
                                       else "one subprocess per size") if cfg.memory else None,
                         "note": ("a fresh subprocess loads the models and batch; before each "
                                  "method it trims the allocator (malloc_trim) and resets its "
                                  "RSS high-water mark (/proc/self/clear_refs), then runs the "
                                  "method twice; delta = VmHWM after - VmRSS before")
                         if cfg.memory else "per-method memory not measured (--no-memory)"},
        "machine": {**_machine(), "loadavg_start": load0,
                    "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "started": started,
        "config": asdict(cfg),
    })
    return payload


def profile_ops(case: BenchCase, methods: Sequence[str] = ("forward", "pdm-region-soft"),
                repeats: int = 5, row_limit: int = 25) -> str:
    """torch.profiler op tables (self CPU time) for ``methods`` on ``case``."""
    from torch.profiler import ProfilerActivity, profile

    fns = method_fns(case, methods)
    out = []
    for m, fn in fns.items():
        for _ in range(2):
            fn()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            for _ in range(repeats):
                fn()
        out.append(f"== {m}@{case.size} ({repeats} calls)\n"
                   + prof.key_averages().table(sort_by="self_cpu_time_total",
                                               row_limit=row_limit))
    return "\n".join(out)
