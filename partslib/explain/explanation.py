"""What an explanation holds: :class:`PartExplanation` and the small helpers around it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import Tensor

__all__ = ["PartExplanation", "paint", "part_areas", "part_class_table"]


@dataclass
class PartExplanation:
    """Per-part explanation of one class score for each image of a batch.

    Shapes: ``B`` images, ``P+1`` labels (0 = background), images ``H×W``, features ``h×w``.
    """

    part_names: list[str]
    part_probs: Tensor  # [B, P+1, H, W] part probabilities (sum to 1 over parts)
    labels: Tensor  # [B, H, W] argmax part map
    contributions: Tensor  # [B, P+1] c_p
    score: Tensor  # [B] the explained score: logit_k, or logit_k - logit_j if contrastive
    bias: Tensor  # [B] b_k (or b_k - b_j); NaN for rules without a bias term
    target: Tensor  # [B] explained class k
    contrast: Tensor | None  # [B] runner-up class j (contrastive) or None
    mode: str  # the method's name, e.g. "pdm-region-soft" or "pdm-occlusion-contrastive"
    logits: Tensor  # [B, K] the classifier's logits
    cam: Tensor | None = None  # [B, h, w] CAM of the explained weights (region rule)
    units: str = "logit"  # "logit", "margin" (contrastive), "share" or "none"
    rule: str = ""  # the rule's name, e.g. "region-soft", "occlusion:blur", "basis"
    maps: Tensor | None = None  # [B, H, W] the explanation drawn on the image (V5)

    @property
    def area(self) -> Tensor:
        """Fraction of the image's pixels labelled with each part, ``[B, P+1]``."""
        return part_areas(self.labels, self.contributions.shape[1])

    def __len__(self) -> int:
        return self.contributions.shape[0]

    @property
    def present(self) -> Tensor:
        """Bool ``[B, P+1]``: the part occupies at least one pixel of the label map."""
        return self.area > 0

    @property
    def has_bias(self) -> bool:
        """Whether the rule has a bias term (``bias + Σ c`` is compared with ``score``)."""
        return bool(torch.isfinite(self.bias).all()) and len(self) > 0

    @property
    def shares(self) -> Tensor:
        """``c_p / Σ_q |c_q|``: signed shares whose absolute values sum to 1."""
        return self.contributions / self.contributions.abs().sum(1, keepdim=True).clamp_min(1e-12)

    @property
    def ranking(self) -> Tensor:
        """Rank of each part by contribution (1 = largest), ``[B, P+1]``."""
        order = self.contributions.argsort(dim=1, descending=True, stable=True)
        return order.argsort(dim=1) + 1

    def completeness_error(self) -> Tensor:
        """``|b + Σ c − score| / (|b| + Σ|c|)`` per image (NaN for rules without a bias)."""
        lhs = self.bias + self.contributions.sum(1)
        scale = self.bias.abs() + self.contributions.abs().sum(1)
        return (lhs - self.score).abs() / scale.clamp_min(1e-12)

    def to_dataframe(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """A tidy table: one row per (image, part), images in order, parts in label order."""
        import numpy as np

        B, L = self.contributions.shape

        def per_image(values: Tensor) -> np.ndarray:  # [B] -> one entry per row
            return np.repeat(values.detach().cpu().numpy(), L)

        def per_row(values: Tensor) -> np.ndarray:  # [B, L] -> one entry per row
            return values.detach().cpu().reshape(-1).numpy()

        def names(classes: Tensor) -> list:
            ks = per_image(classes).tolist()
            return [class_names[k] for k in ks] if class_names is not None else ks

        return pd.DataFrame({
            "image": np.repeat(np.arange(B), L),
            "target": names(self.target),
            "contrast": [None] * (B * L) if self.contrast is None else names(self.contrast),
            "mode": self.mode,
            "part": np.tile(np.asarray(self.part_names, dtype=object), B),
            "contribution": per_row(self.contributions).astype(float),
            "share": per_row(self.shares).astype(float),
            "area": per_row(self.area).astype(float),
            "rank": per_row(self.ranking).astype(int),
            "score": per_image(self.score).astype(float),
            "bias": per_image(self.bias).astype(float),
        })

    def __getitem__(self, i: int | slice) -> PartExplanation:
        """The explanation of image ``i`` (or a slice) as a batch of its own."""
        idx = slice(i, i + 1) if isinstance(i, int) else i
        return _map_tensors(self, lambda t: t[idx])

    def detach_cpu(self) -> PartExplanation:
        """A copy with every tensor detached and on the CPU."""
        return _map_tensors(self, lambda t: t.detach().cpu())

    def crop(self, top: int, left: int, height: int, width: int) -> PartExplanation:
        """The explanation with its pixel maps (``part_probs``, ``labels``, ``maps``, and
        ``cam`` at its own resolution, rounded outwards) cut to the box ``(top, left, height,
        width)`` of the image, e.g. the photo inside the padding of
        :func:`~partslib.studies.realphoto.explain_photo`. Contributions, scores and logits
        are those of the whole input and are kept; ``area`` and ``present`` then describe the
        box."""
        H, W = self.labels.shape[-2:]
        if not (0 <= top and 0 <= left and height >= 1 and width >= 1
                and top + height <= H and left + width <= W):
            raise ValueError(f"box (top={top}, left={left}, height={height}, width={width}) is "
                             f"not inside the {H}x{W} maps")
        rows, cols = slice(top, top + height), slice(left, left + width)
        cam = self.cam
        if cam is not None:
            h, w = cam.shape[-2:]
            r0, r1 = (top * h) // H, -((-(top + height) * h) // H)
            c0, c1 = (left * w) // W, -((-(left + width) * w) // W)
            cam = cam[..., r0:r1, c0:c1]
        return replace(self, part_probs=self.part_probs[..., rows, cols],
                       labels=self.labels[..., rows, cols], cam=cam,
                       maps=None if self.maps is None else self.maps[..., rows, cols])

    @staticmethod
    def concat(parts: Sequence[PartExplanation]) -> PartExplanation:
        """The explanations of consecutive batches as one."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        fields = {}
        for name in _TENSOR_FIELDS:
            values = [getattr(p, name) for p in parts]
            fields[name] = None if values[0] is None else torch.cat(values)
        return replace(first, **fields)


_TENSOR_FIELDS = ("part_probs", "labels", "contributions", "score", "bias", "target", "contrast",
                  "logits", "cam", "maps")


def _map_tensors(e: PartExplanation, fn: Callable[[Tensor], Tensor]) -> PartExplanation:
    return replace(e, **{f: None if getattr(e, f) is None else fn(getattr(e, f))
                         for f in _TENSOR_FIELDS})


def part_areas(labels: Tensor, num_labels: int) -> Tensor:
    """Fraction of pixels of each label in each label map ``[B, H, W]`` → ``[B, num_labels]``."""
    B = labels.shape[0]
    offsets = torch.arange(B, device=labels.device).view(B, 1) * num_labels
    counts = torch.bincount((labels.reshape(B, -1) + offsets).flatten(),
                            minlength=B * num_labels).view(B, num_labels)
    return counts.float() / labels[0].numel()


def paint(contributions: Tensor, probs: Tensor) -> Tensor:
    """``Σ_p c_p π_p(x)``: ``[B,P+1]`` × ``[B,P+1,H,W]`` → ``[B,H,W]``."""
    return torch.einsum("bp,bphw->bhw", contributions.to(probs.dtype), probs)




def part_class_table(explanation: PartExplanation, class_names: Sequence[str],
                     correct: Tensor) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy table of ``explanation`` with a ``correct`` column, and the part × class table.

    Returns ``(df, part_class)``: ``df`` is :meth:`PartExplanation.to_dataframe` plus whether
    each image was classified correctly (``correct``: bool ``[B]``); ``part_class`` holds the
    mean contribution of each part (rows, in label order) to each target class (columns, in
    ``class_names`` order) over the correctly classified images (NaN where a class has none).
    """
    if len(correct) != len(explanation):
        raise ValueError(f"correct has {len(correct)} entries for {len(explanation)} images")
    df = explanation.to_dataframe(class_names)
    df["correct"] = correct.detach().cpu().bool().numpy()[df["image"].to_numpy()]
    part_class = (df[df.correct].pivot_table(index="part", columns="target", values="contribution")
                  .reindex(index=explanation.part_names, columns=list(class_names)))
    return df, part_class
