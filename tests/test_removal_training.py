"""In-domain removal training: the consistent-class rule, the seeded removal set, the soft loss,
the sufficient-set ground truth and the classifier stage with ``removal_fraction``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partslib import pipeline
from partslib.config import ClassifierConfig
from partslib.data.removal_training import (
    consistent_classes,
    ground_truth,
    removal_option,
    removal_training_set,
    soft_cross_entropy,
    sufficient_matrix,
    sufficient_sets,
)
from partslib.data.split import as_split
from partslib.data.synthparts import SynthParts, SynthPartsConfig
from partslib.training import load_checkpoint

# two classes name the head, one the tail, one both head and body
TABLE = ((("head", "stripes"),), (("head", "dots"),), (("tail", "checker"),),
         (("head", "stripes"), ("body", "dots")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return SynthParts(SynthPartsConfig(size=32), seed=0, n=40,
                      cache_dir=tmp_path_factory.mktemp("data"), progress=False)


def test_removed_signature_part_rules_nothing_out():
    # nothing shown: every class stays consistent
    assert consistent_classes(TABLE, {}).tolist() == [True, True, True, True]
    # head removed, body and tail shown with nuisance patterns: 2 and 3 are ruled out
    shown = {"body": "plain", "tail": "plain"}
    assert consistent_classes(TABLE, shown).tolist() == [True, True, False, False]


def test_signature_part_shown_with_another_pattern_rules_out():
    # head shown with stripes: class 1 (dots head) is ruled out, class 2 does not name the head
    assert consistent_classes(TABLE, {"head": "stripes"}).tolist() == [True, False, True, True]
    # and body shown with stripes rules out class 3, which puts dots there
    shown = {"head": "stripes", "body": "stripes", "tail": "checker"}
    assert consistent_classes(TABLE, shown).tolist() == [True, False, True, False]


def test_same_seed_same_removal_set(data):
    a = removal_training_set(data, 0.5, seed=3)
    b = removal_training_set(data, 0.5, seed=3)
    c = removal_training_set(data, 0.5, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.removed, b.removed) and torch.equal(a.altered, b.altered)
    assert not torch.equal(a.altered, c.altered) or not torch.equal(a.images, c.images)
    assert int(a.altered.sum()) == 20


def test_removal_set_rows(data):
    r = removal_training_set(data, 0.5, seed=0)
    L = data.cfg.num_parts + 1
    n_removed = r.removed.sum(1)
    # altered images lose 1..L-1 labels; intact ones none, keep their pixels and one class
    assert ((n_removed[r.altered] >= 1) & (n_removed[r.altered] <= L - 1)).all()
    assert (n_removed[~r.altered] == 0).all()
    assert torch.equal(r.images[~r.altered], data.images[~r.altered])
    assert torch.equal(r.targets[~r.altered],
                       nn.functional.one_hot(data.labels[~r.altered], data.cfg.num_classes).float())
    assert not torch.equal(r.images[r.altered], data.images[r.altered])
    # rows sum to 1, uniform over the set, the true class always in it
    assert torch.allclose(r.targets.sum(1), torch.ones(len(data)))
    assert (r.targets[torch.arange(len(data)), data.labels] > 0).all()
    nz = r.targets > 0
    assert torch.allclose(r.targets[nz], (1.0 / nz.sum(1, keepdim=True)).expand_as(nz)[nz])
    # an altered image whose true class's signature part is gone may keep others consistent
    assert (nz[r.altered].sum(1) > 1).any()
    # each altered image equals the re-render without its removed labels (no distractors
    # removed when the background is removed)
    i = int(torch.nonzero(r.altered & r.removed[:, 0])[0])
    smp = data.render(i, drop_parts=torch.nonzero(r.removed[i]).flatten().tolist())
    assert torch.equal(r.images[i], torch.from_numpy(smp.image).permute(2, 0, 1))


def test_removal_set_bad_input(data):
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        removal_training_set(data, 1.5)
    with pytest.raises(TypeError, match="a SynthParts split or a Split with part masks"):
        removal_training_set(data.images, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="removal_fraction must be a share"):
        ClassifierConfig(removal_fraction=-0.1)


def test_soft_loss_is_cross_entropy_for_single_class_sets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    labels = torch.randint(0, 5, (8,), generator=g)
    onehot = nn.functional.one_hot(labels, 5).float()
    plain = nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(soft_cross_entropy(logits, onehot), plain, atol=1e-6)
    assert torch.equal(soft_cross_entropy(logits, labels), plain)
    # a two-class set: the mean negative log-probability of its classes
    soft = torch.zeros(1, 5)
    soft[0, [1, 3]] = 0.5
    logp = logits[:1].log_softmax(1)
    assert torch.allclose(soft_cross_entropy(logits[:1], soft), -(logp[0, 1] + logp[0, 3]) / 2)
    with pytest.raises(ValueError, match="soft targets must have the logits' shape"):
        soft_cross_entropy(logits, soft)


def test_sufficient_sets_are_funnybirds_minimal_sets_on_its_table():
    fb = SynthPartsConfig.funnybirds(size=32)
    assert sufficient_sets(fb) == [[tuple(s) for s in sets]
                                   for sets in fb.minimal_sufficient_sets()]
    # default table: stripes-head is singled out by body, tail and wing, not by its head
    d = SynthPartsConfig(size=32)
    assert sufficient_sets(d)[0] == [("body", "tail", "wing")]
    m = sufficient_matrix(d)
    assert m.shape == (6, 6) and not m[:, 0].any() and not m[0, 1]
    assert ground_truth(None) == "decisive" and ground_truth({"fraction": 0.5}) == "sufficient"


def test_train_classifier_with_removal_records_the_option(data, tmp_path):
    val = SynthParts(data.cfg, seed=2, n=16, progress=False)
    tiny = dict(arch="small_resnet", widths=(8, 16, 32), epochs=1, batch_size=16, seed=0)
    _, metrics, _ = pipeline.train_classifier(data, val, val, results_dir=tmp_path,
                                              removal_fraction=0.5, **tiny)
    path = tmp_path / pipeline.CLASSIFIER_CHECKPOINT
    option = removal_option(path)
    assert option is not None and option["fraction"] == 0.5
    assert metrics["removal_fraction"] == 0.5 and metrics["removal_images"] == 20
    assert 1 <= metrics["removal_mean_consistent"] <= data.cfg.num_classes
    # a run without the option does not reuse the checkpoint: it is archived, trained anew
    with pytest.warns(UserWarning, match="removal"):
        _, m0, _ = pipeline.train_classifier(data, val, val, results_dir=tmp_path, **tiny)
    assert m0["epochs_trained"] == 1 and m0["removal_fraction"] == 0.0
    assert removal_option(path) is None
    assert "removal" not in load_checkpoint(path)["config"]["model"]
    # other data than SynthParts is filled instead of re-rendered: it trains, on other images
    split = as_split(val)
    _, m1, _ = pipeline.train_classifier(split, None, split, results_dir=tmp_path / "x",
                                         removal_fraction=0.5, **tiny)
    assert m1["removal_images"] > 0 and m1["removal_mean_consistent"] == 1.0


def test_report_names_the_ground_truth():
    from partslib.report.page import _removal_note

    assert _removal_note({"classifier/removal_fraction": 0.0}) == ""
    note = _removal_note({"classifier/removal_fraction": 0.5,
                          "validity/ground_truth_sufficient": 1.0})
    assert "0.5 of the training images" in note and "sufficient part sets" in note


def test_filled_training_set_fills_with_background(data):
    """Photos: the drawn labels of a share of the images are filled by BackgroundFill, the
    class kept; unaltered images and kept labels' pixels are untouched; seeded."""
    from partslib.data.removal_training import filled_training_set
    from partslib.removal import BackgroundFill

    split = as_split(data)
    r = filled_training_set(split, 0.5, seed=1)
    assert torch.equal(r.images, filled_training_set(split, 0.5, seed=1).images)
    assert int(r.altered.sum()) == round(0.5 * len(split))
    assert torch.equal(r.targets.argmax(1), split.labels) and bool((r.targets.sum(1) == 1).all())
    assert torch.equal(r.images[~r.altered], split.images[~r.altered])
    for i in torch.nonzero(r.altered).flatten()[:5].tolist():
        shown = set(torch.unique(split.masks[i]).tolist())
        gone = set(torch.nonzero(r.removed[i]).flatten().tolist())
        assert gone and gone < shown  # at least one shown label removed, at least one kept
        kept = ~r.removed[i][split.masks[i].long()]
        assert torch.equal(r.images[i][:, kept], split.images[i][:, kept])
        x = split.images[i:i + 1].float() / 255
        want = BackgroundFill()(x, split.masks[i:i + 1].long(), r.removed[i:i + 1])
        assert torch.equal(r.images[i], (want[0] * 255).round().clamp(0, 255).to(torch.uint8))
