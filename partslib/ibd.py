"""Interpretable Basis Decomposition (IBD), ported from the public reference code.

Paper: Zhou, Sun, Bau, Torralba, "Interpretable Basis Decomposition for Visual
Explanation", ECCV 2018. Reference code: https://github.com/CSAILVision/IBD. The
algorithm as that code runs it is written up in ``shared/docs/ibd.md``; section
numbers below refer to that file.

Pipeline:

1. :func:`train_concept_classifiers` learns one linear 1x1 concept classifier per
   concept on feature-grid cells (§2): sigmoid + MSE loss, plain SGD, hard-negative
   mining from a fixed pool of 20P negatives, 3:1 train/val split, per-concept AP.
2. :func:`normalise_concepts` centres and L2-normalises the concept weights (§2).
3. :func:`decompose` writes every L2-normalised class weight as a greedy Gram-Schmidt
   pursuit over the concept vectors plus a residual (§3).
4. :func:`ibd_contributions` and :func:`ibd_heatmaps` explain one image (§4).

Faithful to the reference: the pursuit picks the largest *signed* score (raw q.t at
the first step, the normalised orthogonalised candidate afterwards); coefficients are
``pinv([q_c1..q_cn, r+/|r+|, r-/|r-|]) @ w_hat``; contributions use the L2-normalised
GAP feature and percentages are relative to the total including the residual; the
components are re-sorted by contribution; heatmaps use the centred, unnormalised
weight with the bias and no sigmoid, gate by 1[s_i > 0], apply ReLU and one shared max;
concept training uses MSE on the sigmoid, SGD lr 0.01 without momentum, batch 128,
default ``nn.Linear`` initialisation, 20P negative pool, 2P negatives per epoch (random
at epoch 0, the top-scored pool cells afterwards), the 3:1 split with the first part
(positives; hardest negatives) to training, and a shuffled training order each epoch.
On the shipped ResNet-18/Places365 weights :func:`decompose` reproduces all 365
reference rankings (see ``tests/test_ibd.py``).

The one deliberate difference: every random choice (initialisation, positive order,
negative pool, epoch-0 negatives, shuffling) comes from a local generator seeded by
``(seed, concept id)``; the reference uses the unseeded global RNG (and a Python-set
order for the positives). Degenerate inputs that make the reference divide by zero
(a candidate already in the chosen span, an all-zero r+ or r-) are handled explicitly
instead of producing NaNs.

Not ported: the Grad-CAM branch for models without a GAP + linear head, feature
extraction and Broden loading (labels enter as per-cell grids, see
:func:`sample_labels_to_grid`), and rendering (JET overlay) of the heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.constants import IGNORE_INDEX

__all__ = [
    "ConceptClassifiers",
    "IBDDecomposition",
    "IBDExplanation",
    "average_precision",
    "concept_score_maps",
    "decompose",
    "ibd_contributions",
    "ibd_heatmaps",
    "normalise_concepts",
    "sample_labels_to_grid",
    "train_concept_classifiers",
]

IGNORE_LABEL = IGNORE_INDEX  # label id that is never a positive nor a negative cell
_DEGENERATE_TOL = 1e-10  # relative squared norm below which a candidate lies in the chosen span
_LOCKSTEP_BUDGET = 2**25  # floats in one padded (concepts, rows, C) training batch (128 MiB)


# --------------------------------------------------------------------------- helpers


def _as_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_ndim(x: Tensor, ndim: int, name: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")


def _check_targets(targets: Tensor | Sequence[int], batch: int, num_classes: int) -> Tensor:
    t = torch.as_tensor(targets).long().reshape(-1)
    if t.numel() != batch:
        raise ValueError(f"targets must have one entry per image ({batch}), got {t.numel()}")
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _float_dtype(*xs: Tensor) -> torch.dtype:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


# --------------------------------------------------------------------------- decomposition


def normalise_concepts(weights: Tensor | np.ndarray) -> Tensor:
    """Centre each concept weight row (subtract its mean over C) and L2-normalise it.

    Args:
        weights: raw concept classifier weights, shape (M, C).

    Returns:
        Concept vectors q_c, shape (M, C), unit norm and zero mean per row.
    """
    w = _as_tensor(weights, "weights")
    _check_ndim(w, 2, "weights", "(M, C)")
    w = w.to(_float_dtype(w))
    centred = w - w.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1, keepdim=True)
    bad = (norms.squeeze(1) == 0).nonzero().flatten()
    if bad.numel():
        raise ValueError(
            f"concept rows {bad.tolist()[:10]} are constant, "
            "so they have no direction after centring"
        )
    return centred / norms


@dataclass(frozen=True)
class IBDDecomposition:
    """Decomposition of K unit class weights over M concept vectors (ibd.md §3).

    Attributes:
        rankings: (K, n) long, chosen concept rows in the order they were chosen.
        errvar: (K, n) squared norm of the residual after each step.
        coefficients: (K, n + 2) pinv coefficients s_1..s_n of the original q_ci, then
            those of r+/|r+| and r-/|r-| (= |r+| and -|r-|).
        residuals: (C, K) final residual of each class, one column per class (the
            reference's storage layout).
        target: (K, C) the L2-normalised class weights w_hat that were decomposed.
        concept_vectors: (M, C) the concept vectors used, as given.
    """

    rankings: Tensor
    errvar: Tensor
    coefficients: Tensor
    residuals: Tensor
    target: Tensor
    concept_vectors: Tensor

    @property
    def n_components(self) -> int:
        return self.rankings.shape[1]

    @property
    def num_classes(self) -> int:
        return self.rankings.shape[0]

    def components(self, k: int) -> Tensor:
        """(n + 1, C): rows s_i q_ci in ranking order, then the residual; they sum to w_hat_k."""
        if not 0 <= k < self.num_classes:
            raise ValueError(f"class index k must lie in [0, {self.num_classes}), got {k}")
        n = self.n_components
        concepts = self.coefficients[k, :n, None] * self.concept_vectors[self.rankings[k]]
        return torch.cat([concepts, self.residuals[:, k][None]], dim=0)


def decompose(
    class_weights: Tensor | np.ndarray,
    concept_vectors: Tensor | np.ndarray,
    n_components: int = 7,
) -> IBDDecomposition:
    """Greedy Gram-Schmidt pursuit of each L2-normalised class weight (ibd.md §3).

    Pure function, vectorised over classes, computed in float64. At each step the
    candidate with the largest signed score u_c . w_hat is chosen, where u_c is q_c
    orthogonalised against the chosen ones and renormalised (at the first step the raw
    q_c, as in the reference; pass unit rows, e.g. from :func:`normalise_concepts`).

    Args:
        class_weights: (K, C) class weights; only their direction is used.
        concept_vectors: (M, C) concept vectors q_c, used as given.
        n_components: number of concepts per class, 1 <= n <= min(M, C).

    Returns:
        An :class:`IBDDecomposition` with outputs in the inputs' floating dtype.
    """
    w = _as_tensor(class_weights, "class_weights")
    q = _as_tensor(concept_vectors, "concept_vectors")
    _check_ndim(w, 2, "class_weights", "(K, C)")
    _check_ndim(q, 2, "concept_vectors", "(M, C)")
    if w.shape[1] != q.shape[1]:
        raise ValueError(
            "class_weights (K, C) and concept_vectors (M, C) must share C, "
            f"got {w.shape[1]} and {q.shape[1]}"
        )
    m, c = q.shape
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, int)
        or not 1 <= n_components <= min(m, c)
    ):
        raise ValueError(
            f"n_components must be an int in [1, min(M, C)] = [1, {min(m, c)}] "
            f"(M={m} concepts, C={c} channels), got {n_components!r}"
        )
    out_dtype = _float_dtype(w, q)
    w64, q64 = w.double(), q.double()
    w_norm = w64.norm(dim=1, keepdim=True)
    zero = (w_norm.squeeze(1) == 0).nonzero().flatten()
    if zero.numel():
        raise ValueError(f"class_weights rows {zero.tolist()[:10]} are zero and have no direction")
    target = w64 / w_norm  # (K, C)

    rankings, errvar, residual = _greedy_pursuit(target, q64, n_components)
    coefficients = _pinv_coefficients(target, q64[rankings], residual)
    return IBDDecomposition(
        rankings=rankings,
        errvar=errvar.to(out_dtype),
        coefficients=coefficients.to(out_dtype),
        residuals=residual.T.contiguous().to(out_dtype),
        target=target.to(out_dtype),
        concept_vectors=q.to(out_dtype),
    )


def _greedy_pursuit(target: Tensor, q: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Vectorised form of the reference loop.

    Returns rankings (K, n), errvar (K, n) and the residual (K, C).

    Instead of re-orthogonalising all M candidates per class (K x M x C memory), it keeps
    the projections G_j = u_j . q_c of every chosen direction on every candidate:
    P_perp q_c . t = q_c . t - sum_j G_j (u_j . t) and |P_perp q_c|^2 = |q_c|^2 - sum_j G_j^2.
    """
    k, c = target.shape
    qt = target @ q.T  # (K, M)  q_c . t
    q_sq = (q * q).sum(dim=1)  # (M,)
    proj = target.new_zeros(k, n, q.shape[0])  # (K, n, M)  u_j . q_c
    u_t = target.new_zeros(k, n)  # (K, n)  u_j . t
    basis = target.new_zeros(k, n, c)  # (K, n, C)  orthonormal u_j
    chosen = torch.zeros(k, q.shape[0], dtype=torch.bool)
    rankings = torch.zeros(k, n, dtype=torch.long)
    errvar = target.new_zeros(k, n)
    residual = target.clone()
    rows = torch.arange(k)
    for j in range(n):
        if j == 0:
            score = qt.clone()  # the reference scores the raw q_c at the first step
        else:
            num = qt - torch.einsum("kjm,kj->km", proj[:, :j], u_t[:, :j])
            den_sq = q_sq - (proj[:, :j] ** 2).sum(dim=1)
            valid = den_sq > _DEGENERATE_TOL * q_sq
            score = torch.where(valid, num / den_sq.clamp_min(1e-300).sqrt(), -torch.inf)
        score[chosen] = -torch.inf
        best_score, best = score.max(dim=1)
        if torch.isneginf(best_score).any():
            raise ValueError(
                f"n_components={n} exceeds the rank of the concept vectors: "
                f"no independent candidate left at step {j + 1}"
            )
        # Modified Gram-Schmidt on the chosen q_c, as the reference's per-step update.
        u = q[best].clone()  # (K, C)
        for i in range(j):
            u -= basis[:, i] * (basis[:, i] * u).sum(dim=1, keepdim=True)
        u /= u.norm(dim=1, keepdim=True)
        residual -= u * (u * residual).sum(dim=1, keepdim=True)
        basis[:, j] = u
        proj[:, j] = u @ q.T
        u_t[:, j] = (u * target).sum(dim=1)
        errvar[:, j] = (residual * residual).sum(dim=1)
        rankings[:, j] = best
        chosen[rows, best] = True
    return rankings, errvar, residual


def _pinv_coefficients(target: Tensor, chosen_q: Tensor, residual: Tensor) -> Tensor:
    """pinv([q_c1..q_cn, r+/|r+|, r-/|r-|]) @ t per class; chosen_q is (K, n, C)."""
    parts = [residual.clamp_min(0), (-residual).clamp_min(0)]
    # An all-zero r+ or r- would be 0/0 in the reference; a zero column gets coefficient 0.
    extra = [p / p.norm(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny) for p in parts]
    basis = torch.cat([chosen_q, torch.stack(extra, dim=1)], dim=1).transpose(1, 2)  # (K, C, n+2)
    return (torch.linalg.pinv(basis) @ target[:, :, None]).squeeze(2)


# --------------------------------------------------------------------------- explanation


@dataclass(frozen=True)
class IBDExplanation:
    """Per-image IBD explanation (ibd.md §4); the n concepts are sorted by contribution, descending.

    Attributes:
        targets: (B,) explained class per image.
        concepts: (B, n) long, concept rows (indices into the concept vectors).
        coefficients: (B, n) s_i of those concepts.
        contributions: (B, n) s_i q_ci . a_hat.
        residual: (B,) r . a_hat.
        total: (B,) sum of the n contributions and the residual term = w_hat_k . a_hat.
        percentages: (B, n) 100 * contributions / total.
        residual_percentage: (B,) 100 * residual / total.
        order: (B, n) long, position of each concept in the decomposition's ranking.
    """

    targets: Tensor
    concepts: Tensor
    coefficients: Tensor
    contributions: Tensor
    residual: Tensor
    total: Tensor
    percentages: Tensor
    residual_percentage: Tensor
    order: Tensor


def ibd_contributions(
    gap_features: Tensor | np.ndarray,
    decomposition: IBDDecomposition,
    targets: Tensor | Sequence[int],
) -> IBDExplanation:
    """Contributions of each concept component to the cosine w_hat_k . a_hat (ibd.md §4).

    Args:
        gap_features: (B, C) globally average-pooled features a; they are L2-normalised here.
        decomposition: output of :func:`decompose`.
        targets: (B,) class to explain per image (the reference uses the top-1 class).

    Returns:
        An :class:`IBDExplanation`.
    """
    a = _as_tensor(gap_features, "gap_features")
    _check_ndim(a, 2, "gap_features", "(B, C)")
    q = decomposition.concept_vectors
    if a.shape[1] != q.shape[1]:
        raise ValueError(f"gap_features must have C={q.shape[1]} channels, got {a.shape[1]}")
    t = _check_targets(targets, a.shape[0], decomposition.num_classes)
    a = a.to(q.dtype)
    a_norm = a.norm(dim=1, keepdim=True)
    zero = (a_norm.squeeze(1) == 0).nonzero().flatten()
    if zero.numel():
        raise ValueError(f"gap_features rows {zero.tolist()[:10]} are zero, so a_hat is undefined")
    a_hat = a / a_norm
    n = decomposition.n_components
    ranking = decomposition.rankings[t]  # (B, n)
    coef = decomposition.coefficients[t, :n]  # (B, n)
    contrib = coef * torch.einsum("bnc,bc->bn", q[ranking], a_hat)
    residual = (decomposition.residuals[:, t].T * a_hat).sum(dim=1)
    # The reference's combination_score is the sum of all n + 1 terms.
    total = contrib.sum(dim=1) + residual
    sorted_contrib, order = contrib.sort(dim=1, descending=True, stable=True)
    return IBDExplanation(
        targets=t,
        concepts=ranking.gather(1, order),
        coefficients=coef.gather(1, order),
        contributions=sorted_contrib,
        residual=residual,
        total=total,
        percentages=100 * sorted_contrib / total[:, None],
        residual_percentage=100 * residual / total,
        order=order,
    )


# --------------------------------------------------------------------------- concept classifiers


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
    _check_ndim(feats, 4, "features", "(N, C, h, w)")
    n, _, h, w = feats.shape
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
    feats = _as_tensor(features, "features")
    labels = _as_tensor(grid_labels, "grid_labels")
    concept_ids = _check_training_inputs(feats, labels, concepts, epochs, lr, batch_size)
    channels = feats.shape[1]
    positives, allowed = _concept_masks(labels, concept_ids)
    empty = [c for c, p in zip(concept_ids, positives) if not p.any()]
    if empty:
        raise ValueError(f"concepts {empty} have no positive cell in grid_labels")

    from tqdm.auto import tqdm

    # Channels-last cell matrix: one copy, so every later gather reads contiguous rows.
    cells = feats.permute(0, 2, 3, 1).reshape(-1, channels).float().contiguous()
    m = len(concept_ids)
    weight = torch.empty(m, channels)
    bias = torch.empty(m)
    ap = torch.empty(m, dtype=torch.float64)
    train_sizes = [3 * int(p.sum()) for p in positives]  # bound on the P + 2P rows; groups by size
    with tqdm(total=m * epochs, desc="concept classifiers", disable=not progress) as bar:
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


# --------------------------------------------------------------------------- heatmaps


def concept_score_maps(features: Tensor | np.ndarray, classifiers: ConceptClassifiers) -> Tensor:
    """Linear concept scores per cell, as the reference heatmaps use them (ibd.md §4).

    Score = centred (not normalised) weight . a_xy + bias, without sigmoid.

    Args:
        features: (B, C, h, w) feature maps.
        classifiers: trained :class:`ConceptClassifiers`.

    Returns:
        (B, M, h, w) scores.
    """
    x = _as_tensor(features, "features")
    _check_ndim(x, 4, "features", "(B, C, h, w)")
    weight = classifiers.centred_weight()
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"features must have C={weight.shape[1]} channels, got {x.shape[1]}")
    x = x.to(weight.dtype)
    return (
        torch.einsum("bchw,mc->bmhw", x, weight)
        + classifiers.bias.to(weight.dtype)[None, :, None, None]
    )


