"""Table T1 (SPEC §7): how accurately each method locates parts — PDM vs IBD vs Grad-CAM/CAM.

Rows (``method``):

* ``PDM`` — the PDM's argmax part map; further PDMs (``extra_pdms``, e.g. ``"PDM, features
  only"`` — the paper's setting, without the full-resolution image step) follow as rows of
  their own.
* ``IBD linear maps`` — argmax over IBD's 1×1 linear concept scores (background included),
  bilinearly upsampled as IBD renders them (:meth:`partslib.baselines.IBDModel.segment`).
* ``Grad-CAM (thresholded)`` — pytorch-grad-cam's Grad-CAM of the final stage
  (:func:`partslib.baselines.gradcam_maps`, already min–max scaled to [0, 1]), ``≥ 0.5``.
* ``CAM`` — ``w_k·A`` upsampled (:func:`partslib.baselines.cam_maps`), min–max scaled per
  image, ``≥ 0.5``.

Columns (every IoU is summed over the dataset before dividing; pixels labelled 255 are left out):

* ``iou:<label>`` and ``mIoU`` — part segmentation IoU per label (background included) and
  their mean over the labels present in the ground truth (:func:`~partslib.metrics.part_iou`,
  :func:`~partslib.metrics.mean_iou`). Segmenters only: a class heatmap does not say *which*
  part is where, so these are NaN for Grad-CAM and CAM.
* ``pointing_game`` — per part p (1..P): the argmax pixel of p's own map (PDM probability /
  IBD linear score) lies inside ground-truth part p; over the (image, part) pairs where p is
  present. NaN for Grad-CAM and CAM (one map per image, not one per part).
* ``region_iou`` and ``region_pointing`` — the comparison every row supports. The *region* is
  the union of the image's decisive parts (``decisive``, e.g. ``SynthParts.decisive``) or, when
  no decisive parts are given, the whole object (all parts 1..P). The predicted region is:
  for Grad-CAM and CAM, the normalised map ``≥ threshold`` (0.5, IBD's ``CAM_THRESHOLD``); for
  PDM and IBD, the pixels whose argmax label is a decisive part. ``region_iou`` is its IoU with
  the true region; ``region_pointing`` is the pointing game of one map per image inside the true
  region — the heatmap itself, or for PDM/IBD the probability of being in a decisive part
  (PDM probabilities, or the softmax of the linear scores, summed over the decisive parts).
  For a heatmap this measures *whether the evidence lies on the decisive parts*, not part
  segmentation: a heatmap is not a part segmenter.
* ``netdissect:<label>`` and ``netdissect_mean`` — the Network Dissection IoU of each linear
  concept map (top 0.5% quantile of the 1×1 scores over the dataset, bilinear upsampling,
  dataset-summed IoU; :func:`~partslib.metrics.netdissect_iou`), IBD row only;
  ``netdissect_mean`` averages the parts 1..P (background is not a NetDissect concept).

``targets`` (the class of the Grad-CAM/CAM maps) defaults to the predicted class; with decisive
parts of the true class, pass the true labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from partslib.baselines import IBDModel, Targets, cam_maps, gradcam_maps, normalise_maps
from partslib.constants import IGNORE_INDEX
from partslib.explain import resolve_targets
from partslib.metrics import confusion_matrix, mean_iou, netdissect_iou, part_iou, pointing_game
from partslib.models import ContractClassifier, check_images
from partslib.pdm import PartsDetectionModule, label_map, segment

__all__ = ["METHODS", "localization_figure", "localization_table"]

METHODS = ("PDM", "IBD linear maps", "Grad-CAM (thresholded)", "CAM")
HEATMAP_THRESHOLD = 0.5  # CSAILVision/IBD settings.CAM_THRESHOLD


def _pointing_counts(maps: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[float, int]:
    """(hits, trials) of :func:`pointing_game`, so that batches can be summed."""
    ids = torch.as_tensor(list(classes)).view(1, -1, 1, 1)
    trials = int((labels[:, None] == ids).any(3).any(2).sum())
    if trials == 0:
        return 0.0, 0
    return round(pointing_game(maps, labels, classes) * trials), trials


def _region_labels(masks: Tensor, decisive: Tensor) -> Tensor:
    """``[B,H,W]``: 1 inside the region (decisive parts), 0 outside, 255 where unannotated."""
    lab = masks.long()
    known = lab != IGNORE_INDEX
    inside = torch.gather(decisive.long(), 1, lab.where(known, 0).flatten(1)).view_as(lab)
    return torch.where(known, inside, IGNORE_INDEX)


def _region_of_labels(pred: Tensor, decisive: Tensor) -> Tensor:
    return torch.gather(decisive.long(), 1, pred.flatten(1)).view_as(pred)


def _decisive_or_object(decisive: Tensor | None, n: int, num_labels: int
                        ) -> tuple[Tensor, str]:
    """The decisive-part matrix ``[N, P+1]`` (the whole object when None) and its name."""
    if decisive is None:
        decisive = torch.ones(n, num_labels, dtype=torch.bool)
        decisive[:, 0] = False
        return decisive, "object (all parts)"
    if decisive.shape != (n, num_labels):
        raise ValueError(f"decisive must be bool [N, P+1] = {(n, num_labels)}, got "
                         f"{tuple(decisive.shape)}")
    return decisive.bool().cpu(), "decisive parts"


def _batch_targets(targets: Targets, start: int, stop: int) -> Targets:
    if targets is None or isinstance(targets, int):
        return targets
    t = torch.as_tensor(targets).flatten()
    return t if t.numel() == 1 else t[start:stop]


class _T1Counts:
    """Confusion matrices and pointing-game counts of every method, summed over batches."""

    def __init__(self, num_labels: int, segmenters: Sequence[str], methods: Sequence[str]):
        L = self.num_labels = num_labels
        self.seg_conf = {m: torch.zeros(L, L, dtype=torch.long) for m in segmenters}
        self.reg_conf = {m: torch.zeros(2, 2, dtype=torch.long) for m in methods}
        self.point = {m: [0.0, 0] for m in segmenters}
        self.reg_point = {m: [0.0, 0] for m in methods}

    def add_part_maps(self, m: str, probs: Tensor, scores: Tensor, gt: Tensor, dec: Tensor,
                      gt_region: Tensor) -> None:
        """A segmenter's part probabilities (and the scores its pointing game reads)."""
        pred = label_map(probs)
        self.seg_conf[m] += confusion_matrix(pred, gt, self.num_labels)
        h, n = _pointing_counts(scores[:, 1:], gt, list(range(1, self.num_labels)))
        self.point[m][0] += h
        self.point[m][1] += n
        self.reg_conf[m] += confusion_matrix(_region_of_labels(pred, dec), gt_region, 2)
        self.add_region_map(m, (probs * dec[:, :, None, None]).sum(1), gt_region, None)

    def add_region_map(self, m: str, heat: Tensor, gt_region: Tensor,
                       threshold: float | None) -> None:
        """A heatmap ``[B,H,W]`` of the region; thresholded into a region map when given."""
        if threshold is not None:
            self.reg_conf[m] += confusion_matrix((heat >= threshold).long(), gt_region, 2)
        h, n = _pointing_counts(heat[:, None], gt_region, [1])
        self.reg_point[m][0] += h
        self.reg_point[m][1] += n

    def row(self, m: str, part_names: Sequence[str], nd: Tensor) -> dict:
        L, seg = self.num_labels, m in self.seg_conf
        row: dict = {"method": m}
        ious = part_iou(self.seg_conf[m]) if seg else torch.full((L,), math.nan)
        for name, v in zip(part_names, ious.tolist()):
            row[f"iou:{name}"] = v
        row["mIoU"] = mean_iou(self.seg_conf[m]) if seg else math.nan
        hits, trials = self.point.get(m, (0.0, 0))
        row["pointing_game"] = hits / trials if seg and trials else math.nan
        row["region_iou"] = float(part_iou(self.reg_conf[m])[1])
        h, n = self.reg_point[m]
        row["region_pointing"] = h / n if n else math.nan
        is_ibd = m == "IBD linear maps"
        for name, v in zip(part_names, nd.tolist()):
            row[f"netdissect:{name}"] = v if is_ibd else math.nan
        row["netdissect_mean"] = float(np.nanmean(nd[1:].numpy())) if is_ibd and L > 1 \
            else math.nan
        return row


