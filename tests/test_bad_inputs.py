"""Every bad input and fault of ``docs/bad_inputs.md``, one parametrised case per table row.

Each case builds its bad input in ``tmp_path``, runs what a user would run, checks what must
hold (nothing lost, the documented conversion) and returns the message the user sees; the test
checks that message. ``python tests/test_bad_inputs.py`` prints every row's message (what the
table quotes).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from partslib import PartExplainer
from partslib.data.folder import FolderDataset, validate_folder, write_folder
from partslib.data.images import load_image, load_photo, open_image, read_mask

from toys import random_images, small_classifier, small_pdm

PARTS, CLASSES = ["head", "body"], ["cat", "dog"]
ROOT = Path(__file__).resolve().parents[1]


def _message(fn: Callable[[], object], *errors: type[BaseException]) -> str:
    """Run ``fn``; it must raise one of ``errors``: its message."""
    with pytest.raises(errors or (ValueError,)) as err:
        fn()
    return str(err.value)


def _sample(name: str, seed: int = 0, h: int = 12, w: int = 10, bad: int | None = None):
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    mask[2:6, 2:8], mask[6:10, 2:8] = 1, 2
    if bad is not None:
        mask[0, 0] = bad
    return name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask, CLASSES[seed % 2]


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (byte identity of a folder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _folder(tmp: Path, n: int = 18) -> tuple[Path, dict[str, str]]:
    root = write_folder(tmp / "f", [_sample(f"s{i:02d}", i) for i in range(n)], PARTS, CLASSES)
    (root / "notes.txt").write_text("mine")
    return root, _tree(root)


def _visible(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))


def _explainer() -> PartExplainer:
    clf = small_classifier().eval()
    return PartExplainer(clf, small_pdm(clf, 3).eval(), ["background", *PARTS])


# ------------------------------------------------------------ 1. nothing lost, nothing half


def _write_folder_bad_sample(tmp: Path) -> str:
    root, before = _folder(tmp)
    samples = [_sample(f"n{i}", i) for i in range(5)] + [_sample("bad", bad=77)]
    msg = _message(lambda: write_folder(root, samples, PARTS, CLASSES, overwrite=True))
    assert _tree(root) == before and _visible(tmp) == ["f"] and not list(tmp.iterdir())[1:]
    return msg


def _conversion_raises(tmp: Path) -> str:
    root, before = _folder(tmp)

    def samples():
        yield from (_sample(f"n{i}", i) for i in range(5))
        raise OSError("source photo n5.jpg: read error")
    msg = _message(lambda: write_folder(root, samples(), PARTS, CLASSES, overwrite=True), OSError)
    assert _tree(root) == before and [p.name for p in tmp.iterdir()] == ["f"]
    return msg


_KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_bad_inputs import _sample, PARTS, CLASSES
from partslib.data.folder import write_folder
def samples():
    for i in range(40):
        if i == 20:
            os.kill(os.getpid(), signal.SIGKILL)
        yield _sample(f"n{{i}}", i)
write_folder({root!r}, samples(), PARTS, CLASSES, overwrite=True)
"""


def _conversion_killed(tmp: Path) -> str:
    root, before = _folder(tmp)
    code = _KILLED.format(tests=str(Path(__file__).parent), root=str(root))
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _tree(root) == before and _visible(tmp) == ["f"]
    left = [p.name for p in tmp.iterdir() if p.name.startswith(".f.partial-")]
    assert len(left) == 1  # hidden, half-written: removed by the next write of the folder
    write_folder(root, [_sample("z", 1)], PARTS, CLASSES, overwrite=True)
    assert [p.name for p in tmp.iterdir()] == ["f"] and validate_folder(root) == []
    return (f"(killed by SIGKILL: no message) {root.name}/ byte-identical; the hidden "
            f"{left[0].split('-')[0]}-<pid>-<random> was removed by the next write")


