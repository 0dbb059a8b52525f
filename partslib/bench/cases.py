"""The benchmark's cases (model pair and batch per size) and the timed callables."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from partslib.config import ClassifierConfig, PDMConfig
from partslib.explain.registry import get_method
from partslib.models import ContractClassifier, SmallResNet, TorchvisionResNet
from partslib.pdm import PartsDetectionModule

if TYPE_CHECKING:
    from partslib.baselines import IBDModel

__all__ = ["DEFAULT_METHODS", "EXPLAINERS", "METHODS", "PEERS", "REFERENCES", "SLOW_METHODS",
           "BenchCase", "build_case", "method_fns"]

#: Registry explainers timed, and the benchmark-only references (not explainers of the registry)
#: The peer explainers of the registry (partslib.explain.peers), timed as explainers.
PEERS = ("captum-ablation", "captum-shapley", "dff", "crp")
EXPLAINERS = ("pdm-region-soft", "pdm-amortised", "ibd", "pdm-occlusion", "pdm-shapley", *PEERS)
REFERENCES = ("forward", "gradcam", "captum_occlusion")
METHODS = ("forward", "pdm-region-soft", "pdm-amortised", "ibd", "gradcam", "captum_occlusion",
           "pdm-occlusion", "pdm-shapley", *PEERS)
#: Timed only when ``--methods`` names them: Captum's Shapley sampling (~250 forwards of one
#: image per image explained: minutes per round at 224 px) and exact part Shapley values
#: (``2^n`` batched forwards per image for ``n`` present parts, 64 for SynthParts' 6 labels).
SLOW_METHODS = ("captum-shapley", "pdm-shapley")
DEFAULT_METHODS = tuple(m for m in METHODS if m not in SLOW_METHODS)
DEFAULT_SIZES = (64, 224)
NUM_LABELS = 6  # SynthParts: background + 5 parts
NUM_CLASSES_64, NUM_CLASSES_224 = 6, 365
TV_PDM_WIDTHS = [128, 64, 32]


@dataclass
class BenchCase:
    """One model and batch that every method explains."""

    size: int
    classifier: ContractClassifier
    pdm: PartsDetectionModule
    images: torch.Tensor  # [B,3,H,W] float in [0,1]
    targets: torch.Tensor  # [B] the predicted classes, explained by every method
    weights: dict[str, str] = field(default_factory=dict)  # where each model came from
    head: Any = None  # the amortised rule's ContributionHead (pdm-amortised)


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
            widths = ClassifierConfig().widths  # the default study's classifier
            clf = SmallResNet(NUM_CLASSES_64, widths=widths, input_size=size)
            weights["classifier"] = (f"random: SmallResNet(num_classes={NUM_CLASSES_64}, "
                                     f"widths={list(widths)})")
        elif rd is not None and (rd / pipeline.PDM_CHECKPOINT).exists():
            try:
                pdm = pipeline.load_pdm(rd)
                weights["pdm"] = f"trained: {rd / pipeline.PDM_CHECKPOINT}"
            except (ValueError, RuntimeError) as e:
                weights["pdm_not_loaded"] = str(e)
        if pdm is None:
            pdm = PartsDetectionModule.from_config(clf, NUM_LABELS, PDMConfig())
            weights["pdm"] = (f"random: from_config(clf, {NUM_LABELS}, PDMConfig()), the "
                              f"default study's PDM")
    else:
        clf = TorchvisionResNet("resnet18", num_classes=NUM_CLASSES_224, input_size=size)
        weights["classifier"] = f"random: torchvision resnet18, {NUM_CLASSES_224} classes"
        pdm = PartsDetectionModule.for_classifier(clf, NUM_LABELS, widths=TV_PDM_WIDTHS,
                                                  image_width=0)
        weights["pdm"] = f"random: for_classifier(clf, {NUM_LABELS}, widths={TV_PDM_WIDTHS})"
    clf.requires_grad_(False).eval()
    pdm.requires_grad_(False).eval()
    head = _head(clf, pdm, rd if weights["pdm"].startswith("trained") else None, weights)
    x, weights["images"] = _images(size, batch, seed)
    with torch.inference_mode():
        targets = clf(x).argmax(1)
    return BenchCase(size, clf, pdm, x, targets.clone(), weights, head)


def _head(clf: ContractClassifier, pdm: PartsDetectionModule, rd: Path | None,
          weights: dict[str, str]) -> Any:
    """The contribution head of the amortised rule: the one trained for these models in
    ``rd`` when there is one, else one of the same shape with random weights (the cost of the
    head does not depend on its training)."""
    from partslib.explain import amortised_training as at
    from partslib.explain.amortised import ContributionHead

    if rd is not None and (rd / at.HEAD_CHECKPOINT).exists():
        try:
            head = at.load_head(str(rd))
        except (ValueError, RuntimeError, KeyError) as e:
            weights["head_not_loaded"] = str(e)
        else:
            if (head.num_labels, head.num_classes) == (pdm.num_labels, clf.num_classes):
                weights["head"] = f"trained: {rd / at.HEAD_CHECKPOINT}"
                return head
            weights["head_not_loaded"] = (f"checkpoint is for {head.num_labels} labels and "
                                          f"{head.num_classes} classes")
    # the shape train_head gives a head by default: its width and earlier stages
    defaults = inspect.signature(at.train_head).parameters
    hidden = int(defaults["hidden"].default)
    stages = tuple(s for s in defaults["stages"].default if s in clf.stage_names)
    channels = clf.fc.in_features + sum(clf.stage_channels[s] for s in stages)
    head = ContributionHead(channels, pdm.num_labels, clf.num_classes, hidden=hidden,
                            stages=stages).eval()
    weights["head"] = (f"random: ContributionHead({channels}, {pdm.num_labels}, "
                       f"{clf.num_classes}, hidden={hidden}, stages={list(stages)}), "
                       f"train_head's default shape")
    return head.requires_grad_(False)


def _random_ibd(case: BenchCase, seed: int = 0) -> IBDModel:
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


def method_fns(case: BenchCase, methods: Sequence[str] = METHODS,
               captum_baseline: str = "blur") -> dict[str, Callable[[], Any]]:
    """One zero-argument callable per method; each explains ``case.images`` for ``case.targets``.

    Registry explainers are built once here (the fused PDM among them), references wrap the
    library calls; heavy imports and object construction happen here, not in the timed calls.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    if captum_baseline not in ("blur", "zero"):
        raise ValueError(f"captum_baseline must be 'blur' or 'zero', got {captum_baseline!r}")
    clf, x, k = case.classifier, case.images, case.targets
    fns: dict[str, Callable[[], Any]] = {}

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return fn()
        return run

    region = get_method("pdm-region-soft").build(clf, pdm=case.pdm)
    for name in (m for m in methods if m in EXPLAINERS):
        ex = region if name == "pdm-region-soft" else get_method(name).build(
            clf, pdm=region.segmenter, ibd=_random_ibd(case) if name == "ibd" else None,
            head=case.head if name == "pdm-amortised" else None)
        fns[name] = no_grad(lambda ex=ex: ex(x, target=k))
    if "forward" in methods:
        fns["forward"] = no_grad(lambda: clf(x))
    if "gradcam" in methods:
        fns["gradcam"] = _gradcam_fn(clf, x, k)
    if "captum_occlusion" in methods:
        fns["captum_occlusion"] = no_grad(_captum_fn(region, x, k, captum_baseline))
    return {m: fns[m] for m in methods}


