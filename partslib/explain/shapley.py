"""Part Shapley values: each part's fair share of ``f(x) − f(all parts removed)``.

The game of one image: the players are the labels present in its part map (background
included); the value of a coalition ``S`` is the classifier's logits on the image with every
present label outside ``S`` removed by a removal operator (:mod:`partslib.removal`; on
SynthParts :class:`~partslib.data.synthparts.ReRender` re-renders the sample exactly). Values
are computed for **all classes at once** (``[..., K]``), so one game explains any class and,
by linearity, any margin ``logit_k − logit_j``.

* :func:`part_shapley` -- exact enumeration of the ``2^n`` coalitions of the ``n`` present
  labels when ``n <= max_exact`` (batched across images), else antithetic permutation sampling
  (each permutation and its reverse) with the standard error over permutation pairs. Both are
  efficient: ``Σ_p φ_p = v(all) − v(∅)`` holds per image up to float rounding (every sampled
  permutation telescopes to the same sum).
* Pairwise Shapley interaction indices (Grabisch & Roubens 1999) from the exact values:
  ``I_pq = Σ_{S ⊆ N∖{p,q}} |S|!(n−|S|−2)!/(n−1)! · (v(S∪pq) − v(S∪p) − v(S∪q) + v(S))``.
* :class:`ShapleyRule` -- the rule on the explainer's part map (the PDM's argmax map) with
  the user's imputer: complete (``bias = v(∅)``), faithful to its operator, ``2^n`` classifier
  passes per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from partslib.constants import INFERENCE_BATCH
from partslib.explain.core import ExplainContext
from partslib.explain.rules import Rule, RuleResult

__all__ = ["ShapleyRule", "ShapleyValues", "part_shapley", "removal_game", "single_effects"]

# rows (image index), drop [M, L] bool -> logits [M, K]
Game = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ShapleyValues:
    """Part Shapley values of a batch of games (``L`` labels, ``K`` classes).

    Attributes:
        values: ``[B, L, K]`` φ (0 for labels absent from the image).
        full: ``[B, K]`` v(all present labels kept) = the logits of the image.
        empty: ``[B, K]`` v(∅) = the logits with every present label removed.
        stderr: ``[B, L, K]`` standard error of sampled values (0 where exact).
        exact: ``[B]`` bool, the image's values were enumerated exactly.
        interactions: ``[B, L, L, K]`` pairwise interaction indices (exact images only, NaN
            elsewhere), or None when not requested.
        evaluations: classifier passes spent per image ``[B]``.
        single: ``[B, L, K]`` single-removal effects ``v(all) − v(all ∖ p)`` (exact images;
            NaN for sampled ones, 0 for absent labels).
    """

    values: Tensor
    full: Tensor
    empty: Tensor
    stderr: Tensor
    exact: Tensor
    interactions: Tensor | None
    evaluations: Tensor
    single: Tensor

    def efficiency_error(self) -> Tensor:
        """``max_k |Σ_p φ_pk − (v(all)_k − v(∅)_k)|`` per image ``[B]``."""
        return (self.values.sum(1) - (self.full - self.empty)).abs().amax(1)


def removal_game(classifier: Any, images: Tensor, labels: Tensor, operator: Any,
                 keys: Sequence[Any] | None = None, features: Any = None) -> Game:
    """The game "logits of ``images`` with the dropped labels removed by ``operator``".

    ``labels`` are the label maps that define the parts (the PDM's argmax map, or ground-truth
    masks with ``keys`` for :class:`~partslib.data.synthparts.ReRender`); ``features``
    optionally replaces the classifier's ``x -> A`` (e.g. a BatchNorm-folded copy).
    """

    def game(rows: Tensor, drop: Tensor) -> Tensor:
        k = None if keys is None else [keys[int(r)] for r in rows]
        x = operator(images[rows], labels[rows], drop, k) if keys is not None else \
            operator(images[rows], labels[rows], drop)
        if features is None:
            return classifier(x)
        A = features(x)
        A = A.contiguous() if A.is_contiguous(memory_format=torch.channels_last) else A
        return classifier.head(A)

    return game


def _bits(n: int) -> Tensor:
    """``[2^n, n]`` bool: row m holds the binary digits of m (coalition m)."""
    m = torch.arange(2 ** n)
    return (m[:, None] >> torch.arange(n)[None, :]) & 1 == 1


def _exact_weights(n: int) -> Tensor:
    """Shapley weight ``s!(n−s−1)!/n!`` per coalition size s = 0..n−1 (float64)."""
    return torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                         for s in range(n)], dtype=torch.float64)


def _exact_from_values(v: Tensor, n: int, interactions: bool
                       ) -> tuple[Tensor, Tensor | None]:
    """φ ``[n, K]`` (and interactions ``[n, n, K]``) from the values ``[2^n, K]`` (float64)."""
    m = torch.arange(2 ** n)
    size = _bits(n).sum(1)
    w = _exact_weights(n)
    phi = torch.zeros(n, v.shape[1], dtype=torch.float64)
    for i in range(n):
        without = m[(m >> i) & 1 == 0]
        phi[i] = (w[size[without]][:, None] * (v[without | (1 << i)] - v[without])).sum(0)
    inter = None
    if interactions and n >= 2:
        wi = torch.tensor([math.factorial(s) * math.factorial(n - s - 2) / math.factorial(n - 1)
                           for s in range(n - 1)], dtype=torch.float64)
        inter = torch.zeros(n, n, v.shape[1], dtype=torch.float64)
        for i in range(n):
            for j in range(i + 1, n):
                s = m[((m >> i) & 1 == 0) & ((m >> j) & 1 == 0)]
                d = v[s | (1 << i) | (1 << j)] - v[s | (1 << i)] - v[s | (1 << j)] + v[s]
                inter[i, j] = inter[j, i] = (wi[size[s]][:, None] * d).sum(0)
    return phi, inter


def _evaluate(game: Game, rows: Tensor, drop: Tensor, batch_size: int) -> Tensor:
    """The game's logits for every (row, drop) pair, in batches (float64)."""
    out = [game(rows[s:s + batch_size], drop[s:s + batch_size]).double().cpu()
           for s in range(0, len(rows), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def _permutations(n: int, n_perm: int, gen: torch.Generator) -> Tensor:
    """``[n_perm, n]`` permutations: random ones followed each by its reverse (antithetic)."""
    half = [torch.randperm(n, generator=gen) for _ in range((n_perm + 1) // 2)]
    perms = [p for h in half for p in (h, h.flip(0))]
    return torch.stack(perms[:max(2, n_perm - n_perm % 2)])


def part_shapley(game: Game, present: Tensor, full: Tensor, *, max_exact: int = 8,
                 n_permutations: int = 64, seed: int = 0, batch_size: int = INFERENCE_BATCH,
                 interactions: bool = False, progress: bool = False) -> ShapleyValues:
    """Part Shapley values of ``B`` games over their present labels.

    Args:
        game: ``game(rows [M], drop [M, L] bool) -> logits [M, K]`` (:func:`removal_game`).
        present: bool ``[B, L]``: the players of each image.
        full: ``[B, K]`` the logits of the intact images (v of the grand coalition; used as
            is, so that ``v(∅) + Σ φ`` equals the logits the explainer reports).
        max_exact: enumerate all coalitions up to this many present labels (``2^n`` passes);
            beyond, sample ``n_permutations`` antithetic permutations (``n_permutations·n``
            passes) and report their standard error.
        seed: of the permutations (a generator of its own; the global RNG is untouched).
        interactions: also compute pairwise interaction indices (exact images only).
    """
    if present.dim() != 2 or present.dtype != torch.bool:
        raise ValueError(f"present must be bool [B, L], got {present.dtype} "
                         f"{tuple(present.shape)}")
    if not 1 <= max_exact <= 16:
        raise ValueError(f"max_exact must be in 1..16 (2^n passes per image), got {max_exact}")
    if n_permutations < 2:
        raise ValueError(f"n_permutations must be >= 2 (antithetic pairs), got {n_permutations}")
    B, L = present.shape
    K = full.shape[1]
    full64 = full.detach().double().cpu()
    pres = present.cpu()
    players = [torch.nonzero(pres[b]).flatten() for b in range(B)]
    gen = torch.Generator().manual_seed(int(seed))
    # every coalition to score: (image, drop row); grand coalitions are not re-scored
    rows, drops, plans = [], [], []
    for b, pl in enumerate(players):
        n = len(pl)
        if n <= max_exact:
            keep = _bits(n)
            plan = ("exact", n, None)
        else:
            perms = _permutations(n, n_permutations, gen)
            prefix = torch.arange(n + 1)[:, None] > torch.arange(n)[None, :]  # [n+1, n]
            keep = torch.zeros(len(perms) * (n + 1), n, dtype=torch.bool)
            for t, perm in enumerate(perms):
                keep[t * (n + 1):(t + 1) * (n + 1), perm] = prefix
            plan = ("sampled", n, perms)
        drop = torch.zeros(len(keep), L, dtype=torch.bool)
        drop[:, pl] = ~keep
        plans.append((plan, len(keep)))
        rows.append(torch.full((len(keep),), b, dtype=torch.long))
        drops.append(drop)
    flat_rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    flat_drop = torch.cat(drops) if drops else torch.zeros(0, L, dtype=torch.bool)
    scored = flat_drop.any(1)  # the grand coalition is the intact image
    values = torch.zeros(len(flat_rows), K, dtype=torch.float64)
    values[~scored] = full64[flat_rows[~scored]]
    idx = torch.nonzero(scored).flatten()
    dev = full.device
    chunks = []
    from partslib.progress import Progress

    iterator = Progress(range(0, len(idx), batch_size), desc="part Shapley", unit="batch",
                        disable=not progress)
    for s in iterator:
        sel = idx[s:s + batch_size]
        chunks.append(game(flat_rows[sel].to(dev), flat_drop[sel].to(dev)).double().cpu())
    if chunks:
        values[idx] = torch.cat(chunks)
    return _assemble(values, plans, players, pres, full64, L, K, interactions)


def _assemble(values: Tensor, plans: list, players: list[Tensor], present: Tensor,
              full: Tensor, L: int, K: int, interactions: bool) -> ShapleyValues:
    B = len(players)
    phi = torch.zeros(B, L, K, dtype=torch.float64)
    se = torch.zeros(B, L, K, dtype=torch.float64)
    empty = full.clone()
    exact = torch.zeros(B, dtype=torch.bool)
    inter = torch.full((B, L, L, K), math.nan, dtype=torch.float64) if interactions else None
    evals = torch.zeros(B, dtype=torch.long)
    single = torch.zeros(B, L, K, dtype=torch.float64)
    start = 0
    for b, ((kind, n, perms), count) in enumerate(plans):
        v = values[start:start + count]
        start += count
        pl = players[b]
        # the grand coalition (every order's last step) is the intact image: not scored
        evals[b] = count - (1 if kind == "exact" else len(perms))
        if n == 0:
            exact[b] = True
            continue
        if kind == "exact":
            p, it = _exact_from_values(v, n, interactions)
            phi[b, pl] = p
            top = 2 ** n - 1
            single[b, pl] = v[top] - v[top ^ (1 << torch.arange(n))]
            empty[b] = v[0]
            exact[b] = True
            if inter is not None and it is not None:
                inter[b][pl[:, None], pl[None, :]] = it
                inter[b, pl, pl] = math.nan
            continue
        chains = v.view(len(perms), n + 1, K)
        marg = torch.zeros(len(perms), n, K, dtype=torch.float64)
        steps = chains[:, 1:] - chains[:, :-1]  # [T, n, K] marginal of the player added
        marg.scatter_(1, perms[:, :, None].expand(-1, -1, K), steps)
        pairs = marg.view(-1, 2, n, K).mean(1)  # antithetic pairs are the samples
        phi[b, pl] = pairs.mean(0)
        se[b, pl] = pairs.std(0, unbiased=True) / math.sqrt(len(pairs)) if len(pairs) > 1 \
            else torch.full((n, K), math.nan, dtype=torch.float64)
        empty[b] = chains[0, 0]
        single[b, pl] = math.nan
    return ShapleyValues(values=phi, full=full, empty=empty, stderr=se, exact=exact,
                         interactions=inter, evaluations=evals, single=single)


def single_effects(game: Game, present: Tensor, full: Tensor, batch_size: int = INFERENCE_BATCH,
                   progress: bool = False) -> Tensor:
    """Single-removal effects ``v(all) − v(all ∖ p)`` ``[B, L, K]`` of every present label (0
    for absent ones): one classifier pass per present label, no coalitions."""
    if present.dim() != 2 or present.dtype != torch.bool:
        raise ValueError(f"present must be bool [B, L], got {present.dtype} "
                         f"{tuple(present.shape)}")
    B, L = present.shape
    b_idx, p_idx = torch.nonzero(present.cpu(), as_tuple=True)
    full64 = full.detach().double().cpu()
    out = torch.zeros(B, L, full.shape[1], dtype=torch.float64)
    from partslib.progress import Progress

    iterator = Progress(range(0, len(b_idx), batch_size), desc="single removals", unit="batch",
                        disable=not progress)
    for s in iterator:
        bb, pp = b_idx[s:s + batch_size], p_idx[s:s + batch_size]
        drop = torch.zeros(len(bb), L, dtype=torch.bool)
        drop[torch.arange(len(bb)), pp] = True
        v = game(bb.to(full.device), drop.to(full.device)).double().cpu()
        out[bb, pp] = full64[bb] - v
    return out


class ShapleyRule(Rule):
    """Exact (≤ ``max_exact`` present parts) or sampled part Shapley values of the explained
    score, with the parts of the explainer's argmax map removed by ``imputer``.

    Complete: ``bias + Σ_p c_p = score`` with ``bias = v(∅)`` (the score with every present
    part removed). ``2^n`` classifier passes per image for ``n`` present parts.
    """

    units = "logit"
    complete = True

    def __init__(self, imputer: Any = None, features: Any = None, max_exact: int = 8,
                 n_permutations: int = 64, seed: int = 0):
        if imputer is None:
            from partslib.removal import GaussianBlurFill

            imputer = GaussianBlurFill(11, 5.0)
        self.imputer, self.features = imputer, features
        self.max_exact, self.n_permutations, self.seed = max_exact, n_permutations, seed

    @property
    def name(self) -> str:
        """``shapley``."""
        return "shapley"

    def describe(self) -> str:
        """``shapley:<imputer name>``."""
        return f"shapley:{getattr(self.imputer, 'name', type(self.imputer).__name__)}"

    def values(self, ctx: ExplainContext, interactions: bool = False) -> ShapleyValues:
        """The part Shapley values of every class for the images of ``ctx``."""
        game = removal_game(ctx.classifier, ctx.images, ctx.labels, self.imputer,
                            features=self.features)
        return part_shapley(game, ctx.present, ctx.logits, max_exact=self.max_exact,
                            n_permutations=self.n_permutations, seed=self.seed,
                            batch_size=ctx.batch_size, interactions=interactions)

    def __call__(self, ctx: ExplainContext) -> RuleResult:
        """φ of the explained score (margin: φ_k − φ_j) and ``bias = v(∅)``."""
        sv = self.values(ctx)
        return RuleResult(*select_scores(sv.values, sv.empty, ctx.target, ctx.contrast,
                                         ctx.score))


def select_scores(values: Tensor, base: Tensor, k: Tensor, j: Tensor | None,
                  score: Tensor) -> tuple[Tensor, Tensor]:
    """Contributions ``[B, L]`` and bias ``[B]`` of class ``k`` (minus ``j``) from per-class
    values ``[B, L, K]`` and base ``[B, K]``, as float32 on ``score``'s device."""
    r = torch.arange(len(k))
    kc = k.cpu()
    c = values[r, :, kc]
    b = base[r, kc]
    if j is not None:
        jc = j.cpu()
        c, b = c - values[r, :, jc], b - base[r, jc]
    return c.to(score.dtype).to(score.device), b.to(score.dtype).to(score.device)
