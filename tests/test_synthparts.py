import hashlib
import itertools

import numpy as np
import pytest
import torch

from partslib.config import DataConfig
from partslib.data.classtables import class_distance
from partslib.data.synthparts import ReRender, SynthParts, SynthPartsConfig, load_or_generate
from partslib.metrics import funnybirds as fb_metrics
from partslib.pipeline import load_splits


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


# -- the default configuration is unchanged by the class tables and distractor removal ------

# Recorded from the generator before class tables and distractor removal were added:
# sha256(image bytes + mask bytes + label byte) of samples, and of re-renders without parts 0, 2.
_RECORDED = {
    (0, 0): "53937371dcda04b1dbbb8ee4cf8960ee4fc214b5f4befa8eff6bc4cfad2a98fe",
    (1, 123): "67c7e7c865a9a099c88dccf7963521b0924ee6bdbb0eb3d8f2167d0d0bf006fa",
    (5, 4999): "acba67bb51b1895b287bfa30e7c23881a89ca42189148532ec55de6a35cd45c8",
}
_RECORDED_DROP02 = {
    (0, 7): "8b894e19b2ca65c439336382577e88c6e2465727c8c5dceedd77b9317d7afcc6",
    (1, 123): "a07d28e53b3434bcd83696eab640ffdc4962b334f59f365171029d3cadb89764",
}


def test_default_configuration_is_bit_identical_to_the_recorded_one():
    cfg = SynthPartsConfig()
    assert cfg.fingerprint() == "257650bc3aa0db46"  # the cache key of every default split
    assert SynthPartsConfig.from_classes("default") == cfg
    for (seed, index), digest in _RECORDED.items():
        s = cfg.render(seed, index)
        assert hashlib.sha256(s.image.tobytes() + s.mask.tobytes()
                              + bytes([s.label])).hexdigest() == digest
    for (seed, index), digest in _RECORDED_DROP02.items():
        s = cfg.render(seed, index, drop_parts=[0, 2])
        assert hashlib.sha256(s.image.tobytes() + s.mask.tobytes()).hexdigest() == digest


# -- the FunnyBirds-style class table -------------------------------------------------------

def _sufficient(table: list[dict], k: int, parts) -> bool:
    return all({p: table[j].get(p) for p in parts} != {p: table[k].get(p) for p in parts}
               for j in range(len(table)) if j != k)


def test_funnybirds_table_has_many_classes_sharing_parts():
    cfg = SynthPartsConfig.funnybirds()
    table = cfg.class_table()
    assert cfg.num_classes == len(table) >= 30
    assert len({tuple(sorted(row.items())) for row in table}) == len(table)  # pairwise distinct
    assert len(set(cfg.names)) == cfg.num_classes
    assert all(set(row) == set(cfg.parts) for row in table)  # every class fixes every part
    # classes share parts: every (part, pattern) pair is used by several classes, and some
    # classes differ on a single part only
    for part in cfg.parts:
        for pat in {row[part] for row in table}:
            assert sum(row[part] == pat for row in table) >= 2
    distances = {class_distance(a, b) for i, a in enumerate(cfg.signatures)
                 for b in cfg.signatures[:i]}
    assert min(distances) == 1 and max(distances) == len(cfg.parts)


def test_minimal_sufficient_sets_are_sufficient_minimal_and_differ():
    for cfg in (SynthPartsConfig(), SynthPartsConfig.funnybirds()):
        table, sets = cfg.class_table(), cfg.minimal_sufficient_sets()
        for k, found in enumerate(sets):
            assert found, f"class {k} has no sufficient part set"
            for S in found:
                assert _sufficient(table, k, S)
                assert not any(_sufficient(table, k, S[:i] + S[i + 1:]) for i in range(len(S)))
            # every sufficient set of the class's parts contains a minimal one (brute force)
            own = list(table[k])
            for r in range(1, len(own) + 1):
                for S in itertools.combinations(own, r):
                    if _sufficient(table, k, S):
                        assert any(set(f) <= set(S) for f in found)
        # the same sets as the FunnyBirds checks compute from the class table
        assert [{frozenset(s) for s in f} for f in sets] == \
            [set(f) for f in fb_metrics.minimal_sufficient_part_sets(table)]
    fb = SynthPartsConfig.funnybirds().minimal_sufficient_sets()
    assert len({min(len(s) for s in found) for found in fb}) >= 2  # sizes differ across classes
    assert len({tuple(found) for found in fb}) > 10
    assert SynthPartsConfig().minimal_sufficient_sets()[5] == [("tail",), ("legs",)]


def test_samples_show_their_class_signature_and_nuisances_never_form_one():
    fb = SynthPartsConfig.funnybirds(size=32)
    table = fb.class_table()
    for i in range(60):
        label, scene = fb._scene(2, i, None)
        assert {p: v["pattern"] for p, v in scene["parts"].items()} == table[label]
    # an explicit table where a class takes "plain" on a part: no nuisance may be plain there
    cfg = SynthPartsConfig.from_classes([{"head": "stripes"}, {"head": "dots", "tail": "plain"}],
                                        size=32)
    pairs = {(p, q) for row in cfg.class_table() for p, q in row.items()}
    for i in range(60):
        label, scene = cfg._scene(0, i, None)
        shown = {(p, v["pattern"]) for p, v in scene["parts"].items()}
        assert shown & pairs == set(cfg.signatures[label])


