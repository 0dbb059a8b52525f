"""Performance benchmark, table T4 (SPEC §7–§8): explanation cost vs forward pass and peers.

Every method explains the same batch with the same model, in one process, and the ratios are
taken within that run: the methods are interleaved round-robin (the start rotates every round),
each is timed ``repeats`` times after ``warmup`` untimed rounds, and the *minimum* time is
reported (the median too). Shared CPUs make absolute times noisy; the minimum of interleaved
runs is the most stable estimate of what each method costs. Methods:

* ``forward``: ``classifier(x)``, the reference.
* ``pdm_region``: ``PartExplainer(classifier, pdm)(x, target=k)`` in region mode: classifier
  forward, PDM part probabilities at full resolution, argmax map and contributions.
* ``pdm_occlusion``: the same explainer in occlusion mode (default Gaussian-blur imputer, every
  present part of every image removed, all in one forward pass).
* ``ibd``: IBD (:mod:`partslib.ibd`) with concept classifiers of the right shape (random weights:
  timing only): final features, the linear concept maps upsampled to the image (the maps T1
  segments with) and the basis-rule contributions.
* ``gradcam``: pytorch-grad-cam's ``GradCAM`` object on the final stage, one
  ``ClassifierOutputTarget`` per image, as its README calls it. The classifier is frozen and the
  input requires grad (as :func:`partslib.baselines.gradcam_maps` does), so no weight gradient is
  computed.
* ``captum_occlusion``: Captum's ``FeatureAblation`` with ``feature_mask`` = the PDM part label
  map broadcast over the channels ("occlusion over part masks"); the time includes computing that
  map (classifier features + PDM). Baseline: the Gaussian-blurred image (the PDM-occlusion
  imputer, computed inside the timed call) or 0 (``captum_baseline="zero"``).

Sizes: 64 is the default study's SmallResNet (its checkpoints in ``results/<profile>/`` when they
exist, random weights of that architecture otherwise), 224 a torchvision resnet18 with 365
classes and a PDM ``for_classifier(clf, 6, widths=[128, 64, 32])``, both with random weights.
Other sizes (tests) use a random SmallResNet below 128 pixels, a random resnet18 from 128 up.

Peak memory: ``ru_maxrss`` of the benchmark process, and per method the peak RSS (``VmHWM``, the
counter behind ``ru_maxrss``) of two calls above the RSS just before them, in a fresh subprocess
per size that loads the models once and, before each method, trims the allocator and resets the
high-water mark (``--memory-per-process``: a subprocess per method, slower, fully isolated).

The batch can differ by size (``--batch 64 8``: 64 at 64 px, 8 at 224 px, as the default study
runs it): every method of a size explains the same batch, so the ratios stay like for like.

Run ``python -m partslib.bench --profile default``; writes ``results/<profile>/bench.json`` and
``t4.csv`` (an existing pair is kept as ``bench.previous.json`` / ``t4.previous.csv``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # before torch loads OpenMP; as the study runner's kernels do
    # idle OpenMP threads sleep instead of spinning: on shared cores spinning threads steal the
    # time of the thread the others wait for (partslib.study sets the same)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from partslib.explain import PartExplainer
from partslib.models import ContractClassifier, SmallResNet, TorchvisionResNet
from partslib.pdm import PartsDetectionModule

__all__ = ["METHODS", "BenchConfig", "BenchCase", "build_case", "method_fns", "time_methods",
           "run_bench", "write_outputs", "format_table", "profile_ops", "main"]

METHODS = ("forward", "pdm_region", "ibd", "gradcam", "captum_occlusion", "pdm_occlusion")
REFERENCE = "forward"
SUBJECT = "pdm_region"
# SPEC §8: PDM-region ≤ 2× a forward pass at batch 64, and faster than GradCAM.
TARGETS = {"pdm_region_vs_forward@64": 2.0, "pdm_region_vs_gradcam@64": 1.0}
DEFAULT_SIZES = (64, 224)
SMALL_WIDTHS = (24, 48, 96)  # profiles/default.yaml 02_classifier.widths
SMALL_PDM = {"widths": [48, 24], "image_width": 0, "separable": False}  # 03_pdm
NUM_LABELS = 6  # SynthParts: background + 5 parts
NUM_CLASSES_64, NUM_CLASSES_224 = 6, 365
TV_PDM_WIDTHS = [128, 64, 32]


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures (all of it is written to ``bench.json``)."""

    results_dir: str
    sizes: tuple[int, ...] = DEFAULT_SIZES
    methods: tuple[str, ...] = METHODS
    repeats: int = 15  # timed rounds per size; every method runs once per round
    warmup: int = 2  # untimed rounds first
    threads: int = 2  # torch.set_num_threads
    batch: int | tuple[int, ...] = 64  # one batch for every size, or one per size
    seed: int = 0
    captum_baseline: str = "blur"  # "blur" (the PDM-occlusion imputer) or "zero"
    # per-method peak RSS: True / "size" = one subprocess per size, methods one after another
    # (allocator trimmed and high-water mark reset between them); "process" = one subprocess per
    # method; False = not measured
    memory: bool | str = True
    progress: bool = True

    def __post_init__(self):
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
            return {s: self.batch for s in self.sizes}
        return dict(zip(self.sizes, self.batch))