def _coco_missing_photo(tmp: Path) -> str:
    import json

    from partslib.data.coco_parts import coco_parts_to_folder
    (tmp / "images").mkdir()
    images = [{"id": i, "file_name": f"p{i}.png", "height": 12, "width": 10} for i in range(4)]
    for im in images:
        Image.fromarray(_sample("x", im["id"])[1]).save(tmp / "images" / im["file_name"])
    anns = [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
             "segmentation": [[1, 1, 8, 1, 8, 8, 1, 8]]} for i in range(4)]
    (tmp / "parts.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                "categories": [{"id": 1, "name": "head"}]}))
    out = coco_parts_to_folder(tmp / "images", tmp / "parts.json", tmp / "out",
                               class_of=lambda areas: "cat")
    before = _tree(out.root)
    (tmp / "images" / "p2.png").unlink()  # the third photo is gone: the rerun fails half-way
    msg = _message(lambda: coco_parts_to_folder(tmp / "images", tmp / "parts.json", tmp / "out",
                                                class_of=lambda areas: "cat", overwrite=True),
                   FileNotFoundError)
    assert _tree(tmp / "out") == before and _visible(tmp)[-1] == "parts.json"
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out.")]
    return msg


def _checkpoint_write_fails(tmp: Path) -> str:
    from partslib.training import load_checkpoint, save_checkpoint
    path = save_checkpoint(tmp / "clf.pt", state_dict={"w": torch.ones(3)}, config={},
                           kind="classifier")
    before = path.read_bytes()
    msg = _message(lambda: save_checkpoint(path, state_dict={"w": torch.zeros(3)}, config={},
                                           kind="classifier", hook=lambda: 0),
                   AttributeError, TypeError, Exception)
    assert path.read_bytes() == before and [p.name for p in tmp.iterdir()] == ["clf.pt"]
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    return msg


def _table_write_fails(tmp: Path) -> str:
    import pandas as pd

    from partslib.io import write_csv

    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("cell 900 cannot be written")

    path = write_csv(pd.DataFrame({"x": range(1000)}), tmp / "t2.csv", index=False)
    before = path.read_bytes()
    rows = [*range(900), Unprintable(), *range(99)]  # fails after 900 rows were written
    msg = _message(lambda: write_csv(pd.DataFrame({"x": rows}), path, index=False), ValueError)
    assert path.read_bytes() == before and [p.name for p in tmp.iterdir()] == ["t2.csv"]
    return msg


def _ibd_concepts(features: torch.Tensor) -> Callable[[], object]:
    from partslib.ibd import train_concept_classifiers
    labels = torch.randint(0, 3, (len(features), 4, 4), generator=torch.Generator().manual_seed(0))
    return lambda: train_concept_classifiers(features, labels, [1, 2], epochs=1, progress=False)


def _archive_fails(tmp: Path) -> str:
    from partslib import runner
    run = tmp / "run"
    for stage in ("data", "classifier", "pdm"):
        (run / stage).mkdir(parents=True)
        (run / stage / "metrics.json").write_text(f'{{"stage": "{stage}"}}')
    before, real, calls = _tree(run), os.rename, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)
    with mock.patch.object(runner.os, "rename", flaky):
        msg = _message(lambda: runner.archive_previous_run(run), OSError)
    assert _tree(run) == before and sorted(p.name for p in (run / "previous").iterdir()) == []
    return msg


# ------------------------------------------------------------------------ 3. clear errors


def _float64_images(tmp: Path) -> str:
    ex, x = _explainer(), random_images(2)
    torch.testing.assert_close(ex(x.double()).contributions, ex(x).contributions)
    ex64 = PartExplainer(ex.classifier.double(), ex.pdm.double(), ex.part_names)
    assert ex64(x.double()).contributions.dtype == torch.float64  # a float64 model keeps them
    return "no error: float64 images are converted to the classifier's dtype (float32)"


def _pdm_masks(n: int = 2, value: int = 0) -> torch.Tensor:
    m = torch.zeros(n, 64, 64, dtype=torch.long)
    m[:, 0, 0] = value
    return m


def _train(images, masks, **kw):
    from partslib.pdm import train_pdm
    return lambda: train_pdm(small_classifier(), images, masks, num_labels=3, epochs=1,
                             progress=False, **kw)


def _evaluate(images, labels):
    from partslib.training import evaluate_classifier
    return lambda: evaluate_classifier(small_classifier().eval(), images, labels, 5)


def _metric_inputs(n: int, dtype: torch.dtype = torch.float32):
    from partslib.metrics.validity import removal_agreement, removal_effects
    from partslib.removal import MeanFill
    x, labels = random_images(n).to(dtype), torch.zeros(n, 64, 64, dtype=torch.long)
    present = torch.zeros(n, 3, dtype=torch.bool)
    present[:, 0] = True
    if dtype == torch.float32:
        return lambda: removal_agreement(torch.zeros(n, 3), torch.zeros(n, 3), present)
    return lambda: removal_effects(small_classifier().eval(), x, labels, torch.zeros(n).long(),
                                   present, MeanFill())


# ---------------------------------------------------------------- 4. silent emptiness


def _headers_only(tmp: Path, which: str) -> Path:
    root, _ = _folder(tmp, 2)
    header = {"classes.csv": "image,class\n", "parts.csv": "id,name\n"}[which]
    (root / which).write_text(header)
    return root


