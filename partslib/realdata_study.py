"""Bring your own model and data: the study on any folder-format dataset of real photos.

Everything here works on a :class:`~partslib.data.folder.FolderDataset` (``docs/data_format.md``)
and on any classifier with the feature contract of :mod:`partslib.models`:

1. :func:`load_real_data` -- the folder's train/test splits as uint8 tensors at one size.
2. :func:`train_classifier` -- the shared :func:`partslib.pipeline.train_classifier` on the
   dataset's splits (``backbone`` is ``"small_resnet"`` or a torchvision ResNet name, optionally
   initialised from a local ``weights`` file; ``epochs=0``: used as loaded), plus per-class
   recall and the majority baseline.
3. :func:`train_part_model` -- the shared :func:`partslib.pipeline.train_pdm` on the frozen
   classifier's features and the part masks (255 = ignore), with median-frequency class weights
   for rare parts (``balance=True``).
4. :func:`localization` -- table T1 (PDM vs IBD's linear maps vs Grad-CAM/CAM; per-part IoU,
   mIoU) through :func:`partslib.localization_study.localization_table`.
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
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from partslib.config import ClassifierConfig, PDMConfig, resolve
from partslib.constants import IGNORE_INDEX
from partslib.data.folder import FolderDataset
from partslib.data.images import PathLike, load_image
from partslib.data.split import Split
from partslib.explain.registry import METHODS
from partslib.models import ContractClassifier
from partslib.models import _size as _size
from partslib.training import evaluate_classifier

__all__ = ["RealData", "CARPARTS_DECISIVE", "T2_OPERATORS", "T2_METHODS", "resolve_path",
           "load_real_data", "data_tables", "train_classifier", "classifier_metrics",
           "load_classifier", "train_part_model", "decisive_matrix", "fit_ibd_baseline",
           "localization", "validity", "explain_photo", "prefixed", "headline"]

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


# ------------------------------------------------------------------------------------ data

@dataclass
class RealData:
    """A folder-format dataset as tensors at one size.

    ``*_images`` uint8 ``[N,3,H,W]``; ``*_masks`` uint8 ``[N,H,W]`` (0 background, 1..P parts,
    255 ignore); ``*_labels`` int64 ``[N]``; ``*_names`` sample names; ``part_names`` with
    ``"background"`` first; ``class_names`` in label order.
    """

    name: str
    root: Path
    image_size: tuple[int, int]
    part_names: list[str]
    class_names: list[str]
    train_images: torch.Tensor
    train_masks: torch.Tensor
    train_labels: torch.Tensor
    train_names: list[str]
    test_images: torch.Tensor
    test_masks: torch.Tensor
    test_labels: torch.Tensor
    test_names: list[str]
    split_rule: str = "classes.csv"

    @property
    def num_labels(self) -> int:
        return len(self.part_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Hash of what a model trained on this data depends on (names, labels, size)."""
        h = hashlib.sha256()
        h.update(repr((self.name, self.image_size, self.part_names, self.class_names)).encode())
        for names, labels in ((self.train_names, self.train_labels),
                              (self.test_names, self.test_labels)):
            h.update("\n".join(names).encode())
            h.update(labels.numpy().tobytes())
        h.update(self.train_masks.numpy().tobytes()[:: 997])  # a sparse sample of the masks
        return h.hexdigest()[:16]

    def split(self, which: str) -> Split:
        """The ``"train"`` or ``"test"`` split in the pipeline's common interface (identified
        by :meth:`fingerprint` in checkpoint configurations)."""
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {which!r}")
        return Split(getattr(self, f"{which}_images"), getattr(self, f"{which}_labels"),
                     getattr(self, f"{which}_masks"), list(self.part_names),
                     list(self.class_names), info=self.fingerprint())

    def image_path(self, split: str, index: int) -> Path:
        """The file of sample ``index`` of ``split`` (for :func:`explain_photo`)."""
        name = (self.train_names if split == "train" else self.test_names)[index]
        for p in sorted((self.root / "images").glob(f"{name}.*")):
            return p
        raise FileNotFoundError(f"{self.root / 'images'}: no image named {name!r}")


