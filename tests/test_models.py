import pytest
import torch

from partslib.models import SmallResNet, TorchvisionResNet, build_classifier, check_images
from partslib.training import (
    CheckpointError,
    TensorLoader,
    evaluate_classifier,
    fit,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def small():
    torch.manual_seed(0)
    return SmallResNet(num_classes=4, widths=(8, 16, 32)).eval()


def test_feature_contract_small(small):
    x = torch.rand(2, 3, 64, 64)
    feats = small.features(x)
    assert list(feats) == list(small.stage_names)
    for name, f in feats.items():
        assert f.shape[1] == small.stage_channels[name]
        assert f.shape[-1] == 64 // small.stage_strides[name]
    assert torch.equal(small(x), small.head(feats[small.final_stage]))
    # the head is GAP + linear: logit_k = w_k . mean_u A(u) + b_k
    a = feats[small.final_stage].mean((2, 3))
    assert torch.allclose(small(x), a @ small.fc.weight.T + small.fc.bias, atol=1e-6)


@pytest.mark.parametrize("arch, channels", [("resnet18", 512), ("resnet50", 2048)])
def test_feature_contract_torchvision(arch, channels):
    torch.manual_seed(0)
    m = TorchvisionResNet(arch, num_classes=5).eval()
    x = torch.rand(1, 3, 64, 64)
    feats = m.features(x)
    assert list(feats) == ["layer1", "layer2", "layer3", "layer4"]
    assert feats["layer4"].shape[1] == channels == m.stage_channels["layer4"]
    assert feats["layer4"].shape[-1] == 2
    assert torch.equal(m(x), m.head(feats["layer4"]))


def test_torchvision_weights_from_local_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None, num_classes=7)
    # DataParallel-style prefix and a checkpoint dict, as people save them
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    m = TorchvisionResNet("resnet18", num_classes=None, weights=path).eval()
    net.eval()
    x = torch.rand(2, 3, 64, 64)
    ref = net((x - m.mean) / m.std)
    assert m.num_classes == 7
    assert torch.allclose(m(x), ref, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TorchvisionResNet("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="does not fit"):
        TorchvisionResNet("resnet50", num_classes=7, weights=path)


@pytest.mark.parametrize("x, match", [
    (torch.rand(2, 1, 64, 64), "grayscale or RGBA"),
    (torch.rand(2, 4, 64, 64), "grayscale or RGBA"),
    (torch.rand(2, 3, 32, 32), "must be 64x64"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    (torch.rand(1, 3, 64, 64) * 255, r"values in \[0, 1\]"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int32), "dtype"),
])
def test_bad_images_give_clear_errors(x, match):
    with pytest.raises(ValueError, match=match):
        check_images(x, size=(64, 64))


def test_uint8_and_single_image_are_converted():
    x = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    y = check_images(x, size=(64, 64))
    assert y.shape == (1, 3, 64, 64) and y.dtype == torch.float32 and y.max() <= 1


def _toy_data(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, 64, 64, generator=g) * 0.2
    for k in range(4):  # class k = a bright quadrant
        x[y == k, :, (k // 2) * 32:(k // 2) * 32 + 32, (k % 2) * 32:(k % 2) * 32 + 32] += 0.7
    return x, y


class _Interrupt(Exception):
    pass


def _train(x, y, ckpt, stop_at=None):
    torch.manual_seed(0)
    m = SmallResNet(num_classes=4, widths=(8, 16, 32))
    seen = []

    def evaluate(model):
        seen.append(1)
        if stop_at is not None and len(seen) == stop_at:
            raise _Interrupt  # dies during epoch `stop_at`, after epoch stop_at-1 was saved
        return {}

    r = fit(m, TensorLoader(x, y, batch_size=16, seed=3), epochs=3,
            loss_fn=torch.nn.functional.cross_entropy, checkpoint=ckpt, config=m.config(),
            kind="classifier", progress=False, evaluate=evaluate)
    return m, r


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    x, y = _toy_data()
    full, _r_full = _train(x, y, tmp_path / "full.pt")
    with pytest.raises(_Interrupt):
        _train(x, y, tmp_path / "cut.pt", stop_at=3)
    assert load_checkpoint(tmp_path / "cut.pt", kind="classifier")["epoch"] == 2
    resumed, r_res = _train(x, y, tmp_path / "cut.pt")
    assert r_res.resumed_from_epoch == 2
    assert [h["epoch"] for h in r_res.history] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # a restored model (config + weights) gives identical outputs
    ckpt = load_checkpoint(tmp_path / "full.pt", kind="classifier")
    restored = build_classifier(ckpt["config"]["model"])
    restored.load_state_dict(ckpt["state_dict"])
    assert torch.equal(restored.eval()(x[:4]), full.eval()(x[:4]))


def test_checkpoint_of_another_configuration_is_archived_not_resumed(tmp_path):
    x, y = _toy_data()
    _train(x, y, tmp_path / "c.pt")
    m = SmallResNet(num_classes=4, widths=(8, 16, 32))
    with pytest.warns(UserWarning, match=r"another configuration \(differing keys: epochs\)"):
        r = fit(m, TensorLoader(x, y, batch_size=16), epochs=1,
                loss_fn=torch.nn.functional.cross_entropy, checkpoint=tmp_path / "c.pt",
                config=m.config(), kind="classifier", progress=False)
    assert r.resumed_from_epoch == 0 and [h["epoch"] for h in r.history] == [1]
    old = list((tmp_path / "old").glob("classifier-*.pt"))
    assert len(old) == 1 and load_checkpoint(old[0])["config"]["epochs"] == 3
    assert load_checkpoint(tmp_path / "c.pt")["config"]["epochs"] == 1
    # an unreadable checkpoint is moved aside too, with a warning that says it is unreadable
    (tmp_path / "c.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"c.pt could not be read: the file is truncated or "
                                         r"corrupted \(7 bytes\)") as record:
        fit(m, TensorLoader(x, y, batch_size=16), epochs=1,
            loss_fn=torch.nn.functional.cross_entropy, checkpoint=tmp_path / "c.pt",
            config=m.config(), kind="classifier", progress=False)
    assert len(list((tmp_path / "old").glob("classifier-*.pt"))) == 2
    assert not any("configuration" in str(w.message) for w in record)


@pytest.mark.parametrize("cut", [0, 0.5, 0.95])
def test_truncated_checkpoint_warns_that_it_could_not_be_read(tmp_path, cut):
    x, y = _toy_data()
    _train(x, y, tmp_path / "c.pt")
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(raw[: int(cut * len(raw))])
    m = SmallResNet(num_classes=4, widths=(8, 16, 32))
    what = "is empty (0 bytes)" if cut == 0 else "is truncated or corrupted"
    with pytest.warns(UserWarning) as record:
        r = fit(m, TensorLoader(x, y, batch_size=16), epochs=1,
                loss_fn=torch.nn.functional.cross_entropy, checkpoint=tmp_path / "c.pt",
                config=m.config(), kind="classifier", progress=False)
    messages = [str(w.message) for w in record if "checkpoint" in str(w.message)]
    assert len(messages) == 1, messages
    assert f"c.pt could not be read: the file {what}" in messages[0]
    assert "moved to" in messages[0] and "training from scratch" in messages[0]
    assert "configuration" not in messages[0] and "delete it" not in messages[0]
    assert r.resumed_from_epoch == 0
    (old,) = (tmp_path / "old").glob("classifier-*.pt")
    assert old.read_bytes() == raw[: int(cut * len(raw))]  # kept as it was, for a look


def test_tensor_loader_batches_tuples_and_dicts():
    x, y = torch.arange(10.0), torch.arange(10)
    loader = TensorLoader(({"a": x, "b": 2 * x}, x.view(10, 1)), y, batch_size=4, seed=3)
    for (feats, col), t in loader:
        assert torch.equal(feats["a"], t.float()) and torch.equal(feats["b"], 2 * t.float())
        assert torch.equal(col[:, 0], t.float())
    with pytest.raises(ValueError, match="rows"):
        TensorLoader(({"a": x}, x[:3]), y)


@pytest.mark.parametrize("content, match", [
    (b"", r"could not be read: the file is empty \(0 bytes\)"),
    (b"not a checkpoint at all", "could not be read: the file is truncated or corrupted"),
])
def test_corrupted_checkpoint_is_named(tmp_path, content, match):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        load_checkpoint(path)
    assert "broken.pt" in str(err.value)


def test_truncated_and_foreign_checkpoints(tmp_path, small):
    good = save_checkpoint(tmp_path / "good.pt", state_dict=small.state_dict(),
                           config=small.config(), kind="classifier")
    raw = good.read_bytes()
    (tmp_path / "half.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="half.pt could not be read: the file is truncated"):
        load_checkpoint(tmp_path / "half.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a partslib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="expected 'pdm'"):
        load_checkpoint(good, kind="pdm")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_evaluate_classifier_confusion(small):
    x, y = _toy_data(16)
    r = evaluate_classifier(small, x, y, num_classes=4)
    cm = torch.tensor(r["confusion_matrix"])
    assert cm.sum() == 16 and cm.sum(1).tolist() == [4, 4, 4, 4]
    assert r["accuracy"] == pytest.approx(float(cm.diag().sum()) / 16)
