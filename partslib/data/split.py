"""The common interface of the study's data: one split as tensors.

:func:`partslib.pipeline.train_classifier` and :func:`partslib.pipeline.train_pdm` take a
:class:`Split` (or anything :func:`as_split` converts: a
:class:`~partslib.data.synthparts.SynthParts` split; a real-photo dataset gives its splits with
``RealData.split("train")``), so one pipeline serves generated and folder-format data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Split", "as_split"]


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a part-annotated classification dataset.

    Attributes:
        images: uint8 ``[N,3,H,W]``.
        labels: int64 ``[N]`` class labels.
        masks: integer ``[N,H,W]`` part labels (0 background, 1..P parts, 255 unannotated).
        part_names: ``P+1`` names, background first.
        class_names: class names in label order.
        info: what identifies the data (JSON-able); stored in checkpoint configurations, so a
            model trained on other data is never reused.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    part_names: list[str]
    class_names: list[str]
    info: Any = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.labels) != n or tuple(self.masks.shape) != (n, *self.images.shape[-2:]):
            raise ValueError(f"labels {tuple(self.labels.shape)} and masks "
                             f"{tuple(self.masks.shape)} do not match images "
                             f"{tuple(self.images.shape)}; expected [N] and [N,H,W]")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_labels(self) -> int:
        """Background + parts."""
        return len(self.part_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def as_split(data: Any) -> Split:
    """``data`` as a :class:`Split`: a Split as is; a SynthParts split (identified by its
    generator fingerprint, seed and size)."""
    if isinstance(data, Split):
        return data
    from partslib.data.synthparts import SynthParts

    if isinstance(data, SynthParts):
        return Split(data.images, data.labels, data.masks, data.part_names, data.class_names,
                     info={"generator": data.cfg.fingerprint(), "seed": data.seed, "n": data.n})
    raise TypeError(f"expected a Split or a SynthParts split, got {type(data).__name__} (a "
                    f"real-photo dataset gives its splits with data.split('train'))")
