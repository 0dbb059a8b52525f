"""The baselines the PDM is measured against: Grad-CAM (through pytorch-grad-cam), CAM and IBD.

* Grad-CAM: Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391, computed by the
  ``pytorch-grad-cam`` library itself (``jacobgil/pytorch-grad-cam``, PyPI ``grad-cam``), not a
  re-implementation: :func:`gradcam_maps`. Other methods of the library are selectable by name
  (:data:`CAM_METHODS`).
* CAM: Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150: ``CAM_k(u) = w_k · A(u)``.
  pytorch-grad-cam has no plain CAM, so :func:`cam_maps` computes it directly. For a GAP +
  linear head the Grad-CAM channel weights are ``∂logit_k/∂A_c(u) averaged over u = w_kc/(h·w)``,
  so Grad-CAM = ReLU(CAM)/(h·w): the two maps agree up to the library's per-image scaling
  (``tests/test_baselines.py`` checks the library call against this identity).
* IBD: Zhou, Sun, Bau, Torralba, ECCV 2018, ported in :mod:`partslib.ibd` (see
  ``shared/docs/ibd.md``). :func:`fit_ibd` fits it to a partslib classifier and returns an
  :class:`IBDModel` with IBD's contributions, its 1×1 linear concept maps, the segmentation those
  maps give and IBD's heatmaps.
* :func:`heatmap_part_contributions`: part contributions from any heatmap (its positive mass per
  part region, Relevance Mass Accuracy per part).
* SPEC §4's {linear 1×1 maps, PDM maps} × {basis rule, region rule} ablation is run by T2
  through the method registry (:mod:`partslib.explain.registry`).

Choices made here (the reference code has no segmentation task, so these are ours):

* **Concepts.** The concept classifiers are trained for every label of the masks, background
  (label 0) included, so that the linear maps can segment (argmax over background + parts).
  IBD's *decomposition* uses the part concepts only (1..P): IBD decomposes a class weight into
  interpretable concepts, and background is not one.
* **Number of components.** IBD's ``BASIS_NUM = 7`` assumes hundreds of concepts. With P parts,
  ``n_components`` is capped at ``min(n_components, P, C)``, so with P = 5 every part is in the
  basis unless the pursuit runs out of independent candidates (then fewer are used). Parts not
  in the basis get contribution 0; the residual is reported separately.
* **Units.** IBD explains the cosine ``ŵ_k·â`` (ibd.md §1). Since ``w_k·a = ‖w_k‖‖a‖ ŵ_k·â``,
  multiplying every term by ``‖w_k‖‖a‖`` gives logit units with
  ``b_k + Σ_p c_p + residual = logit_k`` exactly; T2's 2×2 ablation compares all four cells in
  logit units so that only the map and the rule differ between cells.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.constants import INFERENCE_BATCH
from partslib.explain import resolve_targets
from partslib.ibd import (
    ConceptClassifiers,
    IBDDecomposition,
    IBDExplanation,
    concept_score_maps,
    decompose,
    ibd_contributions,
    ibd_heatmaps,
    sample_labels_to_grid,
    train_concept_classifiers,
)
from partslib.metrics import relevance_mass
from partslib.models import ContractClassifier, check_images
from partslib.pdm import extract_features, label_map

__all__ = [
    "CAM_METHODS",
    "IBDContributions",
    "IBDModel",
    "Targets",
    "cam_maps",
    "fit_ibd",
    "gradcam_maps",
    "heatmap_part_contributions",
    "normalise_maps",
]

# pytorch-grad-cam classes by name: the cheap ones (one forward + at most one backward pass).
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
IBD_BASIS_NUM = 7  # CSAILVision/IBD settings.BASIS_NUM
# One class per image (tensor or list), one int for all, or None for the predicted class.
Targets = int | Sequence[int] | Tensor | None


# --------------------------------------------------------------------------- heatmaps


def _chunks(n: int, batch_size: int) -> range:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return range(0, n, batch_size)


def _target_chunk(targets: Targets, start: int, stop: int) -> Targets:
    """The targets of images ``start:stop`` (``None`` and a single int apply to all)."""
    if targets is None or isinstance(targets, int):
        return targets
    t = torch.as_tensor(targets).long().flatten()
    return t if t.numel() == 1 else t[start:stop]


def gradcam_maps(classifier: ContractClassifier, images: Tensor, targets: Targets = None,
                 method: str = "gradcam", batch_size: int = 64) -> Tensor:
    """Grad-CAM (or another pytorch-grad-cam method) of the final stage, by the library.

    Runs ``pytorch_grad_cam.<Method>(model=classifier, target_layers=[final stage module])``
    with one ``ClassifierOutputTarget`` per image inside a ``with`` block, so its hooks are
    released on return. The library's conventions are kept: ReLU, per-image min–max scaling,
    resize to the input with ``cv2.resize`` (bilinear), scaling again.

    The classifier is left as it was: its parameters are frozen for the call (gradients flow
    to the input instead, so a frozen classifier works and no ``.grad`` is written) and its
    train/eval mode is restored (the library switches it to eval).

    Args:
        classifier: a partslib classifier (feature contract).
        images: float ``[B,3,H,W]`` in [0, 1] (or uint8).
        targets: class per image, one int for all, or None (the predicted class).
        method: a key of :data:`CAM_METHODS`.
        batch_size: images per library call.

    Returns:
        ``[B,H,W]`` float32 maps in [0, 1], on the images' device.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {sorted(CAM_METHODS)}, got {method!r}")
    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    images = check_images(images)
    layer = getattr(classifier, classifier.final_stage)
    params = list(classifier.parameters())
    flags = [p.requires_grad for p in params]
    was_training = classifier.training
    out = []
    try:
        classifier.requires_grad_(False)
        with torch.enable_grad(), cam_class(model=classifier, target_layers=[layer]) as cam:
            for start in _chunks(len(images), batch_size):
                x = images[start:start + batch_size].detach().clone().requires_grad_(True)
                t = _target_chunk(targets, start, start + len(x))
                if t is None:
                    lib_targets = None  # the library explains the argmax class
                else:
                    t = resolve_targets(t, torch.empty(len(x), classifier.num_classes))
                    lib_targets = [ClassifierOutputTarget(int(k)) for k in t]
                out.append(torch.from_numpy(cam(input_tensor=x, targets=lib_targets)))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        classifier.train(was_training)
    # BaseCAM.__exit__ swallows IndexError (it only prints): never return a short result.
    if sum(len(o) for o in out) != len(images):
        raise RuntimeError(f"pytorch-grad-cam {CAM_METHODS[method]} failed inside its with-block "
                           f"(it swallows IndexError); got maps for "
                           f"{sum(len(o) for o in out)} of {len(images)} images")
    return torch.cat(out).to(images.device)


