"""Toy models shared by the tests: seeded random networks, and models with known answers.

Seeded random networks (:func:`small_classifier`, :func:`small_pdm`, :func:`tiny_convnet`,
:func:`random_ibd`) draw their initial weights from their own ``seed`` and leave the global
torch RNG as it was, so a test's models never depend on which tests ran before it.

Models with known answers:

* :class:`MeanLinearClassifier` + :class:`OraclePDM` + :func:`label_coded_images`: a
  contract classifier linear in the mean image, and a "PDM" that reads the exact part labels
  from the blue channel; :func:`mean_linear_effects` gives every region contribution and
  removal effect in closed form.
* :class:`PixelLinearModel`: ``logit_k = b_k + Σ_{c,u} W[k,c,u] x[c,u]`` with per-pixel
  weights; :meth:`PixelLinearModel.contributions` is its exact region decomposition.
* :class:`PaletteClassifier` + :func:`palette_blocks`: part identity is linearly decodable
  from its final features (each part has its own colour), so IBD and a PDM can learn the parts.

PDMs are built only through ``PartsDetectionModule.for_classifier`` and run only through
partslib functions, so a change of the PDM's call convention lands in partslib.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partslib.baselines import IBDModel
from partslib.ibd import ConceptClassifiers, decompose
from partslib.models import ContractClassifier, SmallResNet
from partslib.pdm import PartsDetectionModule
from partslib.removal import FillRemover

__all__ = [
    "MEAN_LINEAR_BIAS",
    "MEAN_LINEAR_WEIGHT",
    "ORACLE_LABELS",
    "ORACLE_SIZE",
    "PALETTE",
    "MeanLinearClassifier",
    "OraclePDM",
    "PaletteClassifier",
    "PixelLinearModel",
    "StoredRemoval",
    "TinyConvNet",
    "label_coded_images",
    "mean_linear_effects",
    "palette_blocks",
    "random_concept_classifiers",
    "random_ibd",
    "random_images",
    "small_classifier",
    "small_pdm",
    "tiny_convnet",
]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Global torch RNG seeded with ``seed`` inside, restored on exit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- seeded random


def small_classifier(num_classes: int = 5, widths: Sequence[int] = (8, 16, 32), size: int = 64,
                     seed: int = 0) -> SmallResNet:
    """A randomly initialised :class:`SmallResNet` for ``size``×``size`` images, in eval mode."""
    with _seeded(seed):
        return SmallResNet(num_classes=num_classes, widths=tuple(widths), input_size=size).eval()


def small_pdm(classifier: ContractClassifier, num_labels: int, widths: Sequence[int] = (8, 8),
              image_width: int = 4, seed: int = 0) -> PartsDetectionModule:
    """A randomly initialised PDM on ``classifier``'s feature contract, in eval mode."""
    with _seeded(seed):
        pdm = PartsDetectionModule.for_classifier(classifier, num_labels, widths=list(widths),
                                                  image_width=image_width)
    return pdm.eval()


def random_images(n: int, size: int = 64, seed: int = 1) -> Tensor:
    """``n`` uniform random RGB images ``[n, 3, size, size]`` in [0, 1)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_concept_classifiers(num_concepts: int, channels: int, generator: torch.Generator,
                               weight_scale: float = 1.0, bias_scale: float = 0.0
                               ) -> ConceptClassifiers:
    """Untrained concept classifiers: N(0, weight_scale²) weights, then (only when
    ``bias_scale`` is not 0) N(0, bias_scale²) biases, drawn from ``generator``; AP is NaN."""
    weight = torch.randn(num_concepts, channels, generator=generator) * weight_scale
    if bias_scale:
        bias = torch.randn(num_concepts, generator=generator) * bias_scale
    else:
        bias = torch.zeros(num_concepts)
    return ConceptClassifiers(weight=weight, bias=bias, concepts=tuple(range(num_concepts)),
                              ap=torch.full((num_concepts,), float("nan"), dtype=torch.float64))


def random_ibd(classifier: ContractClassifier, num_labels: int, n_components: int = 3,
               seed: int = 0) -> IBDModel:
    """IBD with random concept classifiers (one per label, background included) whose
    decomposition of ``classifier.fc.weight`` uses the part labels 1..num_labels-1."""
    channels = classifier.fc.in_features
    concepts = random_concept_classifiers(num_labels, channels, torch.Generator().manual_seed(seed),
                                          weight_scale=channels ** -0.5)
    dec = decompose(classifier.fc.weight.detach(), concepts.concept_vectors()[1:], n_components)
    return IBDModel(classifier=classifier, concept_classifiers=concepts, decomposition=dec,
                    part_concepts=tuple(range(1, num_labels)), num_labels=num_labels)


class TinyConvNet(nn.Module):
    """Two 3×3 convolutions (the first with BatchNorm) and a GAP + linear head; no contract."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


