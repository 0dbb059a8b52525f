"""Tests of the study helpers: partslib.pipeline, partslib.data.summary and partslib.viz."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from partslib import pipeline, viz
from partslib.data import summary
from partslib.data.synthparts import SynthParts, SynthPartsConfig
from partslib.training import predict, seed_everything

TINY = dict(arch="small_resnet", widths=(8, 16, 32), epochs=2, lr=3e-3, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data")
    return pipeline.load_splits(cache, image_size=32, train_seed=0, n_train=48, test_seed=1,
                                n_test=24, val_seed=2, n_val=24)


def test_load_splits_are_three_disjoint_streams(splits, tmp_path):
    train, val, test = splits
    assert splits.train is train and splits.val is val and splits.test is test
    assert (len(train), len(val), len(test)) == (48, 24, 24) and val.cfg.size == 32
    assert (train.seed, val.seed, test.seed) == (0, 2, 1)
    # no image of one stream appears in another (the first samples included)
    shared = summary.shared_images(("train", train), ("val", val), ("test", test))
    assert shared == {"train/val": 0, "train/test": 0, "val/test": 0}
    # the check itself sees a shared image
    assert summary.shared_images(("a", train), ("b", train))["a/b"] == len(train)
    for seeds in [dict(train_seed=3, test_seed=3, val_seed=4),
                  dict(train_seed=3, test_seed=4, val_seed=3),
                  dict(train_seed=4, test_seed=3, val_seed=3)]:
        with pytest.raises(ValueError, match="must differ"):
            pipeline.load_splits(tmp_path, n_train=4, n_test=4, n_val=4, **seeds)
    with pytest.raises(ValueError, match="n_val must be >= 1"):
        pipeline.load_splits(tmp_path, n_val=0)


def test_history_holds_validation_only_and_training_ignores_it(splits, tmp_path):
    train, val, test = splits
    seed_everything(0)  # the model is initialised from the global generator
    model, metrics, history = pipeline.train_classifier(train, val, test,
                                                        results_dir=tmp_path / "a", **TINY)
    keys = set().union(*history)
    assert {"train_loss", "val_loss", "val_accuracy"} <= keys
    assert not any(k.startswith("test") for k in keys)
    logits = predict(model, val.images)
    assert history[-1]["val_accuracy"] == metrics["val_accuracy"] == \
        float((logits.argmax(1) == val.labels).float().mean())
    # the per-epoch evaluation draws no random numbers: the same weights without it, or with
    # another evaluation split
    for name, other in [("none", None), ("test", test)]:
        seed_everything(0)
        m2, _, h2 = pipeline.train_classifier(train, other, test,
                                              results_dir=tmp_path / name, **TINY)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                      m2.state_dict().values()))
        assert [h["train_loss"] for h in h2] == [h["train_loss"] for h in history]
    assert set().union(*pipeline.train_classifier(train, None, test, results_dir=tmp_path / "none",
                                                  **TINY)[2]) == {"epoch", "train_loss"}


def test_split_checksum_equals_the_cache_manifest(tmp_path):
    ds = SynthParts(SynthPartsConfig(size=32), seed=5, n=12, cache_dir=tmp_path, progress=False)
    manifests = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert [m["sha256"] for m in manifests] == [summary.split_checksum(ds)]


def test_summary_tables(splits):
    train, _, test = splits
    sig = summary.signature_table(train.cfg)
    assert list(sig.columns) == ["name", "decisive parts", "pattern",
                                 "minimal sufficient part sets"]
    assert len(sig) == train.cfg.num_classes
    assert sig.loc[5, "decisive parts"] == "legs, tail"
    assert sig.loc[5, "minimal sufficient part sets"] == "tail | legs"
    counts = summary.class_counts(("train", train), ("test", test))
    assert counts["train"].sum() == 48 and counts["test"].sum() == 24
    areas = summary.part_areas(train)
    assert list(areas.columns) == train.part_names
    np.testing.assert_allclose(areas.sum(axis=1).to_numpy(), 1.0)


def test_train_classifier_resumes_loads_and_restarts(splits, tmp_path):
    train, val, test = splits
    model, metrics, history = pipeline.train_classifier(train, val, test, results_dir=tmp_path,
                                                        **TINY)
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(history[0])
    assert metrics["epochs_trained"] == 2 and 0 <= metrics["test_accuracy"] <= 1
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == len(test)
    assert abs(np.trace(cm) / cm.sum() - metrics["test_accuracy"]) < 1e-6

    # a second call with the same configuration loads the finished checkpoint: no training
    _, metrics2, history2 = pipeline.train_classifier(train, val, test, results_dir=tmp_path,
                                                      **TINY)
    assert metrics2["epochs_trained"] == 0 and history2 == history
    assert metrics2["test_accuracy"] == metrics["test_accuracy"]

    # load_classifier gives the same frozen model in eval mode
    loaded = pipeline.load_classifier(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = test.images[:5].float() / 255
    torch.testing.assert_close(loaded(x), model(x))

    # another configuration: the old checkpoint is moved aside, training starts over
    with pytest.warns(UserWarning, match="another configuration"):
        _, metrics3, _ = pipeline.train_classifier(train, val, test, results_dir=tmp_path,
                                                   **{**TINY, "epochs": 1})
    assert metrics3["epochs_trained"] == 1
    assert len(list((tmp_path / "checkpoints" / "old").glob("classifier-*.pt"))) == 1


def test_same_seed_same_classifier(splits, tmp_path):
    train, val, test = splits
    a = pipeline.train_classifier(train, val, test, results_dir=tmp_path / "a", **TINY)[1]
    b = pipeline.train_classifier(train, val, test, results_dir=tmp_path / "b", **TINY)[1]
    drop = ("train_seconds",)
    assert {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}


def test_load_classifier_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the classifier stage first"):
        pipeline.load_classifier(tmp_path)


def test_create_classifier_torchvision_and_unknown():
    from partslib.models import create_classifier

    m = create_classifier("resnet18", num_classes=6, image_size=64)
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 6)
    with pytest.raises(ValueError, match="small_resnet"):
        create_classifier("vgg", num_classes=6, image_size=64)
    with pytest.raises(ValueError, match="arch must be"):
        pipeline.train_classifier(None, None, None, results_dir=".", arch="vgg")


def test_write_params_and_metrics(tmp_path):
    pipeline.write_params(tmp_path, {"seed": 0, "widths": (1, 2), "path": tmp_path})
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["parameters"]["widths"] == [1, 2]
    assert params["versions"]["torch"] == torch.__version__.split("+")[0]
    pipeline.write_metrics(tmp_path, {"acc": np.float32(0.5), "n": np.int64(3)})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"acc": 0.5, "n": 3}


def test_figures(splits):
    train = splits.train
    figs = [
        viz.plot_samples(train, n=5, ncols=3),
        viz.plot_confusion(np.eye(6, dtype=int) * 4, train.class_names),
        viz.plot_history([{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5},
                          {"epoch": 2, "train_loss": 0.5, "val_accuracy": 0.7}]),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert len(figs[0].legends[0].get_texts()) == train.cfg.num_parts
    with pytest.raises(ValueError, match="empty"):
        viz.plot_history([])
    for f in figs:
        matplotlib.pyplot.close(f)


def test_overlay_parts_leaves_background_and_is_pure():
    image = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[2:4, 2:4] = 1
    before = image.clone()
    out = viz.overlay_parts(image, mask)
    assert out.shape == (8, 8, 3) and torch.equal(image, before)
    np.testing.assert_allclose(out[0, 0], 128 / 255)
    assert not np.allclose(out[2, 2], 128 / 255)


def test_save_figure(tmp_path):
    fig = viz.plot_confusion([[1, 0], [0, 1]], ["a", "b"])
    path = viz.save_figure(fig, tmp_path / "sub" / "cm.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    matplotlib.pyplot.close(fig)


def test_pdm_stage_trains_resumes_and_loads(splits, tmp_path):
    train, val, test = splits
    clf, _, _ = pipeline.train_classifier(train, val, test, results_dir=tmp_path, **TINY)
    kw = dict(results_dir=tmp_path, epochs=2, batch_size=16, widths=[8, 8], image_width=4,
              n_train=32)
    seed_everything(0)  # the PDM is initialised from the global generator
    pdm, metrics, history = pipeline.train_pdm(clf, train, val, test, **kw)
    assert metrics["n_train"] == 32 and metrics["classifier_unchanged"]
    assert 0 <= metrics["miou"] <= 1 and history[-1]["val_miou"] == metrics["val_miou"]
    assert not any(k.startswith("test") for h in history for k in h)
    # the per-epoch validation draws no random numbers: the same weights without it
    seed_everything(0)
    bare, _, bare_history = pipeline.train_pdm(clf, train, None, test,
                                               **{**kw, "results_dir": tmp_path / "bare"})
    assert all(torch.equal(a, b) for a, b in zip(pdm.state_dict().values(),
                                                  bare.state_dict().values()))
    assert set().union(*bare_history) == {"epoch", "train_loss"}
    loaded = pipeline.load_pdm(tmp_path)
    x = test.images[:4].float() / 255
    torch.testing.assert_close(loaded.part_probs(clf, x), pdm.part_probs(clf, x))
    # the same configuration reuses the checkpoint; another one archives it
    _, again, _ = pipeline.train_pdm(clf, train, val, test, **kw)
    assert again["miou"] == metrics["miou"]
    with pytest.warns(UserWarning, match=r"differing keys: model\.image_width"):
        pipeline.train_pdm(clf, train, val, test, **{**kw, "image_width": 0})
    assert len(list((tmp_path / "checkpoints" / "old").glob("pdm-*.pt"))) == 1


def test_pdm_stage_refuses_an_image_step_on_torchvision(splits, tmp_path):
    train, val, test = splits
    clf = pipeline.train_classifier(train, val, test, results_dir=tmp_path, arch="resnet18",
                                    epochs=0)[0]
    with pytest.raises(ValueError, match="pass image_width=0"):
        pipeline.train_pdm(clf, train, val, test, results_dir=tmp_path, epochs=1, widths=None,
                           image_width=8)