@torch.no_grad()
def _final_features(classifier: ContractClassifier, images: Tensor,
                    batch_size: int = INFERENCE_BATCH) -> Tensor:
    return extract_features(classifier, images, [classifier.final_stage],
                            batch_size=batch_size)[classifier.final_stage]


@torch.no_grad()
def cam_maps(classifier: ContractClassifier, images: Tensor, targets: Targets = None,
             batch_size: int = INFERENCE_BATCH) -> Tensor:
    """Class activation maps ``CAM_k(u) = w_k · A(u)`` upsampled to the image (Zhou et al. 2016).

    Written directly: pytorch-grad-cam has no plain CAM. Signed and unnormalised (no bias), so
    ``b_k + mean_u CAM_k(u) = logit_k`` on the feature grid; bilinear upsampling
    (``align_corners=False``). For GAP + linear heads Grad-CAM = ReLU(CAM) up to scale.

    Returns:
        ``[B,H,W]`` float maps.
    """
    images = check_images(images)
    classifier.eval()
    out = []
    for start in _chunks(len(images), batch_size):
        x = images[start:start + batch_size]
        A = classifier.features(x)[classifier.final_stage]  # [b, C, h, w]
        k = resolve_targets(_target_chunk(targets, start, start + len(x)), classifier.head(A))
        cam = torch.einsum("bc,bchw->bhw", classifier.fc.weight[k], A)
        out.append(F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0])
    return torch.cat(out)


