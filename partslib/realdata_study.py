"""Bring your own model and data: the study on any folder-format dataset of real photos.

Everything here works on a :class:`~partslib.data.folder.FolderDataset` (``docs/data_format.md``)
and on any classifier with the feature contract of :mod:`partslib.models`:

1. :func:`load_real_data` -- the folder's train/test splits as uint8 tensors at one size.
2. :func:`build_classifier` / :func:`train_classifier` -- ``backbone`` is ``"small_resnet"`` or a
   torchvision ResNet name (``"resnet18"`` ...), optionally initialised from a local ``weights``
   file; trained with :func:`partslib.training.fit` (``epochs=0``: used as loaded).
3. :func:`train_part_model` -- the PDM on the frozen classifier's features, trained on the part
   masks (255 = ignore) with median-frequency class weights for rare parts (``balance=True``).
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
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from partslib.data.folder import FolderDataset
from partslib.data.images import PathLike, load_image
from partslib.explain.registry import METHODS
from partslib.models import (
    ContractClassifier,
    SmallResNet,
    TorchvisionResNet,
    _read_state_dict,
)
from partslib.models import build_classifier as _restore_classifier
from partslib.training import (
    TensorLoader,
    evaluate_classifier,
    fit,
    load_checkpoint,
    predict,
)

__all__ = ["RealData", "CARPARTS_DECISIVE", "T2_OPERATORS", "T2_METHODS", "resolve_path",
           "load_real_data", "data_tables", "build_classifier", "train_classifier",
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
IGNORE_INDEX = 255


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be an int or (H, W) with sides >= 8, got {image_size!r}")
    return size  # type: ignore[return-value]


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


# ----------------------------------------------------------------------------- classifier

def build_classifier(backbone: str, num_classes: int, image_size: int | Sequence[int] = 128,
                     weights: PathLike | None = None,
                     widths: Sequence[int] = (8, 16, 32, 64, 128)) -> ContractClassifier:
    """A classifier with the feature contract.

    Args:
        backbone: ``"small_resnet"`` (:class:`~partslib.models.SmallResNet` with ``widths``) or
            a torchvision ResNet name (``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ...).
        weights: optional local file (a state dict, or a checkpoint holding ``state_dict``;
            nothing is downloaded). For a torchvision ResNet every layer is loaded; when the
            file's head has another number of classes (e.g. ImageNet's 1000) the head is
            replaced by a new ``num_classes`` one, so an ImageNet file fine-tunes. For
            ``small_resnet`` the file must fit exactly (``strict`` loading).
        image_size: the input size (H, W); recorded for the PDM's output size.
    """
    size = _size(image_size)
    if backbone == "small_resnet":
        model: ContractClassifier = SmallResNet(num_classes, widths=tuple(widths),
                                                input_size=size[0])
        if weights:
            state = _read_state_dict(weights)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"weights file {weights} does not fit small_resnet with widths "
                                 f"{tuple(widths)} and {num_classes} classes: "
                                 f"{str(e).splitlines()[1:3]}") from e
    elif backbone.startswith("resnet"):
        model = TorchvisionResNet(backbone, num_classes=None if weights else num_classes,
                                  weights=weights or None, input_size=size[0])
        if model.fc.out_features != num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        raise ValueError(f"backbone must be 'small_resnet' or a torchvision ResNet name "
                         f"('resnet18', 'resnet34', 'resnet50', ...), got {backbone!r}")
    model.input_size = size
    return model


class _Augment:
    """uint8 batch -> float batch in [0, 1], with a random horizontal flip and a random shift of
    up to ``shift`` of the side (replicate padding), from a private seeded generator."""

    def __init__(self, flip: bool = True, shift: float = 0.08, seed: int = 0):
        self.flip, self.shift = flip, shift
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        B, _, H, W = x.shape
        if self.flip:
            f = torch.rand(B, generator=self.g) < 0.5
            x[f] = x[f].flip(-1)
        if self.shift > 0:
            ph, pw = max(1, int(self.shift * H)), max(1, int(self.shift * W))
            padded = F.pad(x, (pw, pw, ph, ph), mode="replicate")
            dy = torch.randint(0, 2 * ph + 1, (B,), generator=self.g)
            dx = torch.randint(0, 2 * pw + 1, (B,), generator=self.g)
            x = torch.stack([padded[b, :, dy[b]:dy[b] + H, dx[b]:dx[b] + W] for b in range(B)])
        return x


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def _checkpoint(results_dir: PathLike, name: str, kind: str) -> Path:
    return Path(results_dir) / "checkpoints" / f"{name}-{kind}.pt"


def _archive_if_stale(path: Path, kind: str, full_config: dict) -> None:
    from partslib.pipeline import _archive_if_stale as archive

    archive(path, kind, full_config)


def train_classifier(data: RealData, *, results_dir: PathLike, backbone: str = "small_resnet",
                     weights: PathLike | None = None,
                     widths: Sequence[int] = (8, 16, 32, 64, 128), epochs: int = 40,
                     lr: float = 0.003, weight_decay: float = 0.0005, batch_size: int = 32,
                     augment: bool = True, class_weighted: bool = False, seed: int = 0,
                     device: str = "cpu", resume: bool = True, progress: bool = False
                     ) -> tuple[ContractClassifier, dict[str, Any], list[dict]]:
    """Build the classifier, train it with :func:`partslib.training.fit` and evaluate it.

    The checkpoint ``results_dir/checkpoints/<data.name>-classifier.pt`` is written after every
    epoch and resumed / reused when its configuration (model, weights file, data fingerprint,
    optimisation) equals this call's; a checkpoint of another configuration is moved to
    ``checkpoints/old/``. ``epochs=0`` trains nothing: the model is evaluated as built (use it
    with ``weights`` holding an already trained classifier of these classes).

    ``augment``: random horizontal flips and shifts of up to 8% (the labels of a viewpoint or
    outfit class do not change under either). ``class_weighted``: inverse-frequency weights in
    the cross-entropy (for rare classes).

    Returns ``(model in eval mode, frozen; metrics; history)``. Metrics: ``test_accuracy``,
    ``balanced_accuracy``, ``train_accuracy``, ``recall/<class>``, ``confusion_matrix``,
    ``train_seconds``, ``epochs_trained``, ``num_parameters``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    model = build_classifier(backbone, data.num_classes, data.image_size, weights, widths)
    path = _checkpoint(results_dir, data.name, "classifier")
    weights_info = None
    if weights:
        wp = Path(weights)
        weights_info = {"file": wp.name, "bytes": wp.stat().st_size}
    config = {"classifier": model.config(), "image_size": list(data.image_size),
              "weights": weights_info, "data": data.fingerprint(), "batch_size": batch_size,
              "augment": augment, "class_weighted": class_weighted}
    history: list[dict] = []
    t0 = time.perf_counter()
    trained = 0
    if epochs > 0:
        full = {"model": config, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                "seed": seed}
        if resume:
            _archive_if_stale(path, "classifier", full)
        transform = _Augment(seed=seed) if augment else _to_float
        loader = TensorLoader(data.train_images, data.train_labels, batch_size=batch_size,
                              seed=seed, transform=transform)
        weight = None
        if class_weighted:
            counts = torch.bincount(data.train_labels, minlength=data.num_classes).float()
            weight = (counts.sum() / counts.clamp(min=1)) / data.num_classes

        def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            w = None if weight is None else weight.to(logits.device)
            return F.cross_entropy(logits, target, weight=w)

        test_x = data.test_images

        def evaluate(m: nn.Module) -> dict:
            logits = predict(_OnDevice(m, device), test_x)
            return {"test_loss": float(F.cross_entropy(logits, data.test_labels)),
                    "test_accuracy": float((logits.argmax(1) == data.test_labels)
                                           .float().mean())}

        result = fit(model, loader, epochs=epochs, loss_fn=loss_fn, lr=lr,
                     weight_decay=weight_decay, evaluate=evaluate,
                     checkpoint=path, config=config, kind="classifier", resume=resume,
                     seed=seed, device=device, progress=progress, desc="classifier")
        history, trained = result.history, epochs - result.resumed_from_epoch
    model = model.to(device).eval()
    model.requires_grad_(False)
    metrics = classifier_metrics(model, data, device)
    metrics.update(train_seconds=time.perf_counter() - t0, epochs=epochs,
                   epochs_trained=trained, backbone=backbone,
                   weights=None if weights_info is None else weights_info["file"],
                   num_parameters=sum(p.numel() for p in model.parameters()))
    return model.cpu() if device != "cpu" else model, metrics, history


