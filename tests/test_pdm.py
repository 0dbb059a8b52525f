"""The PDM's single entry point: raw images in, its own normalisation, clear errors."""

import pytest
import torch

from partslib.config import PDMConfig
from partslib.models import TorchvisionResNet
from partslib.pdm import PartsDetectionModule, label_map, load_pdm, segment, train_pdm
from partslib.training import load_checkpoint

from toys import small_classifier, small_pdm

P1 = 4


@pytest.fixture(scope="module")
def clf():
    return small_classifier(num_classes=3)


def test_forward_normalises_raw_images_like_the_classifier(clf):
    pdm = small_pdm(clf, P1, seed=1)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    feats = clf.features(x)
    with torch.no_grad():
        out = pdm(feats, x)
        # the former call: the normalised image handed to the image step by the caller
        by_hand = pdm.top_proj(feats["layer3"])
        for s, reduce, proj, block in zip(["layer2", "layer1"], pdm.reduce, pdm.skip_proj,
                                          pdm.blocks):
            by_hand = block(torch.nn.functional.interpolate(
                reduce(by_hand), size=feats[s].shape[-2:], mode="bilinear") + proj(feats[s]))
        by_hand = torch.nn.functional.interpolate(pdm.image_reduce(by_hand), size=(64, 64),
                                                  mode="bilinear")
        by_hand = pdm.classifier(pdm.image_block(by_hand + pdm.image_proj(clf.normalise(x))))
    assert torch.equal(out, by_hand)
    assert torch.equal(pdm.part_logits(clf, x), out)
    assert torch.equal(pdm.part_probs(clf, x), out.softmax(1))
    assert torch.equal(segment(clf, pdm, (x * 255).round().to(torch.uint8)),
                       pdm.part_probs(clf, (x * 255).round() / 255))
    with pytest.raises(ValueError, match=r"pass the raw images .*pdm\(features, images\)"):
        pdm(feats)
    # the normalisation is not part of the state dict (its keys are unchanged)
    assert not any(k.startswith(("image_mean", "image_std")) for k in pdm.state_dict())


def test_image_step_on_a_stride_4_classifier_is_refused():
    tv = TorchvisionResNet("resnet18", num_classes=3, input_size=64)
    with pytest.raises(ValueError, match=r"stride 4 .*pass image_width=0"):
        PartsDetectionModule.for_classifier(tv, P1, image_width=8)
    pdm = PartsDetectionModule.for_classifier(tv, P1, image_width=0)
    assert not pdm.uses_image and "mean" not in pdm.config()
    assert pdm.part_logits(tv.eval(), torch.rand(2, 3, 64, 64)).shape == (2, P1, 64, 64)


def test_architecture_defaults_come_from_the_config(clf):
    pdm = PartsDetectionModule.for_classifier(clf, P1)
    cfg = PDMConfig()
    assert (pdm.image_width, pdm.config()["image_kernel"], pdm.config()["separable"]) == \
        (cfg.image_width, cfg.image_kernel, cfg.separable)
    built = PartsDetectionModule.from_config(clf, P1, cfg.replace(widths=[8, 8]))
    assert built.widths == [8, 8] and built.uses_image


def test_train_and_load_restore_the_normalisation(clf, tmp_path):
    torch.manual_seed(0)  # the data below, and train_pdm's initial PDM, use the global RNG
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    masks = torch.randint(0, P1, (8, 64, 64))
    ckpt = tmp_path / "pdm.pt"
    pdm, hist = train_pdm(clf, x, masks, P1, epochs=1, batch_size=4, widths=[8, 8],
                          image_width=4, checkpoint=ckpt, progress=False)
    assert len(hist) == 1
    cfg = load_checkpoint(ckpt, kind="pdm")["config"]["model"]
    assert cfg["mean"] == clf.mean.flatten().tolist() and cfg["std"] == clf.std.flatten().tolist()
    loaded = load_pdm(ckpt)
    xf = x.float() / 255
    # (the trained copy holds channels-last weights: equal up to float rounding)
    torch.testing.assert_close(loaded.part_logits(clf, xf), pdm.eval().part_logits(clf, xf))
    with pytest.raises(TypeError, match="no field"):
        train_pdm(clf, x, masks, P1, epoch=1)


def test_label_map_gives_argmax_indices_ties_and_layouts_included():
    """``label_map`` (``max(1).indices``, ten times faster on the CPU) returns what
    ``argmax(1)`` returns: the first of equal maxima, in any memory format and dtype."""
    g = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 3, (4, 6, 16, 16), generator=g).float()  # many equal maxima
    for scores in (ties, ties.double(), ties.bfloat16(), torch.randn(4, 6, 16, 16, generator=g),
                   ties.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(label_map(scores), scores.argmax(1))
    assert label_map(ties).shape == (4, 16, 16)