def normalise_maps(maps: Tensor) -> Tensor:
    """Per-image min–max scaling of ``[B,H,W]`` maps to [0, 1]; a constant map becomes 0."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be [B,H,W], got shape {tuple(maps.shape)}")
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    scaled = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.reshape(maps.shape)


def heatmap_part_contributions(maps: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """Part contributions of a heatmap: the share of its positive mass in each part region.

    ``c[b,p] = Σ_{u∈p} max(map,0) / Σ_u max(map,0)``
    (:func:`partslib.metrics.relevance_mass`). ``labels`` are ground-truth masks or a predicted
    (e.g. PDM argmax) part map; unannotated pixels (255) take their share of the total, so a
    row sums to 1 minus that share. A map with no positive mass credits no part: its row is 0
    (``relevance_mass`` gives NaN there; a contribution of 0 is the honest claim).

    Args:
        maps: ``[B,H,W]`` heatmaps at label resolution (e.g. :func:`gradcam_maps`).
        labels: ``[B,H,W]`` integer part labels in ``0..num_labels-1`` or 255.
        num_labels: P + 1 (background + parts).

    Returns:
        ``[B, num_labels]`` float64 shares in [0, 1].
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be an int >= 1 (background + parts), got "
                         f"{num_labels!r}")
    return relevance_mass(maps, labels, num_labels - 1).nan_to_num(nan=0.0)


# --------------------------------------------------------------------------- IBD


def _hw(x: Tensor) -> tuple[int, int]:
    """``(H, W)``: the last two dimensions of ``x``."""
    return int(x.shape[-2]), int(x.shape[-1])


@dataclass(frozen=True)
class IBDContributions:
    """IBD's basis-rule contributions, per label (ibd.md §4).

    ``contributions`` are on IBD's scale, the cosine ``ŵ_k·â``:
    ``contributions.sum(1) + residual == total``. Multiply by ``scale = ‖w_k‖‖a‖`` for logit
    units (``logit_contributions``): ``bias + Σ logit_contributions + logit_residual = score``.
    Column 0 (background) and parts outside the basis are 0.
    """

    targets: Tensor  # [B] explained class
    contributions: Tensor  # [B, P+1] s_i q_ci·â placed at each chosen part's label
    residual: Tensor  # [B] r·â
    total: Tensor  # [B] ŵ_k·â (sum of all components)
    scale: Tensor  # [B] ‖w_k‖·‖a‖
    bias: Tensor  # [B] b_k
    score: Tensor  # [B] logit_k
    explanation: IBDExplanation  # the reference output (concept rows sorted by contribution)

    @property
    def percentages(self) -> Tensor:
        """``100 · c / total`` per label, as IBD displays them (the residual has the rest)."""
        return 100 * self.contributions / self.total[:, None]

    @property
    def logit_contributions(self) -> Tensor:
        """``contributions · scale``: the contributions in logit units ``[B, P+1]``."""
        return self.contributions * self.scale[:, None]

    @property
    def logit_residual(self) -> Tensor:
        """``residual · scale``: the residual in logit units ``[B]``."""
        return self.residual * self.scale

    def completeness_error(self) -> Tensor:
        """``|b + Σ c + r − logit| / (|b| + Σ|c| + |r|)`` in logit units, per image."""
        c, r = self.logit_contributions, self.logit_residual
        lhs = self.bias + c.sum(1) + r
        scale = self.bias.abs() + c.abs().sum(1) + r.abs()
        return (lhs - self.score).abs() / scale.clamp_min(1e-12)


