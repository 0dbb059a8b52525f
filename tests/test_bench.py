"""The benchmark machinery (partslib.bench) on tiny sizes: it runs every method and writes
well-formed bench.json / t4.csv. The ratio tests feed known timings (and sleeps of known
length) and check each ratio's value and direction."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from partslib import bench
from partslib.explain.registry import REGISTRY

TINY = 32  # a random SmallResNet case


def _config(tmp_path, **kw) -> bench.BenchConfig:
    base = dict(results_dir=str(tmp_path), sizes=(TINY,), repeats=1, warmup=0, batch=2,
                threads=torch.get_num_threads(), memory=False, progress=False)
    base.update(kw)
    return bench.BenchConfig(**base)


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    rd = tmp_path_factory.mktemp("bench")
    (rd / "previous" / "old").mkdir(parents=True)  # an earlier run's files are never read
    (rd / "previous" / "old" / "timings.json").write_text("not json")
    return rd, bench.run_bench(_config(rd, methods=bench.METHODS))  # the slow peer included


def test_payload_has_the_ratio_keys_and_metadata(payload):
    _, p = payload
    for other in ("forward", "ibd", "gradcam", "captum_occlusion", "pdm-occlusion"):
        key = f"pdm-region-soft_vs_{other}@{TINY}"
        assert p[key] > 0 and key in p["ratios_median"] and key in p["ratios_cpu"]
    assert f"pdm-occlusion_vs_captum_occlusion@{TINY}" in p
    # the explainers timed are the registry's, under its names
    assert set(bench.EXPLAINERS) <= set(REGISTRY) and not set(bench.REFERENCES) & set(REGISTRY)
    for m in bench.METHODS:
        for table in ("ms_per_batch", "ms_per_batch_median", "cpu_ms_per_batch", "images_per_s"):
            assert p[table][f"{m}@{TINY}"] > 0
        assert len(p["samples_ms"][f"{m}@{TINY}"]) == 1
    assert p["batch"] == {str(TINY): 2} and p["threads"] == torch.get_num_threads()
    assert p["torch"] == torch.__version__
    assert p["machine"]["cpu_count"] >= 1 and "torch" in p["machine"]["versions"]
    assert p["setup"][str(TINY)]["classifier"].startswith("random")
    assert "stage_seconds" not in p  # the benchmark reads nothing of the study's timings
    assert p["peak_rss_mib"]["process"] > 0


def test_default_methods_are_all_but_the_shapley_samplers():
    assert bench.BenchConfig(results_dir=".").methods == bench.DEFAULT_METHODS
    assert set(bench.METHODS) - set(bench.DEFAULT_METHODS) == {"captum-shapley", "pdm-shapley"}
    assert set(bench.SLOW_METHODS) == {"captum-shapley", "pdm-shapley"}
    assert set(bench.PEERS) <= set(bench.EXPLAINERS)
    assert {"pdm-amortised", "pdm-shapley"} <= set(bench.EXPLAINERS)


def test_amortised_and_shapley_rules_are_timed_against_the_forward_pass(payload):
    _, p = payload
    for m in ("pdm-amortised", "pdm-shapley"):
        assert p[f"{m}_vs_forward@{TINY}"] > 0 and f"{m}_vs_forward@{TINY}" in p["ratios_cpu"]
    assert p["setup"][str(TINY)]["head"].startswith("random: ContributionHead(")
    # the amortised target reads the key the bench writes (at 64 px)
    assert "pdm-amortised_vs_forward@64" in bench.TARGETS


def test_the_amortised_and_shapley_explainers_of_the_bench_are_complete():
    case = bench.build_case(TINY, batch=2)
    out = {m: fn() for m, fn in bench.method_fns(case, ["pdm-amortised", "pdm-shapley"]).items()}
    for m, e in out.items():
        assert e.mode == m and e.contributions.shape == (2, 6)
        torch.testing.assert_close(e.bias + e.contributions.sum(1), e.score, atol=1e-4,
                                   rtol=1e-5)
        assert torch.equal(e.target, case.targets)
    # the random head has the shape of the case's models
    assert (case.head.num_labels, case.head.num_classes) == (6, case.classifier.num_classes)
    # train_head's default shape: its width and earlier stages
    import inspect

    from partslib.explain.amortised_training import train_head

    defaults = inspect.signature(train_head).parameters
    assert case.head.hidden == defaults["hidden"].default
    assert case.head.stages == tuple(defaults["stages"].default)
    clf = case.classifier
    assert case.head.channels == clf.fc.in_features + sum(clf.stage_channels[s]
                                                          for s in case.head.stages)


def test_a_trained_head_beside_the_models_is_timed_instead_of_a_random_one(tmp_path):
    from partslib.bench.cases import _head
    from partslib.explain.amortised import ContributionHead
    from partslib.explain.amortised_training import HEAD_CHECKPOINT
    from partslib.training import save_checkpoint

    case = bench.build_case(TINY, batch=2)
    clf, pdm = case.classifier, case.pdm
    trained = ContributionHead(clf.fc.in_features, 6, clf.num_classes, hidden=24,
                               game="rerender")
    save_checkpoint(tmp_path / HEAD_CHECKPOINT, state_dict=trained.state_dict(), config={},
                    kind="head", head=trained.config(), info={})
    weights: dict[str, str] = {}
    head = _head(clf, pdm, tmp_path, weights)
    assert head.hidden == 24 and weights["head"].startswith("trained")
    assert torch.equal(head.out[-1].weight, trained.out[-1].weight)
    # a head for other models is not timed: a random one of the right shape is
    other = ContributionHead(clf.fc.in_features, 4, clf.num_classes)
    save_checkpoint(tmp_path / HEAD_CHECKPOINT, state_dict=other.state_dict(), config={},
                    kind="head", head=other.config(), info={})
    weights = {}
    head = _head(clf, pdm, tmp_path, weights)
    assert head.num_labels == 6 and weights["head"].startswith("random")
    assert "4 labels" in weights["head_not_loaded"]


def test_outputs_are_written_and_never_silently_overwritten(payload):
    rd, p = payload
    js, tc = bench.write_outputs(rd, p)
    first = json.loads(js.read_text())
    assert first["batch"] == {str(TINY): 2} and f"pdm-region-soft_vs_forward@{TINY}" in first
    rows = list(csv.DictReader(tc.open()))
    assert [r["method"] for r in rows] == list(bench.METHODS)
    assert {"size", "ms_per_batch", "images_per_s", "ratio_to_forward"} <= set(rows[0])
    assert float(rows[0]["ratio_to_forward"]) == 1.0
    bench.write_outputs(rd, {**p, "started": "later"})
    assert json.loads((rd / "bench.previous.json").read_text())["started"] == first["started"]
    assert json.loads(js.read_text())["started"] == "later"
    assert (rd / "t4.previous.csv").exists()
    assert "pdm-region-soft" in bench.format_table(p)


@pytest.mark.parametrize("isolation", ["per size", "per method"])
def test_cli_with_per_method_memory(tmp_path, capsys, isolation):
    """The command line, including the peak-memory subprocesses (one per size or per method)."""
    threads = torch.get_num_threads()
    extra = ["--memory-per-process"] if isolation == "per method" else []
    try:
        rc = bench.main(["--results-dir", str(tmp_path), "--sizes", str(TINY), "--batch", "2",
                         "--repeats", "1", "--warmup", "0", "--threads", str(threads),
                         "--methods", "forward", "pdm-region-soft", "--no-progress", *extra])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    p = json.loads((tmp_path / "bench.json").read_text())
    assert set(p["peak_rss_mib"]["per_method_delta"]) == {f"forward@{TINY}",
                                                          f"pdm-region-soft@{TINY}"}
    assert p["peak_rss_mib"]["isolation"] == f"one subprocess {isolation}"
    for m in ("forward", "pdm-region-soft"):
        row = p["peak_rss_mib"]["per_method"][str(TINY)][m]
        assert row["peak_mib"] >= row["rss_before_mib"] or not row["reset"]
    assert "pdm-region-soft_vs_forward" in capsys.readouterr().out


def test_torchvision_case_runs_every_method():
    case = bench.build_case(128, batch=2)  # >= 128 pixels: resnet18, 365 classes
    assert case.classifier.num_classes == 365 and case.pdm.num_labels == 6
    assert case.images.shape == (2, 3, 128, 128) and case.images.max() <= 1
    fns = bench.method_fns(case, captum_baseline="zero")
    out = {m: fn() for m, fn in fns.items()}
    assert out["forward"].shape == (2, 365)
    assert out["gradcam"].shape == (2, 128, 128)
    assert out["captum_occlusion"].shape == (2, 3, 128, 128)
    assert out["pdm-region-soft"].contributions.shape == (2, 6)
    assert out["pdm-occlusion"].mode == "pdm-occlusion" and out["ibd"].mode == "ibd"
    assert out["pdm-amortised"].contributions.shape == (2, 6)


def test_bad_arguments_are_refused():
    case = bench.build_case(TINY, batch=2)
    with pytest.raises(ValueError, match="unknown methods"):
        bench.method_fns(case, ["nope"])
    with pytest.raises(ValueError, match="captum_baseline"):
        bench.method_fns(case, captum_baseline="mean")
    with pytest.raises(ValueError, match="repeats"):
        bench.time_methods({"f": lambda: None}, repeats=0)


def test_one_batch_per_size_or_a_clear_error(tmp_path):
    cfg = bench.BenchConfig(results_dir=str(tmp_path), sizes=(32, 224), batch=(64, 8))
    assert cfg.batches == {32: 64, 224: 8}
    assert bench.BenchConfig(results_dir=str(tmp_path), sizes=(32, 224), batch=4).batches == \
        {32: 4, 224: 4}
    assert bench.BenchConfig(results_dir=str(tmp_path), sizes=(32, 224), batch=[4]).batches == \
        {32: 4, 224: 4}
    with pytest.raises(ValueError, match="one entry per size"):
        bench.BenchConfig(results_dir=str(tmp_path), sizes=(32, 224), batch=(64, 8, 2))
    with pytest.raises(ValueError, match=">= 1"):
        bench.BenchConfig(results_dir=str(tmp_path), sizes=(32,), batch=0)


def test_fallback_models_are_the_default_studys():
    """Without checkpoints the benchmark times the default study's architectures, not cheaper
    ones: the PDM of PDMConfig() (image step included) on the classifier of ClassifierConfig()."""
    from partslib.bench.cases import build_case
    from partslib.config import ClassifierConfig, PDMConfig

    case = build_case(64, batch=2, results_dir=None)
    cfg, arch = PDMConfig(), case.pdm.config()
    assert tuple(arch["widths"]) == cfg.widths
    assert (arch["image_width"], arch["image_kernel"], arch["separable"]) == \
        (cfg.image_width, cfg.image_kernel, cfg.separable)
    assert tuple(case.classifier.config()["widths"]) == ClassifierConfig().widths


# --------------------------------------------------------------------------- ratios, known times

KNOWN_MS = {"forward": 10.0, "pdm-region-soft": 20.0, "gradcam": 40.0, "pdm-occlusion": 50.0,
            "captum_occlusion": 100.0}


def test_ratios_are_subject_over_other_never_inverted():
    from partslib.bench.timing import _ratios

    ms = {f"{m}@64": v for m, v in KNOWN_MS.items()}
    r = _ratios(ms, list(KNOWN_MS), 64)
    # PDM-region takes 2x the forward pass and half of Grad-CAM: 2 and 0.5, not 0.5 and 2
    assert r["pdm-region-soft_vs_forward@64"] == pytest.approx(2.0)
    assert r["pdm-region-soft_vs_gradcam@64"] == pytest.approx(0.5)
    assert r["gradcam_vs_forward@64"] == pytest.approx(4.0)
    assert r["pdm-occlusion_vs_captum_occlusion@64"] == pytest.approx(0.5)
    assert not any(k.startswith(("forward_vs", "gradcam_vs_pdm")) for k in r)
    # the targets read the same keys the right way round: 2x a forward pass meets "<= 2",
    # half of Grad-CAM meets "< 1"
    assert bench.TARGETS["pdm-region-soft_vs_forward@64"] == 2.0
    assert r["pdm-region-soft_vs_forward@64"] <= bench.TARGETS["pdm-region-soft_vs_forward@64"]


def test_t4_ratio_to_forward_and_the_headline_read_the_known_times():
    from partslib import report
    from partslib.bench.outputs import _t4_rows

    keys = [f"{m}@64" for m in KNOWN_MS]
    payload = {"sizes": [64], "methods": list(KNOWN_MS), "batch": 8,
               "ms_per_batch": {k: KNOWN_MS[k[:-3]] for k in keys},
               "ms_per_batch_median": {k: KNOWN_MS[k[:-3]] for k in keys},
               "cpu_ms_per_batch": {k: KNOWN_MS[k[:-3]] for k in keys},
               "images_per_s": {k: 8 / (KNOWN_MS[k[:-3]] / 1e3) for k in keys},
               "peak_rss_mib": {"per_method_delta": {}}}
    rows = {r["method"]: r for r in _t4_rows(payload)}
    assert rows["pdm-region-soft"]["ratio_to_forward"] == pytest.approx(2.0)
    assert rows["captum_occlusion"]["ratio_to_forward"] == pytest.approx(10.0)
    assert rows["forward"]["ratio_to_forward"] == pytest.approx(1.0)
    # the headline shows benchmark/<subject>_vs_<other> under the row that names them so
    from partslib.bench.timing import _ratios

    ratios = _ratios(payload["ms_per_batch"], list(KNOWN_MS), 64)
    table = report.headline_table({f"benchmark/{k}": v for k, v in ratios.items()})
    row = table.set_index("what")
    assert row.loc["PDM-region cost / classifier forward (batch 64)", "measured"] == "2.00"
    assert row.loc["PDM-region cost / pytorch-grad-cam GradCAM", "measured"] == "0.50"
    assert row.loc["PDM-region cost / pytorch-grad-cam GradCAM", "met"] == "yes"


def test_timing_a_method_twice_as_slow_gives_a_ratio_of_two():
    """Sleeps of known length through the real timing loop and ratio code (sleeps can only be
    lengthened by a busy machine, so the minimum over repeats stays close to them)."""
    import time

    from partslib.bench.timing import _ratios, time_methods

    fns = {"forward": lambda: time.sleep(0.02), "pdm-region-soft": lambda: time.sleep(0.04)}
    wall, _ = time_methods(fns, repeats=5, warmup=1, progress=False)
    ms = {f"{m}@64": 1e3 * min(v) for m, v in wall.items()}
    ratio = _ratios(ms, list(fns), 64)["pdm-region-soft_vs_forward@64"]
    assert 1.6 < ratio < 2.4, ratio
