"""The real-photo study (partslib.studies.realphoto, partslib.data.prepare).

The pipeline runs end to end on a tiny folder-format dataset written with ``write_folder``
(a few images, 2 classes, 2 parts) in seconds. The Car Parts conversion and the CCP loader
run on the real copies in the ``shared`` folder next to the repository (``PARTSLIB_SHARED``
overrides it); those tests skip when it is absent.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partslib.data.folder import FolderDataset, write_folder
from partslib.data.prepare import ccp_outfit, ensure_dataset, prepare_ccp
from partslib.data.prepare import main as prepare_main
from partslib.data.realphotos import carve_validation
from partslib.explain import PartExplainer
from partslib.models import create_classifier
from partslib.studies import realphoto as rs

SHARED = Path(os.environ.get("PARTSLIB_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CAR_PARTS = SHARED / "realdata" / "car-parts"
CCP = SHARED / "realdata" / "clothing-co-parsing"
CLASSES = ["round", "square"]
PARTS = ["top", "bottom"]


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path} (set PARTSLIB_SHARED to the folder holding realdata/)"
        )
    return path


def _sample(i: int, size: int = 40):
    """An object of two parts (top / bottom half); class 'square' has a bright square top,
    'round' a dark disc top. Borders of the object are marked 255 (ignore)."""
    g = np.random.default_rng(i)
    img = g.integers(60, 120, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    cls = i % 2
    cy, cx = size // 2 + int(g.integers(-3, 4)), size // 2 + int(g.integers(-3, 4))
    yy, xx = np.mgrid[:size, :size]
    r = 10
    if cls == 1:
        obj = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    else:
        obj = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    top, bottom = obj & (yy < cy), obj & (yy >= cy)
    img[top] = (230, 230, 40) if cls == 1 else (30, 30, 200)
    img[bottom] = (200, 60, 60)
    mask[top], mask[bottom] = 1, 2
    mask[0, :] = 255
    split = "test" if i % 4 == 3 else "train"
    return f"s{i:02d}", img, mask, CLASSES[cls], split


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "folder"
    write_folder(root, (_sample(i) for i in range(24)), PARTS, CLASSES)
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_folder, tmp_path_factory):
    torch.manual_seed(0)
    results = tmp_path_factory.mktemp("results")
    data = rs.load_real_data(tiny_folder, 32, name="tiny", cache_dir=results / "cache",
                             val_fraction=0.25)
    model, cm, clf_history = rs.train_classifier(
        data, results_dir=results, widths=(8, 16, 16), epochs=6, batch_size=6, lr=0.01
    )
    pdm, pm, pdm_history = rs.train_part_model(
        model, data, results_dir=results, epochs=2, batch_size=8, image_width=4
    )
    return data, model, pdm, cm, pm, results, (clf_history, pdm_history)


def test_load_real_data_splits_and_cache(tiny_folder, tmp_path):
    data = rs.load_real_data(tiny_folder, (32, 24), name="tiny", cache_dir=tmp_path)
    assert data.train_images.shape == (18, 3, 32, 24) and data.train_images.dtype == torch.uint8
    assert data.test_masks.shape == (6, 32, 24) and set(data.test_masks.unique().tolist()) <= {
        0,
        1,
        2,
        255,
    }
    assert data.part_names == ["background", *PARTS] and data.class_names == CLASSES
    assert data.split_rule.startswith("classes.csv")
    assert len(list(tmp_path.glob("tiny-*.pt"))) == 1
    again = rs.load_real_data(tiny_folder, (32, 24), name="tiny", cache_dir=tmp_path)
    assert (
        torch.equal(again.train_images, data.train_images) and again.test_names == data.test_names
    )
    counts, parts = rs.data_tables(data)
    assert counts.loc["all", "train"] == 18 and parts.shape == (3, 4)


def test_validation_is_carved_from_the_training_photos_only(tiny_folder, tmp_path):
    full = rs.load_real_data(tiny_folder, 32, name="tiny", cache_dir=tmp_path)
    data = rs.load_real_data(tiny_folder, 32, name="tiny", cache_dir=tmp_path,
                             val_fraction=0.25, val_seed=3)
    assert not full.has_val and data.has_val and data.val_names is not None
    assert data.val_labels is not None and data.val_images is not None
    # the test photos are untouched; train and val partition the former training photos
    assert data.test_names == full.test_names and torch.equal(data.test_images, full.test_images)
    assert sorted(data.train_names + data.val_names) == sorted(full.train_names)
    assert not set(data.train_names) & set(data.val_names)
    assert not set(data.val_names) & set(full.test_names)
    rows = [full.train_names.index(n) for n in data.val_names]
    assert torch.equal(data.val_images, full.train_images[rows])
    assert torch.equal(data.val_labels, full.train_labels[rows])
    # stratified: round(0.25 * n) of each class's n training photos (12 and 6)
    assert torch.bincount(full.train_labels).tolist() == [12, 6]
    assert torch.bincount(data.val_labels).tolist() == [3, 2]
    assert "validation: 0.25" in data.split_rule
    # deterministic (the cache holds the whole training split), and the seed chooses
    again = rs.load_real_data(tiny_folder, 32, name="tiny", cache_dir=tmp_path,
                              val_fraction=0.25, val_seed=3)
    assert again.val_names == data.val_names and again.train_names == data.train_names
    other = rs.load_real_data(tiny_folder, 32, name="tiny", val_fraction=0.25, val_seed=4)
    assert other.val_names != data.val_names
    assert len(data.split("val")) == 5 and data.fingerprint() != full.fingerprint()
    counts, _ = rs.data_tables(data)
    assert list(counts.columns) == ["train", "val", "test"] and counts.loc["all", "val"] == 5
    with pytest.raises(ValueError, match="no validation split"):
        full.split("val")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        rs.load_real_data(tiny_folder, 32, val_fraction=1.0)
    with pytest.raises(ValueError, match="leaves no validation photo"):
        rs.load_real_data(tiny_folder, 32, val_fraction=0.01)
    # a class with a single training photo keeps it for training
    keep = [full.train_labels.tolist().index(0),
            *torch.nonzero(full.train_labels == 1).flatten().tolist()]
    one = dataclasses.replace(full, train_images=full.train_images[keep],
                              train_masks=full.train_masks[keep],
                              train_labels=full.train_labels[keep],
                              train_names=[full.train_names[i] for i in keep])
    carved = carve_validation(one, 0.5, seed=0)
    assert carved.val_labels is not None and 0 not in carved.val_labels.tolist()
    assert carved.train_labels.tolist().count(0) == 1


def test_load_real_data_without_split_column(tmp_path):
    root = tmp_path / "nosplit"
    write_folder(root, (_sample(i)[:4] for i in range(20)), PARTS, CLASSES)
    data = rs.load_real_data(root, 32, test_fraction=0.2, split_seed=1)
    assert len(data.test_labels) == 4 and torch.bincount(data.test_labels).tolist() == [2, 2]
    assert "stratified" in data.split_rule


def test_pipeline_end_to_end(tiny_run):
    data, model, pdm, cm, pm, results, (clf_history, pdm_history) = tiny_run
    # per-epoch numbers are validation numbers only; the test photos are evaluated once
    assert {"val_loss", "val_accuracy"} <= set(clf_history[0]) and len(pdm_history) == 2
    assert all("val_miou" in h for h in pdm_history)
    assert not any(k.startswith("test") for h in clf_history + pdm_history for k in h)
    assert cm["n_val"] == 5 and cm["n_train"] == 13 and 0.0 <= cm["val_accuracy"] <= 1.0
    assert pm["val_miou"] == pdm_history[-1]["val_miou"]
    assert 0.0 <= cm["test_accuracy"] <= 1.0 and len(cm["confusion_matrix"]) == 2
    assert (
        cm["epochs_trained"] == 6
        and cm["test_accuracy"] >= 0.5
        and (results / "checkpoints" / "tiny-classifier.pt").is_file()
    )
    assert pm["classifier_unchanged"] and 0.0 <= pm["miou"] <= 1.0
    assert set(pm) >= {"iou/top", "iou/bottom", "iou/background"}
    loaded = rs.load_classifier(results, "tiny")
    x = data.test_images.float() / 255
    assert torch.equal(loaded(x), model(x))

    decisive = {"round": ["top"], "square": ["top"]}
    ibd = rs.fit_ibd_baseline(model, data, epochs=2)
    t1 = rs.localization(model, pdm, ibd, data, decisive)
    assert list(t1["method"])[:2] == ["PDM", "IBD linear maps"]
    t1m = rs.t1_metrics(t1)
    assert "pdm/miou" in t1m and "ibd_linear_maps/iou/top" in t1m

    t2, extras = rs.validity(
        model,
        pdm,
        ibd,
        data,
        decisive,
        n_eval=4,
        n_sanity=2,
        n_eval_by_operator={"road": 2},
        methods=("pdm-region-soft", "pdm-occlusion", "gradcam-mass", "random"),
    )
    assert set(t2["operator"]) == {"mean", "blur", "road"} and t2["n_images"].min() >= 1
    assert extras["mean"] is extras["blur"] and extras["road"] is not extras["mean"]
    assert t2[t2.operator == "road"]["n_images"].max() <= 2
    soft = t2[t2.method == "pdm-region-soft"]
    assert (soft["completeness_error_max"].dropna() <= 1e-4).all()

    with pytest.raises(ValueError, match="no exact counterfactual"):
        rs.validity(model, pdm, ibd, data, decisive, operators=("rerender",))


def test_resume_reuses_checkpoints(tiny_run):
    data, _model, _pdm, cm, pm, results, _ = tiny_run
    again, cm2, _ = rs.train_classifier(
        data, results_dir=results, widths=(8, 16, 16), epochs=6, batch_size=6, lr=0.01
    )
    assert cm2["epochs_trained"] == 0 and cm2["test_accuracy"] == cm["test_accuracy"]
    _, pm2, _ = rs.train_part_model(
        again, data, results_dir=results, epochs=2, batch_size=8, image_width=4
    )
    assert pm2["miou"] == pytest.approx(pm["miou"])


def test_decisive_matrix():
    labels = torch.tensor([0, 1, 1])
    d = rs.decisive_matrix(labels, CLASSES, ["background", *PARTS], {"square": ["bottom"]})
    assert d.tolist() == [[False, False, False], [False, False, True], [False, False, True]]
    with pytest.raises(ValueError, match="unknown classes \\['oval'\\].*parts \\['wing'\\]"):
        rs.decisive_matrix(labels, CLASSES, ["background", *PARTS], {"oval": ["wing"]})
    parts = [
        "background",
        "back_bumper",
        "back_glass",
        "back_left_door",
        "back_left_light",
        "back_right_door",
        "back_right_light",
        "front_bumper",
        "front_glass",
        "front_left_door",
        "front_left_light",
        "front_right_door",
        "front_right_light",
        "hood",
        "left_mirror",
        "right_mirror",
        "tailgate",
        "trunk",
        "wheel",
    ]
    d = rs.decisive_matrix(
        torch.tensor([0, 1, 2]), ["back", "front", "side"], parts, rs.CARPARTS_DECISIVE
    )
    assert d.sum(1).tolist() == [6, 5, 7] and not d[:, 0].any()
    assert not (d[0] & d[1]).any() and not (d[1] & d[2]).any()


def test_create_classifier_backbones(tmp_path):
    m = create_classifier("small_resnet", 3, (48, 32), widths=(8, 16))
    assert m.input_size == (48, 32) and m(torch.rand(2, 3, 48, 32)).shape == (2, 3)
    tv = create_classifier("resnet18", 4, 64)
    assert tv.num_classes == 4 and tv.stage_names[-1] == "layer4"
    # an ImageNet-style file (1000-class head) fine-tunes: every layer but the head is loaded
    src = create_classifier("resnet18", 1000, 64)
    path = tmp_path / "imagenet.pt"
    state = dict(src.state_dict().items())
    torch.save(
        {
            ("module." + k.replace("stem.0", "conv1").replace("stem.1", "bn1")): v
            for k, v in state.items()
        },
        path,
    )
    ft = create_classifier("resnet18", 3, 64, weights=path)
    assert ft.num_classes == 3 and torch.equal(
        ft.layer1[0].conv1.weight, src.layer1[0].conv1.weight
    )
    with pytest.raises(ValueError, match="small_resnet"):
        create_classifier("vgg16", 3, 64)
    small = create_classifier("small_resnet", 2, 32, widths=(8, 16))
    torch.save(small.state_dict(), tmp_path / "small.pt")
    again = create_classifier("small_resnet", 2, 32, weights=tmp_path / "small.pt", widths=(8, 16))
    assert torch.equal(again.fc.weight, small.fc.weight)
    with pytest.raises(ValueError, match="does not fit"):
        create_classifier("small_resnet", 3, 32, weights=tmp_path / "small.pt", widths=(8, 16))


def test_epochs_zero_uses_the_weights_as_given(tiny_run, tmp_path):
    data, model, *_ = tiny_run
    path = tmp_path / "trained.pt"
    torch.save(model.state_dict(), path)
    same, cm, hist = rs.train_classifier(
        data, results_dir=tmp_path, weights=path, widths=(8, 16, 16), epochs=0
    )
    assert hist == [] and cm["epochs_trained"] == 0
    x = data.test_images.float() / 255
    assert torch.equal(same(x), model(x))


# ------------------------------------------------------------------------ any photograph


def _photo_files(tmp_path: Path) -> dict[str, Path]:
    rgb = _sample(1, size=60)[1]
    gray = tmp_path / "gray.png"
    Image.fromarray(rgb).convert("L").save(gray)
    rgba = tmp_path / "rgba.png"
    a = np.full(rgb.shape[:2], 255, np.uint8)
    a[:10] = 0  # a transparent strip: composited on white
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(rgba)
    # stored rotated, with EXIF orientation 6 ("rotate 90 CW to display")
    rotated = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb[:, :45], 1))).save(
        rotated, exif=exif, quality=95
    )
    return {"gray": gray, "rgba": rgba, "exif": rotated, "upright": _upright(tmp_path, rgb)}


def _upright(tmp_path: Path, rgb: np.ndarray) -> Path:
    p = tmp_path / "upright.jpg"
    Image.fromarray(np.ascontiguousarray(rgb[:, :45])).save(p, quality=95)
    return p


def test_explain_photo_any_mode_and_orientation(tiny_run, tmp_path):
    data, model, pdm, *_ = tiny_run
    explainer = PartExplainer(model, pdm, data.part_names)
    files = _photo_files(tmp_path)
    for kind in ("gray", "rgba", "exif", "upright"):
        e, image = rs.explain_photo(explainer, files[kind], fit="squash")
        assert image.shape == (3, 32, 32) and len(e) == 1
        assert e.labels.shape == (1, 32, 32)
        assert float(e.completeness_error().max()) <= 1e-4
        # the default keeps the aspect ratio (60x45 -> 32x24 in grey padding), cropped back
        e, image = rs.explain_photo(explainer, files[kind])
        shape = (32, 32) if kind in ("gray", "rgba") else (32, 24)
        assert image.shape == (3, *shape) and e.labels.shape == (1, *shape)
        assert e.part_probs.shape[-2:] == shape
        assert float(e.completeness_error().max()) <= 1e-4
    _, gray = rs.explain_photo(explainer, files["gray"])
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    _, rgba = rs.explain_photo(explainer, files["rgba"])
    assert torch.allclose(rgba[:, :4], torch.ones(3, 4, 32), atol=0.02)  # white behind alpha
    with pytest.raises(ValueError, match="takes 32x32 images only"):
        rs.explain_photo(explainer, files["rgba"], size=(60, 60))
    # the EXIF-rotated file is explained upright: the same photo as the upright copy
    e_rot, rot = rs.explain_photo(explainer, files["exif"])
    e_up, up = rs.explain_photo(explainer, files["upright"])
    assert (rot - up).abs().mean() < 0.03
    assert (e_rot.labels == e_up.labels).float().mean() > 0.9
    e_occ, _ = rs.explain_photo(explainer, files["gray"], mode="occlusion", target=1)
    assert int(e_occ.target) == 1 and e_occ.mode == "pdm-occlusion"
    assert e_occ.rule.startswith("occlusion:")


# ----------------------------------------------------------------------- data preparation


def test_ensure_dataset_reports_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="git clone https://github.com/dsmlr"):
        ensure_dataset("carparts", tmp_path / "carparts", src=tmp_path / "nowhere")
    assert prepare_main(["carparts", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


def test_resolve_path(tmp_path):
    assert rs.resolve_path("/abs/x") == Path("/abs/x")
    assert rs.resolve_path("data/x", root=tmp_path) == tmp_path / "data" / "x"
    assert (rs.resolve_path("data/carparts").parent.parent / "profiles").is_dir()


def test_ccp_outfit():
    assert ccp_outfit({"dress": 10, "jeans": 5}) == "dress"
    assert ccp_outfit({"romper": 3}) == "dress"
    assert ccp_outfit({"jeans": 9, "skirt": 2}) == "trousers"
    assert ccp_outfit({"hair": 9}) is None


def test_carparts_conversion_and_viewpoints(tmp_path):
    src = _need(CAR_PARTS)
    out = ensure_dataset("carparts", tmp_path / "carparts", src=src, log=lambda *a: None)
    assert (out / "prepared.json").is_file() and not (tmp_path / "carparts.partial").exists()
    train = FolderDataset(out, split="train", validate=False)
    test = FolderDataset(out, split="test", validate=False)
    assert (len(train), len(test)) == (400, 100)
    assert train.class_names == ["back", "front", "side"] and len(train.part_names) == 19
    counts = {
        s: np.bincount(ds.labels, minlength=3).tolist()
        for s, ds in (("train", train), ("test", test))
    }
    assert counts == {"train": [126, 219, 55], "test": [18, 75, 7]}  # back, front, side
    assert ensure_dataset("carparts", out, src=tmp_path / "nowhere") == out  # exists: no-op
    data = rs.load_real_data(out, 64, name="carparts", validate=False)
    d = rs.decisive_matrix(
        data.test_labels, data.class_names, data.part_names, rs.CARPARTS_DECISIVE
    )
    # the defining parts are present in nearly every front / back photo
    present = torch.stack(
        [(data.test_masks.long() == p).flatten(1).any(1) for p in range(data.num_labels)], 1
    )
    has = (d & present).any(1)
    for k in (0, 1):
        assert has[data.test_labels == k].float().mean() > 0.9


def test_ccp_loader_and_conversion_on_real_files(tmp_path):
    src = _need(CCP)
    names = ["0001", "0002", "0003", "0004", "0005", "0006"]
    res = prepare_ccp(src, tmp_path / "ccp", test_every=3, names=names)
    assert res.written + len(res.skipped) == 6
    ds = FolderDataset(tmp_path / "ccp")
    assert ds.part_names == [
        "background",
        "hair",
        "skin",
        "upper_clothes",
        "lower_clothes",
        "full_body",
        "shoes",
        "accessories",
    ]
    assert set(ds.class_names) <= {"dress", "shorts", "skirt", "trousers"}
    item = ds[0]
    assert item["image"].shape[1:] == item["mask"].shape and item["mask"].max() <= 7
    hair_or_skin = ((item["mask"] == 1) | (item["mask"] == 2)).float().mean()
    assert 0.005 < float(hair_or_skin) < 0.5
    data = rs.load_real_data(tmp_path / "ccp", (96, 64), name="ccp")
    assert len(data.test_names) >= 1 and data.train_images.shape[-2:] == (96, 64)
    assert not math.isnan(float(data.train_masks.float().mean()))