def ibd_heatmaps(
    features: Tensor | np.ndarray,
    classifiers: ConceptClassifiers,
    decomposition: IBDDecomposition,
    targets: Tensor | Sequence[int],
    out_size: tuple[int, int],
) -> Tensor:
    """IBD concept heatmaps per image (ibd.md §4).

    The n maps are ordered as :func:`ibd_contributions` on the GAP of ``features``
    orders the concepts (by contribution, descending). Each map is the linear score
    of its concept times 1[s_i > 0], ReLU'd, divided by one maximum shared by all n maps
    of the image (all-zero maps stay zero), then bilinearly upsampled (align_corners=False).

    Args:
        features: (B, C, h, w) feature maps.
        classifiers: the classifiers whose centred-normalised weights were decomposed.
        decomposition: output of :func:`decompose` over ``classifiers.concept_vectors()``.
        targets: (B,) class to explain per image.
        out_size: (H, W) output size.

    Returns:
        (B, n, H, W) maps in [0, 1].
    """
    x = _as_tensor(features, "features")
    _check_ndim(x, 4, "features", "(B, C, h, w)")
    if classifiers.weight.shape[0] != decomposition.concept_vectors.shape[0]:
        raise ValueError(
            f"classifiers has {classifiers.weight.shape[0]} concepts but the decomposition used "
            f"{decomposition.concept_vectors.shape[0]} concept vectors"
        )
    explanation = ibd_contributions(x.mean(dim=(2, 3)), decomposition, targets)
    scores = concept_score_maps(x, classifiers)  # (B, M, h, w)
    idx = explanation.concepts[:, :, None, None].expand(-1, -1, *scores.shape[2:])
    maps = scores.gather(1, idx) * (explanation.coefficients > 0).to(scores.dtype)[:, :, None, None]
    maps = maps.clamp_min(0)
    peak = maps.amax(dim=(1, 2, 3), keepdim=True)
    maps = maps / torch.where(peak > 0, peak, torch.ones_like(peak))
    return F.interpolate(maps, size=tuple(out_size), mode="bilinear", align_corners=False)
