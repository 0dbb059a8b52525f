"""Streaming part datasets: lazy readers in one shape, augmentation, reproducible loaders, and
``fit`` on a DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_realdata import _write_broden, _write_carparts_layout, _write_pascal_part
from torch.utils.data import DistributedSampler

from partslib.data.broden import BrodenPartsDataset, broden_to_folder
from partslib.data.coco_parts import CocoPartsDataset, carparts_viewpoint
from partslib.data.folder import FolderDataset, write_folder
from partslib.data.pascal_part import PascalPartDataset
from partslib.data.streaming import EpochSampler, PartStream, SynthPartsStream, make_loader
from partslib.data.synthparts import SynthParts, SynthPartsConfig
from partslib.training import TensorLoader, fit

from toys import small_classifier

CFG = SynthPartsConfig(size=32)


def _synth_folder(root, n: int = 12, seed: int = 5):
    stream = SynthPartsStream(CFG, seed=seed, n=n)
    return write_folder(root, stream.folder_samples("s", digits=3), CFG.part_names[1:], CFG.names)


def test_synthparts_stream_renders_the_cached_split(tmp_path):
    cached = SynthParts(CFG, seed=3, n=6, cache_dir=tmp_path, progress=False)
    stream = SynthPartsStream(CFG, seed=3, n=6)
    assert stream.labels == cached.labels.tolist()
    for i in range(6):
        a, b = stream[i], cached[i]
        assert torch.equal(a["image"].float() / 255, b["image"])
        assert torch.equal(a["mask"], b["mask"]) and a["label"] == b["label"]
    with pytest.raises(IndexError, match="out of range"):
        stream[6]


def test_part_stream_folder_shapes_dtypes_and_keys(tmp_path):
    root = _synth_folder(tmp_path / "f", n=4)
    folder = FolderDataset(root)
    item = PartStream(folder, size=(16, 16))[1]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.int64
    assert item["label"] == folder.labels[1] and item["name"] == "s001"
    u8 = PartStream(folder, size=(16, 16), dtype="uint8")[1]["image"]
    assert u8.dtype == torch.uint8
    assert torch.equal(u8, (item["image"] * 255).round().to(torch.uint8))
    # the folder's PNGs hold the rendered pixels exactly
    same = PartStream(folder, dtype="uint8", keys=("image", "mask", "label"))[2]
    ref = SynthPartsStream(CFG, seed=5, n=4)[2]
    assert torch.equal(same[0], ref["image"]) and torch.equal(same[1], ref["mask"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        PartStream(folder, dtype="float16")
    with pytest.raises(ValueError, match="keys must name"):
        PartStream(folder, keys=("pixels",))


def test_augmentation_moves_image_and_mask_together_and_is_seeded(tmp_path):
    src = SynthPartsStream(CFG, seed=1, n=8)
    plain = PartStream(src)
    aug = PartStream(src, augment=True, seed=4)
    changed = 0
    for i in range(8):
        a, p = aug[i], plain[i]
        assert torch.equal(aug[i]["image"], a["image"])  # a pure function of (seed, epoch, i)
        # the same flip and shift on both: the mask still labels the image's pixels, i.e. the
        # augmented pair equals one of the candidate transforms of the plain pair
        img, msk = p["image"][None], p["mask"][None, None].float()
        ph = max(1, int(0.08 * 32))
        found = False
        for flip in (False, True):
            x, m = (img.flip(-1), msk.flip(-1)) if flip else (img, msk)
            xp = F.pad(x, (ph, ph, ph, ph), mode="replicate")
            mp = F.pad(m, (ph, ph, ph, ph), mode="replicate")
            for dy in range(2 * ph + 1):
                for dx in range(2 * ph + 1):
                    if (torch.equal(xp[0, :, dy:dy + 32, dx:dx + 32], a["image"]) and
                            torch.equal(mp[0, 0, dy:dy + 32, dx:dx + 32].long(), a["mask"])):
                        found = True
        assert found
        changed += not torch.equal(a["image"], p["image"])
    assert changed >= 6
    first = aug[0]["image"]
    aug.set_epoch(1)
    assert not all(torch.equal(aug[i]["image"], PartStream(src, augment=True, seed=4)[i]["image"])
                   for i in range(8))
    aug.set_epoch(0)
    assert torch.equal(aug[0]["image"], first)


def test_every_reader_streams_in_one_shape(tmp_path):
    _write_broden(tmp_path / "broden")
    lazy = PartStream(BrodenPartsDataset(tmp_path / "broden"), size=(16, 16))
    broden_to_folder(tmp_path / "broden", tmp_path / "bf")
    folder = PartStream(FolderDataset(tmp_path / "bf"), size=(16, 16))
    assert lazy.part_names == folder.part_names
    for i in range(len(folder)):
        a, b = lazy[i], folder[i]
        assert torch.equal(a["mask"], b["mask"]) and torch.allclose(a["image"], b["image"])
        assert lazy.class_names[a["label"]] == folder.class_names[b["label"]]
    _write_pascal_part(tmp_path / "pascal")
    pascal = PartStream(PascalPartDataset(tmp_path / "pascal" / "JPEGImages",
                                          tmp_path / "pascal" / "Annotations_Part"), (8, 8))
    _write_carparts_layout(tmp_path / "car")
    coco = PartStream(CocoPartsDataset(tmp_path / "car" / "trainingset" / "JPEGImages",
                                       tmp_path / "car" / "trainingset" / "annotations.json",
                                       class_of=carparts_viewpoint), (8, 8), dtype="uint8")
    for ds in (pascal, coco):
        item = ds[0]
        assert item["image"].shape[-2:] == (8, 8) and item["mask"].shape == (8, 8)
        assert item["mask"].dtype == torch.int64 and isinstance(item["label"], int)
        assert int(item["mask"].max()) > 0


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_reproducible_across_workers_and_epochs():
    data = PartStream(SynthPartsStream(CFG, seed=2, n=20), augment=True, seed=1,
                      keys=("image", "label"))
    one = make_loader(data, 6, shuffle=True, workers=0, seed=3)
    two = make_loader(data, 6, shuffle=True, workers=2, seed=3)
    a, b = _batches(one), _batches(two)
    assert len(a) == 4 and all(torch.equal(x, y) and torch.equal(u, v)
                               for (x, u), (y, v) in zip(a, b))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(data.source.labels)
    for part in (one.sampler, one.dataset):
        part.set_epoch(1)  # pyright: ignore[reportAttributeAccessIssue]
    c = _batches(one)
    assert not torch.equal(a[0][0], c[0][0])
    with pytest.raises(ValueError, match="shuffle=False with a sampler"):
        make_loader(data, 4, shuffle=True, sampler=EpochSampler(20))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_loader(data, 0)


def test_distributed_sampler_shares_cover_the_dataset_once():
    data = PartStream(SynthPartsStream(CFG, seed=2, n=10), keys=("index",))
    seen = []
    for rank in range(2):
        s = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0,
                               drop_last=False)
        seen += [int(i) for (batch,) in make_loader(data, 3, sampler=s) for i in batch]
    assert sorted(seen) == list(range(10))


def test_fit_on_a_dataloader_matches_tensor_loader_and_resumes(tmp_path):
    n, size = 16, 32
    src = SynthPartsStream(CFG, seed=0, n=n)
    data = PartStream(src, keys=("image", "label"))
    images = torch.stack([data[i][0] for i in range(n)])
    labels = torch.tensor(src.labels)
    kw = dict(epochs=2, loss_fn=F.cross_entropy, seed=0, progress=False)

    def model():
        return small_classifier(CFG.num_classes, widths=(4, 8, 8), size=size)

    ref = model()
    fit(ref, TensorLoader(images, labels, batch_size=8, seed=0), **kw)
    streamed = model()
    fit(streamed, make_loader(data, 8, shuffle=True, seed=0), **kw)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, streamed.state_dict()[k]), k

    # a run that dies in its second epoch resumes from the first epoch's checkpoint
    calls = {"n": 0}

    def dying(logits, target):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return F.cross_entropy(logits, target)

    ckpt = tmp_path / "m.pt"
    resumed = model()
    with pytest.raises(KeyboardInterrupt):
        fit(resumed, make_loader(data, 8, shuffle=True, seed=0), checkpoint=ckpt,
            **{**kw, "loss_fn": dying})
    resumed = model()
    result = fit(resumed, make_loader(data, 8, shuffle=True, seed=0), checkpoint=ckpt, **kw)
    assert result.resumed_from_epoch == 1
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert np.isfinite(result.history[-1]["train_loss"])


def test_part_stream_wraps_the_cached_split_and_the_bench_child_trains(tmp_path):
    cached = SynthParts(CFG, seed=3, n=6, cache_dir=tmp_path, progress=False)
    item = PartStream(cached, dtype="uint8")[4]
    assert torch.equal(item["image"], cached.images[4]) and item["label"] == cached[4]["label"]
    from partslib.bench.streaming import _growth, child_train, synth_folder

    folder = synth_folder(tmp_path / "bench", 10, size=32)
    assert len(FolderDataset(folder)) == 10 and (folder / ".complete").exists()
    assert synth_folder(folder, 10, size=32) == folder  # written once
    r = child_train(str(folder), workers=0, threads=1)
    assert r["images"] == 10 and r["peak_rss_mib"] >= r["rss_before_mib"] > 0
    assert np.isfinite(r["train_loss"])
    g = _growth({"10": {"peak_rss_mib": 100.0}, "100": {"peak_rss_mib": 110.0}})
    assert g is not None and g["from"] == 10 and g["to"] == 100
    assert g["peak_growth"] == pytest.approx(0.1)
