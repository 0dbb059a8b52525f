import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from partslib.explain import PartExplainer, resolve_targets, segment_parts
from partslib.pdm import PartsDetectionModule, train_pdm
from partslib.removal import GaussianBlurFill, MeanFill

from toys import random_images, small_classifier, small_pdm

P1 = 4  # background + 3 parts
NAMES = ["background", "a", "b", "c"]


@pytest.fixture(scope="module")
def models():
    clf = small_classifier()
    return clf, small_pdm(clf, P1, widths=(16, 8))


@pytest.fixture(scope="module")
def images():
    return random_images(6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 8), c=st.integers(1, 16),
       hard=st.booleans(), scale=st.floats(0.01, 100.0))
def test_completeness_property(seed, h, c, hard, scale):
    """b + sum_p c_p == logit for random features, weights and part maps (region mode)."""
    from partslib.explain import region_contributions

    g = torch.Generator().manual_seed(seed)
    B, K, L, H = 3, 4, 5, 8 * h
    A = torch.randn(B, c, h, h, generator=g).relu() * scale
    W, b = torch.randn(K, c, generator=g), torch.randn(K, generator=g)
    probs = torch.randn(B, L, H, H, generator=g).softmax(1)
    k = torch.randint(0, K, (B,), generator=g)
    contrib, _ = region_contributions(A, W[k], probs, hard=hard)
    logit = A.mean((2, 3)) @ W.T + b
    lhs = b[k] + contrib.sum(1)
    rel = (lhs - logit[torch.arange(B), k]).abs() / (b[k].abs() + contrib.abs().sum(1))
    assert rel.max() <= 1e-5


def test_region_explanation_is_complete_and_logits_untouched(models, images):
    clf, pdm = models
    e = PartExplainer(clf, pdm, NAMES)(images)
    assert torch.equal(e.logits, clf(images))  # bit-identical with and without the PDM
    assert torch.equal(e.target, clf(images).argmax(1))
    assert e.completeness_error().max() <= 1e-5
    assert torch.allclose(e.part_probs.sum(1), torch.ones(6, 64, 64), atol=1e-5)
    assert torch.allclose(e.shares.abs().sum(1), torch.ones(6))
    df = e.to_dataframe()
    assert len(df) == 6 * P1 and set(df.part) == set(NAMES)
    assert {"contribution", "share", "area", "rank", "score", "bias", "mode"} <= set(df.columns)
    # row (image b, part p) holds the tensors' [b, p] entries
    for b, p in [(0, 0), (2, 3), (5, P1 - 1)]:
        row = df[(df.image == b) & (df.part == NAMES[p])].iloc[0]
        assert row.contribution == pytest.approx(float(e.contributions[b, p]))
        assert row.share == pytest.approx(float(e.shares[b, p]))
        assert row.area == pytest.approx(float(e.area[b, p]))
        assert row["rank"] == int(e.ranking[b, p]) and row.score == pytest.approx(float(e.score[b]))
        assert row.target == int(e.target[b])
    assert list(df.image[:P1]) == [0] * P1 and list(df.part[:P1]) == list(NAMES)


@pytest.mark.parametrize("kwargs", [
    {"mode": "region"}, {"mode": "region", "hard": True}, {"mode": "region", "contrastive": True},
    {"mode": "occlusion", "imputer": MeanFill()},
    {"mode": "occlusion", "imputer": GaussianBlurFill(), "contrastive": True},
])
def test_batch_equals_image_by_image(models, images, kwargs):
    clf, pdm = models
    ex = PartExplainer(clf, pdm, NAMES)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    batch = ex(images, target=target, **kwargs)
    for i in range(len(images)):
        one = ex(images[i:i + 1], target=target[i:i + 1], **kwargs)
        assert torch.allclose(one.contributions, batch.contributions[i:i + 1], atol=1e-5)
        assert torch.equal(one.labels, batch.labels[i:i + 1])
        assert one.mode == batch.mode
    # and chunked internally
    assert torch.allclose(ex(images, target=target, batch_size=4, **kwargs).contributions,
                          batch.contributions, atol=1e-5)


def test_contrastive_explains_margin(models, images):
    clf, pdm = models
    e = PartExplainer(clf, pdm, NAMES)(images, contrastive=True)
    logits = clf(images)
    top2 = logits.topk(2, dim=1)
    assert torch.equal(e.contrast, top2.indices[:, 1])
    assert torch.allclose(e.score, top2.values[:, 0] - top2.values[:, 1])
    assert e.completeness_error().max() <= 1e-5


