"""Part Shapley values (partslib.explain.shapley) and the BackgroundFill operator.

* Exact values against games whose Shapley values are known by hand: an additive game
  (φ = its terms), a pure pairwise interaction (split equally; interaction index = the term),
  a unanimity game of three players and a small 3-player table worked out on paper.
* Efficiency ``Σ φ = v(all) − v(∅)`` on a toy classifier with a real imputer; absent labels 0;
  ``single`` = ``v(all) − v(all ∖ p)``.
* The sampled estimator (antithetic permutations) against the exact values of a random
  non-additive game, in units of its own standard error; efficient, seeded, RNG untouched.
* Captum's exact ``ShapleyValues`` with the explainer's argmax map as ``feature_mask`` gives
  the same values as :class:`ShapleyRule` with the same constant fill.
* :class:`BackgroundFill`: flat grey without any label, fills from kept background only.
"""

from __future__ import annotations

import math

import pytest
import torch

from partslib.explain import FixedMapsSegmenter, PartExplainer
from partslib.explain.amortised_training import baseline_logits
from partslib.explain.registry import get_method
from partslib.explain.shapley import ShapleyRule, part_shapley, removal_game
from partslib.removal import IGNORE_INDEX, BackgroundFill, MeanFill

from toys import random_images, small_classifier, small_pdm

SIZE = 32


# --------------------------------------------------------------------------- known games


