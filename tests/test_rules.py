"""Every method of the registry, through the one explainer template: the contract of a rule.

Small random models (a SmallResNet, a PDM on its features, an IBD with random concept
classifiers), seeded. Each registry entry is checked for: contributions ``[B, P+1]``, 0 for
parts absent from the argmax part map (rules that claim it), a batch equal to image by image,
inputs not mutated, no hooks or flags left on the modules, two calls equal.
"""

from __future__ import annotations

import pytest
import torch

from partslib.explain import PartExplainer, RegionRule
from partslib.explain.amortised import ContributionHead
from partslib.explain.registry import METHODS, REGISTRY, explain_methods, get_method

from toys import random_ibd, random_images, small_classifier, small_pdm

L = 5  # background + 4 parts
B = 4
SIZE = 32


@pytest.fixture(scope="module")
def models():
    clf = small_classifier(num_classes=3, widths=(8, 16, 16), size=SIZE)
    pdm = small_pdm(clf, L)
    # the last part never wins the argmax (of the PDM and of IBD's maps): always absent
    with torch.no_grad():
        pdm.classifier.weight.mul_(40.0)
        pdm.classifier.bias[L - 1] = -1e3
    ibd = random_ibd(clf, L)
    ibd.concept_classifiers.bias[L - 1] = -1e3
    return clf, pdm, ibd


@pytest.fixture(scope="module")
def head(models):
    """An untrained contribution head of the toy's shape (the amortised rule's contract does
    not depend on training)."""
    clf = models[0]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return ContributionHead(clf.fc.in_features, L, clf.fc.out_features, hidden=16,
                                baseline=torch.randn(clf.fc.out_features)).eval()


@pytest.fixture(scope="module")
def images():
    return random_images(B, SIZE)


def _explain(models, method, x, target=None, head=None):
    clf, pdm, ibd = models
    return get_method(method).build(clf, pdm=pdm, ibd=ibd, seed=7, head=head)(x, target=target)


def _module_state(*modules):
    """Hooks, grad flags and train flags of every submodule."""
    out = []
    for m in modules:
        for name, sub in m.named_modules():
            out.append((name, len(sub._forward_hooks), len(sub._forward_pre_hooks),
                        len(sub._backward_hooks), sub.training))
        out += [(name, p.requires_grad, p.grad is None) for name, p in m.named_parameters()]
    return out


@pytest.mark.parametrize("method", METHODS)
def test_contributions_shape_and_metadata(models, images, method, head):
    e = _explain(models, method, images, head=head)
    entry = REGISTRY[method]
    assert e.contributions.shape == (B, L)
    assert torch.isfinite(e.contributions).all()
    assert e.mode == method and e.units == entry.units
    assert (e.contrast is not None) == entry.contrastive
    if entry.units in ("logit", "margin"):
        assert e.score.shape == (B,) and torch.isfinite(e.score).all()


@pytest.mark.parametrize("method", METHODS)
def test_absent_parts_get_zero(models, images, method, head):
    ex = get_method(method).build(*models[:2], ibd=models[2], head=head)
    e = ex(images)
    absent = ~e.present
    assert absent.any(), "the fixture should leave some parts out of the argmax map"
    if ex.rule.absent_zero:
        assert (e.contributions[absent] == 0).all()
    else:  # soft region / basis rules: documented to credit parts the argmax map leaves out
        assert isinstance(ex.rule, RegionRule) or ex.rule.name == "basis"


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_equals_image_by_image(models, images, method, head):
    target = torch.tensor([0, 1, 2, 1])
    batch = _explain(models, method, images, target, head)
    for i in range(B):
        one = _explain(models, method, images[i:i + 1], target[i:i + 1], head)
        torch.testing.assert_close(one.contributions[0], batch.contributions[i], atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_inputs_untouched_no_hooks_left_and_deterministic(models, images, method, head):
    clf, pdm, _ = models
    x = images.clone()
    target = torch.tensor([2, 0, 1, 0])
    t = target.clone()
    before = _module_state(clf, pdm)
    w = {k: v.clone() for k, v in clf.state_dict().items()}
    first = _explain(models, method, x, target, head)
    second = _explain(models, method, x, target, head)
    assert torch.equal(x, images) and torch.equal(target, t)
    assert _module_state(clf, pdm) == before
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in w.items())
    assert torch.equal(first.contributions, second.contributions)


def test_explain_methods_shares_one_pass_and_matches_each_explainer(models, images, head):
    clf, pdm, ibd = models
    together = explain_methods(clf, images, METHODS, pdm=pdm, ibd=ibd, seed=7, head=head)
    for m in METHODS:
        alone = _explain(models, m, images, head=head)
        torch.testing.assert_close(together[m].contributions, alone.contributions)
        assert together[m].mode == m


def test_unknown_method_and_missing_model_are_named(models):
    clf, pdm, _ = models
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="needs ibd"):
        get_method("ibd").build(clf, pdm=pdm)
    with pytest.raises(ValueError, match="logit units"):
        PartExplainer(clf, pdm)(torch.rand(1, 3, SIZE, SIZE), contrastive=True,
                                rule=get_method("gradcam-mass").rule(None))  # type: ignore[arg-type]
