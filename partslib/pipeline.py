"""Study orchestration shared by the notebooks: run setup, data splits, the classifier and PDM
stages -- one pipeline for SynthParts and for folder-format datasets of real photos.

The notebooks hold narrative, parameters and calls; what they do lives here, so a later notebook
gets the trained classifier with one call::

    model = pipeline.load_classifier(results_dir)

The stages take :class:`~partslib.data.split.Split` s (a SynthParts split converts itself; a
real-photo dataset gives ``data.split("train")``) and a stage configuration from
:mod:`partslib.config` or keyword overrides of it (``epochs=2``); the defaults are the default
study's. Checkpoints are resumed when their configuration equals the call's and moved to
``checkpoints/old/`` otherwise (:func:`partslib.training.fit`).

Layout of a run (see ``results/README.md``): ``results_dir/<stage>/`` holds a stage's
``metrics.json``, ``params.json``, tables and figures; ``results_dir/checkpoints/`` the models.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from partslib.checks import check_images, check_masks, check_nonempty
from partslib.config import ClassifierConfig, DataConfig, PDMConfig, resolve
from partslib.constants import INFERENCE_BATCH
from partslib.data.removal_training import (
    REMOVAL_VERSION,
    RemovalSet,
    removal_training_set,
    soft_cross_entropy,
)
from partslib.data.split import Split, as_split
from partslib.data.synthparts import SynthParts, SynthPartsConfig
from partslib.io import write_json
from partslib.models import ContractClassifier, build_classifier, create_classifier
from partslib.training import (
    TensorLoader,
    evaluate_classifier,
    fit,
    load_checkpoint,
    predict,
    seed_everything,
)

__all__ = [
    "CLASSIFIER_CHECKPOINT",
    "PDM_CHECKPOINT",
    "PDM_FEATURES_ONLY_CHECKPOINT",
    "Augment",
    "Splits",
    "classifier_checkpoint_config",
    "evaluate_segmentation",
    "library_versions",
    "load_classifier",
    "load_pdm",
    "load_splits",
    "setup",
    "stage_dir",
    "train_classifier",
    "train_pdm",
    "write_json",
    "write_metrics",
    "write_params",
]

CLASSIFIER_CHECKPOINT = Path("checkpoints") / "classifier.pt"
PDM_CHECKPOINT = Path("checkpoints") / "pdm.pt"
#: the PDM without the image step, trained beside the default one for T1 (notebook 03)
PDM_FEATURES_ONLY_CHECKPOINT = Path("checkpoints") / "pdm_features_only.pt"
_VERSIONED = ("partslib", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib",
              "seaborn", "grad-cam", "captum", "papermill", "nbval")


# -- run setup and bookkeeping --------------------------------------------------------------

def setup(seed: int, threads: int | None = None, deterministic: bool = True) -> None:
    """Thread count, seeds and deterministic algorithms: the first call of every notebook.

    The thread count changes CPU results (pytorch/pytorch#88718), so it is a parameter of the
    run like the seed.
    """
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        # cuBLAS needs this set before its first use to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # deterministic mode also fills every new tensor with NaN (a debugging aid against
        # reading uninitialised memory); it costs a pass over each output buffer, ~15% of a
        # PDM explanation on the CPU, and changes no result
        # (a module attribute that torch sets at import time and its type stubs lack)
        det = torch.utils.deterministic
        det.fill_uninitialized_memory = False  # pyright: ignore[reportAttributeAccessIssue]
        torch.backends.cudnn.benchmark = False
    seed_everything(seed)


def stage_dir(results_dir: str | os.PathLike, stage: str) -> Path:
    """``results_dir/<stage>/``, created."""
    path = Path(results_dir) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_params(out_dir: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """``out_dir/params.json``: the notebook's parameters, library versions, interpreter."""
    return write_json(Path(out_dir) / "params.json",
                      {"parameters": dict(params), "versions": library_versions(),
                       "executable": sys.executable, "torch_threads": torch.get_num_threads(),
                       "written": _dt.datetime.now().isoformat(timespec="seconds")})


def write_metrics(out_dir: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """``out_dir/metrics.json``; the study runner merges it into the run's ``metrics.json``."""
    return write_json(Path(out_dir) / "metrics.json", dict(metrics))


# -- data ----------------------------------------------------------------------------------

class Splits(NamedTuple):
    """The three SynthParts splits: ``train`` fits, ``val`` selects (and shows the per-epoch
    learning curves), ``test`` reports (evaluated once per run)."""

    train: SynthParts
    val: SynthParts
    test: SynthParts


def load_splits(data_dir: str | os.PathLike | None, config: DataConfig | None = None, *,
                progress: bool = False, **overrides: Any) -> Splits:
    """The train, validation and test splits of SynthParts, generated once and cached in
    ``data_dir``: ``train, val, test = load_splits(...)``.

    ``config`` (:class:`~partslib.config.DataConfig`, default the study's) or keyword overrides
    of it (``n_train=600``, ``classes="funnybirds"``). The three splits are disjoint streams
    (pairwise different seeds) of the same generator.
    """
    cfg = resolve(config, DataConfig, overrides)
    gen = SynthPartsConfig.from_classes(_class_table(cfg.classes), size=int(cfg.image_size))

    def stream(seed: int, n: int) -> SynthParts:
        return SynthParts(gen, seed=seed, n=n, cache_dir=data_dir, progress=progress)

    return Splits(train=stream(cfg.train_seed, cfg.n_train), val=stream(cfg.val_seed, cfg.n_val),
                  test=stream(cfg.test_seed, cfg.n_test))


def _class_table(classes: str | tuple) -> str | list[dict[str, str]]:
    """``DataConfig.classes`` as :meth:`SynthPartsConfig.from_classes` takes it."""
    return classes if isinstance(classes, str) else [dict(sig) for sig in classes]


def _check_splits(train: Split, *others: Split | None) -> None:
    check_nonempty(len(train), "the training split")
    for other in others:
        if other is None:
            continue
        check_nonempty(len(other), "an evaluation split")
        same = (train.class_names == other.class_names and train.part_names == other.part_names
                and train.image_size == other.image_size)
        if not same:
            raise ValueError(f"train and evaluation splits differ in classes, parts or image "
                             f"size ({train.num_classes}/{other.num_classes} classes, "
                             f"{train.num_labels}/{other.num_labels} labels, "
                             f"{train.image_size}/{other.image_size})")


# -- the classifier stage ------------------------------------------------------------------

class _OnDevice(nn.Module):
    """Runs ``model`` on its device for CPU inputs and returns CPU outputs (for evaluation
    helpers that feed CPU batches)."""

    def __init__(self, model: nn.Module, device: torch.device | str):
        super().__init__()
        self.model, self.device = model, torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).cpu()


def _uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


class Augment:
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
            padded = nn.functional.pad(x, (pw, pw, ph, ph), mode="replicate")
            dy = torch.randint(0, 2 * ph + 1, (B,), generator=self.g)
            dx = torch.randint(0, 2 * pw + 1, (B,), generator=self.g)
            x = torch.stack([padded[b, :, dy[b]:dy[b] + H, dx[b]:dx[b] + W] for b in range(B)])
        return x


def classifier_checkpoint_config(model: ContractClassifier, train: Split,
                                 config: ClassifierConfig) -> dict[str, Any]:
    """What a classifier checkpoint depends on besides the optimisation settings: the model,
    its input size, the weights file it started from, the training data and the batches, and
    with ``removal_fraction > 0`` the in-domain removal training (key ``removal``; absent for
    intact training, so such a checkpoint never serves a run with the option, nor the reverse)."""
    weights = None
    if config.weights:
        path = Path(config.weights)
        weights = {"file": path.name, "bytes": path.stat().st_size}
    out = {"classifier": model.config(), "image_size": list(train.image_size),
           "weights": weights, "data": train.info, "batch_size": config.batch_size,
           "augment": config.augment, "class_weighted": config.class_weighted}
    if config.removal_fraction > 0:
        out["removal"] = {"fraction": config.removal_fraction, "distractors": True,
                          "version": REMOVAL_VERSION}
    return out


def _classifier_monitor(model: nn.Module, val: Split | None):
    """Per-epoch validation loss and accuracy (``None`` without ``val``); deterministic
    inference that draws no random numbers, so the trained weights do not depend on it."""
    if val is None:
        return None

    def evaluate(m: nn.Module) -> dict:
        logits = predict(model, val.images, batch_size=512)
        return {"val_loss": float(nn.functional.cross_entropy(logits, val.labels)),
                "val_accuracy": float((logits.argmax(1) == val.labels).float().mean())}
    return evaluate


def _monitor_info(val: Split | None, n: int) -> dict | None:
    """What a per-epoch evaluation runs on, for the checkpoint configuration."""
    return None if val is None or n <= 0 else {"split": "val", "data": val.info, "n": n}


def _fit_classifier(model: ContractClassifier, train: Split, val: Split | None,
                    cfg: ClassifierConfig, path: Path, *, seed: int,
                    device: str | torch.device, resume: bool, progress: bool,
                    removal: RemovalSet | None = None):
    transform = Augment(seed=seed) if cfg.augment else _uint8_to_float
    images, targets = (train.images, train.labels) if removal is None else (
        removal.images, removal.targets)
    loader = TensorLoader(images, targets, batch_size=cfg.batch_size, shuffle=True,
                          seed=seed, transform=transform)
    weight = None
    if cfg.class_weighted:
        counts = torch.bincount(train.labels, minlength=train.num_classes).float()
        weight = (counts.sum() / counts.clamp(min=1)) / train.num_classes

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if weight is None else weight.to(logits.device)
        return soft_cross_entropy(logits, target, weight=w)

    return fit(model, loader, epochs=cfg.epochs, loss_fn=loss_fn, lr=cfg.lr,
               weight_decay=cfg.weight_decay,
               evaluate=_classifier_monitor(_OnDevice(model, device), val),
               evaluate_info=_monitor_info(val, len(val) if val is not None else 0),
               checkpoint=path,
               config=classifier_checkpoint_config(model, train, cfg), kind="classifier",
               resume=resume, seed=seed, device=device, progress=progress, desc="classifier")


def train_classifier(train: Split | SynthParts, val: Split | SynthParts | None,
                     test: Split | SynthParts, *,
                     results_dir: str | os.PathLike, config: ClassifierConfig | None = None,
                     checkpoint: str | os.PathLike = "", seed: int = 0,
                     device: str | torch.device = "cpu", resume: bool = True,
                     progress: bool = False, **overrides: Any
                     ) -> tuple[ContractClassifier, dict[str, Any], list[dict]]:
    """Build the classifier, train it (or resume / load its checkpoint) and evaluate it.

    ``val`` is evaluated after every epoch (the learning curves; what epochs, widths and the
    other settings are chosen on); ``None``: no per-epoch evaluation. ``test`` is evaluated
    once, after training, for the reported metrics. The evaluations draw no random numbers,
    so the weights do not depend on them. With ``removal_fraction > 0`` (in-domain removal
    training; ``train`` must be a SynthParts split) that share of the training images is
    re-rendered without some labels, drawn from ``seed``
    (:func:`~partslib.data.removal_training.removal_training_set`); every evaluation stays on
    intact images.

    ``config`` (:class:`~partslib.config.ClassifierConfig`, default the study's) or keyword
    overrides of it (``epochs=2``). The checkpoint ``results_dir/<checkpoint>`` (default
    ``checkpoints/classifier.pt``) is written atomically after every epoch; it is resumed when
    its configuration (model, data, optimisation) equals this call's, and moved to
    ``checkpoints/old/`` otherwise; ``resume=False`` always starts over. ``epochs=0`` trains
    nothing: the model is evaluated as built (with ``weights``: as loaded).

    Returns:
        ``(model in eval mode on device, frozen; metrics; history)``; ``metrics`` holds
        ``test_accuracy``, ``balanced_accuracy`` (test), ``train_accuracy``, ``val_accuracy``
        (with ``val``), ``final_train_loss`` (when trained), ``epochs``, ``epochs_trained``
        (this call), ``train_seconds``, ``num_parameters``, ``confusion_matrix`` (test, rows
        = true class), ``removal_fraction`` and, with removal training, ``removal_images``,
        ``removal_mean_labels_removed``, ``removal_mean_consistent``; ``history`` one dict per
        epoch (``train_loss``, and with ``val`` ``val_loss``, ``val_accuracy``).
    """
    cfg = resolve(config, ClassifierConfig, overrides)
    removal = (removal_training_set(train, cfg.removal_fraction, seed=seed)
               if cfg.removal_fraction > 0 else None)
    train, test = as_split(train), as_split(test)
    val = None if val is None else as_split(val)
    _check_splits(train, val, test)
    model = create_classifier(cfg.arch, train.num_classes, train.image_size,
                              weights=cfg.weights, widths=cfg.widths)
    path = Path(results_dir) / (checkpoint or CLASSIFIER_CHECKPOINT)
    history, trained = [], 0
    t0 = time.perf_counter()
    if cfg.epochs > 0:
        result = _fit_classifier(model, train, val, cfg, path, seed=seed, device=device,
                                 resume=resume, progress=progress, removal=removal)
        history, trained = result.history, cfg.epochs - result.resumed_from_epoch
    train_seconds = time.perf_counter() - t0
    model = model.to(device).eval()
    model.requires_grad_(False)
    on_device = _OnDevice(model, device)
    ev = evaluate_classifier(on_device, test.images, test.labels, train.num_classes)
    ev_train = evaluate_classifier(on_device, train.images, train.labels, train.num_classes)
    metrics = {"test_accuracy": ev["accuracy"], "balanced_accuracy": ev["balanced_accuracy"],
               "train_accuracy": ev_train["accuracy"]}
    if val is not None:
        metrics["val_accuracy"] = evaluate_classifier(on_device, val.images, val.labels,
                                                      train.num_classes)["accuracy"]
    if history:
        metrics["final_train_loss"] = history[-1]["train_loss"]
    metrics.update(epochs=cfg.epochs, epochs_trained=trained, train_seconds=train_seconds,
                   num_parameters=sum(p.numel() for p in model.parameters()),
                   confusion_matrix=ev["confusion_matrix"],
                   removal_fraction=cfg.removal_fraction,
                   **(removal.summary() if removal is not None else {}))
    return model, metrics, history


def load_classifier(results_dir: str | os.PathLike, device: str | torch.device = "cpu",
                    checkpoint: str | os.PathLike = "") -> ContractClassifier:
    """The classifier trained by :func:`train_classifier` in ``results_dir`` (checkpoint
    ``results_dir/<checkpoint>``, default ``checkpoints/classifier.pt``), in eval mode with
    gradients off for its parameters (it stays frozen)."""
    path = Path(results_dir) / (checkpoint or CLASSIFIER_CHECKPOINT)
    if not path.exists():
        raise FileNotFoundError(f"no classifier checkpoint at {path}: run the classifier stage "
                                f"first (python -m partslib.study --only 02_classifier ...)")
    ckpt = load_checkpoint(path, kind="classifier")
    if ckpt.get("epoch") != ckpt["config"]["epochs"]:
        raise ValueError(f"classifier checkpoint {path} stopped at epoch {ckpt.get('epoch')} of "
                         f"{ckpt['config']['epochs']}: its training was interrupted; rerun the "
                         f"classifier stage to finish it")
    cfg = ckpt["config"]["model"]
    model = build_classifier(cfg["classifier"])
    model.load_state_dict(ckpt["state_dict"])
    if cfg.get("image_size"):
        model.input_size = tuple(cfg["image_size"])
    model.requires_grad_(False)
    return model.to(device).eval()


# -- the PDM stage ----------------------------------------------------------------------------

def evaluate_segmentation(classifier: ContractClassifier, pdm, images: torch.Tensor,
                          masks: torch.Tensor, part_names: list[str]) -> dict[str, Any]:
    """Per-part IoU (dataset-summed) and mIoU of the PDM's argmax part map on ``images``
    (uint8 or float ``[N,3,H,W]``; ``masks`` integer ``[N,H,W]``, ids ``0..P`` or 255)."""
    from partslib.metrics import confusion_matrix, mean_iou, part_iou
    from partslib.pdm import label_map, segment

    num_labels = len(part_names)
    images = check_images(images, keep_uint8=True)
    masks = check_masks(masks, images, num_labels)
    cm = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for i in range(0, len(images), INFERENCE_BATCH):
        pred = label_map(segment(classifier, pdm, images[i:i + INFERENCE_BATCH]))
        cm += confusion_matrix(pred, masks[i:i + INFERENCE_BATCH].long(), num_labels)
    iou = part_iou(cm)
    return {"miou": float(mean_iou(cm)),
            "iou": {name: float(v) for name, v in zip(part_names, iou)},
            "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1)),
            "confusion_matrix": cm.tolist()}


def _pdm_monitor(classifier: ContractClassifier, val: Split | None, n: int,
                 device: str | torch.device):
    """Per-epoch validation mIoU on the first ``n`` validation images (the learning curve;
    ``None`` without ``val`` or for ``n = 0``); draws no random numbers."""
    if val is None or n <= 0:
        return None
    val_x, val_m = val.images[:n], val.masks[:n].long()

    def evaluate(pdm) -> dict:
        from partslib.metrics import confusion_matrix, mean_iou
        from partslib.pdm import label_map, segment

        pred = label_map(segment(classifier, pdm.to(device), val_x))
        return {"val_miou": float(mean_iou(confusion_matrix(pred, val_m, val.num_labels)))}
    return evaluate


def train_pdm(classifier: ContractClassifier, train: Split | SynthParts,
              val: Split | SynthParts | None, test: Split | SynthParts, *,
              results_dir: str | os.PathLike, config: PDMConfig | None = None,
              checkpoint: str | os.PathLike = "", seed: int = 0, resume: bool = True,
              progress: bool = False, device: str | torch.device = "cpu",
              monitor: int | None = 500, **overrides: Any
              ) -> tuple[Any, dict[str, Any], list[dict]]:
    """Train the Parts Detection Module on the frozen classifier (or reuse its checkpoint).

    ``config`` (:class:`~partslib.config.PDMConfig`, default the study's) or keyword overrides
    of it (``epochs=2``, ``image_width=0``); its first ``n_train`` training images are used.
    The checkpoint ``results_dir/<checkpoint>`` (default ``checkpoints/pdm.pt``) follows the
    classifier's rules. ``val`` is what settings are chosen on: its mIoU is recorded after each
    epoch (history ``val_miou``, on its first ``monitor`` images: 500 by default, the per-epoch
    cost the learning curve had before; ``None``: all; 0: none) and on the whole split once at
    the end (metrics ``val_miou``); ``test`` is evaluated once, after training, for the reported
    metrics. The per-epoch evaluation draws no random numbers.

    Returns ``(pdm in eval mode, metrics, history)``; metrics hold the test ``miou``, per-part
    ``iou/<part>``, ``pixel_accuracy``, ``val_miou`` (with ``val``), ``train_seconds``,
    ``n_train``, ``epochs``, ``num_parameters``, whether the classifier was left bit-identical
    (``classifier_unchanged``) and the (test) ``confusion_matrix``.
    """
    from partslib.pdm import PartsDetectionModule
    from partslib.pdm import train_pdm as _train_pdm

    cfg = resolve(config, PDMConfig, overrides)
    train, test = as_split(train), as_split(test)
    val = None if val is None else as_split(val)
    _check_splits(train, val, test)
    n_monitor = 0 if val is None else len(val) if monitor is None else min(monitor, len(val))
    n = len(train) if cfg.n_train is None else min(int(cfg.n_train), len(train))
    # built once here to reject a bad configuration before the features are extracted (an
    # image step on a stride-4 classifier); this draw from the global RNG precedes the trained
    # PDM's own, as it always has, so results reproduce earlier runs
    PartsDetectionModule.from_config(classifier, train.num_labels, cfg)
    classifier = classifier.to(device)
    probe = test.images[:64].float().div(255.0).to(device)
    before = classifier(probe)
    t0 = time.perf_counter()
    pdm, history = _train_pdm(classifier, train.images[:n], train.masks[:n].long(),
                              train.num_labels, cfg, seed=seed, progress=progress,
                              checkpoint=Path(results_dir) / (checkpoint or PDM_CHECKPOINT),
                              resume=resume,
                              evaluate=_pdm_monitor(classifier, val, n_monitor, device),
                              evaluate_info=_monitor_info(val, n_monitor), device=device)
    train_seconds = time.perf_counter() - t0
    pdm = pdm.to(device).eval()
    seg = evaluate_segmentation(classifier, pdm, test.images, test.masks, test.part_names)
    metrics = {"miou": seg["miou"], **{f"iou/{k}": v for k, v in seg["iou"].items()},
               "pixel_accuracy": seg["pixel_accuracy"], "train_seconds": train_seconds,
               "n_train": n, "epochs": cfg.epochs,
               "num_parameters": sum(p.numel() for p in pdm.parameters()),
               "classifier_unchanged": bool(torch.equal(classifier(probe), before)),
               "confusion_matrix": seg["confusion_matrix"]}
    if val is not None:
        metrics["val_miou"] = evaluate_segmentation(classifier, pdm, val.images, val.masks,
                                                    val.part_names)["miou"]
    return pdm, metrics, history


def load_pdm(results_dir: str | os.PathLike, device: str | torch.device = "cpu",
             checkpoint: str | os.PathLike = ""):
    """The PDM trained by :func:`train_pdm` in ``results_dir`` (checkpoint
    ``results_dir/<checkpoint>``, default ``checkpoints/pdm.pt``), in eval mode."""
    from partslib.pdm import load_pdm as _load

    path = Path(results_dir) / (checkpoint or PDM_CHECKPOINT)
    if not path.exists():
        raise FileNotFoundError(f"no PDM checkpoint at {path}: run the PDM stage first "
                                f"(python -m partslib.study --only 03_pdm ...)")
    return _load(path).to(device)
