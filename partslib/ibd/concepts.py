"""IBD's concept classifiers (ibd.md §2): one linear 1x1 classifier per concept on grid cells.

Training follows the reference: sigmoid + MSE loss, plain SGD, hard-negative mining from a
fixed pool of 20P negatives, 3:1 train/val split, per-concept validation AP. Groups of
concepts are stepped side by side (:func:`_lockstep_sgd`) for speed; each concept sees the
minibatches it would see alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from partslib.checks import check_nonempty
from partslib.constants import IGNORE_INDEX
from partslib.ibd._checks import as_tensor, check_ndim
from partslib.ibd.decomposition import normalise_concepts

__all__ = [
    "IGNORE_LABEL",
    "ConceptClassifiers",
    "average_precision",
    "sample_labels_to_grid",
    "train_concept_classifiers",
]

IGNORE_LABEL = IGNORE_INDEX  # label id that is never a positive nor a negative cell
_LOCKSTEP_BUDGET = 2**25  # floats in one padded (concepts, rows, C) training batch (128 MiB)


@dataclass(frozen=True)
class ConceptClassifiers:
    """M independent linear 1x1 concept classifiers on C-channel features.

    Attributes:
        weight: (M, C) raw trained weights (the reference's ``fc.weight``).
        bias: (M,) trained biases.
        concepts: label id of each row.
        ap: (M,) validation average precision of the last epoch.
    """

    weight: Tensor
    bias: Tensor
    concepts: tuple[int, ...]
    ap: Tensor

    def centred_weight(self) -> Tensor:
        """(M, C) weights minus their row mean.

        This is the reference's ``unbiased`` snapshot, used for heatmaps.
        """
        return self.weight - self.weight.mean(dim=1, keepdim=True)

    def concept_vectors(self) -> Tensor:
        """(M, C) centred, L2-normalised q_c for :func:`decompose`."""
        return normalise_concepts(self.weight)


def sample_labels_to_grid(
    labels: Tensor | np.ndarray, grid_hw: tuple[int, int]
) -> Tensor | np.ndarray:
    """Nearest-sample label maps at the feature grid's block centres (ibd.md §2).

    Row i of the grid takes label row floor((i + 1/2) H / h); for H = s h that is
    s i + s // 2 (``label[8::16, 8::16]`` for 112 -> 7), as scipy's nearest imresize did.

    Args:
        labels: (..., H, W) label maps, e.g. (N, H, W) or one-hot (N, L, H, W).
        grid_hw: (h, w) feature grid size, each at most the label size.

    Returns:
        (..., h, w) sampled labels, same type and dtype as the input.
    """
    if labels.ndim < 2:
        raise ValueError(f"labels must have shape (..., H, W), got shape {tuple(labels.shape)}")
    if len(grid_hw) != 2:
        raise ValueError(f"grid_hw must be (h, w), got {grid_hw!r}")
    big_h, big_w = labels.shape[-2:]
    h, w = (int(v) for v in grid_hw)
    if not (1 <= h <= big_h and 1 <= w <= big_w):
        raise ValueError(
            f"grid_hw must lie within [1, 1]..[{big_h}, {big_w}] (the label size), "
            f"got {tuple(grid_hw)}"
        )
    rows = (2 * np.arange(h) + 1) * big_h // (2 * h)
    cols = (2 * np.arange(w) + 1) * big_w // (2 * w)
    if isinstance(labels, Tensor):
        return labels[..., torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[None, :]]
    return labels[..., rows[:, None], cols[None, :]]


def average_precision(labels: Tensor | np.ndarray, scores: Tensor | np.ndarray) -> float:
    """Average precision as sklearn's ``average_precision_score`` (binary, ties grouped).

    AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, descending.
    Returns NaN when there is no positive.
    """
    y = np.asarray(labels, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length, got {y.size} and {s.size}")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Last index of each run of equal scores: one threshold per distinct score.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _concept_masks(grid_labels: Tensor, concepts: Sequence[int]) -> tuple[list[Tensor], Tensor]:
    """Per concept a flat (N*h*w,) mask of its positive cells, and the flat mask of the cells
    usable as negatives."""
    if grid_labels.dtype == torch.bool:  # one-hot (N, L, h, w)
        num_labels = grid_labels.shape[1]
        bad = [c for c in concepts if not 0 <= c < num_labels]
        if bad:
            raise ValueError(
                f"concepts {bad} are not channels of the one-hot labels (L={num_labels})"
            )
        flat = grid_labels.transpose(0, 1).reshape(num_labels, -1)
        return [flat[c] for c in concepts], torch.ones(flat.shape[1], dtype=torch.bool)
    flat = grid_labels.reshape(-1)
    if IGNORE_LABEL in concepts:
        raise ValueError(f"concept id {IGNORE_LABEL} is reserved for ignored cells")
    return [flat == c for c in concepts], flat != IGNORE_LABEL


@dataclass
class _ConceptRun:
    """Sampling state of one concept: its cells, generators and latest scores."""

    pos_ids: Tensor  # (P,) positive cell ids in a fixed random order; first 3/4 train
    pool_ids: Tensor  # (pool,) fixed negative pool, min(20P, available) cells
    rng: np.random.Generator
    gen: torch.Generator
    pool_scores: Tensor | None = None
    ap: float = float("nan")

    @property
    def n_neg(self) -> int:
        # the reference assumes the pool holds 2P
        return min(2 * len(self.pos_ids), len(self.pool_ids))

    @property
    def pos_cut(self) -> int:
        return _split(len(self.pos_ids))


def _split(n: int, ratio: int = 3) -> int:
    """Index of the reference's ratio:1 train/val cut of n samples (first part trains)."""
    return n * ratio // (ratio + 1)


def _start_concept(
    positive: Tensor, allowed_negative: Tensor, channels: int, seed: int, concept: int
) -> tuple[_ConceptRun, Tensor, Tensor]:
    """Order the positives and draw the negative pool.

    Returns the run, and the initial weight (C,) and bias.
    """
    rng = np.random.default_rng([seed, concept])
    gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
    # nn.Linear's default init: U(-1/sqrt(C), 1/sqrt(C)) for weight and bias
    bound = 1.0 / np.sqrt(channels)
    weight = torch.from_numpy(rng.uniform(-bound, bound, size=channels)).float()
    bias = torch.tensor(rng.uniform(-bound, bound), dtype=torch.float32)
    pos_ids = rng.permutation(positive.nonzero().flatten().numpy())
    candidates = (allowed_negative & ~positive).nonzero().flatten().numpy()
    pool_ids = rng.choice(candidates, size=min(20 * len(pos_ids), len(candidates)), replace=False)
    run = _ConceptRun(
        pos_ids=torch.from_numpy(pos_ids), pool_ids=torch.from_numpy(pool_ids), rng=rng, gen=gen
    )
    return run, weight, bias


def _epoch_negatives(run: _ConceptRun) -> Tensor:
    """Pool positions of this epoch's 2P negatives: random at epoch 0, then the top-scored ones."""
    if run.pool_scores is None:
        return torch.from_numpy(run.rng.choice(len(run.pool_ids), size=run.n_neg, replace=False))
    # Hardest first, so the 3:1 split sends the hardest negatives to training.
    return _top_k_stable(run.pool_scores, run.n_neg)


def _top_k_stable(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores, descending, ties by index.

    The same as argsort(stable)[:k], without a full sort.
    """
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    threshold = scores.topk(k, sorted=False).values.min()
    # ascending ids, so the stable sort keeps ties in order
    candidates = (scores >= threshold).nonzero().flatten()
    return candidates[scores[candidates].argsort(descending=True, stable=True)[:k]]


def _lockstep_sgd(
    x: Tensor, y: Tensor, lengths: Tensor, weight: Tensor, bias: Tensor, lr: float, batch_size: int
) -> None:
    """Minibatch SGD of m independent classifiers side by side, updating weight/bias in place.

    x is (m, T, C) and y (m, T), each concept's shuffled training set padded to T;
    lengths (m,) are the true sizes. Step s uses rows [sB, (s+1)B) of every concept, so
    each concept sees exactly the minibatches it would see alone. The gradient is that
    of mean((sigmoid(x.w + b) - y)^2) over the concept's real rows, written out by hand
    (elementwise products beat bmm with one output column here) to avoid autograd
    overhead on thousands of tiny steps.
    """
    offsets = torch.arange(batch_size)
    for start in range(0, x.shape[1], batch_size):
        xb = x[:, start : start + batch_size]  # (m, b, C)
        yb = y[:, start : start + batch_size]  # (m, b)
        real = (start + offsets[: xb.shape[1]])[None, :] < lengths[:, None]  # (m, b)
        count = real.sum(dim=1, keepdim=True).clamp_min(1)
        out = torch.sigmoid((xb * weight[:, None, :]).sum(dim=2) + bias[:, None])
        dz = (2.0 * real / count) * (out - yb) * out * (1 - out)
        weight -= lr * (xb * dz[:, :, None]).sum(dim=1)
        bias -= lr * dz.sum(dim=1)


def _score_cells(cells: Tensor, ids: list[Tensor], weight: Tensor, bias: Tensor) -> list[Tensor]:
    """sigmoid(w_i . x + b_i) of concept i on the cells ids[i], for every concept of a group."""
    if sum(len(i) for i in ids) >= len(cells) // 4:
        # Dense: one pass over all cells is cheaper than gathering most of them.
        scores = torch.sigmoid(torch.addmm(bias, cells, weight.T))  # (n_cells, m)
        return [scores[i, k] for k, i in enumerate(ids)]
    chunk = 8192
    return [
        torch.cat(
            [
                torch.sigmoid(cells[i[s : s + chunk]] @ weight[k] + bias[k])
                for s in range(0, len(i), chunk)
            ]
        )
        if len(i)
        else weight.new_zeros(0)
        for k, i in enumerate(ids)
    ]


def _train_epoch(
    cells: Tensor,
    runs: list[_ConceptRun],
    weight: Tensor,
    bias: Tensor,
    buffers: tuple[Tensor, Tensor],
    lr: float,
    batch_size: int,
) -> None:
    """One reference epoch for a group of concepts: mine negatives, train, test pass, val AP.

    buffers are the (m, T, C) features and (m, T) targets of the padded training sets;
    each concept's training size is the same every epoch, so the padding stays zero.
    """
    x, y = buffers
    negatives = [_epoch_negatives(run) for run in runs]
    lengths = []
    for i, (run, neg) in enumerate(zip(runs, negatives)):
        ids = torch.cat([run.pos_ids[: run.pos_cut], run.pool_ids[neg[: _split(len(neg))]]])
        perm = torch.randperm(len(ids), generator=run.gen)  # DataLoader(shuffle=True)
        torch.index_select(cells, 0, ids[perm], out=x[i, : len(ids)])
        y[i, : len(ids)] = (perm < run.pos_cut).float()
        lengths.append(len(ids))
    _lockstep_sgd(x, y, torch.tensor(lengths), weight, bias, lr, batch_size)
    # Test pass over the pool (the next epoch mines its negatives from these scores) and the
    # validation positives.
    scored = _score_cells(
        cells, [torch.cat([run.pool_ids, run.pos_ids[run.pos_cut :]]) for run in runs], weight, bias
    )
    for run, neg, scores in zip(runs, negatives, scored):
        run.pool_scores = scores[: len(run.pool_ids)]
        val_neg = run.pool_scores[neg[_split(len(neg)) :]]
        val_pos = scores[len(run.pool_ids) :]
        labels = np.r_[np.ones(len(val_pos)), np.zeros(len(val_neg))]
        run.ap = average_precision(labels, torch.cat([val_pos, val_neg]).numpy())


def _concept_groups(sizes: Sequence[int], channels: int, budget: int) -> list[list[int]]:
    """Groups concept indices (largest first).

    Each group's padded (m, T, C) buffer stays under ``budget`` floats.
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups: list[list[int]] = []
    for i in order:
        # The first member of a group is its longest, so it sets the padded length.
        if groups and (len(groups[-1]) + 1) * sizes[groups[-1][0]] * channels <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _check_training_inputs(
    feats: Tensor,
    labels: Tensor,
    concepts: Sequence[int],
    epochs: int,
    lr: float,
    batch_size: int,
) -> tuple[int, ...]:
    """Checks the arguments of ``train_concept_classifiers``; returns the concept ids."""
    check_ndim(feats, 4, "features", "(N, C, h, w)")
    n, _, h, w = feats.shape
    check_nonempty(n, "features")
    multi_label = labels.dtype == torch.bool
    if multi_label:
        ok = labels.ndim == 4 and labels.shape[0] == n and labels.shape[2:] == (h, w)
    else:
        ok = labels.shape == (n, h, w)
    if not ok:
        raise ValueError(
            f"grid_labels must have shape (N, h, w) = {(n, h, w)}, or bool (N, L, h, w), "
            f"to match features {tuple(feats.shape)}; got {tuple(labels.shape)} ({labels.dtype})"
        )
    if not multi_label and labels.dtype.is_floating_point:
        raise ValueError(
            f"grid_labels must hold integer label ids (or bool one-hot), got dtype {labels.dtype}"
        )
    # cells labelled IGNORE_LABEL are never sampled (one-hot labels: every cell may be)
    nonfinite = ~torch.isfinite(feats).all(1)
    bad = int((nonfinite if multi_label else nonfinite & (labels != IGNORE_LABEL)).sum())
    if bad:
        raise ValueError(f"features {tuple(feats.shape)} hold NaN or Inf at {bad} cells that "
                         f"grid_labels does not ignore (label {IGNORE_LABEL}); expected the "
                         f"finite feature maps of a classifier")
    concept_ids = tuple(int(c) for c in concepts)
    if not concept_ids:
        raise ValueError("concepts must name at least one label id, got an empty sequence")
    if len(set(concept_ids)) != len(concept_ids):
        raise ValueError(f"concepts must be distinct, got {list(concept_ids)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    return concept_ids


def train_concept_classifiers(
    features: Tensor | np.ndarray,
    grid_labels: Tensor | np.ndarray,
    concepts: Sequence[int],
    epochs: int = 15,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> ConceptClassifiers:
    """Train one independent binary linear classifier per concept on grid cells (ibd.md §2).

    Each concept c: positives are the cells labelled c; a fixed pool of min(20P, available)
    random other cells (label 255 excluded) supplies negatives; every epoch uses all
    positives plus 2P negatives (random from the pool at epoch 0, afterwards the pool
    cells the classifier scored highest after the previous epoch), split 3:1 into
    train/val; the loss is MSE on the sigmoid output, optimised by plain SGD. Concepts
    are independent; groups of them are stepped side by side for speed.

    Args:
        features: (N, C, h, w) feature maps; copied once as an (N*h*w, C) float32 matrix.
        grid_labels: (N, h, w) integer label per cell (255 = ignore), or one-hot
            (N, L, h, w) bool for multi-label cells, where concept ids index L.
        concepts: label ids to train classifiers for; each needs at least one positive.
        epochs: passes per concept (the reference's 15).
        lr: SGD learning rate.
        batch_size: minibatch size.
        seed: seed of the local generators (one per concept id).
        progress: show a tqdm progress bar.

    Returns:
        :class:`ConceptClassifiers` with the last epoch's weights and validation AP.
    """
    feats = as_tensor(features, "features")
    labels = as_tensor(grid_labels, "grid_labels")
    concept_ids = _check_training_inputs(feats, labels, concepts, epochs, lr, batch_size)
    channels = feats.shape[1]
    positives, allowed = _concept_masks(labels, concept_ids)
    empty = [c for c, p in zip(concept_ids, positives) if not p.any()]
    if empty:
        raise ValueError(f"concepts {empty} have no positive cell in grid_labels")

    from partslib.progress import Progress

    # Channels-last cell matrix: one copy, so every later gather reads contiguous rows.
    cells = feats.permute(0, 2, 3, 1).reshape(-1, channels).float().contiguous()
    m = len(concept_ids)
    weight = torch.empty(m, channels)
    bias = torch.empty(m)
    ap = torch.empty(m, dtype=torch.float64)
    train_sizes = [3 * int(p.sum()) for p in positives]  # bound on the P + 2P rows; groups by size
    with Progress(total=m * epochs, desc="concept classifiers", unit="epoch",
                  disable=not progress) as bar:
        for group in _concept_groups(train_sizes, channels, _LOCKSTEP_BUDGET):
            started = [
                _start_concept(positives[i], allowed, channels, seed, concept_ids[i]) for i in group
            ]
            runs = [run for run, _, _ in started]
            group_weight = torch.stack([wt for _, wt, _ in started])
            group_bias = torch.stack([b for _, _, b in started])
            longest = max(run.pos_cut + _split(run.n_neg) for run in runs)
            buffers = (torch.zeros(len(runs), longest, channels), torch.zeros(len(runs), longest))
            for _ in range(epochs):
                _train_epoch(cells, runs, group_weight, group_bias, buffers, lr, batch_size)
                bar.update(len(group))
            weight[group], bias[group] = group_weight, group_bias
            ap[group] = torch.tensor([run.ap for run in runs], dtype=torch.float64)
    return ConceptClassifiers(weight=weight, bias=bias, concepts=concept_ids, ap=ap)
