"""Bring your own model and data: the study on any folder-format dataset of real photos.

Everything here works on a :class:`~partslib.data.folder.FolderDataset` (``docs/data_format.md``)
and on any classifier with the feature contract of :mod:`partslib.models`:

1. :func:`load_real_data` -- the folder's train/test splits as uint8 tensors at one size, and
   a validation split carved from the training photos (``val_fraction``): the per-epoch
   learning curves and every setting are chosen on it; the test photos are evaluated once.
2. :func:`train_classifier` -- the shared :func:`partslib.pipeline.train_classifier` on the
   dataset's splits (``backbone`` is ``"small_resnet"`` or a torchvision ResNet name, optionally
   initialised from a local ``weights`` file; ``epochs=0``: used as loaded), plus per-class
   recall and the majority baseline.
3. :func:`train_part_model` -- the shared :func:`partslib.pipeline.train_pdm` on the frozen
   classifier's features and the part masks (255 = ignore), with median-frequency class weights
   for rare parts (``balance=True``).
4. :func:`localization` -- table T1 (PDM vs IBD's linear maps vs Grad-CAM/CAM; per-part IoU,
   mIoU) through :func:`partslib.studies.localization.localization_table`.
5. :func:`validity` -- table T2 (V1-V5) through :func:`partslib.studies.validity.run_validity`
   with the **imputation operators** (mean colour, Gaussian blur, ROAD's noisy linear
   imputation); the measured effects remove the **ground-truth** part masks. The decisive
   parts of each class (V4, and T1's region columns) come from a ``{class: [part, ...]}``
   mapping (:func:`decisive_matrix`); :data:`CARPARTS_DECISIVE` is the one for Car Parts.
6. :func:`explain_photo` -- any photograph (any size, PIL mode or EXIF orientation) through a
   :class:`~partslib.explain.PartExplainer`.

Metric keys name the dataset (:func:`prefixed`): ``<dataset>/classifier/test_accuracy``,
``<dataset>/pdm/miou``, ``<dataset>/t1/<method>/miou``, ``<dataset>/t2/<method>/<operator>/...``.

**Resize policy.** Photos and masks are resized to exactly ``image_size`` (H, W) -- bilinear
with antialiasing for the photo, nearest for the mask -- without keeping the aspect ratio
(``FolderDataset``'s policy). :func:`explain_photo` resizes any photograph the same way, so a
new photo reaches the model the way the training photos did.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from partslib.config import ClassifierConfig, PDMConfig, resolve
from partslib.data.images import PathLike, load_photo
from partslib.data.realphotos import RealData, data_tables, load_real_data
from partslib.explain.registry import METHODS
from partslib.models import ContractClassifier
from partslib.training import evaluate_classifier

__all__ = [
    "CARPARTS_DECISIVE",
    "T2_METHODS",
    "T2_OPERATORS",
    "RealData",
    "classifier_metrics",
    "data_tables",
    "decisive_matrix",
    "explain_photo",
    "fit_ibd_baseline",
    "headline",
    "load_classifier",
    "load_real_data",
    "localization",
    "prefixed",
    "resolve_path",
    "train_classifier",
    "train_part_model",
    "validity",
]

#: Decisive parts of the Car Parts viewpoint classes. Front and back are the parts that define
#: the classes (``partslib.data.coco_parts.carparts_viewpoint``). "side" is defined by the
#: *absence* of a dominant front or back, so no part defines it; its positive evidence is what
#: only a side or angled view shows at length: the four doors, the mirrors and the wheels.
#: Mirrors and wheels are also visible (small) from the front, so the side choice is the weaker
#: of the three.
CARPARTS_DECISIVE: dict[str, list[str]] = {
    "front": ["front_bumper", "front_glass", "front_left_light", "front_right_light", "hood"],
    "back": ["back_bumper", "back_glass", "back_left_light", "back_right_light", "tailgate",
             "trunk"],
    "side": ["front_left_door", "front_right_door", "back_left_door", "back_right_door",
             "left_mirror", "right_mirror", "wheel"],
}
#: Removal operators of T2 on real photos (no exact counterfactual exists).
T2_OPERATORS = ("mean", "blur", "road")
#: Methods of T2 on real photos: every method of the registry.
T2_METHODS = METHODS


def resolve_path(path: PathLike, root: PathLike | None = None) -> Path:
    """An absolute path: ``path`` as is when absolute, else relative to ``root`` (default the
    study root, the folder holding ``profiles/``: a profile's ``data/carparts`` means the
    repository's ``data/carparts`` whatever the notebook's working directory)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if root is None:
        from partslib.io import StudyRootError, find_root

        try:
            root = find_root()
        except StudyRootError:
            root = Path.cwd()
    return (Path(root) / p).resolve()


