"""Tests of partslib.removal: the removal-operator protocol and the three fill operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partslib.removal import (
    IGNORE_INDEX,
    GaussianBlurFill,
    MeanFill,
    NoisyLinearImputer,
    RemovalOperator,
    check_removal_inputs,
    gaussian_kernel,
    removal_mask,
)

OPERATORS = [
    pytest.param(lambda: MeanFill(), id="mean"),
    pytest.param(lambda: MeanFill((0.0, 0.0, 0.0)), id="black"),
    pytest.param(lambda: GaussianBlurFill(), id="blur"),
    pytest.param(lambda: NoisyLinearImputer(), id="nli"),
]


def _scene(batch: int = 3, size: int = 16, seed: int = 0):
    """Random images and a fixed part layout: 1 = square, 2 = bar, 255 = a few pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, 3:9, 4:12] = 1
    labels[:, 11:14, 2:15] = 2
    labels[:, 0, :3] = IGNORE_INDEX
    labels[:, 5, 5] = IGNORE_INDEX  # an ignored pixel inside part 1
    return images, labels


def _ramp(size: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")
    img = torch.stack([0.1 + 0.02 * yy + 0.03 * xx, 0.9 - 0.04 * yy, 0.2 + 0.01 * xx + 0.01 * yy])
    return img[None].float()


@pytest.mark.parametrize("make", OPERATORS)
def test_operator_contract(make):
    op = make()
    assert isinstance(op, RemovalOperator) and isinstance(op.name, str) and op.name
    images, labels = _scene()
    before_i, before_l = images.clone(), labels.clone()
    drop = torch.tensor([[False, True, False], [False, True, True], [True, False, False]])
    out = op(images, labels, drop)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(images, before_i) and torch.equal(labels, before_l)  # no mutation
    mask = removal_mask(labels, drop)[:, None].expand_as(images)
    assert torch.equal(out[~mask], images[~mask])  # kept pixels untouched, bit for bit
    assert (out[mask] != images[mask]).float().mean() > 0.99  # removed pixels replaced
    assert torch.equal(out[:, :, 5, 5], images[:, :, 5, 5])  # ignored pixels never removed
    assert torch.equal(op(images, labels, drop), out)  # deterministic
    nothing = op(images, labels, torch.zeros_like(drop))
    assert torch.equal(nothing, images) and nothing is not images


def test_removal_mask():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    mask = removal_mask(labels, torch.tensor([[True, False, True]]))
    assert mask.tolist() == [[[True, False], [True, False]]]


def test_mean_fill_values():
    images, labels = _scene()
    drop = torch.tensor([[False, True, False]] * 3)
    out = MeanFill()(images, labels, drop)
    mean = images.mean(dim=(2, 3))
    assert torch.allclose(out[:, :, 4, 4], mean)
    out = MeanFill((0.25, 0.5, 1.0))(images, labels, drop)
    assert torch.equal(out[0, :, 4, 4], torch.tensor([0.25, 0.5, 1.0]))
    assert MeanFill((0, 0, 0)).name == "mean_fill(0,0,0)"


def test_blur_fill_values():
    images, labels = _scene()
    op = GaussianBlurFill(kernel_size=11, sigma=5.0)
    drop = torch.tensor([[False, True, True]] * 3)
    out = op(images, labels, drop)
    mask = removal_mask(labels, drop)[:, None].expand_as(images)
    assert torch.allclose(out[mask], op.blur(images)[mask])
    k = gaussian_kernel(11, 5.0)
    assert k.shape == (11, 11) and abs(float(k.sum()) - 1) < 1e-12 and k[5, 5] == k.max()
    # replicate padding + normalised kernel: a constant image blurs to itself, borders included
    const = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(op.blur(const), const, atol=1e-6)
    assert "k=11" in op.name and "sigma=5" in op.name


def test_nli_constant_image_gives_constant():
    images = torch.full((2, 3, 16, 16), 0.4)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 2:12, 3:10] = 1
    drop = torch.tensor([[False, True], [False, True]])
    exact = NoisyLinearImputer(noise=0.0)(images, labels, drop)
    assert torch.allclose(exact, images, atol=1e-6)
    noisy = NoisyLinearImputer(noise=0.01, seed=3)(images, labels, drop)
    diff = (noisy - images)[removal_mask(labels, drop)[:, None].expand_as(images)]
    assert diff.abs().max() < 0.06  # 6 std
    assert 0.008 < float(diff.std()) < 0.012  # the noise has the requested std