def test_occlusion_equals_measured_drop(models, images):
    clf, pdm = models
    imputer = MeanFill()
    e = PartExplainer(clf, pdm, NAMES)(images[:2], mode="occlusion", imputer=imputer)
    for p in range(P1):
        if not e.present[0, p]:
            assert e.contributions[0, p] == 0
            continue
        drop = torch.zeros(1, P1, dtype=torch.bool)
        drop[0, p] = True
        x = imputer(images[:1], e.labels[:1], drop)
        expect = e.score[0] - clf(x)[0, e.target[0]]
        assert torch.allclose(e.contributions[0, p], expect, atol=1e-5)
    assert e.completeness_error().isnan().all()


@pytest.mark.parametrize("x, match", [
    (torch.rand(2, 3, 32, 32), "must be 64x64"),
    (torch.rand(2, 1, 64, 64), "grayscale"),
    (torch.rand(2, 4, 64, 64), "RGBA"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
])
def test_bad_input_gives_clear_error(models, x, match):
    clf, pdm = models
    with pytest.raises(ValueError, match=match):
        PartExplainer(clf, pdm, NAMES)(x)


def test_bad_targets_and_modes(models, images):
    clf, pdm = models
    ex = PartExplainer(clf, pdm, NAMES)
    with pytest.raises(ValueError, match="unknown target class 9"):
        ex(images, target=9)
    with pytest.raises(ValueError, match="one target per image"):
        ex(images, target=[0, 1])
    with pytest.raises(ValueError, match="mode"):
        ex(images, mode="shapley")
    with pytest.raises(ValueError, match="part_names"):
        PartExplainer(clf, pdm, ["background", "a"])
    assert resolve_targets(None, torch.tensor([[0.0, 2.0], [3.0, 1.0]])).tolist() == [1, 0]


def test_pdm_training_leaves_classifier_untouched():
    clf = small_classifier(num_classes=3)
    torch.manual_seed(0)  # train_pdm initialises its PDM from the global RNG
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    masks = torch.randint(0, P1, (16, 64, 64))
    masks[:, :4] = 255  # ignored pixels
    logits = clf(x.float() / 255)
    _, hist = train_pdm(clf, x, masks, P1, epochs=2, batch_size=8, progress=False,
                        widths=[8, 8], image_width=4)
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist)
    for k, v in clf.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not clf.training
    assert torch.equal(clf(x.float() / 255), logits)
    assert all(p.grad is None for p in clf.parameters())


def test_pdm_rejects_bad_contract():
    with pytest.raises(ValueError, match="factor 2"):
        PartsDetectionModule({"a": 8, "b": 16}, {"a": 2, "b": 8}, 3)
    with pytest.raises(ValueError, match="not in the classifier's contract"):
        PartsDetectionModule({"a": 8}, {"a": 2}, 3, stages=["a", "z"])
    with pytest.raises(ValueError, match="num_labels"):
        PartsDetectionModule({"a": 8}, {"a": 2}, 1)


def test_fused_pdm_matches_and_leaves_original(models, images):
    import copy

    clf, pdm = models
    pdm = copy.deepcopy(pdm)
    # give BatchNorm non-trivial statistics so folding is exercised
    for m in pdm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    fused = pdm.fused()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in pdm.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        feats = clf.features(images)
        a, b = segment_parts(pdm, clf, feats, images), segment_parts(fused, clf, feats, images)
    assert torch.allclose(a, b, atol=1e-4)


def test_part_class_table_averages_correct_images_per_target(models, images):
    from partslib.explain import part_class_table

    clf, pdm = models
    e = PartExplainer(clf, pdm, NAMES)(images, target=torch.tensor([0, 1, 1, 2, 2, 2]))
    correct = torch.tensor([True, True, False, True, True, False])
    classes = [f"c{k}" for k in range(clf.num_classes)]
    df, table = part_class_table(e, classes, correct)
    assert list(df.correct[::P1]) == correct.tolist()
    assert list(table.index) == list(NAMES) and list(table.columns) == classes
    assert table.loc[NAMES[1], "c2"] == pytest.approx(float(e.contributions[[3, 4], 1].mean()))
    assert table.loc[NAMES[0], "c1"] == pytest.approx(float(e.contributions[1, 0]))
    assert table["c3"].isna().all()  # no image explained for class 3
    with pytest.raises(ValueError, match="5 entries for 6 images"):
        part_class_table(e, classes, correct[:5])