def _broden_empty(tmp: Path) -> str:
    from partslib.data.broden import BrodenDataset
    (tmp / "label.csv").write_text("number,name,category,frequency,coverage,syns\n"
                                   "1,cat,object(1),1,0.3,\n")
    (tmp / "index.csv").write_text("image,split,ih,iw,sh,sw,color,object,part,material,"
                                   "scene,texture\n")
    return _message(lambda: BrodenDataset(tmp))


def _ccp_empty(tmp: Path) -> str:
    import scipy.io

    from partslib.data.clothing_parsing import ClothingCoParsingDataset
    (tmp / "annotations" / "pixel-level").mkdir(parents=True)
    cells = np.empty((2, 1), dtype=object)
    cells[0, 0], cells[1, 0] = np.array(["null"]), np.array(["hair"])
    scipy.io.savemat(tmp / "label_list.mat", {"label_list": cells})
    return _message(lambda: ClothingCoParsingDataset(tmp))


def _coco_empty(tmp: Path) -> str:
    from partslib.data.coco_parts import CocoPartsDataset
    (tmp / "p.json").write_text('{"images": [], "annotations": [], "categories": '
                                '[{"id": 1, "name": "head"}]}')
    return _message(lambda: CocoPartsDataset(tmp, tmp / "p.json"))


def _pascal_empty(tmp: Path) -> str:
    from partslib.data.pascal_part import PascalPartDataset
    (tmp / "Annotations_Part").mkdir()
    return _message(lambda: PascalPartDataset(tmp, tmp / "Annotations_Part"))


# --------------------------------------------------------------- 5. absent classes


def _recall_absent(tmp: Path) -> str:
    from partslib.studies.realphoto import _classifier_extras, prefixed
    data = SimpleNamespace(class_names=["back", "front", "side"], has_val=False, val_labels=None,
                           test_labels=torch.tensor([0, 0, 1]), train_labels=torch.tensor([0, 1]))
    common = {"test_accuracy": 2 / 3, "balanced_accuracy": 0.75, "train_accuracy": 1.0,
              "confusion_matrix": [[2, 0, 0], [1, 0, 0], [0, 0, 0]]}
    m = _classifier_extras(common, cast(Any, data))
    assert math.isnan(m["recall/side"]) and m["recall/front"] == 0.0
    flat = prefixed("c", m)
    assert flat["c/recall/side"] is None and flat["c/classes_absent_from_test"] == ["side"]
    return (f"recall/side = {m['recall/side']} (null in metrics.json), "
            f"classes_absent_from_test = {m['classes_absent_from_test']}")


# ------------------------------------------------------------------ 6. photos of any shape


def _photo(tmp: Path, h: int, w: int, name: str = "p.png", mode: str = "RGB", **save) -> Path:
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(
        arr[..., 0].astype(np.uint16) * 257)
    img.save(tmp / name, **save)
    return tmp / name


def _portrait(tmp: Path) -> str:
    from partslib.studies.realphoto import explain_photo
    path = _photo(tmp, 120, 60)
    e, image = explain_photo(_explainer(), path)
    assert image.shape == (3, 64, 32) and e.labels.shape == (1, 64, 32)
    photo = load_photo(path, (64, 64))
    assert photo.box == (0, 16, 64, 32) and float(photo.image[:, :, :16].sub(0.5).abs().max()) == 0
    assert load_image(path, (64, 64), fit="squash").shape == (3, 64, 64)
    return f"no error: 120x60 photo fitted into 64x64 as box {photo.box} (pad), cropped back"


def _tiny(tmp: Path) -> str:
    with pytest.warns(UserWarning) as rec:
        load_photo(_photo(tmp, 1, 1), (64, 64))
    return str(rec[0].message)


def _large_jpeg(tmp: Path) -> str:
    path = _photo(tmp, 4000, 6000, "big.jpg", quality=70)
    img = open_image(path, min_size=(4 * 43, 4 * 64))  # what load_photo asks for
    assert img.size == (375, 250) and load_photo(path, (64, 64)).box == (10, 0, 43, 64)
    return (f"no error: 6000x4000 JPEG decoded at 1/8 scale (750x500) and reduced to "
            f"{img.size[0]}x{img.size[1]} (at least 4x its 64x43 box in a 64x64 input)")


def _photo_size(tmp: Path) -> str:
    from partslib.studies.realphoto import explain_photo
    return _message(lambda: explain_photo(_explainer(), _photo(tmp, 30, 40), size=(60, 60)))


# ------------------------------------------------------------------- already handled


