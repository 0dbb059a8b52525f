"""Training the amortised contribution head (:mod:`partslib.explain.amortised`).

1. :func:`game_targets` -- exact part Shapley values (and single-removal effects) of every
   class for training images, from a removal game: SynthParts' exact re-render on the
   ground-truth masks (``operator=dataset.rerender()``, ``keys`` = dataset indices), or any
   imputer on the PDM's maps for data that cannot be re-rendered
   (:class:`~partslib.removal.BackgroundFill`, whose empty coalition is flat grey like the
   re-render's).
2. :func:`fit_head` -- fits a :class:`~partslib.explain.amortised.ContributionHead` to them on
   training images only; the epoch is chosen on validation images by the agreement (mean
   per-image Spearman over present labels, true class) of the head with the validation
   images' single-removal effects of the same game.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from partslib.explain.amortised import ContributionHead, head_inputs
from partslib.explain.core import PartExplainer, fused_features
from partslib.explain.shapley import ShapleyValues, part_shapley, removal_game
from partslib.models import ContractClassifier, check_images

__all__ = ["HeadData", "baseline_logits", "fit_head", "game_targets", "head_data",
           "rank_agreement"]


@torch.no_grad()
def baseline_logits(classifier: ContractClassifier, size: tuple[int, int],
                    grey: float = 128 / 255) -> Tensor:
    """``[K]`` logits of the flat ``grey`` image: the value of the empty coalition of the
    re-render game (every label removed) and of :class:`~partslib.removal.BackgroundFill`."""
    x = torch.full((1, 3, *size), float(grey))
    return classifier.eval()(x)[0].float()


@torch.no_grad()
def game_targets(classifier: ContractClassifier, images: Tensor, masks: Tensor,
                 operator: Any, num_labels: int, keys: Sequence[Any] | None = None,
                 batch_size: int = 256, progress: bool = False) -> ShapleyValues:
    """Exact part Shapley values ``[N, L, K]`` of the game "``images`` with labels of
    ``masks`` removed by ``operator``" (the classifier scores removed images through a
    BatchNorm-folded copy; same logits up to float rounding)."""
    images = check_images(images)
    masks = masks.long()
    present = torch.stack([(masks == p).flatten(1).any(1) for p in range(num_labels)], 1)
    feats = fused_features(classifier)
    game = removal_game(classifier, images, masks, operator, keys=keys, features=feats)
    full = torch.cat([classifier(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])
    return part_shapley(game, present, full, max_exact=num_labels, batch_size=batch_size,
                        progress=progress)


@dataclass
class HeadData:
    """Inputs of the head for a set of images: ``inputs [N, L, D]``, ``present [N, L]``,
    ``logits [N, K]``, ``labels [N]`` (true classes)."""

    inputs: Tensor
    present: Tensor
    logits: Tensor
    labels: Tensor


@torch.no_grad()
def head_data(classifier: ContractClassifier, pdm: Any, images: Tensor, labels: Tensor,
              batch_size: int = 256) -> HeadData:
    """The head's inputs from one classifier + PDM pass per batch."""
    ex = PartExplainer(classifier, pdm)
    images = check_images(images, size=ex.segmenter.input_size)
    xs, ps, ls = [], [], []
    for i in range(0, len(images), batch_size):
        ctx = ex.context(images[i:i + batch_size], None, batch_size)
        A = ctx.A.contiguous()
        x, present = head_inputs(A.float(), ctx.probs.float(), ctx.labels, classifier.fc)
        xs.append(x)
        ps.append(present)
        ls.append(ctx.logits.float())
    return HeadData(torch.cat(xs), torch.cat(ps), torch.cat(ls), labels.long().cpu())


def rank_agreement(pred: Tensor, target: Tensor, present: Tensor) -> float:
    """Mean per-image Spearman correlation of ``pred`` and ``target`` ``[N, L]`` over each
    image's present labels (images with fewer than 2 present labels, or constant values,
    are skipped)."""
    from scipy.stats import spearmanr

    rs = []
    for a, b, p in zip(pred.numpy(), target.numpy(), present.numpy(), strict=True):
        if p.sum() < 2 or np.ptp(a[p]) == 0 or np.ptp(b[p]) == 0:
            continue
        rs.append(spearmanr(a[p], b[p]).statistic)
    return float(np.mean(rs)) if rs else math.nan


def fit_head(train: HeadData, targets: Tensor, val: HeadData, val_effects: Tensor,
             baseline: Tensor, *, hidden: int = 128, epochs: int = 150, lr: float = 2e-3,
             weight_decay: float = 1e-4, batch_size: int = 128, seed: int = 0,
             game: str = "", progress: bool = False) -> tuple[ContributionHead, pd.DataFrame]:
    """Fit a head to per-class ``targets [N, L, K]`` of the training images (MSE over present
    labels and all classes); keep the epoch whose head ranks the validation images' parts most
    like ``val_effects [M, L, K]`` (true class). Returns ``(head, history)``."""
    N, L, D = train.inputs.shape
    K = train.logits.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        head = ContributionHead(D - 1 - K - L, L, K, hidden=hidden, baseline=baseline,
                                game=game)
    flat = train.inputs[train.present]
    head.in_mean.copy_(flat.mean(0))
    head.in_std.copy_(flat.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    y = targets.float()
    scale = float(y[train.present].std().clamp_min(1e-6))
    r_val = torch.arange(len(val.labels))
    best, best_state, rows = -math.inf, None, []
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epoch_iter = tqdm(epoch_iter, desc="contribution head", unit="epoch")
    for epoch in epoch_iter:
        head.train()
        perm = torch.randperm(N, generator=gen)
        total = 0.0
        for s in range(0, N, batch_size):
            b = perm[s:s + batch_size]
            pred = head(train.inputs[b], train.present[b], train.logits[b])
            m = train.present[b][..., None].float()
            loss = (((pred - y[b]) / scale) ** 2 * m).sum() / (m.sum() * K)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
        sched.step()
        head.eval()
        with torch.no_grad():
            pv = head(val.inputs, val.present, val.logits)[r_val, :, val.labels]
        score = rank_agreement(pv, val_effects[r_val, :, val.labels].float(), val.present)
        rows.append({"epoch": epoch + 1, "train_loss": total / N, "val_spearman": score})
        if score > best:
            best, best_state = score, copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head, pd.DataFrame(rows)
