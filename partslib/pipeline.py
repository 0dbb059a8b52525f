"""Study orchestration shared by the notebooks: run setup, data splits, the classifier stage.

The notebooks hold narrative, parameters and calls; what they do lives here, so a later notebook
gets the trained classifier with one call::

    model = pipeline.load_classifier(results_dir)

Layout of a run (see ``results/README.md``): ``results_dir/<stage>/`` holds a stage's
``metrics.json``, ``params.json``, tables and figures; ``results_dir/checkpoints/`` the models.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from partslib.data.synthparts import SynthParts, SynthPartsConfig
from partslib.models import ContractClassifier, SmallResNet, TorchvisionResNet, build_classifier
from partslib.training import (TensorLoader, evaluate_classifier, fit, load_checkpoint,
                               seed_everything)

__all__ = ["setup", "stage_dir", "library_versions", "write_json", "write_params",
           "write_metrics", "load_splits", "build_model", "train_classifier", "load_classifier",
           "CLASSIFIER_CHECKPOINT", "PDM_CHECKPOINT", "train_pdm", "load_pdm",
           "evaluate_segmentation"]

CLASSIFIER_CHECKPOINT = Path("checkpoints") / "classifier.pt"
PDM_CHECKPOINT = Path("checkpoints") / "pdm.pt"
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
        torch.utils.deterministic.fill_uninitialized_memory = False
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")
    os.replace(tmp, path)
    return path


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

def load_splits(data_dir: str | os.PathLike | None, *, image_size: int = 64,
                train_seed: int = 0, n_train: int = 5000, test_seed: int = 1,
                n_test: int = 1000, progress: bool = False) -> tuple[SynthParts, SynthParts]:
    """The train and test splits of SynthParts, generated once and cached in ``data_dir``.

    The two splits are disjoint streams (different seeds) of the same generator.
    """
    if train_seed == test_seed:
        raise ValueError(f"train_seed and test_seed must differ (got {train_seed} for both): "
                         f"the splits would share their first samples")
    cfg = SynthPartsConfig(size=int(image_size))
    train = SynthParts(cfg, seed=train_seed, n=n_train, cache_dir=data_dir, progress=progress)
    test = SynthParts(cfg, seed=test_seed, n=n_test, cache_dir=data_dir, progress=progress)
    return train, test


# -- the classifier stage ------------------------------------------------------------------

def build_model(arch: str, num_classes: int, image_size: int,
                widths: tuple[int, ...] | list[int] = (24, 48, 96)) -> ContractClassifier:
    """``arch`` is ``"small_resnet"`` or a torchvision ResNet name (``"resnet18"``, ...), the
    latter trained from scratch (nothing is downloaded)."""
    if arch == "small_resnet":
        return SmallResNet(num_classes, widths=tuple(widths), input_size=image_size)
    if arch.startswith("resnet"):
        return TorchvisionResNet(arch, num_classes=num_classes, input_size=image_size)
    raise ValueError(f"arch must be 'small_resnet' or a torchvision ResNet name such as "
                     f"'resnet18', got {arch!r}")


class _OnDevice(nn.Module):
    """Runs ``model`` on its device for CPU inputs and returns CPU outputs (for evaluation
    helpers that feed CPU batches)."""

    def __init__(self, model: nn.Module, device: torch.device | str):
        super().__init__()
        self.model, self.device = model, torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).cpu()


def _data_info(ds: SynthParts) -> dict:
    return {"generator": ds.cfg.fingerprint(), "seed": ds.seed, "n": ds.n}


def _uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def _archive_if_stale(ckpt_path: Path, kind: str, full_config: dict) -> None:
    """Move a checkpoint written with another configuration to ``checkpoints/old/`` (with a
    warning) so that training starts over instead of resuming from, or reusing, stale weights."""
    if not ckpt_path.exists():
        return
    try:
        same = load_checkpoint(ckpt_path, kind=kind)["config"] == full_config
    except ValueError:
        same = False
    if not same:
        old = ckpt_path.parent / "old" / f"{kind}-{_dt.datetime.now():%Y%m%d-%H%M%S}.pt"
        old.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(ckpt_path), str(old))
        warnings.warn(f"checkpoint {ckpt_path} has another configuration; moved to {old}, "
                      f"training from scratch", stacklevel=3)


def train_classifier(train: SynthParts, test: SynthParts, *, results_dir: str | os.PathLike,
                     arch: str = "small_resnet", widths: list[int] | tuple[int, ...] = (24, 48, 96),
                     epochs: int = 14, lr: float = 3e-3, weight_decay: float = 1e-4,
                     batch_size: int = 128, seed: int = 0, device: str = "cpu",
                     resume: bool = True, progress: bool = False
                     ) -> tuple[ContractClassifier, dict[str, Any], list[dict]]:
    """Build the classifier, train it (or resume / load its checkpoint) and evaluate it.

    The checkpoint ``results_dir/checkpoints/classifier.pt`` is written atomically after every
    epoch. It is resumed when its configuration (model, data, optimisation) equals this call's;
    a checkpoint of another configuration is moved to ``checkpoints/old/`` and training starts
    over. ``resume=False`` always starts over.

    Returns:
        ``(model in eval mode on device, metrics, history)``; ``metrics`` holds
        ``test_accuracy``, ``balanced_accuracy``, ``train_accuracy``, ``train_seconds``,
        ``epochs_trained`` (this call), ``num_parameters`` and ``confusion_matrix``
        (rows = true class); ``history`` one dict per epoch (``train_loss``, ``test_loss``,
        ``test_accuracy``).
    """
    if train.cfg != test.cfg:
        raise ValueError("train and test splits come from different SynthParts configurations")
    model = build_model(arch, train.cfg.num_classes, train.cfg.size, widths)
    ckpt_path = Path(results_dir) / CLASSIFIER_CHECKPOINT
    config = {"classifier": model.config(), "data": _data_info(train), "batch_size": batch_size}
    # fit() stores this dict as the checkpoint's config; it refuses to resume on a mismatch
    full_config = {"model": config, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                   "seed": seed}
    if resume:
        _archive_if_stale(ckpt_path, "classifier", full_config)
    loader = TensorLoader(train.images, train.labels, batch_size=batch_size, shuffle=True,
                          seed=seed, transform=_uint8_to_float)
    on_device = _OnDevice(model, device)
    test_x = test.images.float() / 255.0

    def evaluate(m: nn.Module) -> dict:
        logits = torch.cat([on_device(test_x[i:i + 512]) for i in range(0, len(test_x), 512)])
        return {"test_loss": float(nn.functional.cross_entropy(logits, test.labels)),
                "test_accuracy": float((logits.argmax(1) == test.labels).float().mean())}

    t0 = time.perf_counter()
    result = fit(model, loader, epochs=epochs, loss_fn=nn.functional.cross_entropy, lr=lr,
                 weight_decay=weight_decay, evaluate=evaluate, checkpoint=ckpt_path,
                 config=config, kind="classifier", resume=resume, seed=seed, device=device,
                 progress=progress, desc="classifier")
    train_seconds = time.perf_counter() - t0
    ev = evaluate_classifier(on_device, test.images, test.labels, train.cfg.num_classes)
    ev_train = evaluate_classifier(on_device, train.images, train.labels, train.cfg.num_classes)
    metrics = {
        "test_accuracy": ev["accuracy"],
        "balanced_accuracy": ev["balanced_accuracy"],
        "train_accuracy": ev_train["accuracy"],
        "final_train_loss": result.history[-1]["train_loss"],
        "epochs": epochs,
        "epochs_trained": epochs - result.resumed_from_epoch,
        "train_seconds": train_seconds,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "confusion_matrix": ev["confusion_matrix"],
    }
    model.eval()
    return model, metrics, result.history


def load_classifier(results_dir: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> ContractClassifier:
    """The classifier trained by the classifier stage of the run in ``results_dir``, in eval mode
    with gradients off for its parameters (it stays frozen)."""
    path = Path(results_dir) / CLASSIFIER_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no classifier checkpoint at {path}: run the classifier stage "
                                f"first (python -m partslib.study --only 02_classifier ...)")
    ckpt = load_checkpoint(path, kind="classifier")
    if ckpt.get("epoch") != ckpt["config"]["epochs"]:
        raise ValueError(f"classifier checkpoint {path} stopped at epoch {ckpt.get('epoch')} of "
                         f"{ckpt['config']['epochs']}: its training was interrupted; rerun the "
                         f"classifier stage to finish it")
    model = build_classifier(ckpt["config"]["model"]["classifier"])
    model.load_state_dict(ckpt["state_dict"])
    model.requires_grad_(False)
    return model.to(device).eval()


# -- the PDM stage ----------------------------------------------------------------------------

def evaluate_segmentation(classifier: ContractClassifier, pdm, images: torch.Tensor,
                          masks: torch.Tensor, part_names: list[str]) -> dict[str, Any]:
    """Per-part IoU (dataset-summed) and mIoU of the PDM's argmax part map on ``images``."""
    from partslib.metrics import confusion_matrix, mean_iou, part_iou
    from partslib.pdm import segment

    num_labels = len(part_names)
    cm = torch.zeros(num_labels, num_labels, dtype=torch.long)
    for i in range(0, len(images), 256):
        pred = segment(classifier, pdm, images[i:i + 256]).argmax(1)
        cm += confusion_matrix(pred, masks[i:i + 256], num_labels)
    iou = part_iou(cm)
    return {"miou": float(mean_iou(cm)),
            "iou": {name: float(v) for name, v in zip(part_names, iou)},
            "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp(min=1)),
            "confusion_matrix": cm.tolist()}