@pytest.mark.parametrize("classes, match", [
    ("fb", "classes must be one of"),
    ([{"head": "stripes"}, {"head": "stripes", "body": "dots"}], "contained in"),
    ([{"head": "stripes"}, {}], "non-empty"),
    ([{"head": p} for p in ("plain", "stripes", "dots", "checker")] + [{"body": "dots"}],
     "no nuisance pattern"),
])
def test_bad_class_tables_raise_clear_errors(classes, match):
    with pytest.raises(ValueError, match=match):
        SynthPartsConfig.from_classes(classes)


def test_data_config_and_load_splits_take_the_class_table(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        DataConfig(classes="six")
    explicit = DataConfig(classes=[{"head": "stripes"}, {"body": "dots"}])
    assert explicit.classes == ((("head", "stripes"),), (("body", "dots"),))
    train, val, test = load_splits(tmp_path, n_train=6, n_val=3, n_test=4, image_size=32,
                                   classes="funnybirds")
    assert train.cfg == val.cfg == test.cfg == SynthPartsConfig.funnybirds(size=32)
    assert train.cfg.num_classes == 50 and len(train.class_names) == 50
    assert train.decisive[:, 1:].all() and not train.decisive[:, 0].any()  # every part decisive


# -- distractors, removable one by one ------------------------------------------------------

def _with_distractors(cfg, seed, at_least):
    return next(i for i in range(200) if cfg.num_distractors(seed, i) >= at_least)


def test_number_of_distractors_is_deterministic_and_matches_the_render():
    cfg = SynthPartsConfig()
    counts = [cfg.num_distractors(0, i) for i in range(40)]
    assert counts == [cfg.num_distractors(0, i) for i in range(40)]
    assert set(counts) == {1, 2, 3}  # n_distractors=(1, 3)
    for i in range(10):
        s = cfg.render(0, i)
        assert s.n_distractors == counts[i]
        assert s.objects is not None and s.objects.max() <= counts[i]
        assert not (s.objects > 0)[s.mask > 0].any()  # parts cover distractors
    assert SynthPartsConfig(n_distractors=(0, 0)).render(0, 1).n_distractors == 0


def test_removing_a_distractor_changes_only_its_pixels():
    cfg = SynthPartsConfig()
    i = _with_distractors(cfg, 0, 3)
    full = cfg.render(0, i)
    assert full.objects is not None
    for d in range(full.n_distractors):
        without = cfg.render(0, i, drop_distractors=[d])
        changed = (full.image != without.image).any(-1)
        mine = full.objects == d + 1
        assert not changed[~mine].any()
        if mine.any():
            assert changed[mine].mean() > 0.5
        assert (without.mask == full.mask).all() and without.label == full.label
        assert without.objects is not None and not (without.objects == d + 1).any()
    # all of them: only the background and the parts remain
    none = cfg.render(0, i, drop_distractors=range(full.n_distractors))
    assert none.objects is not None and not none.objects.any()
    assert (none.image[full.objects == 0] == full.image[full.objects == 0]).all()


def test_rerender_with_nothing_dropped_equals_the_sample(tmp_path):
    cfg = SynthPartsConfig()
    for i in range(5):
        a, b = cfg.render(3, i), cfg.render(3, i, drop_parts=[], drop_distractors=[])
        assert (a.image == b.image).all() and (a.mask == b.mask).all()
    ds = SynthParts(cfg, seed=3, n=5, cache_dir=tmp_path, progress=False)
    for i in range(5):
        assert torch.equal(torch.from_numpy(ds.render(i).image).permute(2, 0, 1), ds.images[i])
    x, m, _ = ds.tensors()
    out = ds.rerender()(x, m, torch.zeros(5, cfg.num_parts + 1, dtype=torch.bool),
                        keys=range(5), drop_distractors=[[]] * 5)
    assert torch.equal(out, x)


def test_dataset_and_operator_remove_distractors(tmp_path):
    cfg = SynthPartsConfig()
    ds = SynthParts(cfg, seed=0, n=12, cache_dir=tmp_path, progress=False)
    assert ds.num_distractors.tolist() == [cfg.num_distractors(0, i) for i in range(12)]
    assert ds.distractor_present.shape == (12, 3)
    assert ds.distractor_present.sum(1).tolist() == ds.num_distractors.tolist()
    keys = [i for i in range(12) if ds.num_distractors[i] >= 2][:2]
    x, m, _ = ds.tensors(keys)
    drop = torch.zeros(2, cfg.num_parts + 1, dtype=torch.bool)
    drop[1, 2] = True
    rows = torch.zeros(2, 3, dtype=torch.bool)
    rows[0, 1] = rows[1, 0] = True
    op = ds.rerender()
    out = op(x, m, drop, keys=keys, drop_distractors=rows)
    assert torch.equal(out, op(x, m, drop, keys=keys, drop_distractors=[[1], [0]]))
    for b, (parts, dis) in enumerate([([], [1]), ([2], [0])]):
        expect = ds.render(keys[b], drop_parts=parts, drop_distractors=dis).image
        assert torch.equal(out[b], torch.from_numpy(expect).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="drop_distractors"):
        ds.render(keys[0], drop_distractors=[5])
    with pytest.raises(ValueError, match="drop_distractors rows"):
        op(x, m, drop, keys=keys, drop_distractors=[[1]])
