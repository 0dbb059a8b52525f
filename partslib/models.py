"""Classifiers with a *feature contract*.

Every classifier in partslib has the shape of SPEC §2: stages that each halve the resolution,
global average pooling of the last stage ``A`` and a linear head ``fc``, so that
``logit_k = w_k · mean_u A(u) + b_k``. The contract (as torchvision's ``IntermediateLayerGetter``
or timm's ``forward_intermediates``):

* ``model.stage_names``: stage names from shallow to deep; the last is ``A``.
* ``model.stage_channels`` / ``model.stage_strides``: channels and stride of each stage.
* ``model.features(x) -> dict[str, Tensor]``: the stage outputs, in ``stage_names`` order.
* ``model.head(A) -> logits`` and ``model.fc`` (``nn.Linear``).
* ``model(x) == model.head(model.features(x)[stage_names[-1]])``.

Inputs are RGB float images in [0, 1], ``[B, 3, H, W]``; each model normalises internally.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from partslib.checks import check_images

__all__ = [
    "ContractClassifier",
    "SmallResNet",
    "TorchvisionResNet",
    "build_classifier",
    "check_images",
    "create_classifier",
]


class ContractClassifier(nn.Module):
    """Base class: the feature contract, input normalisation and the GAP + linear head."""

    stage_names: tuple[str, ...]
    stage_channels: dict[str, int]
    stage_strides: dict[str, int]
    input_size: tuple[int, int]  # (H, W) the model was built for
    fc: nn.Linear
    stem: nn.Module
    mean: torch.Tensor  # [1,3,1,1] normalisation buffers
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    @property
    def final_stage(self) -> str:
        return self.stage_names[-1]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage features by name, shallow to deep. The default runs ``self.stem`` on the
        normalised input, then the stage modules (attributes named as ``stage_names``) in order;
        a model of another shape overrides it."""
        out = OrderedDict()
        h = self.stem(self.normalise(x))
        for name in self.stage_names:
            h = getattr(self, name)(h)
            out[name] = h
        return out

    def head(self, a: torch.Tensor) -> torch.Tensor:
        """Logits from the final feature map ``A`` ``[B,C,h,w]``: ``fc(mean_u A(u))``."""
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[self.final_stage])

    def config(self) -> dict:  # pragma: no cover
        raise NotImplementedError


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(ContractClassifier):
    """A small ResNet for 64×64 SynthParts images.

    stem (3×3 conv, stride 2) + one basic block per stage; ``layer1`` at stride 2, each further
    stage halves the resolution. With the default widths a 64×64 input gives ``layer3`` 8×8.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128),
                 input_size: int = 64):
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.widths, self.input_size = tuple(widths), (input_size, input_size)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(widths)))
        cin = widths[0]
        for i, (name, w) in enumerate(zip(self.stage_names, widths)):
            self.add_module(name, _BasicBlock(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.stage_channels = dict(zip(self.stage_names, widths))
        self.stage_strides = {n: 2 ** (i + 1) for i, n in enumerate(self.stage_names)}
        self.fc = nn.Linear(cin, num_classes)

    def config(self) -> dict:
        return {"arch": "small_resnet", "num_classes": self.num_classes,
                "widths": list(self.widths), "input_size": self.input_size[0]}


class TorchvisionResNet(ContractClassifier):
    """The feature contract for torchvision ResNets (resnet18/34/50/...).

    ``weights`` is a local file: a state dict (or a checkpoint dict holding ``state_dict``; a
    ``module.`` prefix from DataParallel is stripped). Nothing is downloaded. When the file's head
    has another number of classes than ``num_classes``, pass ``num_classes=None`` to take it from
    the file.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int | None = 1000,
                 weights: str | Path | None = None, input_size: int = 224):
        super().__init__(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        import torchvision

        builders = {n: getattr(torchvision.models, n) for n in
                    ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")}
        if arch not in builders:
            raise ValueError(f"arch must be one of {sorted(builders)}, got {arch!r}")
        state = None
        if weights is not None:
            state = _read_state_dict(weights)
            if num_classes is None:
                num_classes = int(state["fc.weight"].shape[0])
        if num_classes is None:
            raise ValueError("num_classes=None needs a weights file to read it from")
        net = builders[arch](weights=None, num_classes=num_classes)
        if state is not None:
            try:
                missing, unexpected = net.load_state_dict(state, strict=False)
            except RuntimeError as e:  # shape mismatches
                raise ValueError(f"weights file {weights} does not fit torchvision {arch} with "
                                 f"{num_classes} classes: {str(e).splitlines()[1:3]}") from e
            if missing or unexpected:
                raise ValueError(f"weights file {weights} does not fit torchvision {arch} with "
                                 f"{num_classes} classes: missing {missing[:5]}, unexpected "
                                 f"{unexpected[:5]}")
        self.arch, self.weights_path = arch, None if weights is None else str(weights)
        self.input_size = (input_size, input_size)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stage_names = ("layer1", "layer2", "layer3", "layer4")
        for n in self.stage_names:
            self.add_module(n, getattr(net, n))
        expansion = 4 if arch in ("resnet50", "resnet101", "resnet152") else 1
        self.stage_channels = {n: c * expansion for n, c in
                               zip(self.stage_names, (64, 128, 256, 512))}
        self.stage_strides = dict(zip(self.stage_names, (4, 8, 16, 32)))
        self.fc = net.fc

    def config(self) -> dict:
        return {"arch": "torchvision", "tv_arch": self.arch, "num_classes": self.num_classes,
                "input_size": self.input_size[0]}


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read weights file {path}: {e}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_classifier(config: dict) -> ContractClassifier:
    """Build a classifier from ``model.config()`` (used to restore checkpoints)."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch == "small_resnet":
        return SmallResNet(num_classes=cfg["num_classes"], widths=tuple(cfg["widths"]),
                           input_size=cfg.get("input_size", 64))
    if arch == "torchvision":
        return TorchvisionResNet(cfg["tv_arch"], num_classes=cfg["num_classes"],
                                 input_size=cfg.get("input_size", 224))
    raise ValueError(f"unknown classifier arch {arch!r}; expected 'small_resnet' or 'torchvision'")


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int) or (isinstance(image_size, torch.Tensor)
                                       and image_size.dim() == 0):
        return int(image_size), int(image_size)
    size = tuple(int(v) for v in image_size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be an int or (H, W) with sides >= 8, got {image_size!r}")
    return size  # type: ignore[return-value]


def create_classifier(arch: str, num_classes: int, image_size: int | Sequence[int],
                      weights: str | Path | None = None,
                      widths: Sequence[int] = (24, 48, 96)) -> ContractClassifier:
    """A new classifier with the feature contract: the one factory of partslib.

    (:func:`build_classifier` restores one from its ``config()``.)

    Args:
        arch: ``"small_resnet"`` (:class:`SmallResNet` with ``widths``) or a torchvision ResNet
            name (``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ...), trained from scratch
            unless ``weights`` is given (nothing is downloaded).
        num_classes: classes of the head.
        image_size: the input size, an int or (H, W); recorded for the PDM's output size.
        weights: optional local file (a state dict, or a checkpoint holding ``state_dict``).
            For a torchvision ResNet every layer is loaded; when the file's head has another
            number of classes (e.g. ImageNet's 1000) the head is replaced by a new
            ``num_classes`` one, so an ImageNet file fine-tunes. For ``small_resnet`` the file
            must fit exactly (``strict`` loading).
        widths: SmallResNet stage widths (ignored for torchvision ResNets).
    """
    size = _size(image_size)
    if arch == "small_resnet":
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
    elif arch.startswith("resnet"):
        model = TorchvisionResNet(arch, num_classes=None if weights else num_classes,
                                  weights=weights or None, input_size=size[0])
        if model.fc.out_features != num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        raise ValueError(f"arch must be 'small_resnet' or a torchvision ResNet name "
                         f"('resnet18', 'resnet34', 'resnet50', ...), got {arch!r}")
    model.input_size = size
    return model