def test_nli_solves_the_road_system():
    """noise=0: interior removed pixels are the 1/6, 1/12 weighted mean of their neighbours,
    and a linear ramp (which has that mean-value property) is recovered exactly."""
    ramp = _ramp()
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:10, 3:12] = 1
    drop = torch.tensor([[False, True]])
    out = NoisyLinearImputer(noise=0.0)(ramp, labels, drop)
    assert torch.allclose(out, ramp, atol=1e-5)

    images, labels = _scene(batch=1)
    labels[labels == IGNORE_INDEX] = 0
    out = NoisyLinearImputer(noise=0.0)(images, labels, torch.tensor([[False, True, True]]))
    x = out[0].double()
    w = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                     dtype=torch.float64)
    ys, xs = torch.nonzero(removal_mask(labels, torch.tensor([[False, True, True]]))[0],
                           as_tuple=True)
    for y, xx in zip(ys.tolist(), xs.tolist()):
        if 0 < y < 15 and 0 < xx < 15:
            mean = (x[:, y - 1:y + 2, xx - 1:xx + 2] * w).sum((1, 2))
            assert torch.allclose(x[:, y, xx], mean, atol=1e-5)


def test_nli_seeded():
    images, labels = _scene()
    drop = torch.tensor([[False, True, True]] * 3)
    a = NoisyLinearImputer(seed=1)(images, labels, drop)
    b = NoisyLinearImputer(seed=1)(images, labels, drop)
    c = NoisyLinearImputer(seed=2)(images, labels, drop)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # an image's noise does not depend on its position in the batch ...
    rev = NoisyLinearImputer(seed=1)(images.flip(0), labels.flip(0), drop)
    assert torch.equal(rev.flip(0), a)
    # ... and with keys it follows the key
    k1 = NoisyLinearImputer(seed=1)(images, labels, drop, keys=[7, 8, 9])
    k2 = NoisyLinearImputer(seed=1)(images[[2]], labels[[2]], drop[[2]], keys=[9])
    assert torch.equal(k1[2], k2[0])


def test_nli_everything_removed_and_64px():
    images, labels = _scene(batch=2, size=64)
    labels[labels == IGNORE_INDEX] = 0
    drop = torch.tensor([[True, True, True], [True, True, False]])
    out = NoisyLinearImputer(noise=0.0)(images, labels, drop)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], images[0].mean((1, 2), keepdim=True).expand(3, 64, 64))
    assert out.min() >= 0 and out.max() <= 1


def test_check_removal_inputs_errors():
    images, labels = _scene()
    drop = torch.zeros(3, 3, dtype=torch.bool)
    check_removal_inputs(images, labels, drop)
    with pytest.raises(ValueError, match="drop"):
        MeanFill()(images, labels, drop[:2])
    with pytest.raises(ValueError, match="bool"):
        MeanFill()(images, labels, drop.long())
    with pytest.raises(ValueError, match="outside 0..1"):
        MeanFill()(images, labels, drop[:, :2])  # labels hold part 2, drop has P=1
    with pytest.raises(ValueError, match="labels must have shape"):
        MeanFill()(images, labels[:, :4], drop)
    with pytest.raises(ValueError, match="integer"):
        MeanFill()(images, labels.float(), drop)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        MeanFill()(images[:, :1], labels, drop)
    with pytest.raises(ValueError, match="keys"):
        NoisyLinearImputer()(images, labels, drop, keys=[1])
    with pytest.raises(ValueError):
        GaussianBlurFill(kernel_size=4)
    with pytest.raises(ValueError):
        GaussianBlurFill(sigma=0)
    with pytest.raises(ValueError):
        NoisyLinearImputer(noise=-1)
    with pytest.raises(ValueError):
        MeanFill((0, 0))


def test_nli_matches_road_reference_equations_on_border():
    """At the border, ROAD renormalises over the in-image neighbours: a removed corner pixel
    with known neighbours (0,1)=a, (1,0)=b, (1,1)=c gets (a/6 + b/6 + c/12) / (5/12)."""
    img = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 1
    out = NoisyLinearImputer(noise=0.0)(img, labels, torch.tensor([[False, True]]))
    expect = (img[0, :, 0, 1] / 6 + img[0, :, 1, 0] / 6 + img[0, :, 1, 1] / 12) / (5 / 12)
    assert np.allclose(out[0, :, 0, 0].numpy(), expect.numpy(), atol=1e-6)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), num_parts=st.integers(0, 4))
def test_removal_mask_matches_pixel_loop_and_keeps_the_rest(seed, num_parts):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_parts + 2, (2, 5, 6), generator=g)
    labels[labels == num_parts + 1] = IGNORE_INDEX
    drop = torch.rand(2, num_parts + 1, generator=g) < 0.5
    mask = removal_mask(labels, drop)
    for b in range(2):
        for y in range(5):
            for x in range(6):
                lab = int(labels[b, y, x])
                assert bool(mask[b, y, x]) == (lab != IGNORE_INDEX and bool(drop[b, lab]))
    images = torch.rand(2, 3, 5, 6, generator=g)
    for op in (MeanFill(), GaussianBlurFill(kernel_size=3, sigma=1.0),
               NoisyLinearImputer(seed=seed)):
        out = op(images, labels, drop)
        keep = ~mask[:, None].expand_as(images)
        assert torch.equal(out[keep], images[keep]) and torch.isfinite(out).all()