def _game(present: torch.Tensor, value):
    """A game ``v(kept [M, L] float) -> [M, K]`` over each image's present labels, counting
    every row it is asked for (``calls``)."""
    calls: list[int] = []

    def game(rows: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        calls.append(len(rows))
        kept = (present[rows] & ~drop).double()
        return value(rows, kept)

    return game, calls


def _full(game, present: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(present))
    return game(rows, torch.zeros_like(present))


def test_additive_game_gives_its_terms_and_absent_labels_zero():
    g = torch.Generator().manual_seed(0)
    B, L, K = 3, 6, 4
    present = torch.rand(B, L, generator=g) > 0.3
    present[0] = torch.tensor([True, False, True, True, False, True])
    a = torch.randn(B, L, K, generator=g, dtype=torch.float64)
    c = torch.randn(B, K, generator=g, dtype=torch.float64)
    game, _ = _game(present, lambda r, kept: c[r] + torch.einsum("ml,mlk->mk", kept, a[r]))
    sv = part_shapley(game, present, _full(game, present), interactions=True)
    expected = torch.where(present[..., None], a, torch.zeros(()))
    torch.testing.assert_close(sv.values, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(sv.empty, c, atol=1e-12, rtol=0)
    # additive: no interaction, and removing one part loses exactly its term
    torch.testing.assert_close(sv.single, expected, atol=1e-12, rtol=0)
    assert sv.interactions is not None
    for b in range(B):
        pl = torch.nonzero(present[b]).flatten()
        off = ~torch.eye(len(pl), dtype=torch.bool)
        assert sv.interactions[b][pl[:, None], pl[None, :]][off].abs().max() < 1e-12
    assert bool(sv.exact.all()) and float(sv.stderr.abs().max()) == 0.0


def test_pairwise_interaction_is_split_equally_and_is_the_interaction_index():
    B, L, K = 2, 5, 3
    present = torch.ones(B, L, dtype=torch.bool)
    present[1, 4] = False  # image 1 has 4 players
    inter = torch.tensor([[2.0, -1.0, 0.5], [3.0, 0.0, -4.0]], dtype=torch.float64)
    p, q = 1, 3
    game, _ = _game(present, lambda r, kept: inter[r] * (kept[:, p] * kept[:, q])[:, None])
    sv = part_shapley(game, present, _full(game, present), interactions=True)
    expected = torch.zeros(B, L, K, dtype=torch.float64)
    expected[:, p] = expected[:, q] = inter / 2
    torch.testing.assert_close(sv.values, expected, atol=1e-12, rtol=0)
    assert sv.interactions is not None
    torch.testing.assert_close(sv.interactions[:, p, q], inter, atol=1e-12, rtol=0)
    torch.testing.assert_close(sv.interactions[:, q, p], inter, atol=1e-12, rtol=0)
    others = [(0, 1), (0, 2), (1, 2), (2, 3), (0, 3)]
    for i, j in others:
        assert sv.interactions[:, i, j].abs().max() < 1e-12
    assert bool(sv.interactions[:, p, p].isnan().all())  # no self-interaction
    # one of the two removed: the whole interaction is lost
    torch.testing.assert_close(sv.single[:, p], inter, atol=1e-12, rtol=0)


def test_unanimity_game_of_three_players():
    """u_T(S) = 1 if T ⊆ S: φ = 1/|T| on T, and the pair interaction index is 1/(|T|-1)."""
    present = torch.ones(1, 5, dtype=torch.bool)
    T = [0, 2, 4]
    game, _ = _game(present, lambda r, kept: kept[:, T].prod(1, keepdim=True))
    sv = part_shapley(game, present, _full(game, present), interactions=True)
    expected = torch.tensor([1 / 3, 0, 1 / 3, 0, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(sv.values[0, :, 0], expected, atol=1e-12, rtol=0)
    assert sv.interactions is not None
    for i in T:
        for j in T:
            if i != j:
                assert sv.interactions[0, i, j, 0].item() == pytest.approx(0.5, abs=1e-12)


# v of the coalitions of players (a, b, c): worked out by hand in the test below
TABLE = {(): 0.0, ("a",): 1.0, ("b",): 2.0, ("c",): 0.0, ("a", "b"): 4.0, ("a", "c"): 3.0,
         ("b", "c"): 2.0, ("a", "b", "c"): 6.0}


def test_a_three_player_game_computed_by_hand():
    """Players a, b, c at labels 1, 3, 4 of 5 (labels 0 and 2 absent). With the Shapley
    weights 1/3, 1/6, 1/6, 1/3 of the marginals into ∅, the two pairs and the pair's
    complement: φ_a = 1/3·1 + 1/6·2 + 1/6·3 + 1/3·4 = 2.5, φ_b = 1/3·2 + 1/6·3 + 1/6·2 +
    1/3·3 = 2.5, φ_c = 0 + 1/6·2 + 0 + 1/3·2 = 1 (sum 6 = v(abc) − v(∅)). Interaction indices
    (weights 1/2, 1/2 over S ⊆ the third player): I_ab = ½(4−1−2+0) + ½(6−3−2+0) = 1,
    I_ac = ½(3−1−0+0) + ½(6−4−2+2) = 2, I_bc = ½(2−2−0+0) + ½(6−4−3+1) = 0."""
    where = {"a": 1, "b": 3, "c": 4}
    present = torch.zeros(1, 5, dtype=torch.bool)
    present[0, list(where.values())] = True

    def value(rows, kept):
        out = [TABLE[tuple(n for n in "abc" if kept[m, where[n]] > 0)] for m in range(len(rows))]
        return torch.tensor(out, dtype=torch.float64)[:, None]

    game, calls = _game(present, value)
    assert _full(game, present).item() == 6.0
    calls.clear()
    sv = part_shapley(game, present, torch.tensor([[6.0]]), interactions=True)
    assert sum(calls) == 7 == int(sv.evaluations[0])  # 2^3 coalitions, the grand one not rescored
    phi = sv.values[0, :, 0]
    assert phi.tolist() == pytest.approx([0.0, 2.5, 0.0, 2.5, 1.0], abs=1e-12)
    assert sv.interactions is not None
    inter = sv.interactions[0, :, :, 0]
    pairs = (inter[1, 3].item(), inter[1, 4].item(), inter[3, 4].item())
    assert pairs == pytest.approx((1.0, 2.0, 0.0), abs=1e-12)
    # single removal: v(abc) − v(abc ∖ p) = 6 − 2, 6 − 3, 6 − 4
    assert sv.single[0, :, 0].tolist() == pytest.approx([0.0, 4.0, 0.0, 3.0, 2.0], abs=1e-12)
    assert float(sv.efficiency_error()[0]) < 1e-12


# --------------------------------------------------------------------------- classifier games


@pytest.fixture(scope="module")
def toy():
    """A random SmallResNet, a random PDM whose argmax map holds all 5 labels on these
    images, and block label maps with a missing label per image."""
    clf = small_classifier(num_classes=3, widths=(8, 16, 16), size=SIZE)
    pdm = small_pdm(clf, 5, seed=3)
    x = random_images(3, SIZE, seed=2)
    maps = torch.zeros(3, SIZE, SIZE, dtype=torch.long)
    maps[:, 2:14, 3:20] = 1
    maps[:, 16:30, 8:28] = 2
    maps[:, 4:10, 24:31] = 3
    maps[1, 4:10, 24:31] = 0  # label 3 absent from image 1
    maps[2, 28:, :6] = 4  # label 4 only in image 2
    return clf, pdm, x, maps


def test_efficiency_on_a_classifier_with_background_fill(toy):
    clf, _, x, maps = toy
    L = 5
    present = torch.stack([(maps == p).flatten(1).any(1) for p in range(L)], 1)
    with torch.no_grad():
        full = clf(x)
        game = removal_game(clf, x, maps, BackgroundFill())
        sv = part_shapley(game, present, full, interactions=True)
    assert float(sv.efficiency_error().max()) <= 1e-5
    torch.testing.assert_close(sv.values.sum(1), (full.double() - sv.empty), atol=1e-5, rtol=0)
    assert bool((sv.values[~present] == 0).all()) and bool((sv.single[~present] == 0).all())
    # every label removed: the flat grey image, whatever the photo
    grey = baseline_logits(clf, (SIZE, SIZE)).double()
    torch.testing.assert_close(sv.empty, grey.expand(3, -1), atol=1e-5, rtol=1e-5)
    # single: the logits with one label removed, scored directly
    with torch.no_grad():
        for p in range(L):
            drop = torch.zeros(3, L, dtype=torch.bool)
            drop[:, p] = True
            effect = full - clf(BackgroundFill()(x, maps, drop))
            effect = torch.where(present[:, p:p + 1], effect, 0.0)
            torch.testing.assert_close(sv.single[:, p].float(), effect, atol=1e-5, rtol=1e-5)


def test_shapley_rule_is_complete_for_the_class_and_the_margin(toy):
    clf, pdm, x, _ = toy
    ex = PartExplainer(clf, pdm, rule=ShapleyRule(MeanFill((0.5, 0.5, 0.5))))
    for contrastive in (False, True):
        e = ex(x, contrastive=contrastive)
        assert e.units == ("margin" if contrastive else "logit")
        torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-5,
                                   rtol=1e-5)
        assert bool((e.contributions[~e.present] == 0).all())
    # the registry's pdm-shapley: background fill, bias f(grey)_k
    e = get_method("pdm-shapley").build(clf, pdm=pdm)(x)
    assert e.mode == "pdm-shapley"
    grey = baseline_logits(clf, (SIZE, SIZE))
    torch.testing.assert_close(e.bias, grey[e.target], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-5, rtol=1e-5)


def test_shapley_rule_equals_captums_exact_shapley_values(toy):
    """Captum's ShapleyValues (all 5! orders of the 5 labels) with the explainer's argmax map
    broadcast over channels as feature_mask and the fill colour as baseline, for the class
    explained: the same values as ShapleyRule(MeanFill((c, c, c)))."""
    from captum.attr import ShapleyValues

    clf, pdm, x, _ = toy
    c = 0.3
    ex = PartExplainer(clf, pdm, rule=ShapleyRule(MeanFill((c, c, c))))
    e = ex(x)
    assert int(e.present.sum(1).min()) == 5  # every label is a player of every image
    mask = e.labels[:, None].expand(-1, 3, -1, -1).contiguous()
    attr = ShapleyValues(clf).attribute(x, baselines=c, target=e.target, feature_mask=mask)
    # Captum gives every pixel of a feature the feature's value: read it once per label
    per_label = torch.stack([torch.stack([attr[b, 0][e.labels[b] == p][0] for p in range(5)])
                             for b in range(len(x))])
    torch.testing.assert_close(e.contributions, per_label, atol=1e-5, rtol=0)
    with torch.no_grad():
        f_c = clf(torch.full_like(x, c))[torch.arange(3), e.target]
    torch.testing.assert_close(e.bias, f_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-5, rtol=1e-5)


def test_fixed_maps_absent_labels_get_zero_through_the_rule(toy):
    clf, _, x, maps = toy
    e = PartExplainer(clf, FixedMapsSegmenter(maps, 5), rule=ShapleyRule(BackgroundFill()))(x)
    assert e.contributions[1, 3] == 0 and e.contributions[0, 4] == 0
    assert e.contributions[2, 4] != 0
    torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- sampled estimator


def _random_game(B: int, L: int, K: int, seed: int):
    """Additive terms, pair interactions, a saturating term and a threshold term. (Antithetic
    pairs of orders estimate additive and pairwise games exactly: the last two terms are what
    the sampling has to get right.)"""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, L, K, generator=g, dtype=torch.float64)
    pair = torch.randn(B, L, L, K, generator=g, dtype=torch.float64)
    pair = pair * torch.ones(L, L, dtype=torch.float64).triu(1)[None, :, :, None]
    w = torch.randn(B, L, K, generator=g, dtype=torch.float64)
    thr = torch.randn(B, K, generator=g, dtype=torch.float64) * 2

    def value(rows, kept):
        v = torch.einsum("ml,mlk->mk", kept, a[rows])
        v = v + torch.einsum("ml,mn,mlnk->mk", kept, kept, pair[rows])
        v = v + 3 * torch.tanh(torch.einsum("ml,mlk->mk", kept, w[rows]))
        return v + thr[rows] * (kept.sum(1, keepdim=True) >= 4)

    return value


def test_sampled_estimator_is_close_to_exact_efficient_and_seeded():
    B, L, K = 3, 7, 2
    present = torch.ones(B, L, dtype=torch.bool)
    present[2, 4:] = False  # image 2: 4 players, enumerated even with max_exact=4
    game, calls = _game(present, _random_game(B, L, K, seed=5))
    full = _full(game, present)
    exact = part_shapley(game, present, full, max_exact=8)
    state = torch.get_rng_state()
    calls.clear()
    sv = part_shapley(game, present, full, max_exact=4, n_permutations=200, seed=7,
                      interactions=True)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert sv.exact.tolist() == [False, False, True]
    # images 0, 1: 200 orders × 7 players scored (each order's grand coalition is the image);
    # image 2: 2^4 − 1
    assert sum(calls) == 2 * 200 * 7 + 15
    # efficient: every order telescopes to v(all) − v(∅)
    assert float(sv.efficiency_error().max()) < 1e-9
    # stderr reported on the sampled images' players, 0 on the exact one
    assert bool((sv.stderr[:2] > 0).all()) and float(sv.stderr[2].abs().max()) == 0
    torch.testing.assert_close(sv.values[2], exact.values[2], atol=1e-12, rtol=0)
    assert bool(sv.single[:2].isnan().all())
    assert sv.interactions is not None and bool(sv.interactions[:2].isnan().all())
    # unbiased: within a few of its standard errors of the exact values, and the standard
    # errors are of the right size (mean squared z-score near 1)
    z = (sv.values[:2] - exact.values[:2]) / sv.stderr[:2]
    assert float(z.abs().max()) < 4.0, z
    assert 0.3 < float((z ** 2).mean()) < 3.0
    # the error shrinks with more orders
    more = part_shapley(game, present, full, max_exact=4, n_permutations=2000, seed=7)
    err = lambda s: float((s.values[:2] - exact.values[:2]).abs().mean())  # noqa: E731
    assert err(more) < err(sv)
    assert float(more.stderr[:2].mean()) < float(sv.stderr[:2].mean()) / 2
    # seeded: the same seed gives the same values, another seed others
    again = part_shapley(game, present, full, max_exact=4, n_permutations=200, seed=7)
    assert torch.equal(again.values, sv.values) and torch.equal(again.stderr, sv.stderr)
    other = part_shapley(game, present, full, max_exact=4, n_permutations=200, seed=8)
    assert not torch.equal(other.values[:2], sv.values[:2])


def test_evaluations_count_the_classifier_passes():
    B, L, K = 2, 6, 1
    present = torch.ones(B, L, dtype=torch.bool)
    present[1, 3:] = False
    game, calls = _game(present, _random_game(B, L, K, seed=1))
    full = _full(game, present)
    calls.clear()
    sv = part_shapley(game, present, full, max_exact=3, n_permutations=10, batch_size=7)
    assert max(calls) <= 7  # batched as asked
    assert sv.evaluations.tolist() == [10 * 6, 2 ** 3 - 1]
    assert int(sv.evaluations.sum()) == sum(calls)


def test_bad_arguments_are_refused():
    present = torch.ones(1, 3, dtype=torch.bool)
    game, _ = _game(present, lambda r, kept: kept.sum(1, keepdim=True))
    full = torch.ones(1, 1)
    with pytest.raises(ValueError, match="present must be bool"):
        part_shapley(game, present.long(), full)
    with pytest.raises(ValueError, match="present must be bool"):
        part_shapley(game, present[0], full)
    with pytest.raises(ValueError, match="max_exact"):
        part_shapley(game, present, full, max_exact=0)
    with pytest.raises(ValueError, match="max_exact"):
        part_shapley(game, present, full, max_exact=17)
    with pytest.raises(ValueError, match="n_permutations"):
        part_shapley(game, present, full, max_exact=1, n_permutations=1)


def test_no_players_and_one_player():
    present = torch.tensor([[False, False, False], [False, True, False]])
    game, _ = _game(present, lambda r, kept: 2.0 * kept[:, 1:2] + 1.0)
    sv = part_shapley(game, present, _full(game, present), max_exact=1, n_permutations=2)
    assert sv.values[:, :, 0].tolist() == [[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    assert bool(sv.exact.all()) and sv.evaluations.tolist() == [0, 1]


# --------------------------------------------------------------------------- BackgroundFill


def _scene(size: int = 24):
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, size, size, generator=g)
    labels = torch.zeros(2, size, size, dtype=torch.long)
    labels[:, 4:12, 4:14] = 1
    labels[:, 14:20, 6:20] = 2
    labels[1, 2:4, 16:22] = 3
    return images, labels


def test_background_fill_without_any_label_is_flat_grey():
    images, labels = _scene()
    op = BackgroundFill(grey=0.4)
    out = op(images, labels, torch.ones(2, 4, dtype=torch.bool))
    assert bool((out == 0.4).all())
    out2 = op(torch.rand_like(images), labels, torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(out, out2)  # the same grey whatever the photo


def test_background_fill_takes_only_kept_background_colours():
    images, labels = _scene()
    original = images.clone()
    # background: a textured dark green; part 1: pure red; part 2 is removed
    bg = torch.stack([0.1 * images[:, 0], 0.2 + 0.1 * images[:, 1], 0.1 * images[:, 2]], 1)
    x = torch.where((labels == 0)[:, None], bg, images)
    x[:, 0] = torch.where(labels == 1, 1.0, x[:, 0])
    drop = torch.tensor([[False, False, True, False]] * 2)
    out = BackgroundFill()(x, labels, drop)
    removed = (labels == 2)[:, None].expand_as(x)
    kept = ~removed
    assert torch.equal(out[kept], x[kept])  # kept parts and the background unchanged
    fill = out.permute(0, 2, 3, 1)[labels == 2]  # [n, 3]
    lo = bg.permute(0, 2, 3, 1)[labels == 0].amin(0)
    hi = bg.permute(0, 2, 3, 1)[labels == 0].amax(0)
    assert bool((fill >= lo - 1e-6).all() & (fill <= hi + 1e-6).all())  # no red leaks in
    # a constant background is reproduced exactly
    flat = torch.where((labels == 0)[:, None], torch.tensor([0.2, 0.5, 0.7])[None, :, None, None],
                       x)
    out = BackgroundFill()(flat, labels, drop)
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[labels == 2],
                               torch.tensor([0.2, 0.5, 0.7]).expand(int((labels == 2).sum()), 3))
    assert torch.equal(images, original)


def test_background_fill_removing_the_background_makes_it_grey():
    images, labels = _scene()
    original, lab0 = images.clone(), labels.clone()
    drop = torch.tensor([[True, False, True, False], [True, False, False, False]])
    out = BackgroundFill(grey=0.5)(images, labels, drop)
    removed = (labels == 0) | ((labels == 2) & drop[:, 2][:, None, None])
    assert bool((out.permute(0, 2, 3, 1)[removed] == 0.5).all())  # no background to fill from
    assert torch.equal(out.permute(0, 2, 3, 1)[~removed], images.permute(0, 2, 3, 1)[~removed])
    assert torch.equal(images, original) and torch.equal(labels, lab0)  # inputs untouched
    same = BackgroundFill()(images, labels, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.equal(same, images) and same is not images


def test_background_fill_keeps_ignored_pixels_and_reaches_far_pixels():
    images, labels = _scene()
    labels[:, 0, 0] = IGNORE_INDEX
    out = BackgroundFill()(images, labels, torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(out[:, :, 0, 0], images[:, :, 0, 0])
    # a window too small to reach the background: the mean of the kept background
    lab = torch.ones(1, 24, 24, dtype=torch.long)
    lab[0, :2, :2] = 0
    img = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    out = BackgroundFill(sigmas=(0.5,))(img, lab, torch.tensor([[False, True]]))
    mean = img[0, :, :2, :2].mean((1, 2))
    torch.testing.assert_close(out[0, :, 20, 20], mean)


def test_background_fill_refuses_bad_arguments():
    images, labels = _scene()
    with pytest.raises(ValueError, match="grey must be in"):
        BackgroundFill(grey=1.5)
    with pytest.raises(ValueError, match="sigmas"):
        BackgroundFill(sigmas=())
    with pytest.raises(ValueError, match="sigmas"):
        BackgroundFill(sigmas=(2.0, -1.0))
    with pytest.raises(ValueError, match="labels must have shape"):
        BackgroundFill()(images, labels[:, :10], torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="drop must be a bool"):
        BackgroundFill()(images, labels, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="outside 0..2"):
        BackgroundFill()(images, labels, torch.zeros(2, 3, dtype=torch.bool))
    assert math.isclose(BackgroundFill().grey, 128 / 255)