@dataclass
class IBDModel:
    """IBD fitted to a partslib classifier (see :func:`fit_ibd`).

    Attributes:
        classifier: the explained classifier (frozen; never changed).
        concept_classifiers: one linear 1×1 classifier per label that had a positive grid cell
            (background included); ``concepts`` holds their label ids.
        decomposition: IBD's decomposition of ``classifier.fc.weight`` over the part concepts.
        part_concepts: label id of each concept row of ``decomposition``.
        num_labels: P + 1.
        n_components_requested: the ``n_components`` asked for (``decomposition.n_components``
            is the number used, after capping).
    """

    classifier: ContractClassifier
    concept_classifiers: ConceptClassifiers
    decomposition: IBDDecomposition
    part_concepts: tuple[int, ...]
    num_labels: int
    n_components_requested: int = IBD_BASIS_NUM

    @property
    def missing_labels(self) -> list[int]:
        """Labels without a concept classifier (no positive grid cell in the fitting data)."""
        return [c for c in range(self.num_labels) if c not in self.concept_classifiers.concepts]

    def part_classifiers(self) -> ConceptClassifiers:
        """The concept classifiers of the decomposed (part) concepts, in decomposition order."""
        return _select_concepts(self.concept_classifiers, self.part_concepts)

    def features(self, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Final-stage features ``A`` ``[B,C,h,w]``."""
        return _final_features(self.classifier, check_images(images), batch_size)

    def _scatter_labels(self, scores: Tensor) -> Tensor:
        """Concept rows ``[B,M,...]`` → label channels ``[B,P+1,...]``; missing labels −inf."""
        out = scores.new_full((scores.shape[0], self.num_labels, *scores.shape[2:]), -math.inf)
        out[:, list(self.concept_classifiers.concepts)] = scores
        return out

    @torch.no_grad()
    def linear_scores(self, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """IBD's linear concept scores on the feature grid, ``[B, P+1, h, w]`` by label.

        Centred (unnormalised) weight · a(u) + bias, no sigmoid (ibd.md §4); −inf for labels
        without a classifier.
        """
        return self.linear_scores_from_features(self.features(images, batch_size))

    @torch.no_grad()
    def linear_scores_from_features(self, features: Tensor) -> Tensor:
        """:meth:`linear_scores` from final-stage features ``[B,C,h,w]`` already computed."""
        return self._scatter_labels(concept_score_maps(features, self.concept_classifiers))

    @torch.no_grad()
    def linear_maps(self, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """The linear concept scores rendered as IBD renders them: ``[B, P+1, H, W]``.

        Bilinear upsampling of the 1×1 concept scores to the image (``align_corners=False``,
        ibd.md §4 "Rendering"); −inf for labels without a classifier.
        """
        images = check_images(images)
        return self.linear_maps_from_features(self.features(images, batch_size),
                                              _hw(images))

    @torch.no_grad()
    def linear_maps_from_features(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """:meth:`linear_maps` from final-stage features ``[B,C,h,w]`` already computed."""
        scores = concept_score_maps(features, self.concept_classifiers)
        up = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
        return self._scatter_labels(up)

    def part_probs(self, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Softmax over the upsampled linear concept scores, ``[B, P+1, H, W]``.

        The scores come from independent sigmoid classifiers, so this is a heuristic
        normalisation; it is what lets the region rule run on the linear maps.
        """
        return self.linear_maps(images, batch_size).softmax(1)

    def segment(self, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
        """``[B,H,W]`` labels: argmax over the upsampled linear concept scores (background
        included) — the "IBD linear maps" segmentation of table T1."""
        return label_map(self.linear_maps(images, batch_size))

    @torch.no_grad()
    def contributions(self, images: Tensor, targets: Targets = None,
                      batch_size: int = INFERENCE_BATCH) -> IBDContributions:
        """IBD's basis-rule contributions per label for one class per image.

        ``targets``: class per image, one int, or None (the predicted class, as IBD does).
        """
        A = self.features(images, batch_size)
        a = A.mean(dim=(2, 3))
        logits = self.classifier.fc(a)
        k = resolve_targets(targets, logits)
        expl = ibd_contributions(a, self.decomposition, k)
        label_of_row = torch.tensor(self.part_concepts, dtype=torch.long)
        contrib = torch.zeros(len(k), self.num_labels, dtype=expl.contributions.dtype)
        contrib.scatter_(1, label_of_row[expl.concepts], expl.contributions)
        w = self.classifier.fc.weight[k]
        rows = torch.arange(len(k))
        return IBDContributions(
            targets=k, contributions=contrib, residual=expl.residual, total=expl.total,
            scale=(w.norm(dim=1) * a.norm(dim=1)).to(contrib.dtype),
            bias=self.classifier.fc.bias[k].to(contrib.dtype),
            score=logits[rows, k].to(contrib.dtype), explanation=expl)

    @torch.no_grad()
    def heatmaps(self, images: Tensor, targets: Targets = None, batch_size: int = INFERENCE_BATCH
                 ) -> tuple[Tensor, Tensor]:
        """IBD's concept heatmaps (:func:`partslib.ibd.ibd_heatmaps`) and their part labels.

        Returns:
            ``(maps [B, n, H, W] in [0, 1], labels [B, n])``, the n basis concepts ordered by
            contribution, descending.
        """
        images = check_images(images)
        A = self.features(images, batch_size)
        k = resolve_targets(targets, self.classifier.head(A))
        maps = ibd_heatmaps(A, self.part_classifiers(), self.decomposition, k,
                            out_size=_hw(images))
        order = ibd_contributions(A.mean(dim=(2, 3)), self.decomposition, k).concepts
        return maps, torch.tensor(self.part_concepts, dtype=torch.long)[order]


def fit_ibd(classifier: ContractClassifier, images: Tensor, masks: Tensor, num_labels: int,
            n_components: int = IBD_BASIS_NUM, epochs: int = 15, seed: int = 0,
            lr: float = 0.01, batch_size: int = 128, progress: bool = False) -> IBDModel:
    """Fit IBD to a partslib classifier on part-annotated images (ibd.md §2–§3).

    The final-stage features are extracted once; the masks are nearest-sampled at the feature
    grid's block centres (:func:`partslib.ibd.sample_labels_to_grid`); one linear concept
    classifier is trained per label, background included (the reference's MSE-on-sigmoid
    loss, plain SGD and hard-negative schedule); ``classifier.fc.weight`` is decomposed over the
    part concepts 1..P only. Labels that never hit a grid sample get no classifier (a warning
    names them; their maps are −inf and their contributions 0).

    Args:
        classifier: the classifier to explain (frozen).
        images: float ``[N,3,H,W]`` in [0, 1] (or uint8), the concept training images.
        masks: ``[N,H,W]`` part labels ``0..num_labels-1``, 255 = unannotated.
        num_labels: P + 1.
        n_components: IBD's basis size; capped at min(n_components, #part concepts, C).
        epochs, seed, lr, batch_size: of :func:`partslib.ibd.train_concept_classifiers`.
        progress: show its progress bar.

    Returns:
        An :class:`IBDModel`.
    """
    images = check_images(images)
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    if not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2 (background + parts), got "
                         f"{num_labels!r}")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be an int >= 1, got {n_components!r}")
    A = _final_features(classifier, images)
    grid = sample_labels_to_grid(masks.long(), _hw(A))
    present = [c for c in range(num_labels) if bool((grid == c).any())]
    missing = sorted(set(range(num_labels)) - set(present))
    if missing:
        warnings.warn(f"labels {missing} never fall on a feature-grid sample of the masks; "
                      f"IBD gets no concept for them", stacklevel=2)
    parts = tuple(c for c in present if c != 0)
    if not parts:
        raise ValueError("no part label (1..P) falls on a feature-grid sample: nothing for IBD "
                         "to decompose into")
    concepts = train_concept_classifiers(A, grid, present, epochs=epochs, lr=lr,
                                         batch_size=batch_size, seed=seed, progress=progress)
    q = _select_concepts(concepts, parts).concept_vectors()
    W = classifier.fc.weight.detach()
    n = min(n_components, len(parts), W.shape[1])
    while True:  # fewer components when the pursuit runs out of independent candidates
        try:
            decomposition = decompose(W, q, n)
            break
        except ValueError as e:
            if "exceeds the rank" not in str(e) or n == 1:
                raise
            n -= 1
    return IBDModel(classifier=classifier, concept_classifiers=concepts,
                    decomposition=decomposition, part_concepts=parts, num_labels=num_labels,
                    n_components_requested=n_components)


def _select_concepts(classifiers: ConceptClassifiers, labels: Sequence[int]
                     ) -> ConceptClassifiers:
    rows = [classifiers.concepts.index(c) for c in labels]
    return ConceptClassifiers(weight=classifiers.weight[rows], bias=classifiers.bias[rows],
                              concepts=tuple(labels), ap=classifiers.ap[rows])
