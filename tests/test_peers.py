"""The peer rules (Captum, pytorch-grad-cam DFF, CRP) map their library's output as documented.

``tests/test_rules.py`` checks their contract with the rest of the registry; here each mapping
is checked against what it claims: FeatureAblation = the score drop with the part set to 0,
ShapleyValueSampling is complete with ``f(0)`` as bias and leaves the global RNG alone, DFF's
parts share the concepts' scores, and CRP conserves the logit (no biases) on partslib's
SmallResNet and a torchvision ResNet, which needs its residual sums canonised.
"""

from __future__ import annotations

import pytest
import torch

from partslib.explain import FixedMapsSegmenter, PartExplainer
from partslib.explain.peers import (
    CaptumAblationRule,
    CaptumShapleyRule,
    CRPRule,
    DFFRule,
    _LRPNet,
    part_sums,
)
from partslib.models import SmallResNet, TorchvisionResNet

from toys import random_images, small_classifier

L, B, SIZE = 4, 3, 32


@pytest.fixture(scope="module")
def setup():
    clf = small_classifier(num_classes=3, widths=(8, 16, 16), size=SIZE)
    x = random_images(B, SIZE)
    maps = torch.zeros(B, SIZE, SIZE, dtype=torch.long)
    maps[:, 4:14, 4:20] = 1
    maps[:, 18:28, 10:30] = 2
    maps[0, 0:4, 0:4] = 3  # part 3 only in image 0
    return clf, x, maps


def _explain(clf, x, maps, rule, num_labels=L):
    return PartExplainer(clf, FixedMapsSegmenter(maps, num_labels), rule=rule)(x)


def test_part_sums_counts_each_label_and_skips_unannotated():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    labels = torch.tensor([[[0, 1], [255, 1]]])
    assert part_sums(maps, labels, 3).tolist() == [[1.0, 6.0, 0.0]]
    with pytest.raises(ValueError, match="same shape"):
        part_sums(maps, labels[:, :1], 3)


def test_captum_ablation_is_the_score_drop_with_the_part_set_to_zero(setup):
    clf, x, maps = setup
    e = _explain(clf, x, maps, CaptumAblationRule())
    with torch.no_grad():
        for p in range(L):
            xp = torch.where((maps == p)[:, None], torch.zeros_like(x), x)
            drop = e.score - clf(xp)[torch.arange(B), e.target]
            drop = torch.where((maps == p).flatten(1).any(1), drop, 0.0)
            torch.testing.assert_close(e.contributions[:, p], drop, atol=1e-5, rtol=1e-5)


def test_captum_shapley_is_complete_and_restores_the_global_rng(setup):
    clf, x, maps = setup
    state = torch.get_rng_state()
    e = _explain(clf, x, maps, CaptumShapleyRule(n_samples=5, seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        f0 = clf(torch.zeros_like(x[:1]))[0, e.target]
    torch.testing.assert_close(e.bias, f0)
    torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-5, rtol=1e-5)
    again = _explain(clf, x, maps, CaptumShapleyRule(n_samples=5, seed=4))
    assert not torch.equal(again.contributions, e.contributions)  # the seed is used
    with pytest.raises(ValueError, match="n_samples"):
        CaptumShapleyRule(n_samples=0)


def test_captum_rules_refuse_a_margin(setup):
    clf, x, maps = setup
    with pytest.raises(ValueError, match="not a margin"):
        PartExplainer(clf, FixedMapsSegmenter(maps, L))(x, rule=CaptumAblationRule(),
                                                        contrastive=True)


def test_dff_shares_each_concepts_score_over_the_parts(setup):
    from pytorch_grad_cam import DeepFeatureFactorization

    clf, x, maps = setup
    e = _explain(clf, x, maps, DFFRule(n_components=3))
    assert (e.contributions >= 0).all()
    dff = DeepFeatureFactorization(model=clf, target_layer=clf.layer3,
                                   computation_on_concepts=clf.fc)
    try:
        for i in range(B):
            out = dff(x[i:i + 1], 3)[2]
            scores = torch.softmax(torch.from_numpy(out).double(), -1)[:, int(e.target[i])]
            # every concept's heatmap mass lies in some part: the parts share all the score
            torch.testing.assert_close(e.contributions[i].sum().double(), scores.sum(),
                                       atol=1e-5, rtol=1e-5)
    finally:
        dff.activations_and_grads.release()
    assert not clf.layer3._forward_hooks
    with pytest.raises(ValueError, match="n_components"):
        DFFRule(n_components=0)


def _no_biases(clf: torch.nn.Module) -> torch.nn.Module:
    """Zero every bias (BatchNorm shifts included): LRP then conserves the logit."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clf.fc.bias.zero_()
        for m in clf.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return clf.eval()


@pytest.mark.parametrize("arch", ["small", "resnet18"])
def test_crp_relevance_conserves_the_logit_through_residual_blocks(arch):
    size = 32 if arch == "small" else 64
    with torch.random.fork_rng():
        torch.manual_seed(0)
        clf = SmallResNet(3, widths=(8, 16, 16), input_size=size) if arch == "small" else \
            TorchvisionResNet("resnet18", num_classes=3, input_size=size)
    clf = _no_biases(clf)
    x = random_images(2, size)
    maps = torch.zeros(2, size, size, dtype=torch.long)
    maps[:, size // 4:size // 2] = 1
    e = _explain(clf, x, maps, CRPRule(), num_labels=2)
    # the classifier's own logits, relevance summed over all parts: conserved within 1%
    torch.testing.assert_close(e.contributions.sum(1), e.score, rtol=1e-2, atol=1e-4)
    assert e.maps is not None and e.maps.shape == (2, size, size)


def test_crp_names_what_it_cannot_canonise(setup):
    clf, _, _ = setup

    class Odd(SmallResNet):
        def head(self, a):
            return self.fc(a.amax(dim=(2, 3)))

    odd = Odd(3, widths=(8, 16, 16), input_size=SIZE)
    with pytest.raises(ValueError, match="the contract.s head"):
        _LRPNet(odd)
    flags = [p.requires_grad for p in clf.parameters()]
    net = _LRPNet(clf)  # a frozen copy: the classifier's own flags are left as they were
    assert all(not p.requires_grad for p in net.parameters())
    assert [p.requires_grad for p in clf.parameters()] == flags


def test_crp_names_a_module_it_cannot_canonise():
    clf = small_classifier(num_classes=3, widths=(8, 16, 16), size=SIZE)
    clf.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.GELU())
    maps = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    with pytest.raises(ValueError, match="'src.stem.1' is a GELU"):
        _explain(clf, random_images(1, SIZE), maps, CRPRule(), num_labels=1)