@dataclass
class BenchCase:
    """One model and batch that every method explains."""

    size: int
    classifier: ContractClassifier
    pdm: PartsDetectionModule
    images: torch.Tensor  # [B,3,H,W] float in [0,1]
    targets: torch.Tensor  # [B] the predicted classes, explained by every method
    weights: dict[str, str] = field(default_factory=dict)  # where each model came from


# --------------------------------------------------------------------------- cases


def _images(size: int, batch: int, seed: int) -> tuple[torch.Tensor, str]:
    """SynthParts test-stream images (seed 1, as the study's test split) at ``size``."""
    from partslib.data.synthparts import SynthParts, SynthPartsConfig

    ds = SynthParts(SynthPartsConfig(size=size), seed=1 + seed, n=batch, progress=False)
    return ds.images.float() / 255.0, f"SynthParts(size={size}, seed={1 + seed})"


def build_case(size: int, batch: int = 64, results_dir: str | os.PathLike | None = None,
               seed: int = 0) -> BenchCase:
    """The model pair and batch of one size (see the module docstring)."""
    from partslib import pipeline

    torch.manual_seed(seed)
    weights: dict[str, str] = {}
    rd = Path(results_dir) if results_dir is not None else None
    if size < 128:
        clf: ContractClassifier | None = None
        pdm: PartsDetectionModule | None = None
        if rd is not None and (rd / pipeline.CLASSIFIER_CHECKPOINT).exists():
            try:  # a study may be training it right now: an unfinished checkpoint refuses
                clf = pipeline.load_classifier(rd)
                weights["classifier"] = f"trained: {rd / pipeline.CLASSIFIER_CHECKPOINT}"
            except (ValueError, RuntimeError) as e:
                weights["classifier_not_loaded"] = str(e)
            if clf is not None and clf.input_size != (size, size):
                weights["classifier_not_loaded"] = f"checkpoint is for {clf.input_size} images"
                clf = None
        if clf is None:
            clf = SmallResNet(NUM_CLASSES_64, widths=SMALL_WIDTHS, input_size=size)
            weights["classifier"] = (f"random: SmallResNet(num_classes={NUM_CLASSES_64}, "
                                     f"widths={list(SMALL_WIDTHS)})")
        elif (rd / pipeline.PDM_CHECKPOINT).exists():
            try:
                pdm = pipeline.load_pdm(rd)
                weights["pdm"] = f"trained: {rd / pipeline.PDM_CHECKPOINT}"
            except (ValueError, RuntimeError) as e:
                weights["pdm_not_loaded"] = str(e)
        if pdm is None:
            pdm = PartsDetectionModule.for_classifier(clf, NUM_LABELS, **SMALL_PDM)
            weights["pdm"] = f"random: for_classifier(clf, {NUM_LABELS}, **{SMALL_PDM})"
    else:
        clf = TorchvisionResNet("resnet18", num_classes=NUM_CLASSES_224, input_size=size)
        weights["classifier"] = f"random: torchvision resnet18, {NUM_CLASSES_224} classes"
        pdm = PartsDetectionModule.for_classifier(clf, NUM_LABELS, widths=TV_PDM_WIDTHS)
        weights["pdm"] = f"random: for_classifier(clf, {NUM_LABELS}, widths={TV_PDM_WIDTHS})"
    clf.requires_grad_(False).eval()
    pdm.requires_grad_(False).eval()
    x, weights["images"] = _images(size, batch, seed)
    with torch.inference_mode():
        targets = clf(x).argmax(1)
    return BenchCase(size, clf, pdm, x, targets.clone(), weights)


