"""Scoring removed images once: the removal cache behind T2's measured effects (V2, V3).

:class:`RemovalCache` scores every distinct (image, set of removed parts) once per operator and
serves the single-part effects of V2, the deletion curves of V3 and the contrastive margins;
:func:`region_gap` splits the region rule's claim into the removal effect and what the removal
leaves behind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.constants import INFERENCE_BATCH
from partslib.explain.core import FinalFeatures, fused_features
from partslib.models import ContractClassifier
from partslib.removal import IGNORE_INDEX, RemovalOperator

__all__ = ["FinalFeatures", "RemovalCache", "fused_features", "margin", "region_gap"]


def margin(logits: Tensor, k: Tensor, j: Tensor | None) -> Tensor:
    """``logit_k`` (``j`` None) or ``logit_k − logit_j`` per row."""
    rows = torch.arange(len(k), device=logits.device)
    s = logits[rows, k]
    return s if j is None else s - logits[rows, j]


class RemovalCache:
    """Logits of images with sets of parts removed, each distinct (image, set) scored once.

    V2 needs every single-part removal and V3 every prefix of every part order; orders of
    different methods share most prefixes (and all share the single removals and the full
    removal), so one cache per operator serves all methods, both scores (logit for V2,
    probability for V3) and the contrastive margins.

    Args:
        classifier: the contract classifier; logits are ``classifier.head(features(x))``.
        images: ``[B,3,H,W]``; labels ``[B,H,W]`` the part labels removals use.
        remover: a removal operator; keys one per image (or None) for it.
        features: ``x -> A`` final-stage features (default: the classifier's own; pass
            :func:`fused_features` for speed).
        pool_labels: ``[B,H,W]`` labels by which to pool the final features of every scored
            image (:meth:`pooled`), for the region-rule terms of :func:`region_gap`; or None.
            Unannotated pixels (255) pool into an extra last column.
    """

    def __init__(self, classifier: ContractClassifier, images: Tensor, labels: Tensor,
                 remover: RemovalOperator, keys: Sequence[Any] | None = None,
                 batch_size: int = INFERENCE_BATCH,
                 features: Callable[[Tensor], Tensor] | None = None,
                 pool_labels: Tensor | None = None, num_labels: int | None = None):
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"keys must hold one entry per image ({len(images)}), got "
                             f"{len(keys)}")
        self.classifier, self.images, self.labels = classifier, images, labels
        self.remover, self.keys, self.batch_size = remover, keys, batch_size
        self.features = features or FinalFeatures(classifier).eval()
        self.num_labels = num_labels
        self.pool_labels: Tensor | None = None
        self._pool_columns = 0  # L + 1 with pool_labels: the parts and the unannotated column
        if pool_labels is not None:
            lab = pool_labels.long()
            L = num_labels or int(lab[lab != IGNORE_INDEX].max()) + 1
            self.num_labels = L
            self.pool_labels = torch.where(lab == IGNORE_INDEX, L, lab)  # 255 -> column L
            self._pool_columns = L + 1
        self._rows: dict[tuple[int, int], int] = {}
        self._logits: list[Tensor] = []
        self._pooled: list[Tensor] = []
        self.n_removals = 0  # removed images scored so far (cache misses)
        base, pooled = [], []
        for i in range(0, len(images), batch_size):
            lg, pl = self._score(images[i:i + batch_size], torch.arange(i, min(i + batch_size,
                                                                               len(images))))
            base.append(lg)
            pooled.append(pl)
        self.base = torch.cat(base)
        self.base_pooled = torch.cat(pooled) if self.pool_labels is not None else None

    @torch.no_grad()
    def _score(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        A = self.features(x)
        A = A.contiguous() if A.is_contiguous(memory_format=torch.channels_last) else A
        logits = self.classifier.head(A).detach().cpu()
        if self.pool_labels is None:
            return logits, None
        onehot = F.one_hot(self.pool_labels[idx], self._pool_columns).permute(0, 3, 1, 2)
        pi = F.adaptive_avg_pool2d(onehot.float(), (A.shape[-2], A.shape[-1]))  # [n,L+1,h,w]
        return logits, torch.einsum("nlhw,nchw->nlc", pi, A.float()).cpu() / A[0, 0].numel()

    def _codes(self, drop: Tensor) -> np.ndarray:
        L = drop.shape[1]
        if self.num_labels is None:
            self.num_labels = L
        elif L != self.num_labels:
            raise ValueError(f"drop has {L} columns, expected {self.num_labels}")
        if L > 62:
            raise ValueError("at most 62 labels")
        return (drop.cpu().numpy().astype(np.int64) << np.arange(L, dtype=np.int64)).sum(1)

    def _fill(self, idx: Tensor, drop: Tensor) -> np.ndarray:
        codes = self._codes(drop)
        idx_np = idx.cpu().numpy().astype(np.int64)
        todo = sorted({(int(i), int(c)) for i, c in zip(idx_np, codes)
                       if c != 0 and (int(i), int(c)) not in self._rows})
        bits = 1 << np.arange(drop.shape[1], dtype=np.int64)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            ii = torch.tensor([i for i, _ in chunk], dtype=torch.long)
            dd = torch.from_numpy((np.array([c for _, c in chunk])[:, None] & bits) != 0)
            sub_keys = None if self.keys is None else [self.keys[i] for i in ii.tolist()]
            removed = self.remover(self.images[ii], self.labels[ii],
                                   dd.to(self.images.device), sub_keys)
            logits, pooled = self._score(removed, ii)
            for r, key in enumerate(chunk):
                self._rows[key] = len(self._logits)
                self._logits.append(logits[r])
                if pooled is not None:
                    self._pooled.append(pooled[r])
            self.n_removals += len(chunk)
        return codes

    def logits(self, idx: Tensor, drop: Tensor) -> Tensor:
        """``[M,K]`` logits of image ``idx[m]`` without the parts ``drop[m]`` (``[M,P+1]``
        bool); an empty drop gives the unmodified image's logits."""
        codes = self._fill(idx, drop)
        rows = [self.base[int(i)] if c == 0 else self._logits[self._rows[(int(i), int(c))]]
                for i, c in zip(idx.tolist(), codes)]
        return torch.stack(rows) if rows else self.base.new_zeros(0, self.base.shape[1])

    def pooled(self, idx: Tensor, drop: Tensor) -> Tensor:
        """``[M,P+2,C]``: final features of the removed images averaged over the feature
        cells with the shares of each ``pool_labels`` part (``mean_u π_q(u) A(u)``); the last
        column pools the unannotated pixels."""
        base = self.base_pooled
        if base is None:  # None exactly when pool_labels is
            raise ValueError("built without pool_labels")
        codes = self._fill(idx, drop)
        rows = [base[int(i)] if c == 0
                else self._pooled[self._rows[(int(i), int(c))]]
                for i, c in zip(idx.tolist(), codes)]
        return torch.stack(rows)

    def _singles(self, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pairs = present.cpu().nonzero()
        idx, part = pairs[:, 0], pairs[:, 1]
        drop = torch.zeros(len(pairs), present.shape[1], dtype=torch.bool)
        drop[torch.arange(len(pairs)), part] = True
        return idx, part, drop

    def effects(self, targets: Tensor, present: Tensor, contrast: Tensor | None = None
                ) -> Tensor:
        """``Δ_p = s(x) − s(x without p)`` for present parts, ``s`` = ``logit_k`` or the margin
        ``logit_k − logit_j`` (``contrast`` = j); NaN where absent. As
        :func:`~partslib.metrics.removal_effects` with ``score="logit"``."""
        B, L = present.shape
        idx, part, drop = self._singles(present)
        lg = self.logits(idx, drop)
        k = targets.long().cpu()
        j = None if contrast is None else contrast.long().cpu()
        s0 = margin(self.base, k, j)
        s = margin(lg, k[idx], None if j is None else j[idx])
        out = torch.full((B, L), math.nan, dtype=self.base.dtype)
        out[idx, part] = s0[idx] - s
        return out

    def deletion_curve(self, targets: Tensor, order: Tensor, present: Tensor,
                       score: str = "probability") -> Tensor:
        """Score after removing the first 0..n parts of ``order``; ``[B,P+2]``, padded like
        :func:`~partslib.metrics.deletion_curve` (whose values it reproduces)."""
        if score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
        B, L = present.shape
        n = present.cpu().sum(1)
        o = order.cpu().long()
        steps = [(i, j) for i in range(B) for j in range(1, int(n[i]) + 1)]
        drop = torch.zeros(len(steps), L, dtype=torch.bool)
        for r, (i, j) in enumerate(steps):
            drop[r, o[i, :j]] = True
        idx = torch.tensor([i for i, _ in steps], dtype=torch.long)
        lg = self.logits(idx, drop)
        k = targets.long().cpu()

        def s(logits: Tensor, kk: Tensor) -> Tensor:
            if score == "probability":
                logits = torch.softmax(logits.float(), 1)
            return logits.gather(1, kk[:, None])[:, 0]

        curve = torch.empty(B, L + 1, dtype=torch.float32)
        curve[:, 0] = s(self.base, k)
        if len(steps):
            jj = torch.tensor([j for _, j in steps], dtype=torch.long)
            curve[idx, jj] = s(lg, k[idx])
        cols = torch.arange(L + 1)[None]
        last = curve.gather(1, n[:, None].long())
        return torch.where(cols > n[:, None], last, curve)


def region_gap(cache: RemovalCache, weights: Tensor, present: Tensor) -> pd.DataFrame:
    """Why region contributions and removal effects differ: an exact split of the effect.

    With the part shares π fixed from the original image (``cache``'s ``pool_labels``, e.g.
    the ground truth), completeness holds for the removed image too, so for each part p

        Δ_p = [c_p(x) − c_p(x')] + Σ_{q≠p} [c_q(x) − c_q(x')]        (x' = x without p)

    and the region rule's claim ``c_p(x) = Δ_p + remaining_p − context_p`` differs from the
    effect by ``remaining_p = c_p(x')`` (CAM mass still found in p's cells after the removal:
    the rule's baseline is zero features, the counterfactual's is not) minus ``context_p =
    Σ_{q≠p} [c_q(x) − c_q(x')]`` (the removal's effect on the *other* parts' cells, through
    receptive fields).

    Args:
        cache: a :class:`RemovalCache` built with ``pool_labels``.
        weights: ``[B,C]`` explained weight vector per image (``w_k``).
        present: ``[B,P+1]`` parts to remove.
    Returns:
        One row per (image, present part): ``row`` (in the batch), ``part``, ``claim``
        (region rule on the pooling labels), ``effect`` (Δ_p of ``w·mean_u A(u)``: the logit
        effect when ``w = w_k``), ``remaining`` and ``context``.
    """
    idx, part, drop = cache._singles(present)
    w = weights.detach().float().cpu()
    c0 = torch.einsum("blc,bc->bl", cache.base_pooled, w)  # c_q(x)  [B,L]
    c1 = torch.einsum("mlc,mc->ml", cache.pooled(idx, drop), w[idx])  # c_q(x')  [M,L]
    diff = c0[idx] - c1
    rows = torch.arange(len(idx))
    own = diff[rows, part]
    return pd.DataFrame({"row": idx.numpy(), "part": part.numpy(),
                         "claim": c0[idx, part].double().numpy(),
                         "effect": diff.sum(1).double().numpy(),
                         "remaining": c1[rows, part].double().numpy(),
                         "context": (diff.sum(1) - own).double().numpy()})

