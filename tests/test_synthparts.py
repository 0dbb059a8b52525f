import hashlib

import numpy as np
import pytest
import torch

from partslib.data.synthparts import ReRender, SynthParts, SynthPartsConfig, load_or_generate


def _digest(sample) -> str:
    return hashlib.sha256(sample.image.tobytes() + sample.mask.tobytes()).hexdigest()


def test_sample_is_pure_function_of_seed_and_index():
    cfg = SynthPartsConfig()
    a = cfg.render(7, 123)
    cfg.render(7, 5)  # other draws in between must not matter
    b = SynthPartsConfig().render(7, 123)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(cfg.render(8, 123))
    assert _digest(a) != _digest(cfg.render(7, 124))


def test_shapes_dtypes_and_labels():
    cfg = SynthPartsConfig(size=48)
    s = cfg.render(0, 3)
    assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (48, 48) and s.mask.max() <= cfg.num_parts
    assert s.label == 3 % cfg.num_classes
    assert s.decisive == cfg.decisive_parts(s.label)
    # every part is visible in the default configuration
    assert set(np.unique(s.mask)) == set(range(cfg.num_parts + 1))


def test_rerender_without_part_changes_only_that_part():
    cfg = SynthPartsConfig()
    full = cfg.render(0, 11)
    for p in range(1, cfg.num_parts + 1):
        without = cfg.render(0, 11, drop_parts=[p])
        assert not (without.mask == p).any()
        changed = (full.image != without.image).any(-1)
        # pixels outside the removed part are untouched
        assert not changed[full.mask != p].any()
        assert changed[full.mask == p].mean() > 0.5
        # the rest of the label map is the same, except what the part occluded
        same = full.mask != p
        assert (without.mask[same] == full.mask[same]).all()


def test_rerender_background_keeps_object():
    cfg = SynthPartsConfig()
    full, nobg = cfg.render(0, 2), cfg.render(0, 2, drop_parts=[0])
    obj = full.mask > 0
    assert (full.image[obj] == nobg.image[obj]).all()
    assert (nobg.image[~obj] == nobg.image[~obj][0]).all()  # flat background


def test_signature_patterns_are_nuisance_elsewhere():
    cfg = SynthPartsConfig()
    decisive = {(part, pat) for sig in cfg.signatures for part, pat in sig}
    for part, pat in decisive:
        others = [q for q in cfg.parts if q != part and pat in cfg.nuisance_patterns(q)]
        assert others, f"pattern {pat} never appears as nuisance off {part}"
    # at least two classes share a decisive pattern on different parts
    by_pattern = {}
    for sig in cfg.signatures:
        for part, pat in sig:
            by_pattern.setdefault(pat, set()).add(part)
    assert any(len(parts) >= 2 for parts in by_pattern.values())
    for part in cfg.parts:  # nuisance never forms a signature pair
        assert not any((part, pat) in decisive for pat in cfg.nuisance_patterns(part))


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 16}, "size"),
    ({"parts": ("head", "nose")}, "parts"),
    ({"signatures": ((("head", "stripes"),),)}, "at least 2 classes"),
    ({"signatures": ((("head", "zigzag"),), (("body", "dots"),))}, "pattern"),
    ({"signatures": ((("head", "stripes"),), (("head", "stripes"),))}, "duplicates"),
    ({"signatures": ((("fin", "dots"),), (("body", "dots"),))}, "part 'fin'"),
    ({"n_distractors": (3, 1)}, "n_distractors"),
    ({"class_names": ("a",)}, "class_names"),
])
def test_invalid_parameters_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthPartsConfig(**kwargs)


def test_render_rejects_bad_label_and_part():
    cfg = SynthPartsConfig()
    with pytest.raises(ValueError, match="label"):
        cfg.render(0, 0, label=99)
    with pytest.raises(ValueError, match="drop_parts"):
        cfg.render(0, 0, drop_parts=[42])


def test_cache_manifest_never_reuses_stale_data(tmp_path):
    cfg = SynthPartsConfig()
    a = load_or_generate(cfg, 0, 12, tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    again = load_or_generate(cfg, 0, 12, tmp_path, progress=False)
    assert all((a[k] == again[k]).all() for k in a)
    # a changed parameter gets its own file
    b = load_or_generate(SynthPartsConfig(n_distractors=(0, 0)), 0, 12, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert not (a["images"] == b["images"]).all()
    # a tampered cache is detected and regenerated
    npz = tmp_path / next(f for f in files if f.endswith(".npz"))
    arrays = dict(np.load(npz))
    arrays["images"][0] ^= 1
    np.savez(npz, **arrays)
    with pytest.warns(UserWarning, match="does not match"):
        fixed = load_or_generate(cfg, 0, 12, tmp_path, progress=False)
    assert (fixed["images"] == a["images"]).all()


def test_generated_split_is_byte_identical(tmp_path):
    a = load_or_generate(SynthPartsConfig(), 3, 10, None, progress=False)
    b = load_or_generate(SynthPartsConfig(), 3, 10, tmp_path, progress=False)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_dataset_items_and_rerender_operator(tmp_path):
    ds = SynthParts(SynthPartsConfig(), seed=0, n=8, cache_dir=tmp_path, progress=False)
    item = ds[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].dtype == torch.int64 and item["label"] == 3
    assert ds.decisive.shape == (8, ds.cfg.num_parts + 1)
    op = ds.rerender()
    assert isinstance(op, ReRender) and op.name == "rerender"
    x, m, _ = ds.tensors([1, 2])
    drop = torch.zeros(2, ds.cfg.num_parts + 1, dtype=torch.bool)
    drop[0, 1] = True
    out = op(x, m, drop, keys=[1, 2])
    assert torch.equal(out[1], x[1])
    expect = ds.cfg.render(0, 1, drop_parts=[1]).image
    assert torch.equal(out[0], torch.from_numpy(expect).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="keys"):
        op(x, m, drop)