def _stack(ds: FolderDataset, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
    n = len(indices)
    H, W = ds.size
    images = torch.empty(n, 3, H, W, dtype=torch.uint8)
    masks = torch.empty(n, H, W, dtype=torch.uint8)
    for row, i in enumerate(indices):
        item = ds[i]
        images[row] = (item["image"] * 255).round_().to(torch.uint8)
        masks[row] = item["mask"].to(torch.uint8)
    labels = torch.tensor([ds.labels[i] for i in indices], dtype=torch.long)
    return images, masks, labels, [ds.names[i] for i in indices]


def _folder_key(root: Path, size: tuple[int, int], test_fraction: float, split_seed: int
                ) -> str:
    """Hash of a folder's files (names, sizes, modification times) and the loading options."""
    h = hashlib.sha256(repr((str(root.resolve()), size, test_fraction, split_seed)).encode())
    for sub in ("images", "masks"):
        for p in sorted((root / sub).iterdir()) if (root / sub).is_dir() else []:
            st = p.stat()
            h.update(f"{sub}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for f in ("parts.csv", "classes.csv", "class_names.txt"):
        if (root / f).is_file():
            h.update((root / f).read_bytes())
    return h.hexdigest()[:16]


def load_real_data(dataset_path: PathLike, image_size: int | Sequence[int] = 128,
                   name: str | None = None, test_fraction: float = 0.2, split_seed: int = 0,
                   validate: bool = True, cache_dir: PathLike | None = None) -> RealData:
    """Load a folder-format dataset as uint8 tensors resized to ``image_size`` (H, W).

    The split comes from the ``split`` column of ``classes.csv``; a folder without one is split
    by a seeded permutation, stratified by class (``test_fraction`` of each class to test).

    ``cache_dir``: keep the tensors there (``<name>-<key>.pt``); the key hashes the folder's
    file names, sizes and modification times and the options, so any change to the folder
    loads it again (decoding and resizing 500 photos takes tens of seconds on 2 cores).
    """
    root = Path(dataset_path)
    size = _size(image_size)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder (see docs/real_data.md)")
    cache = None
    if cache_dir is not None:
        key = _folder_key(root, size, test_fraction, split_seed)
        cache = Path(cache_dir) / f"{name or root.name}-{key}.pt"
        if cache.is_file():
            try:
                fields = torch.load(cache, weights_only=True)
                fields.update(root=root, name=name or root.name)
                return RealData(**fields)
            except Exception:  # unreadable cache: load again
                cache.unlink(missing_ok=True)
    data = _load_real_data(root, size, name, test_fraction, split_seed, validate)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in data.__dict__.items() if k not in ("root", "name")}
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save(fields, tmp)
        os.replace(tmp, cache)
    return data


def _load_real_data(root: Path, size: tuple[int, int], name: str | None, test_fraction: float,
                    split_seed: int, validate: bool) -> RealData:
    ds = FolderDataset(root, size=size, validate=validate)
    splits = _read_splits(root)
    if splits is not None:
        train_idx = [i for i, n in enumerate(ds.names) if splits[n] == "train"]
        test_idx = [i for i, n in enumerate(ds.names) if splits[n] == "test"]
        rule = "classes.csv split column"
    else:
        g = np.random.default_rng(split_seed)
        train_idx, test_idx = [], []
        labels = np.asarray(ds.labels)
        for k in range(len(ds.class_names)):
            idx = np.flatnonzero(labels == k)
            idx = idx[g.permutation(len(idx))]
            n_test = int(round(test_fraction * len(idx)))
            test_idx += idx[:n_test].tolist()
            train_idx += idx[n_test:].tolist()
        train_idx, test_idx = sorted(train_idx), sorted(test_idx)
        rule = f"stratified random {test_fraction:g} to test, seed {split_seed}"
    if not train_idx or not test_idx:
        raise ValueError(f"{root}: the split leaves {len(train_idx)} training and "
                         f"{len(test_idx)} test images; both must be non-empty")
    tr, te = _stack(ds, train_idx), _stack(ds, test_idx)
    return RealData(name=name or root.name, root=root, image_size=size,
                    part_names=list(ds.part_names), class_names=list(ds.class_names),
                    train_images=tr[0], train_masks=tr[1], train_labels=tr[2], train_names=tr[3],
                    test_images=te[0], test_masks=te[1], test_labels=te[2], test_names=te[3],
                    split_rule=rule)


def _read_splits(root: Path) -> dict[str, str] | None:
    import csv

    with open(root / "classes.csv", encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r and any(v.strip() for v in r.values() if v)]
    if not rows or "split" not in rows[0]:
        return None
    return {Path(r["image"].strip()).stem if Path(r["image"].strip()).suffix.lower() in
            (".jpg", ".jpeg", ".png") else r["image"].strip(): r["split"].strip() for r in rows}


def data_tables(data: RealData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images per class and split; per part and split: share of images where it is present
    and its mean area share of the annotated pixels)."""
    counts = pd.DataFrame({
        "train": np.bincount(data.train_labels.numpy(), minlength=data.num_classes),
        "test": np.bincount(data.test_labels.numpy(), minlength=data.num_classes)},
        index=pd.Index(data.class_names, name="class"))
    counts.loc["all"] = counts.sum()
    rows = {}
    for split, masks in (("train", data.train_masks), ("test", data.test_masks)):
        m = masks.long().flatten(1)
        known = (m != IGNORE_INDEX).sum(1).clamp(min=1).double()
        pix = torch.stack([(m == p).sum(1) for p in range(data.num_labels)], 1).double()
        rows[(split, "present")] = (pix > 0).double().mean(0).numpy()
        rows[(split, "area")] = (pix / known[:, None]).mean(0).numpy()
    parts = pd.DataFrame(rows, index=pd.Index(data.part_names, name="part"))
    return counts, parts


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
    ``test_accuracy``, ``balanced_accuracy``, ``train_accuracy``, ``recall/<class>``,
    ``majority_baseline``, ``n_train``, ``n_test``, ``confusion_matrix``, ``train_seconds``,
    ``epochs``, ``epochs_trained``, ``backbone``, ``weights``, ``num_parameters``.
    """
    from partslib.pipeline import train_classifier as _train

    if "backbone" in overrides:  # the real-photo notebooks' name of ClassifierConfig.arch
        overrides["arch"] = overrides.pop("backbone")
    cfg = resolve(config, ClassifierConfig, overrides)
    model, common, history = _train(
        data.split("train"), data.split("test"), results_dir=results_dir, config=cfg,
        checkpoint=_checkpoint(data.name, "classifier"), seed=seed, device=device,
        resume=resume, progress=progress)
    metrics = _classifier_extras(common, data)
    metrics.update(train_seconds=common["train_seconds"], epochs=common["epochs"],
                   epochs_trained=common["epochs_trained"], backbone=cfg.arch,
                   weights=Path(cfg.weights).name if cfg.weights else None,
                   num_parameters=common["num_parameters"])
    return model.cpu(), metrics, history


def _classifier_extras(common: Mapping[str, Any], data: RealData) -> dict[str, Any]:
    cm = torch.tensor(common["confusion_matrix"])
    recall = cm.diag().double() / cm.sum(1).clamp(min=1).double()
    return {"test_accuracy": common["test_accuracy"],
            "balanced_accuracy": common["balanced_accuracy"],
            "train_accuracy": common["train_accuracy"],
            **{f"recall/{c}": float(r) for c, r in zip(data.class_names, recall)},
            "majority_baseline": float(torch.bincount(data.test_labels).max()
                                       / len(data.test_labels)),
            "n_train": len(data.train_labels), "n_test": len(data.test_labels),
            "confusion_matrix": common["confusion_matrix"]}


def classifier_metrics(model: nn.Module, data: RealData, device: str = "cpu") -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and confusion matrix (rows = true)."""
    from partslib.pipeline import _OnDevice

    m = _OnDevice(model, device)
    ev = evaluate_classifier(m, data.test_images, data.test_labels, data.num_classes)
    tr = evaluate_classifier(m, data.train_images, data.train_labels, data.num_classes)
    return _classifier_extras({"test_accuracy": ev["accuracy"],
                               "balanced_accuracy": ev["balanced_accuracy"],
                               "train_accuracy": tr["accuracy"],
                               "confusion_matrix": ev["confusion_matrix"]}, data)


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
    pdm, common, history = _train(classifier, data.split("train"), data.split("test"),
                                  results_dir=results_dir, config=cfg, checkpoint=path,
                                  seed=seed, resume=resume, progress=progress, monitor=0)
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
    from partslib.localization_study import localization_table

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
             n_sanity: int = 32, seed: int = 0, batch_size: int = 128):
    """Table T2 on the test photos with the imputation operators (``mean``, ``blur``,
    ``road``): :func:`partslib.studies.validity.run_validity` on the first ``n_eval`` correctly
    classified test photos, effects measured by removing the ground-truth part masks.

    ``n_eval_by_operator`` evaluates an operator on fewer photos (ROAD solves a sparse system
    per removal, ~0.1 s for a large part at 128×128: ``{"road": 40}`` keeps it affordable);
    operators with the same number of photos share one ``run_validity`` call. V5 runs once, in
    the first call. Without ``decisive_parts`` V4 is not defined: its columns are NaN.

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
                              seed=seed, batch_size=batch_size)
        tables.append(t2)
        extras.update({op: ex for op in ops})
    t2 = pd.concat(tables, ignore_index=True)
    t2.attrs.update(tables[0].attrs)
    if not decisive_parts:
        for col in ("decisive", "decisive_ceiling", "decisive_chance"):
            if col in t2:
                t2[col] = math.nan
    return t2, extras


# -------------------------------------------------------------------------- any photograph

def explain_photo(explainer, source, size: Sequence[int] | None = None, target=None, **kwargs):
    """Explain one photograph of any size, PIL mode or EXIF orientation.

    The photo goes through :func:`partslib.data.images.load_image`: EXIF orientation applied,
    grayscale / palette expanded to RGB, transparency composited on white, 16-bit scaled; then
    resized to exactly ``size`` (default: the PDM's input size) bilinearly with antialiasing,
    aspect ratio not kept -- the policy the training photos went through.

    Args:
        explainer: a :class:`~partslib.explain.PartExplainer`.
        source: a path or a PIL image.
        target, kwargs: passed to the explainer (mode, contrastive, hard, imputer).

    Returns:
        ``(explanation of one image, image float [3,H,W])``.
    """
    size = tuple(size) if size is not None else tuple(explainer.pdm.input_size)
    image = load_image(source, size=size)
    return explainer(image[None], target=target, **kwargs), image


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
