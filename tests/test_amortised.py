"""The amortised contribution rule (partslib.explain.amortised and amortised_training).

* :class:`ContributionHead` is complete by construction whatever its weights:
  ``Σ_p φ_p = logits − baseline`` over the present labels, 0 for absent ones; through
  :class:`AmortisedRule` the class score and the contrastive margin are complete too.
* :func:`fit_head` learns a target that is a simple function of its inputs, deterministically
  for a seed; :func:`rank_agreement` is scipy's per-image Spearman correlation, averaged.
* :func:`train_head` on a tiny SynthParts split writes a checkpoint that :func:`load_head`
  reads back identically; the same settings load it, other settings move it aside.
* A head for another number of labels or classes is refused with a clear error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from partslib.explain import PartExplainer
from partslib.explain import amortised_training as at
from partslib.explain.amortised import GREY, AmortisedRule, ContributionHead
from partslib.explain.amortised_training import (
    HeadData,
    baseline_logits,
    fit_head,
    load_head,
    rank_agreement,
    train_head,
)
from partslib.explain.registry import get_method
from partslib.training import load_checkpoint

from toys import random_images, small_classifier, small_pdm

SIZE = 32


def _random_head(C: int, L: int, K: int, seed: int, hidden: int = 16,
                 stages: tuple[str, ...] = ()) -> ContributionHead:
    """A head with seeded random weights, baseline and input normalisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = ContributionHead(C, L, K, hidden=hidden, baseline=torch.randn(K, generator=g),
                                stages=stages)
    d = head.in_mean.numel()
    head.in_mean.copy_(torch.randn(d, generator=g))
    head.in_std.copy_(torch.rand(d, generator=g) + 0.2)
    return head.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_is_complete_by_construction_for_random_weights(seed):
    B, L, K, C = 16, 6, 5, 7
    head = _random_head(C, L, K, seed)
    g = torch.Generator().manual_seed(100 + seed)
    inputs = torch.randn(B, L, C + 1 + K + L, generator=g) * 3
    present = torch.rand(B, L, generator=g) > 0.4
    present[:, 0] = True  # at least one player per image
    present[0] = True
    present[1, 1:] = False  # a single player takes the whole gap
    logits = torch.randn(B, K, generator=g) * 5
    with torch.no_grad():
        phi = head(inputs, present, logits)
    assert phi.shape == (B, L, K)
    torch.testing.assert_close(phi.sum(1), logits - head.baseline, atol=1e-5, rtol=1e-5)
    assert bool((phi[~present] == 0).all())  # absent labels exactly 0
    torch.testing.assert_close(phi[1, 0], logits[1] - head.baseline, atol=1e-5, rtol=1e-5)
    # the values depend on the inputs, not only on the gap
    with torch.no_grad():
        other = head(inputs.flip(1), present, logits)
    assert not torch.allclose(other, phi)


@pytest.fixture(scope="module")
def toy():
    clf = small_classifier(num_classes=4, widths=(8, 16, 16), size=SIZE)
    pdm = small_pdm(clf, 5, seed=3)  # all 5 labels in the argmax maps of these images
    return clf, pdm, random_images(6, SIZE, seed=2)


@pytest.mark.parametrize("stages", [(), ("layer2",)])
def test_amortised_rule_is_complete_for_the_class_and_the_margin(toy, stages):
    clf, pdm, x = toy
    C = clf.fc.in_features + sum(clf.stage_channels[s] for s in stages)
    head = _random_head(C, 5, 4, seed=4, stages=stages)
    ex = get_method("pdm-amortised").build(clf, pdm=pdm, head=head)
    for contrastive in (False, True):
        e = ex(x, contrastive=contrastive)
        assert e.mode == ("pdm-amortised" if not contrastive else "pdm-amortised-contrastive")
        torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-5,
                                   rtol=1e-5)
        # the bias is the explained classifier's score of the flat grey image (the game's
        # empty coalition), whatever baseline the head was built with
        with torch.no_grad():
            grey = clf(torch.full((1, 3, SIZE, SIZE), GREY))[0]
        base = grey[e.target]
        if contrastive:
            assert e.contrast is not None
            base = base - grey[e.contrast]
        torch.testing.assert_close(e.bias, base)
        assert bool((e.contributions[~e.present] == 0).all())
    with pytest.raises(ValueError, match="trained contribution head"):
        get_method("pdm-amortised").build(clf, pdm=pdm)


