"""The Parts Detection Module (PDM): a top-down segmentation decoder on frozen classifier features.

Start from the final stage ``A_S``; repeat {upsample ×2, add a 1×1 projection of the matching
earlier stage, 3×3 conv–BN–ReLU}; optionally add a stride-1 step that merges a 1×1 projection
of the input image itself (sharp part boundaries for the price of a few channels at full
resolution; the PDM normalises the raw image as its classifier does); a 1×1 conv gives ``P+1``
logits per pixel (background + P parts); a final bilinear resize gives ``H×W``. The heavy
convolutions run at low resolution, where the channels are; widths shrink as the resolution
grows.

The PDM only *reads* the classifier's features: it never changes its weights or predictions.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from partslib.checks import check_images, check_masks
from partslib.config import PDMConfig, resolve
from partslib.constants import IGNORE_INDEX, INFERENCE_BATCH
from partslib.models import ContractClassifier
from partslib.training import TensorLoader, fit, load_checkpoint

# bump when the decoder's layout changes, so checkpoints of an older layout are not reused
DECODER_VERSION = 2

__all__ = ["PartsDetectionModule", "extract_features", "label_map", "load_pdm", "segment",
           "train_pdm"]

_DEFAULT = PDMConfig()


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, separable: bool = False
                  ) -> nn.Sequential:
    if separable and kernel > 1:  # depthwise kxk + pointwise 1x1: ~cout/9 of the multiply-adds
        return nn.Sequential(
            nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PartsDetectionModule(nn.Module):
    """Decoder from the named stage features of a classifier to per-pixel part logits.

    Args:
        stage_channels: channels of each stage, shallow to deep (the classifier's contract).
        stage_strides: stride of each stage; consecutive used stages must differ by ×2.
        num_labels: P + 1 (background + parts).
        widths: decoder width after each upsampling step, deep to shallow (default: half of the
            stage's channels, at least 16; :class:`~partslib.config.PDMConfig` holds the
            study's widths for its classifier).
        image_width: channels of the stride-1 image skip step (0 disables it; the output is
            then at the shallowest stage's resolution and resized). It needs the shallowest
            used stage at stride 2: for a classifier whose first stage is at stride 4 (the
            torchvision ResNets) pass ``image_width=0``, or a ``ValueError`` says so.
        image_kernel: kernel of that full-resolution step (1 = pointwise, the cheap choice).
        separable: depthwise-separable 3×3 blocks (much cheaper at high resolution).
        input_size: (H, W) of the images, for the final resize.
        stages: the stages the decoder reads, shallow to deep (default: all of them).
        mean, std: per-channel normalisation the image step applies to the raw images
            (:meth:`for_classifier` passes the classifier's; default: none, the image is used as
            given).

    The architecture defaults (``image_width``, ``image_kernel``, ``separable``) are
    :class:`~partslib.config.PDMConfig`'s.
    """

    image_mean: torch.Tensor
    image_std: torch.Tensor

    def __init__(self, stage_channels: dict[str, int], stage_strides: dict[str, int],
                 num_labels: int, widths: Sequence[int] | None = None,
                 image_width: int = _DEFAULT.image_width,
                 image_kernel: int = _DEFAULT.image_kernel, separable: bool = _DEFAULT.separable,
                 input_size: tuple[int, int] = (64, 64), stages: Sequence[str] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        names = list(stages or stage_channels)
        unknown = [n for n in names if n not in stage_channels or n not in stage_strides]
        if unknown:
            raise ValueError(f"PDM stages {unknown} are not in the classifier's contract "
                             f"{list(stage_channels)}")
        for a, b in itertools.pairwise(names):
            if stage_strides[b] != 2 * stage_strides[a]:
                raise ValueError(f"stages {a!r} (stride {stage_strides[a]}) and {b!r} (stride "
                                 f"{stage_strides[b]}) must differ by a factor 2")
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 (background + parts), got {num_labels}")
        if image_width < 0:
            raise ValueError(f"image_width must be >= 0 (0: no image step), got {image_width}")
        self.stages = names
        self.num_labels = num_labels
        self.input_size = tuple(input_size)
        self.image_width = image_width
        skips = names[:-1][::-1]  # stages merged on the way up, deep to shallow
        if not widths:
            widths = [max(16, stage_channels[s] // 2) for s in skips]
        widths = list(widths)
        if len(widths) != len(skips):
            raise ValueError(f"widths needs one entry per upsampling step ({len(skips)}: "
                             f"{skips}), got {widths}; widths=None derives them from the "
                             f"stages' channels")
        self.widths = widths
        top = names[-1]
        first = widths[0] if widths else stage_channels[top]
        self.top_proj = nn.Conv2d(stage_channels[top], first, 1)
        # each step: 1x1 reduce to the step's width *before* upsampling (cheap, low resolution),
        # add the 1x1-projected skip, then the 3x3 block at the step's width
        self.reduce = nn.ModuleList()
        self.skip_proj = nn.ModuleList()
        self.blocks = nn.ModuleList()
        cin = first
        for s, w in zip(skips, widths):
            self.reduce.append(nn.Identity() if cin == w else nn.Conv2d(cin, w, 1, bias=False))
            self.skip_proj.append(nn.Conv2d(stage_channels[s], w, 1))
            self.blocks.append(_conv_bn_relu(w, w, 3, separable))
            cin = w
        self.out_stride = stage_strides[names[0]] if skips else stage_strides[top]
        # the image step upsamples the last decoder step x2: only from stride 2 to stride 1
        if image_width > 0 and self.out_stride != 2:
            raise ValueError(
                f"image_width={image_width} asks for a full-resolution image step, which needs "
                f"the shallowest used stage at stride 2, but {names[0]!r} is at stride "
                f"{self.out_stride} (a torchvision ResNet's first stage is at stride 4); pass "
                f"image_width=0")
        self.image_reduce = self.image_proj = self.image_block = None
        norm = {"mean": (0.0, 0.0, 0.0) if mean is None else tuple(mean),
                "std": (1.0, 1.0, 1.0) if std is None else tuple(std)}
        for key, value in norm.items():
            if len(value) != 3:
                raise ValueError(f"{key} must have one value per RGB channel, got {value!r}")
            # non-persistent: the state dict keeps its keys; the config records the values
            self.register_buffer(f"image_{key}", torch.tensor(value).view(1, 3, 1, 1),
                                 persistent=False)
        if image_width > 0:
            self.image_reduce = nn.Conv2d(cin, image_width, 1, bias=False)
            self.image_proj = nn.Conv2d(3, image_width, 1)
            self.image_block = _conv_bn_relu(image_width, image_width, image_kernel, separable)
            cin = image_width
            self.out_stride = 1
        self.classifier = nn.Conv2d(cin, num_labels, 1)
        self._arch = {"decoder_version": DECODER_VERSION,
                      "stage_channels": {n: stage_channels[n] for n in names},
                      "stage_strides": {n: stage_strides[n] for n in names},
                      "num_labels": num_labels, "widths": widths, "image_width": image_width,
                      "image_kernel": image_kernel, "separable": separable,
                      "input_size": list(self.input_size), "stages": names}
        if image_width > 0:  # only a PDM with an image step depends on the normalisation
            self._arch.update(mean=self.image_mean.flatten().tolist(),
                              std=self.image_std.flatten().tolist())

    @classmethod
    def for_classifier(cls, classifier: ContractClassifier, num_labels: int, **kwargs
                       ) -> PartsDetectionModule:
        """Build a PDM from a classifier's feature contract and input normalisation."""
        return cls(classifier.stage_channels, classifier.stage_strides, num_labels,
                   input_size=kwargs.pop("input_size", classifier.input_size),
                   mean=classifier.mean.flatten().tolist(),
                   std=classifier.std.flatten().tolist(), **kwargs)

    @classmethod
    def from_config(cls, classifier: ContractClassifier, num_labels: int,
                    config: PDMConfig | None = None, **overrides) -> PartsDetectionModule:
        """:meth:`for_classifier` with the architecture of a :class:`PDMConfig` (or keyword
        overrides of the default one)."""
        cfg = resolve(config, PDMConfig, overrides)
        return cls.for_classifier(classifier, num_labels, widths=cfg.widths,
                                  image_width=cfg.image_width, image_kernel=cfg.image_kernel,
                                  separable=cfg.separable)

    @property
    def uses_image(self) -> bool:
        """Whether :meth:`forward` needs the images (the PDM has an image step)."""
        return self.image_proj is not None

    def config(self) -> dict:
        """The architecture (what :func:`load_pdm` rebuilds it from)."""
        return dict(self._arch)

    def fused(self) -> PartsDetectionModule:
        """An inference copy with every BatchNorm folded into the convolution before it.

        Same outputs up to float rounding, fewer passes over the feature maps: what the
        explainer runs. The module itself is not modified.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        fused = copy.deepcopy(self).eval()
        for seq in [*fused.blocks, fused.image_block]:
            if seq is None:
                continue
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                    seq[i + 1] = nn.Identity()
        return fused

    def forward(self, feats: dict[str, torch.Tensor], images: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Part logits ``[B, P+1, H, W]`` from the classifier's stage features.

        ``images``: the raw float images in [0, 1] the features came from (the classifier's
        input, not normalised). A PDM with an image step (:attr:`uses_image`) needs them and
        normalises them itself, with the classifier's mean and std; otherwise they are unused.
        """
        x = self.top_proj(feats[self.stages[-1]])
        for s, reduce, proj, block in zip(self.stages[:-1][::-1], self.reduce, self.skip_proj,
                                          self.blocks):
            skip = feats[s]
            x = F.interpolate(reduce(x), size=skip.shape[-2:], mode="bilinear",
                              align_corners=False)
            x = block(x + proj(skip))
        reduce_image, proj_image, block_image = self.image_reduce, self.image_proj, \
            self.image_block
        if reduce_image is not None and proj_image is not None and block_image is not None:
            if images is None:
                raise ValueError("this PDM merges the input image (image_width="
                                 f"{self.image_width}); pass the raw images in [0, 1]: "
                                 "pdm(features, images)")
            image = (images - self.image_mean) / self.image_std  # = classifier.normalise
            x = F.interpolate(reduce_image(x), size=image.shape[-2:], mode="bilinear",
                              align_corners=False)
            x = block_image(x + proj_image(image))
        logits = self.classifier(x)
        if tuple(logits.shape[-2:]) != self.input_size:
            logits = F.interpolate(logits, size=self.input_size, mode="bilinear",
                                   align_corners=False)
        return logits

    def part_logits(self, classifier: ContractClassifier, images: torch.Tensor) -> torch.Tensor:
        """Part logits ``[B, P+1, H, W]`` of float images in [0, 1] (on the classifier's
        device): the classifier's stage features, then the decoder."""
        return self(classifier.features(images), images)

    def part_probs(self, classifier: ContractClassifier, images: torch.Tensor) -> torch.Tensor:
        """Part probabilities ``[B, P+1, H, W]``: the softmax of :meth:`part_logits`."""
        return self.part_logits(classifier, images).softmax(1)


@torch.no_grad()
def extract_features(classifier: ContractClassifier, images: torch.Tensor,
                     stages: Sequence[str], batch_size: int = INFERENCE_BATCH,
                     progress: bool = False,
                     dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Frozen stage features of ``images`` (uint8 or float), computed once (eval mode) on the
    classifier's device and returned in host memory."""
    from partslib.progress import Progress

    classifier.eval()
    device = next(classifier.parameters()).device
    out: dict[str, list[torch.Tensor]] = {s: [] for s in stages}
    for i in Progress(range(0, len(images), batch_size), desc="features", unit="batch",
                      disable=not progress, leave=False):
        x = images[i:i + batch_size].to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        feats = classifier.features(x)
        for s in stages:  # kept in host memory; training moves each batch to the device
            out[s].append(feats[s].to("cpu", dtype))
    return {s: torch.cat(v) for s, v in out.items()}


def _class_weights(masks: torch.Tensor, num_labels: int, ignore_index: int = IGNORE_INDEX
                   ) -> torch.Tensor:
    """Median-frequency balancing weights (rare parts weigh more)."""
    valid = masks[masks != ignore_index]
    freq = torch.bincount(valid.flatten(), minlength=num_labels).float()
    freq = freq / freq.sum()
    w = freq[freq > 0].median() / freq.clamp(min=1e-8)
    return w.clamp(max=10.0)


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [0, 1]; float images unchanged."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def train_pdm(classifier: ContractClassifier, images: torch.Tensor, masks: torch.Tensor,
              num_labels: int, config: PDMConfig | None = None, *,
              checkpoint: str | Path | None = None, resume: bool = True, seed: int = 0,
              progress: bool = True, evaluate: Callable[[nn.Module], dict] | None = None,
              evaluate_info: Any = None, device: str | torch.device = "cpu", **overrides: Any
              ) -> tuple[PartsDetectionModule, list[dict]]:
    """Train a PDM on a frozen classifier with partslib's training loop.

    Args:
        images: uint8 or float ``[N,3,H,W]`` training images (all of them are used;
            ``config.n_train`` is applied by :func:`partslib.pipeline.train_pdm`).
        masks: ``[N,H,W]`` part labels ``0..num_labels-1``; ``IGNORE_INDEX`` (255) marks
            unannotated pixels, which the cross-entropy ignores.
        config: architecture and training (:class:`~partslib.config.PDMConfig`; default the
            study's); ``overrides`` change single fields (``epochs=2``).
        checkpoint, resume: see :func:`partslib.training.fit` (a checkpoint of another
            configuration is moved to ``old/``).
        evaluate, evaluate_info: the per-epoch evaluation and what it runs on (see
            :func:`partslib.training.fit`).

    The classifier's stage features are computed once (not per epoch) and the classifier is
    left untouched (its parameters do not even receive gradients). ``config.balance`` adds
    median-frequency class weights for rare parts.
    """
    cfg = resolve(config, PDMConfig, overrides)
    images = check_images(images, keep_uint8=True)
    masks = check_masks(masks, images, num_labels)
    pdm = PartsDetectionModule.from_config(classifier, num_labels, cfg)
    if torch.device(device).type == "cpu":
        # channels-last weights (activations follow): oneDNN skips reordering the decoder's
        # small-channel maps, a third less time per step on the CPU
        pdm = pdm.to(memory_format=torch.channels_last)
    feats = extract_features(classifier, images, pdm.stages, progress=progress)
    weight = _class_weights(masks, num_labels).to(device) if cfg.balance else None

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)

    def with_images(m: nn.Module, batch: tuple) -> torch.Tensor:
        return m(batch[0], _to_unit_float(batch[1]))

    # a PDM with an image step trains on batches of (features, raw images), made float on the
    # device; the others on the features alone
    inputs = (feats, images) if pdm.uses_image else feats
    loader = TensorLoader(inputs, masks.long(), batch_size=cfg.batch_size, seed=seed)
    result = fit(pdm, loader, epochs=cfg.epochs, loss_fn=loss_fn, lr=cfg.lr,
                 forward=with_images if pdm.uses_image else None,
                 checkpoint=checkpoint, config=pdm.config(), kind="pdm", resume=resume,
                 seed=seed, progress=progress, evaluate=evaluate, evaluate_info=evaluate_info,
                 desc="PDM", device=device)
    return pdm, result.history


def label_map(scores: torch.Tensor) -> torch.Tensor:
    """The label of every pixel, ``[B, H, W]``: the index of the largest of ``scores``
    ``[B, L, H, W]`` (part probabilities or logits, any memory format).

    The same indices as ``scores.argmax(1)`` (the first of equal maxima), which on the CPU
    reduces a contiguous ``[B, L, H, W]`` map about ten times more slowly than ``max``.
    """
    return scores.max(1).indices


@torch.no_grad()
def segment(classifier: ContractClassifier, pdm: PartsDetectionModule, images: torch.Tensor,
            batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Part probabilities ``[B, P+1, H, W]`` for images (uint8 or float in [0,1])."""
    classifier.eval()
    pdm.eval()
    device = next(classifier.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        out.append(pdm.part_probs(classifier, _to_unit_float(x)).cpu())
    return torch.cat(out)


def load_pdm(path: str | Path) -> PartsDetectionModule:
    """Restore a PDM from a checkpoint written by :func:`train_pdm`."""
    ckpt = load_checkpoint(path, kind="pdm")
    cfg = dict(ckpt["config"]["model"])
    if cfg.get("decoder_version") != DECODER_VERSION:
        raise ValueError(f"PDM checkpoint {path} has decoder version "
                         f"{cfg.get('decoder_version')}, this partslib builds version "
                         f"{DECODER_VERSION}; train the PDM again")
    if cfg["image_width"] > 0 and "mean" not in cfg:
        raise ValueError(f"PDM checkpoint {path} merges the image but does not record the "
                         f"classifier's normalisation (written by an older partslib); train "
                         f"the PDM again")
    pdm = PartsDetectionModule(cfg["stage_channels"], cfg["stage_strides"], cfg["num_labels"],
                               widths=cfg["widths"], image_width=cfg["image_width"],
                               image_kernel=cfg["image_kernel"], separable=cfg["separable"],
                               input_size=tuple(cfg["input_size"]), stages=cfg["stages"],
                               mean=cfg.get("mean"), std=cfg.get("std"))
    pdm.load_state_dict(ckpt["state_dict"])
    return pdm.eval()