def _truncated(tmp: Path, name: str, reader: Callable[[Path], object]) -> str:
    path = _photo(tmp, 40, 40, name)
    path.write_bytes(path.read_bytes()[:200])
    return _message(lambda: reader(path))


def _mask_problem(tmp: Path, mask: np.ndarray) -> str:
    root, _ = _folder(tmp, 2)
    Image.fromarray(mask).save(root / "masks" / "s00.png")
    return "; ".join(p.message for p in validate_folder(root))


def _checkpoint(tmp: Path, kind: str, cut: bool) -> str:
    from partslib.training import load_checkpoint, save_checkpoint
    path = save_checkpoint(tmp / "c.pt", state_dict={"w": torch.ones(99)}, config={}, kind=kind)
    if cut:
        path.write_bytes(path.read_bytes()[:300])
    return _message(lambda: load_checkpoint(path, kind="classifier"))


def _profile_typo(tmp: Path) -> str:
    from partslib.profiles import ProfileError, load_profile
    (tmp / "profiles").mkdir()
    (tmp / "profiles" / "p.yaml").write_text("notebooks: [02_classifier]\n02_clasifier: {}\n")
    return _message(lambda: load_profile("p", tmp), ProfileError)


def _rerun(tmp: Path) -> str:
    from partslib.runner import archive_previous_run
    (tmp / "run" / "pdm").mkdir(parents=True)
    (tmp / "run" / "pdm" / "metrics.json").write_text("{}")
    before = _tree(tmp / "run")
    dest = archive_previous_run(tmp / "run")
    assert dest is not None and _tree(dest) == before
    return f"no error: the previous run moved intact to previous/{dest.name}/"


def _sixteen_bit_gray(tmp: Path) -> str:
    x = load_image(_photo(tmp, 8, 8, "g16.png", mode="I;16"))
    y = load_image(_photo(tmp, 8, 8, "g8.png", mode="L"))
    assert x.shape == y.shape == (3, 8, 8) and torch.equal(x[0], x[2]) and float(x.max()) <= 1
    return "no error: 16-bit scaled by 1/65535, grayscale repeated to 3 channels"


CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "write-folder-bad-sample": (_write_folder_bad_sample, r"sample 'bad': mask values \[77\]"),
    "conversion-raises": (_conversion_raises, "read error"),
    "conversion-killed": (_conversion_killed, "byte-identical"),
    "converter-missing-photo": (_coco_missing_photo, r"p\d\.png: no such image file"),
    "checkpoint-write-fails": (_checkpoint_write_fails, "pickle|lambda"),
    "archive-fails": (_archive_fails, "No space left"),
    "table-write-fails": (_table_write_fails, "cell 900 cannot be written"),
    "float64-images": (_float64_images, r"converted to the classifier's dtype \(float32\)"),
    "empty-batch": (lambda t: _message(lambda: _explainer()(random_images(2)[:0])),
                    r"images is an empty batch \(shape \(0, 3, 64, 64\)\)"),
    "empty-training-set": (lambda t: _message(_train(random_images(2)[:0], _pdm_masks(0))),
                           "images is an empty batch"),
    "float64-training-set": (lambda t: str(_train(random_images(2).double(), _pdm_masks())()[1]
                                           and "no error: converted to float32"), "no error"),
    "integer-images": (lambda t: _message(lambda: _explainer()(random_images(2).int())),
                       r"must be float in \[0,1\] or uint8 in 0\.\.255, got dtype torch.int32"),
    "labels-out-of-range": (lambda t: _message(_evaluate(random_images(2), torch.tensor([0, 7]))),
                            r"labels hold classes \[7\] outside 0\.\.4"),
    "float-labels": (lambda t: _message(_evaluate(random_images(2), torch.tensor([0.0, 1.0]))),
                     "labels must be an integer tensor"),
    "mask-ids-out-of-range": (lambda t: _message(_train(random_images(2), _pdm_masks(2, 9))),
                              r"part ids \[9\] outside 0\.\.2"),
    "metrics-empty": (lambda t: _message(_metric_inputs(0)), "claimed is empty"),
    "metrics-float64": (lambda t: _message(_metric_inputs(2, torch.float64)),
                        "images are float64; expected float32"),
    "ibd-empty-features": (lambda t: _message(_ibd_concepts(torch.zeros(0, 8, 4, 4))),
                           r"features is empty \(0 items\)"),
    "ibd-nan-features": (lambda t: _message(_ibd_concepts(torch.full((4, 8, 4, 4), math.nan))),
                         r"features \(4, 8, 4, 4\) hold NaN or Inf at 64 cells"),
    "images-wrong-size": (lambda t: _message(lambda: _explainer()(random_images(1, size=60))),
                          "must be 64x64 for this model, got 60x60"),
    "classes-csv-no-rows": (lambda t: _message(lambda: FolderDataset(_headers_only(t,
                                                                                   "classes.csv"))),
                            "classes.csv: no images: the header has no rows"),
    "parts-csv-no-rows": (lambda t: _message(lambda: FolderDataset(_headers_only(t, "parts.csv"))),
                          "parts.csv: no parts"),
    "split-without-images": (lambda t: _message(lambda: FolderDataset(
        write_folder(t / "s", [(*_sample("a"), "train")], PARTS, CLASSES), split="test")),
        "no images with split 'test'"),
    "write-folder-no-samples": (lambda t: _message(lambda: write_folder(t / "e", [], PARTS,
                                                                        CLASSES)),
                                "no samples to write"),
    "pascal-part-no-mat": (_pascal_empty, r"no \.mat files"),
    "coco-no-images": (_coco_empty, "'images' is empty"),
    "broden-no-rows": (_broden_empty, "index.csv: no images"),
    "ccp-no-images": (_ccp_empty, "pixel-level: no images"),
    "recall-absent-class": (_recall_absent, r"recall/side = nan .*\['side'\]"),
    "portrait-photo": (_portrait, r"box \(0, 16, 64, 32\)"),
    "tiny-photo": (_tiny, "1x1 pixels, smaller than 16 on a side"),
    "large-jpeg": (_large_jpeg, "decoded at 1/8 scale"),
    "explain-photo-size": (_photo_size, "takes 64x64 images only; leave size=None"),
    "truncated-photo": (lambda t: _truncated(t, "t.png", load_image), "cannot read image"),
    "truncated-mask": (lambda t: _truncated(t, "m.png", read_mask), "cannot read mask"),
    "unknown-part-ids": (lambda t: _mask_problem(t, np.full((12, 10), 9, np.uint8)),
                         "unknown part ids 9"),
    "mask-wrong-size": (lambda t: _mask_problem(t, np.zeros((5, 5), np.uint8)),
                        r"mask is 5x5 \(HxW\) but image s00.png is 12x10"),
    "nan-images": (lambda t: _message(lambda: _explainer()(random_images(1) * math.nan)),
                   "contains NaN or Inf"),
    "0-255-float-images": (lambda t: _message(lambda: _explainer()(random_images(1) * 255)),
                           r"must have values in \[0, 1\], got range"),
    "truncated-checkpoint": (lambda t: _checkpoint(t, "classifier", True),
                             "could not be read: the file is truncated or corrupted"),
    "pdm-checkpoint-as-classifier": (lambda t: _checkpoint(t, "pdm", False),
                                     "holds a 'pdm', expected 'classifier'"),
    "profile-typo": (_profile_typo, "did you mean '02_classifier'"),
    "rerun-into-results": (_rerun, "moved intact"),
    "16-bit-and-grayscale-photos": (_sixteen_bit_gray, "no error"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path) -> None:
    run, expected = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tiny-photo checks its own warning
        message = run(tmp_path)
    assert re.search(expected, message), message


if __name__ == "__main__":  # the messages docs/bad_inputs.md quotes
    import tempfile
    for name, (run, _) in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            print(f"{name}\t{run(Path(d))}".replace("\n", " | "))


def test_photos_reduced_while_decoding_match_the_full_size_decode(tmp_path: Path) -> None:
    """Reducing while decoding (JPEG draft, PNG reduce) changes what the model sees by little;
    palette and 16-bit photos are never box-averaged (their indices are not intensities)."""
    from partslib.data.images import fit_image, image_to_tensor
    rgb = np.asarray(Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (60, 80, 3), dtype=np.uint8)).resize((800, 600), Image.Resampling.BILINEAR))
    for name, img in (("p.png", Image.fromarray(rgb)), ("p.jpg", Image.fromarray(rgb)),
                      ("pal.png", Image.fromarray(rgb).convert("P"))):
        img.save(tmp_path / name)
        full = fit_image(image_to_tensor(open_image(tmp_path / name)), (32, 32))[0]
        photo = load_photo(tmp_path / name, (32, 32))
        assert photo.box == (4, 0, 24, 32) and photo.original_size == (600, 800)
        inside = (photo.image - full).abs()[:, 4:28]
        assert float(inside.mean()) < (0.01 if name == "p.png" else 0.002), name
    assert open_image(tmp_path / "pal.png", min_size=(96, 128)).size == (800, 600)
    assert open_image(tmp_path / "p.png", min_size=(96, 128)).size == (134, 100)