# ---------------------------------------------------------------- classifier and PDM stages

def _checkpoint(name: str, kind: str) -> Path:
    return Path("checkpoints") / f"{name}-{kind}.pt"


def train_classifier(data: RealData, *, results_dir: PathLike,
                     config: ClassifierConfig | None = None, seed: int = 0, device: str = "cpu",
                     resume: bool = True, progress: bool = False, **overrides: Any
                     ) -> tuple[ContractClassifier, dict[str, Any], list[dict]]:
    """:func:`partslib.pipeline.train_classifier` on the dataset's splits, with real-photo
    metrics.

    ``config`` (:class:`~partslib.config.ClassifierConfig`) or keyword overrides of it;
    ``backbone`` is accepted for its ``arch``. The checkpoint is
    ``results_dir/checkpoints/<data.name>-classifier.pt``. ``augment`` (random flips and
    shifts) suits viewpoint and outfit classes, whose labels neither changes.

    Returns ``(model in eval mode on the CPU, frozen; metrics; history)``. Metrics:
    ``test_accuracy``, ``balanced_accuracy`` (over the classes present in the test split),
    ``train_accuracy``, ``recall/<class>`` (NaN for a class with no test photo, listed in
    ``classes_absent_from_test``),
    ``majority_baseline``, ``n_train``, ``n_test``, ``confusion_matrix``, ``train_seconds``,
    ``epochs``, ``epochs_trained``, ``backbone``, ``weights``, ``num_parameters``; with a
    validation split (``data.has_val``) ``val_accuracy`` and ``n_val``, and the history holds
    ``val_loss`` and ``val_accuracy`` per epoch (never test numbers).
    """
    from partslib.pipeline import train_classifier as _train

    if "backbone" in overrides:  # the real-photo notebooks' name of ClassifierConfig.arch
        overrides["arch"] = overrides.pop("backbone")
    cfg = resolve(config, ClassifierConfig, overrides)
    model, common, history = _train(
        data.split("train"), _val(data), data.split("test"), results_dir=results_dir, config=cfg,
        checkpoint=_checkpoint(data.name, "classifier"), seed=seed, device=device,
        resume=resume, progress=progress)
    metrics = _classifier_extras(common, data)
    metrics.update(train_seconds=common["train_seconds"], epochs=common["epochs"],
                   epochs_trained=common["epochs_trained"], backbone=cfg.arch,
                   weights=Path(cfg.weights).name if cfg.weights else None,
                   num_parameters=common["num_parameters"])
    return model.cpu(), metrics, history


def _val(data: RealData):
    """The validation split when one was carved, else ``None`` (no per-epoch evaluation)."""
    return data.split("val") if data.has_val else None


def _classifier_extras(common: Mapping[str, Any], data: RealData) -> dict[str, Any]:
    cm = torch.tensor(common["confusion_matrix"])
    support = cm.sum(1)
    # a class with no test photo has no recall: NaN (null in metrics.json), not 0
    recall = torch.where(support > 0, cm.diag().double() / support.clamp(min=1).double(),
                         torch.full_like(support, math.nan, dtype=torch.float64))
    absent = [c for c, s in zip(data.class_names, support.tolist()) if s == 0]
    out = {"test_accuracy": common["test_accuracy"],
           "balanced_accuracy": common["balanced_accuracy"],
           "train_accuracy": common["train_accuracy"],
           **{f"recall/{c}": float(r) for c, r in zip(data.class_names, recall)},
           "classes_absent_from_test": absent,
           "majority_baseline": float(torch.bincount(data.test_labels).max()
                                      / len(data.test_labels)),
           "n_train": len(data.train_labels), "n_test": len(data.test_labels),
           "confusion_matrix": common["confusion_matrix"]}
    if data.val_labels is not None and data.has_val:
        out.update(n_val=len(data.val_labels))
        if "val_accuracy" in common:
            out.update(val_accuracy=common["val_accuracy"])
    return out