def localization_table(classifier: ContractClassifier, pdm: PartsDetectionModule,
                       ibd: IBDModel, images: Tensor, masks: Tensor,
                       part_names: Sequence[str], targets: Targets = None,
                       decisive: Tensor | None = None,
                       threshold: float = HEATMAP_THRESHOLD, gradcam_method: str = "gradcam",
                       batch_size: int = 128,
                       extra_pdms: Mapping[str, PartsDetectionModule] | None = None
                       ) -> pd.DataFrame:
    """Table T1: localisation of parts by the PDM, IBD's linear maps, Grad-CAM and CAM.

    Args:
        classifier: the classifier (frozen), ``pdm`` and ``ibd`` fitted to it.
        images: float ``[N,3,H,W]`` in [0, 1] (or uint8), held-out images.
        masks: ``[N,H,W]`` ground-truth part labels, 255 = unannotated.
        part_names: P + 1 names, background first.
        targets: class per image for Grad-CAM/CAM, one int, or None (predicted class).
        decisive: bool ``[N, P+1]`` decisive parts per image; None = the whole object.
        threshold: on the [0, 1]-scaled heatmaps.
        gradcam_method: a key of :data:`partslib.baselines.CAM_METHODS`.
        extra_pdms: further PDMs on the same classifier, by row name (placed after ``PDM``).

    Returns:
        One row per method of :data:`METHODS` (and per extra PDM); the columns are described in
        the module docstring (``df.attrs`` records the choices).
    """
    images = check_images(images)
    L, N = len(part_names), len(images)
    pdms = {"PDM": pdm, **(extra_pdms or {})}
    for name, p in pdms.items():
        if p.num_labels != L:
            raise ValueError(f"part_names has {L} names; {name!r} segments {p.num_labels} "
                             f"labels")
    if ibd.num_labels != L:
        raise ValueError(f"part_names has {L} names; IBD segments {ibd.num_labels} labels")
    segmenters = [*pdms, "IBD linear maps"]
    methods = [*segmenters, *METHODS[2:]]
    if masks.shape != (N, *images.shape[-2:]):
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    decisive, region_name = _decisive_or_object(decisive, N, L)
    masks = masks.long().cpu()
    counts, grid_scores = _T1Counts(L, segmenters, methods), []
    classifier.eval()
    for p in pdms.values():
        p.eval()
    for start in range(0, N, batch_size):
        stop = min(start + batch_size, N)
        x, gt, dec = images[start:stop], masks[start:stop], decisive[start:stop]
        gt_region = _region_labels(gt, dec)
        t = _batch_targets(targets, start, stop)
        with torch.no_grad():
            feats = classifier.features(x)
            A = feats[classifier.final_stage]
            pdm_probs = {name: p(feats, x).softmax(1).cpu() for name, p in pdms.items()}
            lin = ibd.linear_maps_from_features(A, (x.shape[-2], x.shape[-1])).cpu()
            grid_scores.append(ibd.linear_scores_from_features(A).cpu())
        for name, probs in pdm_probs.items():
            counts.add_part_maps(name, probs, probs, gt, dec, gt_region)
        counts.add_part_maps("IBD linear maps", lin.softmax(1), lin, gt, dec, gt_region)
        counts.add_region_map("Grad-CAM (thresholded)", gradcam_maps(
            classifier, x, t, method=gradcam_method, batch_size=batch_size).cpu(), gt_region,
            threshold)
        counts.add_region_map("CAM", normalise_maps(
            cam_maps(classifier, x, t, batch_size=batch_size)).cpu(), gt_region, threshold)
    nd = netdissect_iou(torch.cat(grid_scores), masks, list(range(L)))
    df = pd.DataFrame([counts.row(m, part_names, nd) for m in methods])
    df.attrs.update({"n_images": N, "region": region_name, "threshold": threshold,
                     "gradcam": f"pytorch-grad-cam {gradcam_method}, final stage",
                     "targets": "predicted class" if targets is None else "given",
                     "netdissect_quantile": 0.005})
    return df