def train_pdm(classifier: ContractClassifier, train: SynthParts, test: SynthParts, *,
              results_dir: str | os.PathLike, n_train: int | None = None, epochs: int = 8,
              lr: float = 5e-3, batch_size: int = 16, widths: list[int] | None = None,
              image_width: int = 0, image_kernel: int = 3, separable: bool = True,
              seed: int = 0, resume: bool = True, progress: bool = False,
              device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any], list[dict]]:
    """Train the Parts Detection Module on the frozen classifier (or reuse its checkpoint).

    The checkpoint ``results_dir/checkpoints/pdm.pt`` follows the classifier's rules: resumed
    when its configuration equals this call's, archived to ``checkpoints/old/`` otherwise.
    Returns ``(pdm in eval mode, metrics, history)``; metrics hold the test ``miou``, per-part
    ``iou``, ``train_seconds`` and whether the classifier was left bit-identical.
    """
    from partslib.pdm import PartsDetectionModule
    from partslib.pdm import train_pdm as _train_pdm

    n = len(train) if n_train is None else min(int(n_train), len(train))
    names = train.part_names
    kwargs = dict(widths=widths, image_width=image_width, image_kernel=image_kernel,
                  separable=separable)
    arch = PartsDetectionModule.for_classifier(classifier, len(names), **kwargs).config()
    ckpt_path = Path(results_dir) / PDM_CHECKPOINT
    if resume:
        _archive_if_stale(ckpt_path, "pdm", {"model": arch, "epochs": epochs, "lr": lr,
                                             "weight_decay": 1e-4, "seed": seed})
    classifier = classifier.to(device)
    probe = test.images[:64].float().div(255.0).to(device)
    before = classifier(probe)
    test_x = test.images[:500]

    def evaluate(pdm) -> dict:
        from partslib.metrics import confusion_matrix, mean_iou
        from partslib.pdm import segment

        pred = segment(classifier, pdm.to(device), test_x).argmax(1)
        return {"test_miou_500": float(mean_iou(confusion_matrix(pred, test.masks[:500],
                                                                 len(names))))}

    t0 = time.perf_counter()
    pdm, history = _train_pdm(classifier, train.images[:n], train.masks[:n], len(names),
                              epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                              checkpoint=ckpt_path if resume else None, progress=progress,
                              evaluate=evaluate, device=device, **kwargs)
    train_seconds = time.perf_counter() - t0
    seg = evaluate_segmentation(classifier, pdm.to(device), test.images, test.masks, names)
    metrics = {"miou": seg["miou"], **{f"iou/{k}": v for k, v in seg["iou"].items()},
               "pixel_accuracy": seg["pixel_accuracy"], "train_seconds": train_seconds,
               "n_train": n, "epochs": epochs,
               "num_parameters": sum(p.numel() for p in pdm.parameters()),
               "classifier_unchanged": bool(torch.equal(classifier(probe), before)),
               "confusion_matrix": seg["confusion_matrix"]}
    return pdm, metrics, history


def load_pdm(results_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The PDM trained by the PDM stage of the run in ``results_dir``, in eval mode."""
    from partslib.pdm import load_pdm as _load

    path = Path(results_dir) / PDM_CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no PDM checkpoint at {path}: run the PDM stage first "
                                f"(python -m partslib.study --only 03_pdm ...)")
    return _load(path).to(device)