def _random_ibd(case: BenchCase, seed: int = 0):
    """An :class:`~partslib.baselines.IBDModel` with random concept classifiers (timing only)."""
    from partslib.baselines import IBDModel
    from partslib.ibd import ConceptClassifiers, decompose

    g = torch.Generator().manual_seed(seed)
    C = case.classifier.fc.in_features
    L = case.pdm.num_labels
    concepts = ConceptClassifiers(weight=torch.randn(L, C, generator=g) / C ** 0.5,
                                  bias=torch.zeros(L), concepts=tuple(range(L)),
                                  ap=torch.zeros(L))
    parts = tuple(range(1, L))
    q = concepts.concept_vectors()[1:]
    dec = decompose(case.classifier.fc.weight.detach(), q, min(7, len(parts), C))
    return IBDModel(classifier=case.classifier, concept_classifiers=concepts, decomposition=dec,
                    part_concepts=parts, num_labels=L)


# --------------------------------------------------------------------------- methods


def method_fns(case: BenchCase, methods: Sequence[str] = METHODS,
               captum_baseline: str = "blur") -> dict[str, Callable[[], Any]]:
    """One zero-argument callable per method; each explains ``case.images`` for ``case.targets``.

    Heavy imports and object construction happen here, not in the timed calls.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    if captum_baseline not in ("blur", "zero"):
        raise ValueError(f"captum_baseline must be 'blur' or 'zero', got {captum_baseline!r}")
    clf, x, k = case.classifier, case.images, case.targets
    explainer = PartExplainer(clf, case.pdm)  # builds the fused PDM once
    fns: dict[str, Callable[[], Any]] = {}

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return fn()
        return run

    if "forward" in methods:
        fns["forward"] = no_grad(lambda: clf(x))
    if "pdm_region" in methods:
        fns["pdm_region"] = no_grad(lambda: explainer(x, target=k))
    if "ibd" in methods:
        from partslib.ibd import ibd_contributions

        ibd = _random_ibd(case)
        size = tuple(x.shape[-2:])

        def ibd_fn() -> Any:
            A = clf.features(x)[clf.final_stage]
            a = A.mean(dim=(2, 3))
            clf.fc(a)  # the logits, as IBDModel.contributions computes them
            maps = ibd.linear_maps_from_features(A, size)  # [B, P+1, H, W]
            return maps, ibd_contributions(a, ibd.decomposition, k)
        fns["ibd"] = no_grad(ibd_fn)
    if "gradcam" in methods:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = getattr(clf, clf.final_stage)

        def gradcam_fn() -> Any:
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad(), GradCAM(model=clf, target_layers=[layer]) as cam:
                return cam(input_tensor=xg, targets=[ClassifierOutputTarget(int(c)) for c in k])
        fns["gradcam"] = gradcam_fn
    if "captum_occlusion" in methods:
        from captum.attr import FeatureAblation

        from partslib.removal import GaussianBlurFill

        ablation = FeatureAblation(clf)
        blur = GaussianBlurFill()
        pdm = explainer.pdm

        def captum_fn() -> Any:
            feats = clf.features(x)
            image = clf.normalise(x) if pdm.image_proj is not None else None
            labels = pdm(feats, image).argmax(1)  # [B, H, W] the PDM part label map
            mask = labels[:, None].expand(-1, 3, -1, -1)
            base = blur.blur(x) if captum_baseline == "blur" else 0.0
            return ablation.attribute(x, target=k, feature_mask=mask, baselines=base)
        fns["captum_occlusion"] = no_grad(captum_fn)
    if "pdm_occlusion" in methods:
        fns["pdm_occlusion"] = no_grad(lambda: explainer(x, target=k, mode="occlusion"))
    return {m: fns[m] for m in methods}


def time_methods(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2,
                 progress: bool = True, desc: str = "bench"
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of every method, interleaved round-robin: ``(wall, cpu)``.

    Each round runs every method once, starting one method later than the previous round, so
    that no method always follows the same one. ``warmup`` untimed rounds come first. ``cpu`` is
    the process CPU time of the call (all threads): unlike wall time it does not count the time
    other processes hold the cores, so with one thread it is the contention-robust cost.
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(fns)
    wall: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    with tqdm(total=(warmup + repeats) * len(names), desc=desc, disable=not progress,
              leave=False) as bar:
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


# --------------------------------------------------------------------------- memory


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


def _child_memory(methods: Sequence[str], size: int, batch: int, results_dir: str | None,
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
        before = _proc_status_mib("VmRSS") if reset else setup_peak
        fns[method]()
        fns[method]()
        after = _proc_status_mib("VmHWM") if reset else _maxrss_mib()
        out[method] = {"setup_peak_mib": setup_peak, "rss_before_mib": before,
                       "peak_mib": after, "delta_mib": max(after - before, 0.0), "reset": reset}
    return out


def peak_memory(cfg: BenchConfig, size: int) -> dict[str, dict[str, float]]:
    """Per method, the peak RSS growth over the RSS before it, in one fresh subprocess per
    size (``cfg.memory == "process"``: one per method, slower and fully isolated)."""
    from tqdm.auto import tqdm

    groups = ([[m] for m in cfg.methods] if cfg.memory == "process" else [list(cfg.methods)])
    out = {}
    for group in tqdm(groups, desc=f"memory@{size}", disable=not cfg.progress, leave=False):
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


# --------------------------------------------------------------------------- the run


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


def _stage_seconds(results_dir: Path) -> dict[str, Any] | None:
    """Stage durations from ``timings.json`` of the run in ``results_dir``, or, while a study is
    running there (the runner has archived the last run), of the latest archived run."""
    path = results_dir / "timings.json"
    if not path.exists():
        runs = sorted((results_dir / "previous").glob("*/timings.json"))
        if not runs:
            return None
        path = runs[-1]
    t = json.loads(path.read_text())
    return {"stages": t.get("stages", {}), "total_seconds": t.get("total_seconds"),
            "status": t.get("status"), "started": t.get("started"), "file": str(path)}


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
    if "pdm_occlusion" in t and "captum_occlusion" in t:
        out[f"pdm_occlusion_vs_captum_occlusion@{size}"] = (t["pdm_occlusion"]
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
            present = PartExplainer(case.classifier, case.pdm)(case.images).present
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
        "stage_seconds": _stage_seconds(Path(cfg.results_dir)),
        "machine": {**_machine(), "loadavg_start": load0,
                    "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "started": started,
        "config": asdict(cfg),
    })
    return payload


def _batch_of(payload: dict[str, Any], size: int) -> int:
    b = payload["batch"]
    return b if isinstance(b, int) else b[str(size)]


def _t4_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for size in payload["sizes"]:
        ref = payload["ms_per_batch"].get(_key(REFERENCE, size))
        for m in payload["methods"]:
            k = _key(m, size)
            ms = payload["ms_per_batch"][k]
            rows.append({"size": size, "method": m, "batch": _batch_of(payload, size),
                         "ms_per_batch": round(ms, 2),
                         "ms_per_batch_median": round(payload["ms_per_batch_median"][k], 2),
                         "images_per_s": round(payload["images_per_s"][k], 1),
                         "ratio_to_forward": None if ref is None else round(ms / ref, 3),
                         "cpu_ms_per_batch": round(payload["cpu_ms_per_batch"][k], 2),
                         "peak_rss_delta_mib": (
                             None if k not in payload["peak_rss_mib"]["per_method_delta"]
                             else round(payload["peak_rss_mib"]["per_method_delta"][k], 1))})
    return rows


def write_outputs(results_dir: str | os.PathLike, payload: dict[str, Any]) -> tuple[Path, Path]:
    """``bench.json`` and ``t4.csv`` in ``results_dir``; an existing pair becomes
    ``bench.previous.json`` / ``t4.previous.csv`` (never silently overwritten)."""
    from partslib.pipeline import write_json

    rd = Path(results_dir)
    rd.mkdir(parents=True, exist_ok=True)
    js, tc = rd / "bench.json", rd / "t4.csv"
    for path, prev in ((js, rd / "bench.previous.json"), (tc, rd / "t4.previous.csv")):
        if path.exists():
            os.replace(path, prev)
    write_json(js, payload)
    rows = _t4_rows(payload)
    tmp = tc.with_name(tc.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, tc)
    return js, tc


def format_table(payload: dict[str, Any]) -> str:
    """The T4 table and the ratios, as text."""
    batches = ", ".join(f"{_batch_of(payload, s)} at {s}px" for s in payload["sizes"])
    lines = [f"T4 cost: batch {batches}, {payload['threads']} threads, torch "
             f"{payload['torch']}, min of {payload['repeats']} interleaved repeats",
             f"{'size':>5} {'method':<17} {'ms/batch':>10} {'median':>10} {'img/s':>9} "
             f"{'x forward':>9} {'cpu ms':>9} {'peak MiB':>9}"]
    for r in _t4_rows(payload):
        ratio = "" if r["ratio_to_forward"] is None else f"{r['ratio_to_forward']:.2f}"
        mem = "" if r["peak_rss_delta_mib"] is None else f"{r['peak_rss_delta_mib']:.0f}"
        lines.append(f"{r['size']:>5} {r['method']:<17} {r['ms_per_batch']:>10.1f} "
                     f"{r['ms_per_batch_median']:>10.1f} {r['images_per_s']:>9.0f} {ratio:>9} "
                     f"{r['cpu_ms_per_batch']:>9.1f} {mem:>9}")
    lines.append("ratios: min wall time [median wall time] {min CPU time}")
    for k, v in payload.items():
        if "_vs_" in k and isinstance(v, float):
            lines.append(f"  {k:<42} {v:7.2f}  [{payload['ratios_median'][k]:.2f}] "
                         f"{{{payload['ratios_cpu'][k]:.2f}}}")
    for k, t in payload["targets"].items():
        lines.append(f"  target {k} {t['target']}: {'met' if t['met'] else 'NOT met'} "
                     f"({t['value']:.2f})")
    st = payload.get("stage_seconds")
    if st:
        lines.append("study stages (s): " + ", ".join(f"{k} {v}" for k, v in st["stages"].items())
                     + f"; total {st['total_seconds']} ({st['status']})")
    lines.append(f"process peak RSS: {payload['peak_rss_mib']['process']:.0f} MiB")
    return "\n".join(lines)


def profile_ops(case: BenchCase, methods: Sequence[str] = ("forward", "pdm_region"),
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


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partslib.bench", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="default",
                   help="writes results/<profile>/ (default: default)")
    p.add_argument("--results-dir", default=None, help="instead of results/<profile>/")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per size (>= 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[64],
                   help="batch size, one for all sizes or one per size (e.g. 64 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--captum-baseline", choices=("blur", "zero"), default="blur")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method subprocesses")
    p.add_argument("--memory-per-process", action="store_true",
                   help="one subprocess per method for peak memory (default: one per size)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ops", action="store_true",
                   help="also print torch.profiler op tables of forward and pdm_region")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.results_dir is None:
        from partslib.study import find_root

        args.results_dir = str(find_root() / "results" / args.profile)
    if args.child_memory:
        print(json.dumps(_child_memory(args.child_memory.split(","), args.sizes[0], args.batch[0],
                                       args.results_dir, args.seed, args.threads,
                                       args.captum_baseline)))
        return 0
    cfg = BenchConfig(results_dir=args.results_dir, sizes=tuple(args.sizes),
                      methods=tuple(args.methods), repeats=args.repeats, warmup=args.warmup,
                      threads=args.threads,
                      batch=tuple(args.batch),
                      seed=args.seed,
                      captum_baseline=args.captum_baseline,
                      memory=False if args.no_memory else
                      ("process" if args.memory_per_process else True),
                      progress=not args.no_progress)
    payload = run_bench(cfg)
    js, tc = write_outputs(cfg.results_dir, payload)
    print(format_table(payload))
    print(f"wrote {js} and {tc}")
    if args.ops:
        torch.set_num_threads(cfg.threads)
        for size in cfg.sizes:
            print(profile_ops(build_case(size, cfg.batches[size], cfg.results_dir, cfg.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