def _gradcam_fn(clf: ContractClassifier, x: torch.Tensor, k: torch.Tensor
                ) -> Callable[[], Any]:
    """pytorch-grad-cam's GradCAM as its README calls it (frozen classifier, input grad)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = getattr(clf, clf.final_stage)

    def gradcam_fn() -> Any:
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), GradCAM(model=clf, target_layers=[layer]) as cam:
            # grad-cam annotates targets as List[nn.Module], yet its own ClassifierOutputTarget
            # (which it builds itself when targets is None) is a plain callable
            targets = [ClassifierOutputTarget(int(c)) for c in k]
            return cam(input_tensor=xg, targets=targets)  # pyright: ignore[reportArgumentType]
    return gradcam_fn


def _captum_fn(explainer: Any, x: torch.Tensor, k: torch.Tensor, baseline: str
               ) -> Callable[[], Any]:
    """Captum's FeatureAblation over the part label map of the PDM explainer's context."""
    from captum.attr import FeatureAblation

    from partslib.removal import GaussianBlurFill

    ablation = FeatureAblation(explainer.classifier)
    blur = GaussianBlurFill()

    def captum_fn() -> Any:
        labels = explainer.context(x, k).labels  # [B, H, W] the PDM part label map
        mask = labels[:, None].expand(-1, 3, -1, -1)
        base = blur.blur(x) if baseline == "blur" else 0.0
        return ablation.attribute(x, target=k, feature_mask=mask, baselines=base)
    return captum_fn
