"""Real-data layer: image loading, the folder format and the public part-annotation formats.

Every fixture is written by the tests into ``tmp_path`` in the exact public format. The
real copies of Car Parts and Clothing Co-Parsing are read from the ``shared`` folder next to
the repository (``PARTSLIB_SHARED`` overrides it); those tests skip when it is absent.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.utils.data
from PIL import Image

from partslib.data.broden import (
    BrodenDataset,
    broden_to_folder,
    decode_broden_png,
    planes_to_multilabel,
    read_broden_labels,
)
from partslib.data.clothing_parsing import (
    CCP_LOWER_GARMENTS,
    CCP_PART_GROUPS,
    ClothingCoParsingDataset,
    ccp_lower_garment,
    ccp_to_folder,
)
from partslib.data.coco_parts import (
    CocoPartsDataset,
    carparts_to_folder,
    carparts_viewpoint,
    polygons_to_mask,
    rle_decode,
    supercategory_class,
)
from partslib.data.folder import IGNORE_INDEX, FolderDataset, validate_folder, write_folder
from partslib.data.images import load_image, read_mask
from partslib.data.pascal_part import (
    PASCAL_VOC_CLASSES,
    PascalPartDataset,
    pascal_part_to_folder,
    read_pascal_part,
)

SHARED = Path(os.environ.get("PARTSLIB_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CAR_PARTS = SHARED / "realdata" / "car-parts"
CCP = SHARED / "realdata" / "clothing-co-parsing"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path} (set PARTSLIB_SHARED to the folder holding realdata/)"
        )
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# =============================================================================== images


def test_load_image_rgb_png_is_exact(tmp_path):
    arr = _rgb(6, 5)
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.dtype == torch.float32 and x.shape == (3, 6, 5)
    torch.testing.assert_close(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_load_image_grayscale_palette_and_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (3, 3, 4)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    torch.testing.assert_close(x[0], torch.from_numpy(gray).float() / 255)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png")
    assert x[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and x[:, 0, 1].tolist() == [0.0, 0.0, 1.0]

    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d16.png")
    assert Image.open(tmp_path / "d16.png").mode.startswith("I")
    x = load_image(tmp_path / "d16.png")
    torch.testing.assert_close(x[1], torch.from_numpy(deep.astype(np.float32) / 65535))


def test_load_image_composites_transparency_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png")
    assert x[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert x[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(x[:, 1, 0], torch.full((3,), 127 / 255), atol=1 / 255)

    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    x = load_image(tmp_path / "pt.png")
    assert x[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and x[:, 0, 1].tolist() == [0.0, 1.0, 0.0]


def test_load_image_applies_exif_orientation(tmp_path):
    # stored 20 (H) x 40 (W): left half red, right half blue;
    # orientation 6 = rotate 90° clockwise to view
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    x = load_image(tmp_path / "rot.jpg")
    assert x.shape == (3, 40, 20)  # viewed portrait
    top, bottom = x[:, :15].mean(dim=(1, 2)), x[:, 25:].mean(dim=(1, 2))
    assert top[0] > 0.9 and top[2] < 0.1  # the left half ends up on top
    assert bottom[2] > 0.9 and bottom[0] < 0.1
    assert load_image(Image.open(tmp_path / "rot.jpg")).shape == (3, 40, 20)  # PIL input too


def test_load_image_resize_policy(tmp_path):
    arr = np.full((30, 50, 3), 77, dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "c.png")
    x = load_image(tmp_path / "c.png", size=(8, 12), fit="squash")
    assert x.shape == (3, 8, 12)
    torch.testing.assert_close(x, torch.full_like(x, 77 / 255))
    # the default keeps the aspect ratio: 30x50 -> 7x12 centred, grey rows around it
    x = load_image(tmp_path / "c.png", size=(8, 12))
    assert x.shape == (3, 8, 12)
    torch.testing.assert_close(x[:, :7], torch.full_like(x[:, :7], 77 / 255))
    torch.testing.assert_close(x[:, 7], torch.full_like(x[:, 7], 0.5))
    with pytest.raises(ValueError, match="size"):
        load_image(tmp_path / "c.png", size=(0, 4))


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(tmp_path / "cut.png")


# =============================================================================== folder format

PARTS = ["head", "body", "tail"]
CLASSES = ["cat", "dog"]


def _sample(name: str, cls: str, h: int = 12, w: int = 10, seed: int = 0, split=None):
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[2:6, 2:8] = 1
    mask[6:10, 2:8] = 2
    mask[10:, :3] = 3
    mask[0, 0] = IGNORE_INDEX
    return (name, _rgb(h, w, seed), mask, cls) + ((split,) if split else ())


def _write_valid(root: Path, split=False) -> Path:
    names = ["a", "b", "c", "d", "e"]
    samples = [
        _sample(n, CLASSES[i % 2], seed=i, split=("train" if i < 3 else "test") if split else None)
        for i, n in enumerate(names)
    ]
    return write_folder(root, samples, PARTS, CLASSES)


def test_write_then_load_folder(tmp_path):
    root = _write_valid(tmp_path / "f", split=True)
    assert validate_folder(root) == []
    ds = FolderDataset(root)
    assert len(ds) == 5 and ds.part_names == ["background", *PARTS] and ds.class_names == CLASSES
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 12, 10)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (12, 10)
    assert item["mask"][0, 0] == IGNORE_INDEX and set(item["mask"].unique().tolist()) == {
        0,
        1,
        2,
        3,
        255,
    }
    assert (item["name"], item["label"], item["index"]) == ("b", 1, 1)
    expected = torch.from_numpy(_rgb(12, 10, 1)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(item["image"], expected)  # PNG is lossless

    train, test = FolderDataset(root, split="train"), FolderDataset(root, split="test")
    assert train.names == ["a", "b", "c"] and test.names == ["d", "e"]
    assert train.class_names == test.class_names == CLASSES

    small = FolderDataset(root, size=(6, 5))[0]
    assert small["image"].shape == (3, 6, 5) and small["mask"].shape == (6, 5)
    assert set(small["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest: no invented labels
    batch = next(iter(torch.utils.data.DataLoader(FolderDataset(root, size=(6, 5)), batch_size=4)))
    assert batch["image"].shape == (4, 3, 6, 5) and batch["label"].tolist() == [0, 1, 0, 1]


def test_folder_class_names_txt_order_and_16bit_masks(tmp_path):
    root = _write_valid(tmp_path / "f")
    (root / "class_names.txt").write_text("dog\ncat\n")
    mask = read_mask(root / "masks" / "a.png").astype(np.uint16)
    Image.fromarray(mask).save(root / "masks" / "a.png")  # 16-bit single channel
    assert Image.open(root / "masks" / "a.png").mode.startswith("I")
    assert validate_folder(root) == []
    ds = FolderDataset(root)
    assert ds.class_names == ["dog", "cat"] and ds[0]["label"] == 1
    assert ds[0]["mask"].max() == IGNORE_INDEX
    with pytest.raises(ValueError, match="split"):
        FolderDataset(root, split="train")  # no split column


def test_write_folder_refuses_to_overwrite_and_checks_samples(tmp_path):
    root = _write_valid(tmp_path / "f")
    with pytest.raises(ValueError, match="not empty"):
        _write_valid(root)
    (root / "notes.txt").write_text("mine")
    write_folder(root, [_sample("z", "cat")], PARTS, CLASSES, overwrite=True)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["z.png"]  # stale images gone
    assert (root / "notes.txt").read_text() == "mine"  # foreign files kept
    assert validate_folder(root) == []

    bad_value = list(_sample("x", "cat"))
    bad_value[2] = bad_value[2].copy()
    bad_value[2][0, 1] = 9
    with pytest.raises(ValueError, match="'x'.*9"):
        write_folder(tmp_path / "g", [bad_value], PARTS, CLASSES)
    with pytest.raises(ValueError, match="'y'.*mask"):
        write_folder(
            tmp_path / "h", [("y", _rgb(12, 10), np.zeros((5, 5), np.uint8), "cat")], PARTS, CLASSES
        )
    with pytest.raises(ValueError, match="bird"):
        write_folder(tmp_path / "i", [_sample("w", "bird")], PARTS, CLASSES)


def _by_file(problems) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in problems:
        out[p.path.name] = out.get(p.path.name, "") + " | " + p.message
    return out


def test_validator_reports_every_problem_with_its_file(tmp_path):
    root = _write_valid(tmp_path / "f")
    (root / "masks" / "a.png").unlink()  # missing mask
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "b.png")  # size mismatch
    m = read_mask(root / "masks" / "c.png").astype(np.uint8)
    m[1, 1] = 7
    Image.fromarray(m).save(root / "masks" / "c.png")  # unknown part id
    (root / "images" / "d.png").write_bytes(b"\x89PNG garbage")  # corrupt image
    (root / "masks" / "orphan.png").write_bytes(
        (root / "masks" / "e.png").read_bytes()
    )  # mask without image
    Image.fromarray(_rgb(12, 10)).save(root / "images" / "f.png")  # image without class ...
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(root / "masks" / "f.png")
    with open(root / "classes.csv", "a") as fh:
        fh.write("ghost,cat\n")  # listed but missing
        fh.write("e,dog\n")  # duplicate row
    with open(root / "parts.csv", "a") as fh:
        fh.write("2,wing\n")  # duplicate id

    problems = validate_folder(root)
    found = _by_file(problems)
    assert "missing mask" in found["a.png"]
    assert "12x10" in found["b.png"] and "5x5" in found["b.png"]
    assert "unknown part ids 7" in found["c.png"]
    assert "unreadable image" in found["d.png"]
    assert "no image" in found["orphan.png"]
    assert "no class" in found["f.png"]
    assert "'ghost'" in found["classes.csv"] and "does not exist" in found["classes.csv"]
    assert "duplicate image 'e'" in found["classes.csv"]
    assert "duplicate part id 2" in found["parts.csv"]
    assert all(str(root) in str(p) for p in problems)

    with pytest.raises(ValueError) as err:
        FolderDataset(root)
    for name in ("a.png", "b.png", "c.png", "d.png", "orphan.png", "parts.csv", "classes.csv"):
        assert name in str(err.value)


def test_validator_bad_headers_rgb_mask_and_missing_files(tmp_path):
    root = _write_valid(tmp_path / "f")
    (root / "parts.csv").write_text("part_id,label\n1,head\n")
    (root / "classes.csv").write_text("file;class\na;cat\n")
    Image.fromarray(_rgb(12, 10)).save(root / "masks" / "a.png")  # RGB, not single-channel
    (root / "masks" / "b.png").write_bytes(b"not a png")
    (root / "images" / "readme.txt").write_text("x")
    found = _by_file(validate_folder(root))
    assert "bad header" in found["parts.csv"] and "bad header" in found["classes.csv"]
    assert "single-channel" in found["a.png"] and "mode RGB" in found["a.png"]
    assert "unreadable mask" in found["b.png"]
    assert "not an image file" in found["readme.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    found = _by_file(validate_folder(empty))
    assert {"parts.csv", "classes.csv", "images", "masks"} <= set(found)
    assert validate_folder(tmp_path / "nowhere")[0].message == "not a directory"


# =============================================================================== Broden


def _broden_png(labels: np.ndarray) -> Image.Image:
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return Image.fromarray(rgb)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _write_broden(root: Path) -> dict:
    """Two images (32x32, segmentations 16x16) in the exact broden1_224 layout."""
    (root / "images" / "pascal").mkdir(parents=True)
    _write_csv(
        root / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        [
            [0, "-", "-", 0, 0.0, ""],
            [1, "person", "object(2)", 2, 0.4, "human;someone"],
            [2, "cat", "object(1)", 1, 0.3, ""],
            [3, "head", "part(2)", 2, 0.1, ""],
            [4, "torso", "part(1)", 1, 0.1, ""],
            [5, "street-s", "scene(1)", 1, 1.0, ""],
            [300, "hair", "material(1);part(1)", 1, 0.05, ""],
        ],
    )
    _write_csv(
        root / "category.csv",
        ["name", "first", "last", "count", "frequency"],
        [["object", 1, 2, 2, 2], ["part", 3, 300, 3, 2], ["scene", 5, 5, 1, 1]],
    )
    obj = np.zeros((16, 16), np.int64)
    obj[4:12, 4:12] = 1
    obj[12:, 12:] = 2
    part1 = np.zeros((16, 16), np.int64)
    part1[4:8, 4:12] = 3  # head
    part1[8:12, 4:12] = 4  # torso
    part2 = np.zeros((16, 16), np.int64)
    part2[4:6, 4:12] = 300  # hair, overlapping the head: a second plane
    part2[14:, 0:2] = 300  # hair alone
    _broden_png(obj).save(root / "images" / "pascal" / "img1_object.png")
    _broden_png(part1).save(root / "images" / "pascal" / "img1_part_1.png")
    _broden_png(part2).save(root / "images" / "pascal" / "img1_part_2.png")
    obj2 = np.zeros((16, 16), np.int64)
    obj2[:, :8] = 2
    _broden_png(obj2).save(root / "images" / "pascal" / "img2_object.png")
    _broden_png(np.where(obj2 > 0, 3, 0)).save(root / "images" / "pascal" / "img2_part.png")
    for k, name in enumerate(("img1", "img2")):
        Image.fromarray(_rgb(32, 32, k)).save(root / "images" / "pascal" / f"{name}.jpg")
    _write_csv(
        root / "index.csv",
        [
            "image",
            "split",
            "ih",
            "iw",
            "sh",
            "sw",
            "color",
            "object",
            "part",
            "material",
            "scene",
            "texture",
        ],
        [
            [
                "pascal/img1.jpg",
                "train",
                32,
                32,
                16,
                16,
                "",
                "pascal/img1_object.png",
                "pascal/img1_part_1.png;pascal/img1_part_2.png",
                "",
                "5",
                "",
            ],
            [
                "pascal/img2.jpg",
                "val",
                32,
                32,
                16,
                16,
                "",
                "pascal/img2_object.png",
                "pascal/img2_part.png",
                "",
                "",
                "",
            ],
        ],
    )
    return {"obj": obj, "part1": part1, "part2": part2}


def test_broden_decodes_planes_r_plus_256g(tmp_path):
    truth = _write_broden(tmp_path / "broden")
    assert (
        decode_broden_png(tmp_path / "broden/images/pascal/img1_part_2.png") == truth["part2"]
    ).all()
    labels = read_broden_labels(tmp_path / "broden")
    assert len(labels) == 301 and labels[300].name == "hair" and labels[299] is None
    assert labels[300].categories == {"material": 1, "part": 1} and labels[1].syns == (
        "human",
        "someone",
    )

    ds = BrodenDataset(tmp_path / "broden", categories=("object", "part", "scene"))
    assert len(ds) == 2 and ds.planes == {"object": 1, "part": 2, "scene": 1}
    assert ds.pixel_categories == ("object", "part") and ds.image_categories == ("scene",)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["name"] == "pascal/img1.jpg"
    assert item["part"].shape == (2, 16, 16) and item["part"].dtype == torch.int64
    assert torch.equal(item["part"][1], torch.from_numpy(truth["part2"]))
    assert item["scene"].tolist() == [5]
    second = ds[1]
    assert second["part"][1].eq(0).all() and second["scene"].tolist() == [0]  # padding

    multi = planes_to_multilabel(item["part"], len(ds.labels))
    assert multi.shape == (301, 16, 16)
    assert multi[3, 4, 4] and multi[300, 4, 4] and not multi[0].any()  # two labels on one pixel
    assert BrodenDataset(tmp_path / "broden", split="val").names == ["pascal/img2.jpg"]
    resized = BrodenDataset(tmp_path / "broden", size=(8, 8))[0]
    assert resized["image"].shape == (3, 8, 8) and resized["part"].shape == (2, 8, 8)


def test_broden_to_folder_first_plane_wins(tmp_path):
    _write_broden(tmp_path / "broden")
    result = broden_to_folder(tmp_path / "broden", tmp_path / "out")
    assert result.written == 2 and result.skipped == {}
    assert validate_folder(tmp_path / "out") == []
    ds = FolderDataset(tmp_path / "out")
    assert ds.part_names == ["background", "head", "torso", "hair"]
    assert ds.class_names == ["cat", "person"] and ds.names == ["pascal__img1", "pascal__img2"]
    assert ds.labels == [1, 0]  # largest object: person in img1, cat in img2
    mask = ds[0]["mask"]
    assert mask.shape == (32, 32)  # upsampled to the image size
    assert mask[8, 8] == 1  # head (plane 1) beats hair (plane 2)
    assert mask[30, 0] == 3  # hair alone
    assert mask[20, 20] == 2 and mask[0, 0] == 0
    assert FolderDataset(tmp_path / "out", split="test").names == ["pascal__img2"]  # val -> test


def test_broden_bad_files_are_named(tmp_path):
    _write_broden(tmp_path / "broden")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(
        tmp_path / "broden/images/pascal/img2_part.png"
    )
    ds = BrodenDataset(tmp_path / "broden")
    with pytest.raises(ValueError, match="img2_part.png.*sh x sw"):
        ds[1]
    (tmp_path / "broden/label.csv").write_text("number,name\n1,x\n")
    with pytest.raises(ValueError, match="label.csv.*bad header"):
        BrodenDataset(tmp_path / "broden")


# =============================================================================== PASCAL-Part


def _struct(dtype_names, rows):
    arr = np.zeros((1, len(rows)), dtype=[(n, "O") for n in dtype_names])
    for i, row in enumerate(rows):
        for n, v in zip(dtype_names, row):
            arr[0, i][n] = v
    return arr


def _write_pascal_part(root: Path) -> None:
    """Annotations_Part/*.mat with the nested anno -> objects -> parts structs, plus JPEGImages."""
    (root / "Annotations_Part").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    h, w = 20, 24
    car = np.zeros((h, w), np.uint8)
    car[2:12, 2:20] = 1
    wheel1 = np.zeros((h, w), np.uint8)
    wheel1[9:12, 3:6] = 1
    wheel2 = np.zeros((h, w), np.uint8)
    wheel2[9:12, 15:18] = 1
    body = car & ~(wheel1 | wheel2)
    person = np.zeros((h, w), np.uint8)
    person[13:19, 20:23] = 1
    head = np.zeros((h, w), np.uint8)
    head[13:15, 20:23] = 1
    chair = np.zeros((h, w), np.uint8)
    chair[15:19, 0:4] = 1
    car_parts = _struct(
        ["part_name", "mask"], [["wheel_1", wheel1], ["wheel_2", wheel2], ["body", body]]
    )
    person_parts = _struct(["part_name", "mask"], [["head", head]])
    objects = _struct(
        ["class", "class_ind", "mask", "parts"],
        [
            ["car", np.array([[7]], dtype=np.float64), car, car_parts],
            ["person", np.array([[15]], dtype=np.float64), person, person_parts],
            [
                "chair",
                np.array([[9]], dtype=np.float64),
                chair,
                np.zeros((0, 0)),
            ],  # no parts, as in the public files
        ],
    )
    anno = _struct(["imname", "objects"], [["2008_000001", objects]])
    scipy.io.savemat(root / "Annotations_Part" / "2008_000001.mat", {"anno": anno})
    Image.fromarray(_rgb(h, w)).save(root / "JPEGImages" / "2008_000001.jpg")


def test_pascal_part_reads_nested_structs(tmp_path):
    _write_pascal_part(tmp_path)
    imname, objects = read_pascal_part(tmp_path / "Annotations_Part" / "2008_000001.mat")
    assert imname == "2008_000001"
    assert [(o.class_name, o.class_ind, len(o.parts)) for o in objects] == [
        ("car", 7, 3),
        ("person", 15, 1),
        ("chair", 9, 0),
    ]
    assert objects[0].parts[0][0] == "wheel_1" and objects[0].parts[0][1].sum() == 9

    ds = PascalPartDataset(tmp_path / "JPEGImages", tmp_path / "Annotations_Part")
    assert ds.part_names == ["background", "body", "head", "wheel"]  # wheel_1, wheel_2 -> wheel
    item = ds[0]
    assert ds.class_names[item["label"]] == "car"  # the largest object
    mask = item["mask"]
    assert mask[10, 4] == 3 and mask[10, 16] == 3 and mask[5, 10] == 1 and mask[13, 21] == 2
    assert mask[16, 1] == 0  # chair: an object without parts stays background

    result = pascal_part_to_folder(
        tmp_path / "JPEGImages", tmp_path / "Annotations_Part", tmp_path / "out"
    )
    assert result.written == 1 and validate_folder(tmp_path / "out") == []
    folder = FolderDataset(tmp_path / "out")
    assert folder.class_names == list(PASCAL_VOC_CLASSES) and torch.equal(folder[0]["mask"], mask)


def test_pascal_part_bad_file_is_named(tmp_path):
    _write_pascal_part(tmp_path)
    scipy.io.savemat(tmp_path / "Annotations_Part" / "broken.mat", {"something": np.zeros(3)})
    with pytest.raises(ValueError, match="broken.mat.*anno"):
        PascalPartDataset(tmp_path / "JPEGImages", tmp_path / "Annotations_Part")


def test_photo_and_mask_of_different_sizes_name_both_files(tmp_path):
    _write_pascal_part(tmp_path)
    Image.fromarray(_rgb(21, 24)).save(tmp_path / "JPEGImages" / "2008_000001.jpg")  # 1 row more
    ds = PascalPartDataset(tmp_path / "JPEGImages", tmp_path / "Annotations_Part")
    with pytest.raises(
        ValueError, match=r"2008_000001.mat.*\(20, 24\).*2008_000001.jpg.*\(21, 24\)"
    ):
        ds[0]
    with pytest.raises(IndexError, match="out of range"):
        ds[1]


# =============================================================================== COCO parts

# pycocotools.mask.encode of the masks below (checked once against pycocotools 2.0.11)
RLE_4x5 = {"size": [4, 5], "counts": "31111000OO2"}
RLE_50x40 = {"size": [50, 40], "counts": "T8n0d00000000000000000000000000000000000000be0SO[[O"}


def _mask_4x5():
    x = np.zeros((4, 5), bool)
    x[1:3, 1:4] = True
    x[0, 4] = x[3, 0] = True
    return x


def _mask_50x40():
    x = np.zeros((50, 40), bool)
    x[10:40, 5:25] = True
    x[0, 39] = True
    return x


def test_rle_decoding_compressed_and_uncompressed():
    assert (rle_decode(RLE_4x5) == _mask_4x5()).all()
    assert (rle_decode(RLE_50x40) == _mask_50x40()).all() and rle_decode(RLE_50x40).sum() == 601
    assert (
        rle_decode({"size": [4, 5], "counts": RLE_4x5["counts"].encode()}) == _mask_4x5()
    ).all()  # bytes
    flat = _mask_4x5().T.ravel()  # column-major runs, starting with zeros
    runs = [len(list(g)) for g in np.split(flat, np.flatnonzero(np.diff(flat)) + 1)]
    counts = ([0] if flat[0] else []) + runs
    assert (rle_decode({"size": [4, 5], "counts": counts}) == _mask_4x5()).all()
    with pytest.raises(ValueError, match="sum"):
        rle_decode({"size": [4, 5], "counts": [3, 2]})


def test_polygon_rasterising_uses_pixel_centres():
    square = polygons_to_mask([[10, 10, 20, 10, 20, 20, 10, 20]], 30, 30)
    assert square.sum() == 100 and square[10:20, 10:20].all()
    tri = polygons_to_mask([[0, 0, 8, 0, 0, 8]], 10, 10)
    assert (
        28 <= tri.sum() <= 36 and tri[0, 0] and not tri[7, 7]
    )  # area 32; centres on the edge may go either way
    assert polygons_to_mask([[1, 1, 2, 2]], 5, 5).sum() == 0  # degenerate polygon


def _coco_json(
    path: Path, images: list[dict], categories: list[dict], annotations: list[dict]
) -> None:
    path.write_text(
        json.dumps({"images": images, "categories": categories, "annotations": annotations})
    )


def test_coco_parts_dataset_paints_polygons_rle_and_crowds(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(_rgb(50, 40)).save(tmp_path / "images" / "n01_1.JPEG", format="JPEG")
    cats = [
        {"id": 1, "name": "_background_", "supercategory": ""},
        {"id": 5, "name": "Quadruped Head", "supercategory": "Quadruped"},
        {"id": 7, "name": "Quadruped Body", "supercategory": "Quadruped"},
        {"id": 9, "name": "Fish Fin", "supercategory": "Fish"},
    ]
    anns = [
        {
            "id": 1,
            "image_id": 3,
            "category_id": 7,
            "segmentation": RLE_50x40,
            "area": 601,
            "iscrowd": 0,
        },  # compressed RLE
        {
            "id": 2,
            "image_id": 3,
            "category_id": 5,
            "segmentation": [[5, 10, 15, 10, 15, 20, 5, 20]],
            "area": 100,
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 3,
            "category_id": 9,
            "segmentation": {"size": [50, 40], "counts": [35 * 50, 50, 4 * 50]},
            "iscrowd": 1,
        },  # uncompressed RLE: column 35, crowd
        {
            "id": 4,
            "image_id": 3,
            "category_id": 1,
            "segmentation": [[0, 0, 40, 0, 40, 50, 0, 50]],
            "area": 2000,
            "iscrowd": 0,
        },
    ]
    _coco_json(
        tmp_path / "parts.json",
        [{"id": 3, "file_name": "n01_1.JPEG", "height": 50, "width": 40}],
        cats,
        anns,
    )
    ds = CocoPartsDataset(
        tmp_path / "images", tmp_path / "parts.json", class_of=supercategory_class(cats)
    )
    assert ds.part_names == ["background", "Quadruped Head", "Quadruped Body", "Fish Fin"]
    assert ds.class_names == ["Quadruped"] and ds.areas_by_part(0) == {
        "Quadruped Body": 601.0,
        "Quadruped Head": 100.0,
    }
    item = ds[0]
    assert item["name"] == "n01_1" and item["label"] == 0 and item["image"].shape == (3, 50, 40)
    mask = item["mask"]
    assert mask[15, 10] == 1  # the small head is painted over the larger body
    assert mask[30, 20] == 2 and mask[0, 39] == 2
    assert (mask[:, 35] == IGNORE_INDEX).all() and (
        mask == IGNORE_INDEX
    ).sum() == 50  # the crowd is ignored
    assert mask[5, 5] == 0  # _background_ category stays background
    assert ds[0]["mask"].unique().tolist() == [0, 1, 2, 255]
    assert CocoPartsDataset(tmp_path / "images", tmp_path / "parts.json", size=(10, 8))[0][
        "mask"
    ].shape == (10, 8)
    assert CocoPartsDataset(tmp_path / "images", tmp_path / "parts.json").labels == [-1]

    anns.append({"id": 9, "image_id": 99, "category_id": 5, "segmentation": []})
    _coco_json(
        tmp_path / "bad.json",
        [{"id": 3, "file_name": "n01_1.JPEG", "height": 50, "width": 40}],
        cats,
        anns,
    )
    with pytest.raises(ValueError, match="bad.json.*annotation 9.*image_id 99"):
        CocoPartsDataset(tmp_path / "images", tmp_path / "bad.json")


def test_carparts_viewpoint_rule():
    assert (
        carparts_viewpoint({"hood": 300, "front_bumper": 200, "back_bumper": 100, "wheel": 400})
        == "front"
    )
    assert (
        carparts_viewpoint({"trunk": 300, "back_glass": 100, "hood": 100, "wheel": 100}) == "back"
    )
    assert (
        carparts_viewpoint({"hood": 200, "back_bumper": 100, "wheel": 100}) == "side"
    )  # not > 2x back
    assert (
        carparts_viewpoint({"hood": 100, "front_left_door": 500, "front_right_door": 500}) == "side"
    )  # < 15 %
    assert carparts_viewpoint({}) == "side"


def _write_carparts_layout(root: Path) -> None:
    names = [n["name"] for n in [{"name": "_background_"}]] + [
        "back_bumper",
        "front_bumper",
        "hood",
        "wheel",
    ]
    cats = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]
    for sub, base, views in (("trainingset", 1, ["front", "back"]), ("testset", 401, ["side"])):
        (root / sub / "JPEGImages").mkdir(parents=True)
        images, anns = [], []
        for k, view in enumerate(views):
            iid, fname = base + k, f"{sub[:4]}{k + 1}.jpg"
            Image.fromarray(_rgb(32, 32, iid)).save(root / sub / "JPEGImages" / fname)
            images.append(
                {
                    "id": iid,
                    "path": f"JPEGImages/{fname}",
                    "width": 32,
                    "height": 32,
                    "file_name": fname,
                }
            )
            boxes = {
                "front": [(3, [0, 0, 32, 0, 32, 16, 0, 16]), (5, [0, 20, 8, 20, 8, 28, 0, 28])],
                "back": [(2, [0, 0, 32, 0, 32, 16, 0, 16])],
                "side": [(5, [0, 0, 32, 0, 32, 16, 0, 16]), (3, [0, 20, 4, 20, 4, 24, 0, 24])],
            }[view]
            for j, (cid, poly) in enumerate(boxes):
                m = polygons_to_mask([poly], 32, 32)
                anns.append(
                    {
                        "id": 100 * iid + j,
                        "image_id": iid,
                        "category_id": cid,
                        "segmentation": [poly],
                        "area": int(m.sum()),
                        "bbox": [0, 0, 1, 1],
                        "iscrowd": False,
                        "isbbox": False,
                    }
                )
        _coco_json(root / sub / "annotations.json", images, cats, anns)


def test_carparts_to_folder_on_the_public_layout(tmp_path):
    _write_carparts_layout(tmp_path / "car-parts")
    result = carparts_to_folder(tmp_path / "car-parts", tmp_path / "out")
    assert result.written == 3 and validate_folder(tmp_path / "out") == []
    ds = FolderDataset(tmp_path / "out")
    assert ds.class_names == ["back", "front", "side"]
    assert dict(zip(ds.names, (ds.class_names[y] for y in ds.labels))) == {
        "trai1": "front",
        "trai2": "back",
        "test1": "side",
    }
    assert FolderDataset(tmp_path / "out", split="test").names == ["test1"]
    assert ds.part_names == ["background", "back_bumper", "front_bumper", "hood", "wheel"]
    front = ds[ds.names.index("trai1")]["mask"]
    assert front[5, 5] == ds.part_names.index("front_bumper") and front[
        25, 5
    ] == ds.part_names.index("wheel")


def test_real_carparts_viewpoints_split_294_144_62():
    root = _need(CAR_PARTS)
    counts = {"front": 0, "back": 0, "side": 0}
    datasets = [
        CocoPartsDataset(
            root / s / "JPEGImages", root / s / "annotations.json", class_of=carparts_viewpoint
        )
        for s in ("trainingset", "testset")
    ]
    for ds in datasets:
        for y in ds.labels:
            counts[ds.class_names[y]] += 1
    assert (counts["front"], counts["back"], counts["side"]) == (294, 144, 62)
    assert [len(ds) for ds in datasets] == [400, 100]
    assert len(datasets[0].part_names) == 19  # background + 18 parts
    for ds in datasets:
        item = ds[0]
        assert item["mask"].shape == item["image"].shape[1:]
        assert 0.05 < (item["mask"] > 0).float().mean() < 0.95
    small = CocoPartsDataset(
        root / "testset/JPEGImages", root / "testset/annotations.json", size=(128, 128)
    )[1]
    assert small["image"].shape == (3, 128, 128) and small["mask"].shape == (128, 128)


# ============================================================================ Clothing Co-Parsing


def test_ccp_grouping_covers_every_label_once():
    members = [m for group in CCP_PART_GROUPS.values() for m in group]
    assert len(members) == len(set(members)) == 58
    assert set(CCP_LOWER_GARMENTS) <= set(members)
    assert ccp_lower_garment({"skirt": 10, "dress": 30, "hair": 99}) == "dress"
    assert ccp_lower_garment({"hair": 99}) is None


def test_real_ccp_first_files(tmp_path):
    root = _need(CCP)
    names = ["0001", "0002", "0003"]
    raw = ClothingCoParsingDataset(root, names=names)
    assert raw.label_names[0] == "null" and len(raw.label_names) == 59
    assert sorted(m for g in CCP_PART_GROUPS.values() for m in g) == sorted(raw.label_names[1:])
    assert raw.part_names[1:] == raw.label_names[1:] and raw.labels == [-1, -1, -1]

    ds = ClothingCoParsingDataset(
        root, groups=CCP_PART_GROUPS, class_of=ccp_lower_garment, names=names
    )
    assert ds.part_names == ["background", *list(CCP_PART_GROUPS)]
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape[1:] == item["mask"].shape and item["mask"].max() <= len(
            CCP_PART_GROUPS
        )
        hair, skin = ds.part_names.index("hair"), ds.part_names.index("skin")
        assert (item["mask"] == hair).any() and (item["mask"] == skin).any()
        assert torch.equal(item["mask"] == 0, torch.from_numpy(raw.raw_labels(i) == 0))
    assert ds[0]["image"].shape == (3, 832, 550)

    result = ccp_to_folder(root, tmp_path / "ccp", names=names)
    assert validate_folder(tmp_path / "ccp") == []
    assert result.written + len(result.skipped) == 3
    assert FolderDataset(tmp_path / "ccp", size=(128, 80))[0]["mask"].shape == (128, 80)
