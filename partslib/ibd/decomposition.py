"""IBD's basis decomposition (ibd.md §3) and the per-image contributions it yields (§4).

:func:`decompose` writes every L2-normalised class weight as a greedy Gram-Schmidt pursuit
over the concept vectors plus a residual; :func:`ibd_contributions` splits the cosine
w_hat_k . a_hat of one image into the components' contributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from partslib.ibd._checks import as_tensor, check_ndim, check_targets, float_dtype

__all__ = [
    "IBDDecomposition",
    "IBDExplanation",
    "decompose",
    "ibd_contributions",
    "normalise_concepts",
]

_DEGENERATE_TOL = 1e-10  # relative squared norm below which a candidate lies in the chosen span


def normalise_concepts(weights: Tensor | np.ndarray) -> Tensor:
    """Centre each concept weight row (subtract its mean over C) and L2-normalise it.

    Args:
        weights: raw concept classifier weights, shape (M, C).

    Returns:
        Concept vectors q_c, shape (M, C), unit norm and zero mean per row.
    """
    w = as_tensor(weights, "weights")
    check_ndim(w, 2, "weights", "(M, C)")
    w = w.to(float_dtype(w))
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
    w = as_tensor(class_weights, "class_weights")
    q = as_tensor(concept_vectors, "concept_vectors")
    check_ndim(w, 2, "class_weights", "(K, C)")
    check_ndim(q, 2, "concept_vectors", "(M, C)")
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
    out_dtype = float_dtype(w, q)
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
    a = as_tensor(gap_features, "gap_features")
    check_ndim(a, 2, "gap_features", "(B, C)")
    q = decomposition.concept_vectors
    if a.shape[1] != q.shape[1]:
        raise ValueError(f"gap_features must have C={q.shape[1]} channels, got {a.shape[1]}")
    t = check_targets(targets, a.shape[0], decomposition.num_classes)
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