def test_a_head_for_other_labels_or_classes_is_refused(toy):
    clf, pdm, x = toy
    C = clf.fc.in_features
    for L, K, what in ((4, 4, "explains 4 labels and 4 classes"),
                       (5, 3, "explains 5 labels and 3 classes")):
        ex = PartExplainer(clf, pdm, rule=AmortisedRule(_random_head(C, L, K, seed=0)))
        with pytest.raises(ValueError, match=f"{what}; the explainer has 5 labels and 4 "
                                             f"classes"):
            ex(x)
    with pytest.raises(TypeError, match="ContributionHead"):
        AmortisedRule(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fitting


def _synthetic(n: int, seed: int, L: int = 5, K: int = 3, C: int = 4
               ) -> tuple[HeadData, torch.Tensor, torch.Tensor]:
    """Head inputs and targets ``φ[n, l, k] = x[n, l, 0]·u_k + x[n, l, 1]²·v_k`` (0 for absent
    labels), logits = baseline + Σ_l φ so that the targets are efficient like Shapley values."""
    g = torch.Generator().manual_seed(seed)
    D = C + 1 + K + L
    inputs = torch.randn(n, L, D, generator=g)
    inputs[..., -L:] = torch.eye(L)  # the label's identity, as head_inputs writes it
    present = torch.rand(n, L, generator=g) > 0.25
    present[:, 0] = True
    u, v = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.5, 1.0, -1.0])
    phi = inputs[..., :1] * u + inputs[..., 1:2] ** 2 * v
    phi = phi * present[..., None]
    baseline = torch.tensor([0.3, -0.2, 0.1])
    logits = baseline + phi.sum(1)
    labels = torch.randint(0, K, (n,), generator=g)
    return HeadData(inputs, present, logits, labels), phi, baseline


