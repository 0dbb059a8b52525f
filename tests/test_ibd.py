"""Tests for partslib.ibd: exactness against the reference output, invariants, input errors."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partslib.ibd import (
    ConceptClassifiers,
    average_precision,
    concept_score_maps,
    decompose,
    ibd_contributions,
    ibd_heatmaps,
    normalise_concepts,
    sample_labels_to_grid,
    train_concept_classifiers,
)

from toys import random_concept_classifiers

SHARED = Path(os.environ.get("PARTSLIB_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REFERENCE = SHARED / "reference" / "ibd_resnet18_places365"


# --------------------------------------------------------------------------- helpers


def _reference_pursuit(
    concepts: np.ndarray, target: np.ndarray, n: int
) -> tuple[list[int], list[float], np.ndarray]:
    """Literal per-class port of the reference loop (decompose_Gram_Schmidt), for cross-checking."""
    candidates = [(i, q.copy()) for i, q in enumerate(concepts)]
    residual = target.copy()
    ranking, errvar = [], []
    for _ in range(n):
        _, best = max((float(u @ target), i) for i, u in candidates)
        best_u = dict(candidates)[best]
        residual = residual - best_u * (best_u @ residual)
        ranking.append(best)
        errvar.append(float(residual @ residual))
        orthogonal = [(i, u - best_u * (best_u @ u)) for i, u in candidates if i != best]
        candidates = [(i, v / np.linalg.norm(v)) for i, v in orthogonal]
    return ranking, errvar, residual


def _random_problem(
    seed: int, k: int = 5, m: int = 12, c: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(k, c, generator=g, dtype=torch.float64)
    concepts = normalise_concepts(torch.randn(m, c, generator=g, dtype=torch.float64))
    return weights, concepts


def _toy_concept_data(
    seed: int = 0, n: int = 120, c: int = 8, hw: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels 0..2 per cell; channel l carries +3 where the label is l, the rest is unit noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n, hw, hw), generator=g)
    features = torch.randn(n, c, hw, hw, generator=g)
    features[:, :3] += 3.0 * F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    return features, labels


# --------------------------------------------------------------------------- exactness vs reference

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ibd_reference" / "reference_subset.npz"


def test_decompose_reproduces_the_committed_reference_subset() -> None:
    """Runs in every clone: the reference decomposition of 8 Places365 classes on the concept
    rows that compete for them (tests/fixtures/ibd_reference/README.md), including a step the
    reference wins by 1.2e-5."""
    f = np.load(FIXTURE)
    index = f["concept_index"]
    q = normalise_concepts(torch.from_numpy(f["concept_weights"])).double().numpy()
    pos = np.searchsorted(index, f["rankings"])  # reference concept ids -> rows of the subset
    assert (index[pos] == f["rankings"]).all()
    r = f["residuals"].T
    r_pos, r_neg = np.maximum(r, 0), -np.minimum(r, 0)
    basis = np.concatenate(
        [q[pos], (r_pos / np.linalg.norm(r_pos, axis=1, keepdims=True))[:, None],
         (r_neg / np.linalg.norm(r_neg, axis=1, keepdims=True))[:, None]],
        axis=1,
    )  # fmt: skip
    w_hat = np.einsum("ki,kic->kc", f["coefficients"], basis)
    assert np.abs(np.linalg.norm(w_hat, axis=1) - 1).max() < 1e-6

    d = decompose(torch.from_numpy(w_hat), torch.from_numpy(q), n_components=7)

    np.testing.assert_array_equal(index[d.rankings.numpy()], f["rankings"])
    np.testing.assert_allclose(d.errvar.numpy(), f["errvar"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(d.residuals.numpy(), f["residuals"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(d.coefficients.numpy(), f["coefficients"], rtol=0, atol=1e-5)
    # the literal port of the reference loop agrees on the subset too
    for k in range(len(w_hat)):
        ranking, errvar, _ = _reference_pursuit(q, w_hat[k], 7)
        assert index[ranking].tolist() == f["rankings"][k].tolist()
        np.testing.assert_allclose(errvar, f["errvar"][k], rtol=0, atol=1e-5)



def test_decompose_reproduces_reference_output() -> None:
    if not REFERENCE.is_dir():
        pytest.skip(
            f"IBD reference output not found at {REFERENCE} "
            "(set PARTSLIB_SHARED to the shared/ folder)"
        )
    raw = np.load(REFERENCE / "concept_weights.npy")
    rankings, errvar, coefficients, residuals = np.load(
        REFERENCE / "decompose.npy", allow_pickle=True
    )
    q = normalise_concepts(torch.from_numpy(raw)).double().numpy()
    # Recover the unit class weights from the 9 basis vectors the coefficients refer to.
    r = residuals.T
    r_pos, r_neg = np.maximum(r, 0), -np.minimum(r, 0)
    basis = np.concatenate(
        [q[rankings], (r_pos / np.linalg.norm(r_pos, axis=1, keepdims=True))[:, None],
         (r_neg / np.linalg.norm(r_neg, axis=1, keepdims=True))[:, None]],
        axis=1,
    )  # fmt: skip
    w_hat = np.einsum("ki,kic->kc", coefficients, basis)
    assert np.abs(np.linalg.norm(w_hat, axis=1) - 1).max() < 1e-6

    d = decompose(torch.from_numpy(w_hat), torch.from_numpy(q), n_components=7)

    matches = int((d.rankings.numpy() == rankings).all(axis=1).sum())
    assert matches == len(rankings), (
        f"{matches} of {len(rankings)} class rankings match the reference"
    )
    print(f"\nIBD reference: {matches}/{len(rankings)} rankings identical, "
          f"max |errvar| err {np.abs(d.errvar.numpy() - errvar).max():.2e}, "
          f"max |residual| err {np.abs(d.residuals.numpy() - residuals).max():.2e}")  # fmt: skip
    np.testing.assert_allclose(d.errvar.numpy(), errvar, rtol=0, atol=1e-5)
    np.testing.assert_allclose(d.residuals.numpy(), residuals, rtol=0, atol=1e-5)
    np.testing.assert_allclose(d.coefficients.numpy(), coefficients, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- decomposition


def test_normalise_concepts_centres_and_normalises() -> None:
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    before = w.clone()
    q = normalise_concepts(w)
    assert torch.equal(w, before)  # pure: the input is not modified
    torch.testing.assert_close(q.mean(dim=1), torch.zeros(7), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(7))
    with pytest.raises(ValueError, match=r"concept rows \[1\] are constant"):
        normalise_concepts(torch.stack([torch.randn(5), torch.full((5,), 2.0)]))
    with pytest.raises(ValueError, match=r"\(M, C\).*got shape \(5,\)"):
        normalise_concepts(torch.randn(5))


@pytest.mark.parametrize("seed", range(4))
def test_decompose_matches_literal_reference_loop(seed: int) -> None:
    weights, concepts = _random_problem(seed)
    d = decompose(weights, concepts, n_components=5)
    for k in range(len(weights)):
        target = (weights[k] / weights[k].norm()).numpy()
        ranking, errvar, residual = _reference_pursuit(concepts.numpy(), target, 5)
        assert d.rankings[k].tolist() == ranking
        np.testing.assert_allclose(d.errvar[k].numpy(), errvar, atol=1e-12)
        np.testing.assert_allclose(d.residuals[:, k].numpy(), residual, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_decompose_invariants(seed: int) -> None:
    weights, concepts = _random_problem(seed, k=6, m=10, c=9)
    n = 6
    d = decompose(weights, concepts, n_components=n)
    target = weights / weights.norm(dim=1, keepdim=True)
    assert d.rankings.dtype == torch.long and d.rankings.shape == (6, n)
    assert (
        d.errvar.shape == (6, n)
        and d.coefficients.shape == (6, n + 2)
        and d.residuals.shape == (9, 6)
    )
    torch.testing.assert_close(d.target, target)
    for k in range(6):
        assert len(set(d.rankings[k].tolist())) == n  # each concept at most once
        parts = d.components(k)
        assert parts.shape == (n + 1, 9)
        torch.testing.assert_close(parts.sum(dim=0), target[k], atol=1e-12, rtol=0)
        r = d.residuals[:, k]
        # The residual is orthogonal to every chosen concept, so to their span.
        assert (concepts[d.rankings[k]] @ r).abs().max() < 1e-12
        torch.testing.assert_close(d.errvar[k, -1], r @ r)
        torch.testing.assert_close(d.coefficients[k, n], r.clamp_min(0).norm())
        torch.testing.assert_close(d.coefficients[k, n + 1], -(-r).clamp_min(0).norm())
    assert (d.errvar[:, 1:] <= d.errvar[:, :-1] + 1e-12).all()
    assert (d.errvar[:, 0] <= 1 + 1e-12).all()


def test_decompose_float32_and_numpy_inputs() -> None:
    weights, concepts = _random_problem(0)
    d64 = decompose(weights, concepts, 3)
    d32 = decompose(weights.float().numpy(), concepts.float().numpy(), 3)
    assert d32.errvar.dtype == torch.float32 and d32.coefficients.dtype == torch.float32
    assert torch.equal(d32.rankings, d64.rankings)
    torch.testing.assert_close(d32.residuals, d64.residuals.float())


def test_decompose_skips_concepts_already_in_span() -> None:
    # Row 3 duplicates row 0: once row 0 is chosen it has no direction left
    # (the reference gets NaN).
    weights, concepts = _random_problem(1, k=4, m=6, c=8)
    concepts = torch.cat([concepts, concepts[:1]])
    d = decompose(weights, concepts, n_components=6)
    assert torch.isfinite(d.coefficients).all() and torch.isfinite(d.errvar).all()
    for row in d.rankings.tolist():
        assert not {0, 6} <= set(row)


def test_decompose_with_exactly_representable_target() -> None:
    # w lies in span(q0, q1): the residual vanishes and its r+/r- columns get coefficient 0.
    concepts = torch.eye(4, dtype=torch.float64)
    d = decompose(torch.tensor([[3.0, 4.0, 0.0, 0.0]], dtype=torch.float64), concepts, 2)
    assert d.rankings.tolist() == [[1, 0]]
    torch.testing.assert_close(
        d.coefficients[0], torch.tensor([0.8, 0.6, 0.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(d.errvar[0], torch.tensor([0.36, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"n_components": 13},
            r"n_components must be an int in \[1, min\(M, C\)\] = \[1, 8\].*M=12.*got 13",
        ),
        ({"n_components": 0}, r"n_components .* got 0"),
        ({"n_components": 2.0}, r"n_components .* got 2\.0"),
        (
            {"class_weights": torch.randn(5)},
            r"class_weights must have shape \(K, C\), got shape \(5,\)",
        ),
        ({"concept_vectors": torch.randn(12, 7)}, r"must share C, got 8 and 7"),
        ({"class_weights": torch.zeros(2, 8)}, r"class_weights rows \[0, 1\] are zero"),
    ],
)
def test_decompose_rejects_bad_input(kwargs: dict, match: str) -> None:
    weights, concepts = _random_problem(0)
    args = {"class_weights": weights, "concept_vectors": concepts, "n_components": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        decompose(**args)
    with pytest.raises(ValueError, match=r"class index k must lie in \[0, 5\), got 5"):
        decompose(weights, concepts, 3).components(5)


# --------------------------------------------------------------------------- contributions


def test_contributions_sum_to_cosine_and_are_sorted() -> None:
    weights, concepts = _random_problem(2, k=5, m=12, c=8)
    d = decompose(weights, concepts, 4)
    g = torch.Generator().manual_seed(0)
    gap = torch.rand(6, 8, generator=g, dtype=torch.float64) * 5
    targets = torch.tensor([0, 4, 2, 2, 1, 3])
    e = ibd_contributions(gap, d, targets)
    a_hat = gap / gap.norm(dim=1, keepdim=True)
    cosine = (d.target[targets] * a_hat).sum(dim=1)
    torch.testing.assert_close(e.total, cosine)
    torch.testing.assert_close(e.contributions.sum(dim=1) + e.residual, cosine)
    hundred = torch.full((6,), 100.0, dtype=torch.float64)
    torch.testing.assert_close(e.percentages.sum(dim=1) + e.residual_percentage, hundred)
    assert (e.contributions[:, :-1] >= e.contributions[:, 1:]).all()
    for b, k in enumerate(targets.tolist()):
        # Concept ids, coefficients and order travel with their contribution.
        assert e.concepts[b].tolist() == d.rankings[k][e.order[b]].tolist()
        torch.testing.assert_close(e.coefficients[b], d.coefficients[k, e.order[b]])
        torch.testing.assert_close(
            e.contributions[b], e.coefficients[b] * (concepts[e.concepts[b]] @ a_hat[b])
        )
        torch.testing.assert_close(e.residual[b], d.residuals[:, k] @ a_hat[b])
    # Only the direction of the GAP feature matters.
    torch.testing.assert_close(ibd_contributions(gap * 7, d, targets).total, e.total)


def test_contributions_reject_bad_input() -> None:
    weights, concepts = _random_problem(0)
    d = decompose(weights, concepts, 3)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\), got range \[0, 5\]"):
        ibd_contributions(torch.rand(2, 8), d, [0, 5])
    with pytest.raises(ValueError, match=r"one entry per image \(2\), got 3"):
        ibd_contributions(torch.rand(2, 8), d, [0, 1, 2])
    with pytest.raises(ValueError, match=r"C=8 channels, got 6"):
        ibd_contributions(torch.rand(2, 6), d, [0, 1])
    with pytest.raises(ValueError, match=r"gap_features rows \[1\] are zero"):
        ibd_contributions(torch.stack([torch.rand(8), torch.zeros(8)]), d, [0, 1])


# --------------------------------------------------------------------------- labels and AP


def test_sample_labels_to_grid_block_centres() -> None:
    labels = np.arange(16).reshape(1, 4, 4)
    np.testing.assert_array_equal(sample_labels_to_grid(labels, (2, 2)), [[[5, 7], [13, 15]]])
    np.testing.assert_array_equal(sample_labels_to_grid(labels, (4, 1)), [[[2], [6], [10], [14]]])
    big = torch.randint(0, 50, (3, 2, 112, 112), generator=torch.Generator().manual_seed(0))
    small = sample_labels_to_grid(big, (7, 7))
    assert isinstance(small, torch.Tensor) and small.dtype == big.dtype
    assert torch.equal(small, big[..., 8::16, 8::16])
    assert torch.equal(sample_labels_to_grid(big[:, 0, :, :], (112, 112)), big[:, 0])
    with pytest.raises(ValueError, match=r"grid_hw must lie within .*\[112, 112\].*got \(113, 7\)"):
        sample_labels_to_grid(big, (113, 7))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        sample_labels_to_grid(np.arange(4), (1, 1))


def test_average_precision_matches_sklearn_definition() -> None:
    # Precision at each positive: 1/1 and 2/3.
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    # Tied scores form one threshold (sklearn): precision 1/2 at recall 1.
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([0, 1, 1], [0.1, 0.9, 0.8]) == pytest.approx(1.0)
    assert np.isnan(average_precision([0, 0], [0.3, 0.2]))


# --------------------------------------------------------------------------- concept classifiers


def test_train_concept_classifiers_learns_toy_concepts() -> None:
    features, labels = _toy_concept_data()
    clf = train_concept_classifiers(features, labels, [1, 2], epochs=4, seed=0, progress=False)
    assert clf.weight.shape == (2, 8) and clf.bias.shape == (2,) and clf.concepts == (1, 2)
    assert (clf.ap > 0.95).all(), clf.ap
    # The classifier for concept l leans on channel l.
    assert clf.weight[0].argmax() == 1 and clf.weight[1].argmax() == 2
    again = train_concept_classifiers(features, labels, [1, 2], epochs=4, seed=0, progress=False)
    assert (
        torch.equal(again.weight, clf.weight)
        and torch.equal(again.bias, clf.bias)
        and torch.equal(again.ap, clf.ap)
    )
    other = train_concept_classifiers(features, labels, [1, 2], epochs=4, seed=1, progress=False)
    assert not torch.equal(other.weight, clf.weight)


def test_train_concept_classifiers_ignore_and_multilabel() -> None:
    features, labels = _toy_concept_data(n=60)
    one_hot = F.one_hot(labels, 3).permute(0, 3, 1, 2).bool()
    single = train_concept_classifiers(features, labels, [0, 2], epochs=2, progress=False)
    multi = train_concept_classifiers(features, one_hot, [0, 2], epochs=2, progress=False)
    # Same positives and the same negative candidates, so the same seeded run.
    torch.testing.assert_close(multi.weight, single.weight)
    # Ignored cells must never be sampled: NaN features there would poison the weights.
    ignored = labels.clone()
    ignored[::3, :2] = 255
    poisoned = features.clone()
    poisoned.permute(0, 2, 3, 1)[ignored == 255] = float("nan")
    clf = train_concept_classifiers(poisoned, ignored, [0, 2], epochs=2, progress=False)
    assert torch.isfinite(clf.weight).all() and torch.isfinite(clf.ap).all()


def test_train_concept_classifiers_rejects_bad_input() -> None:
    features, labels = _toy_concept_data(n=10)
    with pytest.raises(
        ValueError,
        match=r"grid_labels must have shape \(N, h, w\) = \(10, 6, 6\).*got \(10, 5, 6\)",
    ):
        train_concept_classifiers(features, labels[:, :5], [1], progress=False)
    with pytest.raises(
        ValueError, match=r"features must have shape \(N, C, h, w\), got shape \(10, 8, 36\)"
    ):
        train_concept_classifiers(features.flatten(2), labels, [1], progress=False)
    with pytest.raises(ValueError, match=r"concepts \[7\] have no positive cell"):
        train_concept_classifiers(features, labels, [1, 7], progress=False)
    with pytest.raises(ValueError, match=r"integer label ids.*float32"):
        train_concept_classifiers(features, labels.float(), [1], progress=False)
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        train_concept_classifiers(features, labels, [1], epochs=0, progress=False)
    with pytest.raises(ValueError, match=r"concepts must be distinct"):
        train_concept_classifiers(features, labels, [1, 1], progress=False)


# --------------------------------------------------------------------------- heatmaps


def _toy_explainer(seed: int = 0) -> tuple[torch.Tensor, ConceptClassifiers, object]:
    g = torch.Generator().manual_seed(seed)
    clf = random_concept_classifiers(10, 8, g, bias_scale=0.1)
    d = decompose(torch.randn(4, 8, generator=g), clf.concept_vectors(), 5)
    features = torch.rand(3, 8, 4, 4, generator=g)
    return features, clf, d


def test_concept_score_maps_are_centred_linear_scores() -> None:
    features, clf, _ = _toy_explainer()
    scores = concept_score_maps(features, clf)
    assert scores.shape == (3, 10, 4, 4)
    centred = clf.weight - clf.weight.mean(dim=1, keepdim=True)
    expected = torch.einsum("mc,bchw->bmhw", centred, features) + clf.bias[None, :, None, None]
    torch.testing.assert_close(scores, expected)
    with pytest.raises(ValueError, match=r"C=8 channels, got 7"):
        concept_score_maps(features[:, :7], clf)


def test_ibd_heatmaps_share_one_max_and_gate_negative_coefficients() -> None:
    features, clf, d = _toy_explainer()
    # Make the second chosen concept of every class negatively weighted: its map must vanish.
    coefficients = d.coefficients.clone()
    coefficients[:, 1] = -0.5
    d = replace(d, coefficients=coefficients)
    targets = torch.tensor([0, 3, 1])
    maps = ibd_heatmaps(features, clf, d, targets, out_size=(4, 4))  # same size: no resampling
    e = ibd_contributions(features.mean(dim=(2, 3)), d, targets)
    scores = concept_score_maps(features, clf)
    for b in range(3):
        raw = scores[b, e.concepts[b]] * (e.coefficients[b] > 0)[:, None, None]
        expected = raw.clamp_min(0) / raw.clamp_min(0).max()
        torch.testing.assert_close(maps[b], expected)
        assert (
            maps[b].max() == 1.0 and maps[b].min() >= 0
        )  # one max shared by all maps of the image
        negative = (e.coefficients[b] <= 0).nonzero().flatten()
        assert 1 in e.order[b, negative] and (maps[b, negative] == 0).all()
    big = ibd_heatmaps(features, clf, d, targets, out_size=(32, 24))
    assert big.shape == (3, 5, 32, 24)
    torch.testing.assert_close(
        big, F.interpolate(maps, size=(32, 24), mode="bilinear", align_corners=False)
    )


def test_ibd_heatmaps_reject_mismatched_classifiers() -> None:
    features, clf, d = _toy_explainer()
    fewer = ConceptClassifiers(clf.weight[:9], clf.bias[:9], clf.concepts[:9], clf.ap[:9])
    with pytest.raises(
        ValueError, match=r"classifiers has 9 concepts but the decomposition used 10"
    ):
        ibd_heatmaps(features, fewer, d, [0, 1, 2], out_size=(8, 8))


def test_lockstep_sgd_equals_reference_training_step() -> None:
    # Each concept's update must equal nn.Linear + Sigmoid + MSELoss + SGD(lr) on its own
    # minibatches.
    from partslib.ibd.concepts import _lockstep_sgd

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([300, 170])
    x = torch.randn(2, 300, 4, generator=g)
    y = (torch.rand(2, 300, generator=g) > 0.5).float()
    x[1, 170:], y[1, 170:] = 0, 0  # padding
    weight, bias = torch.randn(2, 4, generator=g), torch.randn(2, generator=g)
    expected = []
    for i in range(2):
        layer = torch.nn.Linear(4, 1)
        with torch.no_grad():
            layer.weight.copy_(weight[i][None]), layer.bias.copy_(bias[i][None])
        optimiser = torch.optim.SGD(layer.parameters(), lr=0.5)
        for start in range(0, int(lengths[i]), 128):
            xb, yb = (
                x[i, start : min(start + 128, int(lengths[i]))],
                y[i, start : min(start + 128, int(lengths[i]))],
            )
            loss = torch.nn.MSELoss()(torch.sigmoid(layer(xb)).squeeze(1), yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        expected.append((layer.weight.detach()[0], layer.bias.detach()[0]))
    _lockstep_sgd(x, y, lengths, weight, bias, lr=0.5, batch_size=128)
    for i in range(2):
        torch.testing.assert_close(weight[i], expected[i][0])
        torch.testing.assert_close(bias[i], expected[i][1])


def test_concepts_train_independently() -> None:
    features, labels = _toy_concept_data(n=60)
    together = train_concept_classifiers(features, labels, [0, 2], epochs=3, progress=False)
    alone = train_concept_classifiers(features, labels, [2], epochs=3, progress=False)
    torch.testing.assert_close(alone.weight[0], together.weight[1])
    assert alone.ap[0] == pytest.approx(float(together.ap[1]), abs=1e-6)


def test_top_k_stable_matches_stable_argsort() -> None:
    from partslib.ibd.concepts import _top_k_stable

    scores = torch.randint(
        0, 20, (500,), generator=torch.Generator().manual_seed(0)
    ).float()  # many ties
    for k in (0, 1, 33, 500):
        assert torch.equal(
            _top_k_stable(scores, k), scores.argsort(descending=True, stable=True)[:k]
        )
