"""Performance benchmark, table T4 (SPEC §7–§8): explanation cost vs forward pass and peers.

Every method explains the same batch with the same model, in one process, and the ratios are
taken within that run: the methods are interleaved round-robin (the start rotates every round),
each is timed ``repeats`` times after ``warmup`` untimed rounds, and the *minimum* time is
reported (the median too). Shared CPUs make absolute times noisy; the minimum of interleaved
runs is the most stable estimate of what each method costs. Methods:

* ``forward``: ``classifier(x)``, the reference.
* ``pdm-region-soft``, ``pdm-occlusion``, ``ibd``: the explainers of the method registry
  (:mod:`partslib.explain.registry`), built by ``get_method(name).build(...)`` and called as
  the studies call them: classifier forward, part map at full resolution, argmax map and the
  rule's contributions (occlusion: Gaussian-blur imputer, every present part of every image
  removed, in batched forwards). ``ibd`` runs with concept classifiers of the right shape
  (random weights: timing only): its linear concept maps and the basis-rule contributions.
* ``pdm-amortised``: the amortised rule, one classifier + PDM pass and the contribution
  head (:class:`~partslib.explain.amortised.ContributionHead`): the head trained for the
  models in ``results/<profile>/checkpoints/head.pt`` when the trained classifier and PDM are
  loaded and it exists, else a head of the same shape with random weights (its cost does not
  depend on its training).
* ``pdm-shapley`` (only when ``--methods`` names it, like ``captum-shapley``): exact part
  Shapley values with background fill, ``2^n`` batched classifier passes per image.
* ``gradcam`` (reference): pytorch-grad-cam's ``GradCAM`` object on the final stage, one
  ``ClassifierOutputTarget`` per image, as its README calls it. The classifier is frozen and the
  input requires grad (as :func:`partslib.baselines.gradcam_maps` does), so no weight gradient is
  computed.
* ``captum_occlusion`` (reference): Captum's ``FeatureAblation`` with ``feature_mask`` = the
  PDM part label map broadcast over the channels ("occlusion over part masks"); the time
  includes computing that map (the PDM explainer's context: classifier features + PDM).
  Baseline: the Gaussian-blurred image (the PDM-occlusion imputer, computed inside the timed
  call) or 0 (``captum_baseline="zero"``).

Sizes: 64 is the default study's SmallResNet and PDM (their checkpoints in
``results/<profile>/`` when they exist, otherwise random weights of the architectures of
:class:`~partslib.config.ClassifierConfig` and :class:`~partslib.config.PDMConfig`, the default
study's), 224 a torchvision resnet18 with 365 classes and a PDM ``for_classifier(clf, 6,
widths=[128, 64, 32], image_width=0)`` (a ResNet's first stage is at stride 4: no image step),
both with random weights.
Other sizes (tests) use a random SmallResNet below 128 pixels, a random resnet18 from 128 up.

Peak memory: ``ru_maxrss`` of the benchmark process, and per method the peak RSS (``VmHWM``, the
counter behind ``ru_maxrss``) of two calls above the RSS just before them, in a fresh subprocess
per size that loads the models once and, before each method, trims the allocator and resets the
high-water mark (``--memory-per-process``: a subprocess per method, slower, fully isolated).

The batch can differ by size (``--batch 64 8``: 64 at 64 px, 8 at 224 px, as the default study
runs it): every method of a size explains the same batch, so the ratios stay like for like.

Run ``python -m partslib.bench --profile default``; writes ``results/<profile>/bench.json`` and
``t4.csv`` (an existing pair is kept as ``bench.previous.json`` / ``t4.previous.csv``). The
benchmark reads nothing of earlier runs.

Modules: :mod:`~partslib.bench.cases` (models, batch, the timed callables),
:mod:`~partslib.bench.timing` (interleaved timing, ratios, the payload),
:mod:`~partslib.bench.memory` (peak-memory subprocesses), :mod:`~partslib.bench.outputs`
(``bench.json``, ``t4.csv``, the text table), :mod:`~partslib.bench.cli`.
"""

from __future__ import annotations

import os
import sys

if sys.argv and sys.argv[0] == "-m":  # `python -m partslib.bench`, before torch loads OpenMP:
    # idle OpenMP threads sleep instead of spinning: on shared cores spinning threads steal the
    # time of the thread the others wait for (partslib.runner sets the same for its kernels)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from partslib.bench.cases import (
    DEFAULT_METHODS,
    DEFAULT_SIZES,
    EXPLAINERS,
    METHODS,
    PEERS,
    REFERENCES,
    SLOW_METHODS,
    BenchCase,
    build_case,
    method_fns,
)
from partslib.bench.cli import main
from partslib.bench.memory import peak_memory
from partslib.bench.outputs import format_table, write_outputs
from partslib.bench.timing import (
    REFERENCE,
    SUBJECT,
    TARGETS,
    BenchConfig,
    profile_ops,
    run_bench,
    time_methods,
)

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SIZES",
    "EXPLAINERS",
    "METHODS",
    "PEERS",
    "REFERENCE",
    "REFERENCES",
    "SLOW_METHODS",
    "SUBJECT",
    "TARGETS",
    "BenchCase",
    "BenchConfig",
    "build_case",
    "format_table",
    "main",
    "method_fns",
    "peak_memory",
    "profile_ops",
    "run_bench",
    "time_methods",
    "write_outputs",
]