def test_fit_head_learns_a_simple_target_deterministically():
    train, y, base = _synthetic(512, seed=0)
    val, y_val, _ = _synthetic(128, seed=1)
    kw = dict(hidden=32, epochs=25, lr=5e-3, batch_size=64, seed=3, game="toy")
    head, hist = fit_head(train, y, val, y_val, base, **kw)
    assert list(hist["epoch"]) == list(range(1, 26))
    kept = hist.loc[hist["val_score"].idxmax()]
    first, best = float(hist["val_spearman"].iloc[0]), float(kept["val_spearman"])
    assert best >= 0.9 and best > first + 0.1, hist
    assert float(kept["val_top_part"]) >= 0.8
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0] / 5
    # the head kept is the best epoch's
    r = torch.arange(len(val.labels))
    with torch.no_grad():
        pv = head(val.inputs, val.present, val.logits)
    assert rank_agreement(pv[r, :, val.labels], y_val[r, :, val.labels], val.present) == \
        pytest.approx(best, abs=1e-9)
    torch.testing.assert_close(pv.sum(1), val.logits - base, atol=1e-5, rtol=1e-5)
    assert not head.training and not any(p.requires_grad for p in head.parameters())
    assert head.game == "toy" and torch.equal(head.baseline, base)
    # deterministic for a seed, and the seed is used
    again, hist2 = fit_head(train, y, val, y_val, base, **kw)
    assert hist.equals(hist2)
    for (k, a), (_, b) in zip(head.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    other, _ = fit_head(train, y, val, y_val, base, **{**kw, "seed": 4, "epochs": 1})
    assert not torch.equal(other.out[-1].weight, head.out[-1].weight)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_rank_agreement_is_the_mean_of_scipys_per_image_spearman():
    g = torch.Generator().manual_seed(0)
    N, L = 60, 7
    pred, target = torch.randn(N, L, generator=g), torch.randn(N, L, generator=g)
    present = torch.rand(N, L, generator=g) > 0.3
    present[0] = False
    present[0, 2] = True  # one label: skipped
    pred[1] = 1.0  # constant prediction: skipped (scipy gives NaN)
    expected = []
    for n in range(N):
        m = present[n].numpy()
        if m.sum() < 2:
            continue
        rho = spearmanr(pred[n].numpy()[m], target[n].numpy()[m]).statistic
        if not math.isnan(rho):
            expected.append(rho)
    assert len(expected) >= N - 3
    assert rank_agreement(pred, target, present) == pytest.approx(float(np.mean(expected)),
                                                                   abs=1e-12)
    # absent labels are ignored whatever their values
    noisy = torch.where(present, pred, torch.randn(N, L, generator=g) * 100)
    assert rank_agreement(noisy, target, present) == rank_agreement(pred, target, present)
    assert rank_agreement(pred, pred, present) == pytest.approx(1.0)
    assert rank_agreement(pred, -pred, present) == pytest.approx(-1.0)
    assert math.isnan(rank_agreement(pred, target, torch.zeros(N, L, dtype=torch.bool)))


# --------------------------------------------------------------------------- train_head


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from partslib.data.synthparts import SynthParts, SynthPartsConfig

    cache = tmp_path_factory.mktemp("synth")
    cfg = SynthPartsConfig(size=SIZE)
    train = SynthParts(cfg, seed=0, n=24, cache_dir=cache, progress=False)
    val = SynthParts(cfg, seed=2, n=8, cache_dir=cache, progress=False)
    clf = small_classifier(num_classes=cfg.num_classes, widths=(8, 16, 16), size=SIZE)
    pdm = small_pdm(clf, cfg.num_parts + 1, seed=3)
    return clf, pdm, train, val


def test_train_head_checkpoint_is_read_back_loaded_again_and_archived(synth, tmp_path,
                                                                      monkeypatch):
    clf, pdm, train, val = synth
    ckpt = tmp_path / at.HEAD_CHECKPOINT
    kw = dict(n_train=24, n_val=8, epochs=2, hidden=16, seed=1, checkpoint=str(ckpt))
    head, info = train_head(clf, pdm, train, val, **kw)
    assert ckpt.exists() and "loaded" not in info
    assert info["config"]["game"] == "rerender" and info["config"]["epochs"] == 2
    assert len(info["history"]["epoch"]) == 2 and info["best_epoch"] in (1, 2)
    # the re-render without any label is the flat grey image: the stored baseline is exact
    assert info["baseline_gap_max"] < 1e-5
    torch.testing.assert_close(head.baseline, baseline_logits(clf, (SIZE, SIZE)))
    loaded = load_head(str(tmp_path))
    assert loaded.config() == head.config()
    for (k, a), (_, b) in zip(head.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = train.tensors()[0][:4]
    e1 = PartExplainer(clf, pdm, rule=AmortisedRule(head))(x)
    e2 = PartExplainer(clf, pdm, rule=AmortisedRule(loaded))(x)
    assert torch.equal(e1.contributions, e2.contributions)
    torch.testing.assert_close(e1.bias + e1.contributions.sum(1), e1.score, atol=1e-5,
                               rtol=1e-5)

    # the same settings load the checkpoint: no game is played, nothing is trained
    def no_training(*args, **kwargs):
        raise AssertionError("train_head trained again although the checkpoint fits")

    with monkeypatch.context() as m:
        m.setattr(at, "_split_game", no_training)
        m.setattr(at, "fit_head", no_training)
        again, info2 = train_head(clf, pdm, train, val, **kw)
    assert info2["loaded"] == str(ckpt) and info2["config"] == info["config"]
    assert torch.equal(again.out[-1].weight, head.out[-1].weight)

    # other settings: the old checkpoint is moved aside and a new head is trained
    with pytest.warns(UserWarning, match="differing keys: epochs"):
        _, info3 = train_head(clf, pdm, train, val, **{**kw, "epochs": 1})
    assert "loaded" not in info3 and info3["config"]["epochs"] == 1
    old = list((ckpt.parent / "old").glob("head-*.pt"))
    assert len(old) == 1
    assert load_head(str(tmp_path)).config() == head.config()  # same shape, new weights
    assert load_checkpoint(old[0], kind="head")["config"]["epochs"] == 2

    # resume=False (the runner's --retrain) trains again although the checkpoint fits
    _, info4 = train_head(clf, pdm, train, val, **{**kw, "epochs": 1}, resume=False)
    assert "loaded" not in info4 and info4["config"] == info3["config"]
    assert len(list((ckpt.parent / "old").glob("head-*.pt"))) == 1  # replaced, not archived


def test_train_head_with_an_imputer_where_nothing_can_be_rerendered(synth):
    """Data without ``rerender`` (photos): the game is BackgroundFill on the PDM's maps, whose
    empty coalition is the same flat grey, so the baseline is exact there too."""
    clf, pdm, train, val = synth

    class Photos:
        def __init__(self, ds):
            self.ds = ds

        def __len__(self) -> int:
            return len(self.ds)

        def tensors(self):
            return self.ds.tensors()

    head, info = train_head(clf, pdm, Photos(train), Photos(val), n_train=12, n_val=6,
                            epochs=1, hidden=8, target="shapley")
    assert info["config"]["game"].startswith("background_fill")
    assert info["baseline_gap_max"] < 1e-4
    assert head.game == info["config"]["game"]


def test_train_head_and_load_head_refuse_bad_arguments(synth, tmp_path):
    clf, pdm, train, val = synth
    with pytest.raises(ValueError, match="target must be one of"):
        train_head(clf, pdm, train, val, target="region")
    with pytest.raises(FileNotFoundError, match="no contribution head"):
        load_head(str(tmp_path))


def test_the_grey_baseline_follows_the_classifier_it_explains(toy):
    """The bias (the grey image's score) is computed once per classifier state: changing the
    classifier in place is seen, and the rule stays complete."""
    import copy

    clf, pdm, x = toy
    clf = copy.deepcopy(clf)
    head = _random_head(clf.fc.in_features, 5, 4, seed=4)
    ex = get_method("pdm-amortised").build(clf, pdm=pdm, head=head)
    first = ex(x, target=0)
    again = ex(x, target=0)
    torch.testing.assert_close(first.bias, again.bias)
    with torch.no_grad():
        clf.fc.bias.add_(1.5)  # in place: the cached grey score must not be reused
    moved = ex(x, target=0)
    torch.testing.assert_close(moved.bias, first.bias + 1.5)
    torch.testing.assert_close(moved.bias + moved.contributions.sum(1), moved.score,
                               atol=1e-5, rtol=1e-5)