class _OnDevice(nn.Module):
    def __init__(self, model: nn.Module, device: str | torch.device):
        super().__init__()
        self.model, self.device = model, torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).cpu()


def classifier_metrics(model: nn.Module, data: RealData, device: str = "cpu") -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and confusion matrix (rows = true)."""
    m = _OnDevice(model, device)
    ev = evaluate_classifier(m, data.test_images, data.test_labels, data.num_classes)
    tr = evaluate_classifier(m, data.train_images, data.train_labels, data.num_classes)
    cm = torch.tensor(ev["confusion_matrix"])
    recall = cm.diag().double() / cm.sum(1).clamp(min=1).double()
    return {"test_accuracy": ev["accuracy"], "balanced_accuracy": ev["balanced_accuracy"],
            "train_accuracy": tr["accuracy"],
            **{f"recall/{c}": float(r) for c, r in zip(data.class_names, recall)},
            "majority_baseline": float(torch.bincount(data.test_labels).max()
                                       / len(data.test_labels)),
            "n_train": len(data.train_labels), "n_test": len(data.test_labels),
            "confusion_matrix": ev["confusion_matrix"]}


def load_classifier(results_dir: PathLike, name: str) -> ContractClassifier:
    """The classifier that :func:`train_classifier` trained for dataset ``name``, frozen."""
    path = _checkpoint(results_dir, name, "classifier")
    ckpt = load_checkpoint(path, kind="classifier")
    cfg = ckpt["config"]["model"]
    model = _restore_classifier(cfg["classifier"])
    model.load_state_dict(ckpt["state_dict"])
    model.input_size = tuple(cfg["image_size"])
    model.requires_grad_(False)
    return model.eval()


# -------------------------------------------------------------------------------------- PDM

def _model_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def train_part_model(classifier: ContractClassifier, data: RealData, *,
                     results_dir: PathLike, epochs: int = 20, lr: float = 0.01,
                     batch_size: int = 32, widths: Sequence[int] | None = None,
                     image_width: int = 0, separable: bool = False, balance: bool = True,
                     seed: int = 0, resume: bool = True, progress: bool = False
                     ) -> tuple[Any, dict[str, Any], list[dict]]:
    """Train the PDM on the frozen classifier (:func:`partslib.pdm.train_pdm`) and evaluate it.

    The masks' 255 pixels are ignored by the loss; ``balance`` weighs the labels by median
    frequency (rare parts such as lights and mirrors weigh more, capped at 10×). The checkpoint
    ``results_dir/checkpoints/<data.name>-pdm-<classifier digest>.pt`` is tied to the exact
    classifier weights, so a retrained classifier never reuses a stale PDM.

    Returns ``(pdm in eval mode, metrics, history)``; metrics: test ``miou``, ``iou/<part>``,
    ``pixel_accuracy``, ``train_miou``, ``classifier_unchanged``, ``train_seconds``,
    ``num_parameters``, ``confusion_matrix``.
    """
    from partslib.pdm import PartsDetectionModule
    from partslib.pdm import train_pdm as _train_pdm
    from partslib.pipeline import evaluate_segmentation

    kwargs = dict(widths=list(widths) if widths else None, image_width=image_width,
                  separable=separable, input_size=data.image_size)
    arch = PartsDetectionModule.for_classifier(classifier, data.num_labels, **dict(kwargs)).config()
    path = Path(results_dir) / "checkpoints" / f"{data.name}-pdm-{_model_digest(classifier)}.pt"
    if resume:
        _archive_if_stale(path, "pdm", {"model": arch, "epochs": epochs, "lr": lr,
                                        "weight_decay": 1e-4, "seed": seed})
    probe = data.test_images[:16].float() / 255.0
    before = classifier(probe)
    t0 = time.perf_counter()
    pdm, history = _train_pdm(classifier, data.train_images, data.train_masks.long(),
                              data.num_labels, epochs=epochs, lr=lr, batch_size=batch_size,
                              balance=balance, checkpoint=path if resume else None, seed=seed,
                              progress=progress, **kwargs)
    train_seconds = time.perf_counter() - t0
    seg = evaluate_segmentation(classifier, pdm, data.test_images, data.test_masks.long(),
                                data.part_names)
    seg_train = evaluate_segmentation(classifier, pdm, data.train_images,
                                      data.train_masks.long(), data.part_names)
    metrics = {"miou": seg["miou"], **{f"iou/{k}": v for k, v in seg["iou"].items()},
               "pixel_accuracy": seg["pixel_accuracy"], "train_miou": seg_train["miou"],
               "classifier_unchanged": bool(torch.equal(classifier(probe), before)),
               "train_seconds": train_seconds, "epochs": epochs, "balance": balance,
               "num_parameters": sum(p.numel() for p in pdm.parameters()),
               "confusion_matrix": seg["confusion_matrix"]}
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