def localization_figure(classifier: ContractClassifier, pdm: PartsDetectionModule,
                        ibd: IBDModel, images: Tensor, masks: Tensor,
                        part_names: Sequence[str], targets: Targets = None, n: int = 4,
                        class_names: Sequence[str] | None = None, alpha: float = 0.55):
    """Side by side for ``n`` images: image | ground-truth parts | PDM | IBD linear maps |
    IBD top concept heatmap | Grad-CAM. Part colours are :func:`partslib.viz.part_palette`'s,
    the same in every figure of the study, with one legend.

    Returns:
        A ``matplotlib.figure.Figure`` (nothing is shown).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from partslib.viz import overlay_parts, part_palette  # viz: the study's one palette

    images = check_images(images[:n])
    masks = masks[:n]
    n = len(images)
    with torch.no_grad():
        logits = classifier(images)
    k = resolve_targets(targets if targets is None or isinstance(targets, int)
                        else torch.as_tensor(targets).flatten()[:n], logits)
    pdm_labels = label_map(segment(classifier, pdm, images))
    ibd_labels = ibd.segment(images)
    ibd_maps, ibd_parts = ibd.heatmaps(images, k)
    grad = gradcam_maps(classifier, images, k)
    cols = ["image", "ground truth", "PDM", "IBD linear maps", "IBD top concept", "Grad-CAM"]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.8 * len(cols), 1.9 * n + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        img = images[i].permute(1, 2, 0).cpu().numpy()
        title = class_names[int(k[i])] if class_names is not None else f"class {int(k[i])}"
        head = (lambda j, text: f"{cols[j]}\n{text}") if i == 0 else (lambda j, text: text)
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(head(0, title), fontsize=7)
        gt = torch.where(masks[i] == IGNORE_INDEX, 0, masks[i])  # unannotated: uncoloured
        for j, lab in ((1, gt), (2, pdm_labels[i]),
                       (3, ibd_labels[i])):
            axes[i, j].imshow(overlay_parts(images[i], lab.cpu().numpy(), alpha))
        axes[i, 4].imshow(img)
        axes[i, 4].imshow(ibd_maps[i, 0].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[i, 4].set_title(head(4, part_names[int(ibd_parts[i, 0])]), fontsize=7)
        for j in (1, 2, 3, 5):
            if i == 0:
                axes[i, j].set_title(head(j, ""), fontsize=7)
        axes[i, 5].imshow(img)
        axes[i, 5].imshow(grad[i].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    colours = part_palette(len(part_names))
    handles = [Patch(color=colours[p], label=name) for p, name in enumerate(part_names) if p > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