def tiny_convnet(num_classes: int = 3, seed: int = 0) -> TinyConvNet:
    """A randomly initialised :class:`TinyConvNet` (in train mode, as constructed)."""
    with _seeded(seed):
        return TinyConvNet(num_classes)


# --------------------------------------------------------------------------- linear in the mean

ORACLE_SIZE = 16  # H = W of label_coded_images
ORACLE_LABELS = 4  # background + 3 parts
MEAN_LINEAR_WEIGHT = torch.tensor([[1.0, -0.5, 0.0], [-0.3, 0.8, 0.0]])  # blue weighs 0
MEAN_LINEAR_BIAS = torch.tensor([0.1, -0.2])


class MeanLinearClassifier(ContractClassifier):
    """``logit = b + W · mean_u x(u)``, with the feature contract: its only stage ``s1`` is the
    image itself (a 1×1 identity conv at stride 1), normalisation is the identity, and the
    blue channel has weight 0 so it can carry the part labels unseen."""

    def __init__(self, size: int = ORACLE_SIZE, weight: Tensor = MEAN_LINEAR_WEIGHT,
                 bias: Tensor = MEAN_LINEAR_BIAS):
        super().__init__(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.s1 = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.s1.weight.copy_(torch.eye(3)[:, :, None, None])
            self.s1.bias.zero_()
        self.stage_names = ("s1",)
        self.stage_channels, self.stage_strides = {"s1": 3}, {"s1": 1}
        self.input_size = (size, size)
        self.fc = nn.Linear(3, weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        return {"s1": self.s1(self.normalise(x))}


class OraclePDM(nn.Module):
    """Reads the part label from the blue channel of the raw images (``label / 10``, as
    :func:`label_coded_images` writes it): exact one-hot part probabilities."""

    uses_image = True  # as PartsDetectionModule.uses_image: forward reads the images

    def __init__(self, num_labels: int = ORACLE_LABELS, size: int = ORACLE_SIZE):
        super().__init__()
        self.stages = ["s1"]
        self.num_labels = num_labels
        self.input_size = (size, size)

    def forward(self, feats: dict[str, Tensor], images: Tensor) -> Tensor:
        labels = (images[:, 2] * 10).round().long().clamp(0, self.num_labels - 1)
        return torch.log(F.one_hot(labels, self.num_labels).permute(0, 3, 1, 2).float())

    def fused(self) -> OraclePDM:
        return self


class StoredRemoval(FillRemover):
    """An exact, key-based counterfactual: removed pixels come from a stored plate per key."""

    name = "stored"

    def __init__(self, plates: dict[int, Tensor]):
        self.plates = plates

    def fill(self, images: Tensor, mask: Tensor, keys: Sequence[Any] | None) -> Tensor:
        if keys is None:
            raise ValueError("StoredRemoval needs one key per image, got keys=None")
        return torch.stack([self.plates[int(k)] for k in keys])


def label_coded_images(n: int, seed: int = 0, size: int = ORACLE_SIZE,
                       num_labels: int = ORACLE_LABELS
                       ) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
    """Images with rectangular parts 1..num_labels-1 at random places; blue = label / 10.

    Returns the images ``[n, 3, size, size]``, their labels ``[n, size, size]`` and one
    random plate per image for :class:`StoredRemoval`, keyed ``1000 + i``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for p in range(1, num_labels):
            h, w = (int(v) for v in torch.randint(3, 8, (2,), generator=g))
            y, x = (int(v) for v in torch.randint(0, size - 3, (2,), generator=g))
            labels[i, y:y + h, x:x + w] = p
    x = torch.rand(n, 3, size, size, generator=g) * 0.8 + 0.1
    x[:, 2] = labels.float() / 10
    plates = {1000 + i: torch.rand(3, size, size, generator=g) for i in range(n)}
    return x, labels, plates


def mean_linear_effects(x: Tensor, labels: Tensor, weights: Tensor,
                        substitute: Tensor | None = None,
                        num_labels: int = ORACLE_LABELS) -> Tensor:
    """``Σ_{u∈S_p} w·(x(u) − x̃(u)) / (H·W)`` per part, ``[n, num_labels]`` (x̃ = 0: black).

    For :class:`MeanLinearClassifier` with class weights ``weights`` ``[n, 3]``, this is both
    the region contribution of part p (x̃ = 0) and the logit drop when part p is replaced by
    the substitute image x̃.
    """
    diff = x if substitute is None else x - substitute
    cam = torch.einsum("nc,nchw->nhw", weights, diff)
    onehot = F.one_hot(labels, num_labels).permute(0, 3, 1, 2).float()
    return torch.einsum("nlhw,nhw->nl", onehot, cam) / (x.shape[2] * x.shape[3])


# --------------------------------------------------------------------------- linear per pixel


class PixelLinearModel(nn.Module):
    """``logit_k = b_k + Σ_{c,u} W[k,c,u] x[c,u]`` with seeded N(0, 1/size²) weights.

    ``zero_others``: classes 1.. get weight and bias 0, so class 0 is against a constant and
    its probability is monotone in its logit.
    """

    def __init__(self, num_classes: int, size: int, seed: int = 0, zero_others: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(num_classes, 3, size, size, generator=g) / size)
        self.bias = nn.Parameter(torch.randn(num_classes, generator=g))
        if zero_others:
            with torch.no_grad():
                self.weight[1:] = 0
                self.bias[1:] = 0

    def forward(self, x: Tensor) -> Tensor:
        return (x[:, None] * self.weight).sum((2, 3, 4)) + self.bias

    def contributions(self, images: Tensor, labels: Tensor, targets: Tensor,
                      num_labels: int) -> Tensor:
        """Exact region decomposition ``[B, num_labels]``: ``c_p = Σ_{u∈p} W_k · x(u)``."""
        per_pixel = (images * self.weight[targets]).sum(1)  # (B,H,W)
        onehot = F.one_hot(labels, num_labels).to(per_pixel.dtype)  # (B,H,W,L)
        return torch.einsum("bhw,bhwp->bp", per_pixel, onehot)


# --------------------------------------------------------------------------- palette parts
# Each part has its own colour; layer1 turns colours into a soft one-hot per pixel,
# layer2/layer3 average-pool it (plus a few fixed ReLU mixtures in layer3). palette_blocks'
# labels are constant on 16×16 blocks (2×2 feature cells).

PALETTE = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.15, 0.1], [0.1, 0.85, 0.2], [0.15, 0.2, 0.9]])


class _Colour(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        d = ((x[:, None] - PALETTE[None, :, :, None, None]) ** 2).sum(2)  # [B, L, H, W]
        return F.avg_pool2d(torch.softmax(-d / 0.02, 1), 2)


class _Pool(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return F.avg_pool2d(h, 2)


class _Final(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(len(PALETTE), 4, 1)

    def forward(self, h: Tensor) -> Tensor:
        h = 4 * F.avg_pool2d(h, 2)  # CNN-sized activations: the reference SGD (lr 0.01) converges
        return torch.cat([h, F.relu(self.mix(h))], 1)


class PaletteClassifier(ContractClassifier):
    """64×64 contract classifier whose features decode the :data:`PALETTE` colour per cell;
    its ``mix`` conv and ``fc`` head are random (seeded by ``seed``)."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        n = len(PALETTE)
        self.stage_names = ("layer1", "layer2", "layer3")
        with _seeded(seed):
            self.layer1, self.layer2, self.layer3 = _Colour(), _Pool(), _Final()
            self.fc = nn.Linear(n + 4, num_classes)
        self.stage_channels = {"layer1": n, "layer2": n, "layer3": n + 4}
        self.stage_strides = {"layer1": 2, "layer2": 4, "layer3": 8}
        self.input_size = (64, 64)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        out, h = {}, self.normalise(x)
        for name in self.stage_names:
            h = out[name] = getattr(self, name)(h)
        return out


def palette_blocks(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` 64×64 images of 4×4 blocks of :data:`PALETTE` colours (+ noise) and their labels."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, len(PALETTE), (n, 4, 4), generator=g)
    masks = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)
    images = PALETTE[masks].permute(0, 3, 1, 2) + 0.03 * torch.randn(n, 3, 64, 64, generator=g)
    return images.clamp(0, 1), masks