def classifier_metrics(model: nn.Module, data: RealData, device: str = "cpu") -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and confusion matrix (rows = true)."""
    from partslib.pipeline import _OnDevice

    m = _OnDevice(model, device)
    ev = evaluate_classifier(m, data.test_images, data.test_labels, data.num_classes)
    tr = evaluate_classifier(m, data.train_images, data.train_labels, data.num_classes)
    common = {"test_accuracy": ev["accuracy"], "balanced_accuracy": ev["balanced_accuracy"],
              "train_accuracy": tr["accuracy"], "confusion_matrix": ev["confusion_matrix"]}
    if data.val_images is not None and data.val_labels is not None and data.has_val:
        common["val_accuracy"] = evaluate_classifier(m, data.val_images, data.val_labels,
                                                     data.num_classes)["accuracy"]
    return _classifier_extras(common, data)


def load_classifier(results_dir: PathLike, name: str) -> ContractClassifier:
    """The classifier that :func:`train_classifier` trained for dataset ``name``, frozen."""
    from partslib.pipeline import load_classifier as _load

    return _load(results_dir, checkpoint=_checkpoint(name, "classifier"))


def _model_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def train_part_model(classifier: ContractClassifier, data: RealData, *,
                     results_dir: PathLike, config: PDMConfig | None = None, seed: int = 0,
                     resume: bool = True, progress: bool = False, **overrides: Any
                     ) -> tuple[Any, dict[str, Any], list[dict]]:
    """:func:`partslib.pipeline.train_pdm` on all the training photos, with real-photo metrics.

    With a validation split (``data.has_val``) its mIoU is recorded after every epoch
    (``val_miou`` in the history) and once at the end (``val_miou`` in the metrics); the test
    photos are evaluated once, after training.

    ``config`` (:class:`~partslib.config.PDMConfig`) or keyword overrides of it; the photos'
    masks use 255 for unannotated pixels, which the loss ignores, and ``balance=True`` weighs
    rare parts (lights, mirrors) more. The checkpoint
    ``results_dir/checkpoints/<data.name>-pdm-<classifier digest>.pt`` is tied to the exact
    classifier weights, so a retrained classifier never reuses a stale PDM.

    Returns ``(pdm in eval mode, metrics, history)``; metrics: test ``miou``, ``iou/<part>``,
    ``pixel_accuracy``, ``train_miou``, ``classifier_unchanged``, ``train_seconds``,
    ``epochs``, ``balance``, ``num_parameters``, ``confusion_matrix``.
    """
    from partslib.pipeline import evaluate_segmentation
    from partslib.pipeline import train_pdm as _train

    cfg = resolve(config, PDMConfig, {"n_train": None, **overrides})
    path = Path("checkpoints") / f"{data.name}-pdm-{_model_digest(classifier)}.pt"
    pdm, common, history = _train(classifier, data.split("train"), _val(data),
                                  data.split("test"), results_dir=results_dir, config=cfg,
                                  checkpoint=path, seed=seed, resume=resume, progress=progress)
    seg_train = evaluate_segmentation(classifier, pdm, data.train_images, data.train_masks,
                                      data.part_names)
    metrics = {k: v for k, v in common.items() if k not in ("n_train", "confusion_matrix")}
    metrics.update(train_miou=seg_train["miou"], balance=cfg.balance,
                   confusion_matrix=common["confusion_matrix"])
    return pdm.eval(), metrics, history


# ------------------------------------------------------------------------------- decisive

def decisive_matrix(labels: torch.Tensor, class_names: Sequence[str],
                    part_names: Sequence[str], decisive_parts: Mapping[str, Sequence[str]]
                    ) -> torch.Tensor:
    """Bool ``[N, P+1]``: the decisive parts of each image's class.

    ``decisive_parts`` maps a class name to its decisive part names; classes it does not list
    have none. Unknown class or part names raise ``ValueError`` naming them.
    """
    cls_index = {c: i for i, c in enumerate(class_names)}
    part_index = {p: i for i, p in enumerate(part_names)}
    bad_cls = [c for c in decisive_parts if c not in cls_index]
    bad_parts = sorted({p for ps in decisive_parts.values() for p in ps if p not in part_index})
    if bad_cls or bad_parts:
        raise ValueError(f"decisive_parts names unknown classes {bad_cls} / parts {bad_parts}; "
                         f"classes are {list(class_names)}, parts {list(part_names)}")
    table = torch.zeros(len(class_names), len(part_names), dtype=torch.bool)
    for c, parts in decisive_parts.items():
        for p in parts:
            table[cls_index[c], part_index[p]] = True
    return table[labels.long()]


# ----------------------------------------------------------------------------- T1 and T2

def fit_ibd_baseline(classifier: ContractClassifier, data: RealData, epochs: int = 15,
                     seed: int = 0):
    """IBD fitted on the training photos and their part masks
    (:func:`partslib.baselines.fit_ibd`); parts that never reach a feature-grid sample get no
    concept (warned)."""
    from partslib.baselines import fit_ibd

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*never fall on a feature-grid sample.*")
        return fit_ibd(classifier, data.train_images, data.train_masks.long(), data.num_labels,
                       epochs=epochs, seed=seed)


def localization(classifier: ContractClassifier, pdm, ibd, data: RealData,
                 decisive_parts: Mapping[str, Sequence[str]] | None = None,
                 batch_size: int = 64) -> pd.DataFrame:
    """Table T1 on the test photos: PDM vs IBD linear maps vs Grad-CAM vs CAM.

    Grad-CAM/CAM explain the **true** class; the region columns use the decisive parts of the
    true class (or the whole car/person when ``decisive_parts`` is empty).
    """
    from partslib.studies.localization import localization_table

    decisive = None
    if decisive_parts:
        decisive = decisive_matrix(data.test_labels, data.class_names, data.part_names,
                                   decisive_parts)
    return localization_table(classifier, pdm, ibd, data.test_images.float() / 255.0,
                              data.test_masks.long(), data.part_names,
                              targets=data.test_labels, decisive=decisive,
                              batch_size=batch_size)


def validity(classifier: ContractClassifier, pdm, ibd, data: RealData,
             decisive_parts: Mapping[str, Sequence[str]] | None = None,
             operators: Sequence[str] = T2_OPERATORS, methods: Sequence[str] = T2_METHODS,
             n_eval: int = 100, n_eval_by_operator: Mapping[str, int] | None = None,
             n_sanity: int = 32, seed: int = 0, batch_size: int = 128, head: Any = None):
    """Table T2 on the test photos with the imputation operators (``mean``, ``blur``,
    ``road``): :func:`partslib.studies.validity.run_validity` on the first ``n_eval`` correctly
    classified test photos, effects measured by removing the ground-truth part masks.

    ``n_eval_by_operator`` evaluates an operator on fewer photos (ROAD solves a sparse system
    per removal, ~0.1 s for a large part at 128×128: ``{"road": 40}`` keeps it affordable);
    operators with the same number of photos share one ``run_validity`` call. V5 runs once, in
    the first call. ``head``: the amortised rule's trained head (its rows are skipped
    without). Without ``decisive_parts`` V4 is not defined: its columns are NaN.

    Returns:
        ``(t2, extras)``: the rows of every call concatenated (``n_images`` says how many photos
        each row used) and ``{operator: ValidityExtras}`` (operators of one call share it).
    """
    from partslib.studies.validity import default_operators, run_validity

    bad = [o for o in operators if o not in T2_OPERATORS]
    if bad:
        raise ValueError(f"operators {bad}: real photos have no exact counterfactual; choose "
                         f"from {T2_OPERATORS}")
    if decisive_parts:
        decisive = decisive_matrix(data.test_labels, data.class_names, data.part_names,
                                   decisive_parts)
    else:
        decisive = torch.zeros(len(data.test_labels), data.num_labels, dtype=torch.bool)
    groups: dict[int, list[str]] = {}
    for op in operators:
        groups.setdefault(int((n_eval_by_operator or {}).get(op, n_eval)), []).append(op)
    tables, extras = [], {}
    images = data.test_images.float() / 255.0
    for i, (n, ops) in enumerate(groups.items()):
        t2, ex = run_validity(classifier, pdm, images, data.test_masks.long(), data.test_labels,
                              decisive=decisive,
                              operators=default_operators(None, seed=seed, names=ops), ibd=ibd,
                              n_eval=n, methods=methods, n_sanity=n_sanity if i == 0 else 0,
                              seed=seed, batch_size=batch_size, head=head)
        tables.append(t2)
        extras.update(dict.fromkeys(ops, ex))
    t2 = pd.concat(tables, ignore_index=True)
    t2.attrs.update(tables[0].attrs)
    if not decisive_parts:
        for col in [c for c in t2.columns if str(c).startswith("decisive")]:
            t2[col] = math.nan  # V4, its ceiling, chance and their intervals
    return t2, extras


# -------------------------------------------------------------------------- any photograph

def explain_photo(explainer, source, size: Sequence[int] | None = None, target=None,
                  fit: str = "pad", **kwargs):
    """Explain one photograph of any size, PIL mode or EXIF orientation.

    The photo goes through :func:`partslib.data.images.load_photo`: EXIF orientation applied,
    grayscale / palette expanded to RGB, transparency composited on white, 16-bit scaled, a
    large photo reduced while decoding, a tiny one (< 16 px on a side) warned about; then
    fitted into ``size`` (default: the explainer's input size): ``fit="pad"`` (default) keeps
    the aspect ratio and pads with flat grey, ``fit="squash"`` resizes to exactly ``size``
    (the policy the training photos went through: no padding).

    With ``fit="pad"`` the explanation is cropped back to the photo
    (:meth:`PartExplanation.crop`): its part maps and the returned image show the photo
    only, while contributions, score and logits are those of the padded input the model saw
    (the grey padding takes whatever part the PDM gives it, usually background).

    Args:
        explainer: a :class:`~partslib.explain.PartExplainer`.
        source: a path or a PIL image.
        size: (H, W) the photo is fitted into; it must be the size the explainer's part
            model takes (any size when it takes any, e.g. IBD's linear maps).
        fit: ``"pad"`` or ``"squash"``.
        target, kwargs: passed to the explainer (mode, contrastive, hard, imputer).

    Returns:
        ``(explanation of one image, image float [3,H,W])``, both of the photo region.
    """
    need: tuple[int, int] | None = explainer.segmenter.input_size
    if size is None and need is None:
        raise ValueError("this explainer's part model takes images of any size: pass "
                         "size=(H, W)")
    chosen = size if size is not None else need
    assert chosen is not None
    size = (int(chosen[0]), int(chosen[1]))
    if need is not None and size != tuple(need):
        raise ValueError(f"explain_photo(size={size}): this explainer's part model takes "
                         f"{need[0]}x{need[1]} images only; leave size=None and the photo "
                         f"(of any size) is fitted to {need[0]}x{need[1]} (fit={fit!r})")
    photo = load_photo(source, size, fit)
    e = explainer(photo.image[None], target=target, **kwargs)
    top, left, h, w = photo.box
    if (h, w) != size:
        e = e.crop(top, left, h, w)
    return e, photo.image[:, top:top + h, left:left + w]


# --------------------------------------------------------------------------------- metrics

def prefixed(prefix: str, metrics: Mapping[str, Any], skip: Sequence[str] = ("confusion_matrix",)
             ) -> dict[str, Any]:
    """``{prefix/key: value}``, NaN and inf as None, the keys in ``skip`` left out."""
    out = {}
    for k, v in metrics.items():
        if k in skip:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[f"{prefix}/{k}"] = v
    return out


def t1_metrics(t1: pd.DataFrame) -> dict[str, Any]:
    """Flat T1 numbers: ``<method>/miou``, ``<method>/iou/<part>``, ``pointing_game``,
    ``region_iou``, ``region_pointing`` (method names lower-cased, spaces as ``_``)."""
    out: dict[str, Any] = {}
    for _, row in t1.iterrows():
        m = str(row["method"]).lower().replace(" ", "_").replace("(", "").replace(")", "")
        for col, val in row.items():
            col = str(col)
            if col == "method" or col.startswith("netdissect:"):
                continue
            key = col.replace("iou:", "iou/").replace("mIoU", "miou")
            out[f"{m}/{key}"] = None if pd.isna(val) else float(val)
    return out


def headline(metrics: Mapping[str, Any], name: str) -> pd.DataFrame:
    """The headline numbers of one dataset as a two-column table."""
    keys = [("classifier test accuracy", f"{name}/classifier/test_accuracy"),
            ("classifier balanced accuracy", f"{name}/classifier/balanced_accuracy"),
            ("PDM mIoU (test)", f"{name}/pdm/miou"),
            ("IBD linear maps mIoU (test)", f"{name}/t1/ibd_linear_maps/miou"),
            ("Grad-CAM region IoU", f"{name}/t1/grad-cam_thresholded/region_iou"),
            ("PDM region IoU", f"{name}/t1/pdm/region_iou")]
    rows = [(label, metrics.get(key)) for label, key in keys if key in metrics]
    return pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")
