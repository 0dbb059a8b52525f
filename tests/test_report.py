"""Tests of the study report (partslib.report) on a small fake run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partslib import report
from partslib.report import tables

METRICS = {
    "data/n_train": 50, "data/n_test": 20, "data/image_size": 32, "data/num_classes": 3,
    "data/num_parts": 2,
    "classifier/test_accuracy": 0.99, "classifier/num_parameters": 1000, "classifier/epochs": 2,
    "pdm/miou": 0.5, "pdm/num_parameters": 100, "pdm/epochs": 3, "pdm/classifier_unchanged": True,
    "baselines/pdm_minus_ibd_miou": float("nan"),
    "explanations/completeness_max_rel_error": 2e-7,
    "validity/best_pdm_mode": "pdm-occlusion", "validity/best_pdm_decisive": 0.95,
    "validity/n_images": 12,
    "validity/pdm-amortised/rerender/spearman": 0.86,
    "validity/pdm-amortised/rerender/decisive": 0.96,
    "validity/pdm-amortised/rerender/decisive_ceiling": 0.9,
    "validity/pdm-region-soft/rerender/spearman": 0.3,
    "validity/pdm-region-soft/rerender/decisive": 0.25,
    "validity/pdm-region-soft/rerender/decisive_ceiling": 0.9,
    # the best mode's claim is a blur removal: its ceiling is blur's, never re-render's
    "validity/pdm-occlusion/rerender/decisive_ceiling": 0.9,
    "validity/pdm-occlusion/blur/decisive_ceiling": 1.0,
}
T2 = """method,operator,units,spearman,decisive,decisive_ceiling,decisive_chance,top_part,note
pdm-region-soft,rerender,logit,0.3,0.25,0.9,0.2,0.3,
pdm-occlusion,rerender,logit,0.7,0.95,0.9,0.2,0.9,blur claim
random,rerender,none,,0.2,0.9,0.2,0.2,chance floor
pdm-region-soft,blur,logit,0.2,0.25,1.0,0.2,0.3,
pdm-occlusion,blur,logit,0.9,0.97,1.0,0.2,0.9,blur claim
random,blur,none,0.01,0.1,1.0,0.2,0.2,chance floor
"""
T1 = """method,iou:background,iou:head,mIoU,pointing_game,region_iou,region_pointing,netdissect_mean
PDM,0.9,0.8,0.85,0.99,0.8,1.0,
Grad-CAM (thresholded),,,,,0.3,0.6,
"""
T4 = """size,method,batch,ms_per_batch,ratio_to_forward
64,forward,8,10.0,1.0
64,pdm-region-soft,8,15.0,1.5
"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "default"
    for rel, text in {"validity/t2.csv": T2, "baselines/t1.csv": T1,
                      "benchmark/t4.csv": T4}.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    (run / "metrics.json").write_text(json.dumps(METRICS))
    (run / "timings.json").write_text(json.dumps({
        "profile": "default", "started": "2026-01-02T03:04:05", "status": "ok",
        "notebooks": ["01_data", "02_classifier"],
        "stages": {"01_data": 60.0, "02_classifier": 500.0},
        "total_seconds": 564.0, "only": None, "python": "3.11.7", "cpu_count": 2}))
    (run / "explanations").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(run / "explanations/gallery_correct.png")
    return run


def _text(html: str) -> str:
    """The page without embedded images (base64 can hold any letters)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


def test_headline_shows_the_default_rule_first_and_the_best_mode_beside_it(run_dir):
    table = report.headline_table(report.load_run(run_dir))
    whats = list(table.what)
    i = next(j for j, w in enumerate(whats) if w.startswith("decisive-part accuracy, default"))
    # the paper's region rule, then the best mode (chosen after the fact), beside the default
    assert whats[i + 1] == "decisive-part accuracy, region rule (the paper's)"
    assert whats[i + 2] == "decisive-part accuracy, best PDM mode (pdm-occlusion)"
    assert table.counted.iloc[i] and not table.counted.iloc[i + 1:i + 3].any()
    assert table.counted.sum() == len(report.TARGETS)
    assert table.meaning.str.len().min() > 10  # every row says what it means
    row = table.set_index("key").loc["validity/pdm-amortised/rerender/decisive"]
    assert (row.measured, row.met, row.ceiling) == ("0.960", "yes", "0.900 (re-render)")
    row = table.set_index("key").loc["validity/pdm-region-soft/rerender/decisive"]
    assert (row.measured, row.met, row.ceiling) == ("0.250", "no", "0.900 (re-render)")
    best = table.set_index("key").loc["validity/best_pdm_decisive"]
    # compared with the ceiling of its own operator (blur), not re-render's 0.900
    assert (best.measured, best.ceiling) == ("0.950", "1.000 (blur)")
    nan_row = table.set_index("key").loc["baselines/pdm_minus_ibd_miou"]
    assert (nan_row.measured, nan_row.met, nan_row.ceiling) == ("not measured", "–", "")
    assert list(report.targets_table({}).key) == [t.key for t in report.TARGETS]
    md = report.headline_markdown(report.load_run(run_dir), "default")
    assert "| 0.950 | 1.000 (blur) |" in md and "beside, not counted" in md


def test_headline_takes_the_operator_the_run_recorded():
    metrics = {**METRICS, "validity/best_pdm_operator": "mean",
               "validity/pdm-occlusion/mean/decisive_ceiling": 0.5}
    best = report.headline_table(metrics).set_index("key").loc["validity/best_pdm_decisive"]
    assert best.ceiling == "0.500 (mean fill)"


def test_report_shows_the_wall_time_when_timings_have_it(run_dir):
    html = report.build_report(run_dir)
    assert "9.4 min" in html and "all 2 stages" in html
    row = report.headline_table(report.load_run(run_dir)).set_index("key")
    assert row.loc["study/total_minutes", "measured"] == "9.4"


def test_report_says_why_the_wall_time_is_not_measured(run_dir):
    (run_dir / "timings.json").unlink()
    html = report.build_report(run_dir)
    assert "not measured" in html and "no timings.json" in html
    running = {"status": "running", "notebooks": ["01_a", "02_b", "03_c"],
               "stages": {"01_a": 30.0, "02_b": 30.0}, "elapsed_seconds": 66.0,
               "total_seconds": None}
    (run_dir / "timings.json").write_text(json.dumps(running))
    minutes, note = report.wall_time(running)
    assert minutes is None and "2 of 3 stages done" in note and "1.1 min so far" in note
    assert "2 of 3 stages done" in report.build_report(run_dir)
    assert report.wall_time({**running, "status": "failed", "failed": "02_b"})[1] == \
        "not measured: the run failed in 02_b"
    only = {**running, "status": "ok", "total_seconds": 60.0, "only": ["02_b"]}
    assert report.wall_time(only)[0] is None and "--only" in report.wall_time(only)[1]


def test_numbers_are_rounded_without_nan_or_negative_zero():
    assert tables.fmt(float("nan")) == tables.DASH and tables.fmt(None) == tables.DASH
    assert tables.fmt(-0.0004, ".2f") == "0.00" and tables.fmt(-0.004, ".3f") == "-0.004"
    assert tables.fmt(-0.02, ".2f") == "-0.02" and tables.fmt(1234, ",") == "1,234"


def test_t2_is_a_method_by_operator_matrix(run_dir):
    import pandas as pd

    html = tables.t2_matrix(pd.read_csv(run_dir / "validity/t2.csv"), best="pdm-occlusion")
    rows = re.findall(r"<tr[ >].*?</tr>", html)
    assert len(rows) == 2 + 3 + 2  # two header rows, three methods, ceiling and chance
    assert rows[0].count("colspan='2'") == 2  # one column pair per operator
    body = rows[2:5]
    assert all(r.count("<td") == 1 + 2 * 2 + 1 for r in body)  # method, (ρ, decisive) x 2, units
    assert "default" in body[0] and "best PDM mode" in body[1]
    assert ">0.90<" in rows[5] and ">1.00<" in rows[5]  # ceiling per operator
    assert "–" in body[2] and "not computed" in html  # missing ρ: a dash and its footnote
    # occlusion's claim is a blur removal: its decisive number stands under blur only
    cells = re.findall(r"<td[^>]*>(.*?)</td>", body[1])
    assert cells[2].startswith("→") and cells[4].startswith("0.97")
    assert "that operator&#x27;s ceiling only" in html


def test_t2_matrix_shows_bootstrap_intervals(run_dir):
    import pandas as pd

    t2 = pd.read_csv(run_dir / "validity/t2.csv")
    assert "[" not in tables.t2_matrix(t2)
    t2["spearman_lo"], t2["spearman_hi"] = t2.spearman - 0.1, t2.spearman + 0.1
    t2["decisive_lo"], t2["decisive_hi"] = t2.decisive - 0.05, t2.decisive + 0.05
    html = tables.t2_matrix(t2)
    assert "[0.20, 0.40]" in html and "[0.20, 0.30]" in html and "bootstrap interval" in html


def test_benchmark_targets_read_the_keys_of_earlier_runs_too():
    old = report.headline_table({"benchmark/pdm_region_vs_forward@64": 1.5}).set_index("what")
    new = report.headline_table({"benchmark/pdm-region-soft_vs_forward@64": 1.5}).set_index("what")
    row = "PDM-region cost / classifier forward (batch 64)"
    assert old.loc[row, "measured"] == new.loc[row, "measured"] == "1.50"


def test_method_names_come_from_the_registry():
    from partslib.explain.registry import REGISTRY

    assert tables.method_label("pdm-region-soft") == REGISTRY["pdm-region-soft"].display
    assert tables.method_label("pdm_region") == tables.method_label("pdm-region-soft")
    assert tables.method_label("forward") == tables.BENCH_LABELS["forward"]


def test_report_has_no_nan_and_no_index_column(run_dir):
    html = report.build_report(run_dir)
    text = _text(html)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert "Unnamed" not in text and "<script" not in text
    assert "data:image/png;base64," in html  # figures embedded: the page stands alone
    linked = report.build_report(run_dir, embed=False)
    assert "data:image" not in linked and "src='explanations/gallery_correct.png'" in linked
    assert "not defined for the method" in text  # T1's blanks are explained
    assert "<tr class='default'><td class='left'>region (soft)</td>" in text  # T4's subject row


def test_report_without_runner_metrics_merges_the_stage_folders(run_dir):
    (run_dir / "metrics.json").unlink()
    (run_dir / "pdm").mkdir()
    (run_dir / "pdm" / "metrics.json").write_text(json.dumps({"miou": 0.75}))
    run = report.read_run(run_dir)
    assert run.metrics["pdm/miou"] == 0.75 and "no metrics.json" in run.notes[0]
    assert "no metrics.json from the runner" in report.build_report(run_dir)
    # a stage rerun by hand after the runner merged: its newer metrics win, and the page says so
    (run_dir / "metrics.json").write_text(json.dumps({"pdm/miou": 0.5}))
    run = report.read_run(run_dir)
    assert run.metrics["pdm/miou"] == 0.75 and "differs from what pdm wrote" in run.notes[0]
    (run_dir / "metrics.json").write_text(json.dumps({"pdm/miou": 0.75, "x/y": 1}))
    assert report.read_run(run_dir).notes == []  # consistent: the runner's file is read as is
    assert report.read_run(run_dir).metrics["x/y"] == 1


def test_write_report_and_readme_block(run_dir, tmp_path):
    out = report.write_report(run_dir)
    assert out == run_dir / "report.html" and out.read_text().startswith("<!DOCTYPE html>")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline:begin -->\nold\n<!-- headline:end -->\nrest\n")
    assert report.update_readme(readme, report.load_run(run_dir), "default")
    text = readme.read_text()
    assert "| classifier test accuracy | 0.990 |  | >= 0.97 | yes |" in text
    assert text.startswith("intro\n") and text.endswith("rest\n")
    assert not report.update_readme(readme, report.load_run(run_dir), "default")
    other = tmp_path / "other.md"
    other.write_text("no block here\n")
    with pytest.raises(ValueError, match="no <!-- headline:begin -->"):
        report.update_readme(other, {}, "default")


def test_seed_summary_lists_the_default_rule_then_the_best_mode():
    from partslib.report.seeds import seed_table, seeds_markdown

    runs = {s: {**METRICS, "validity/pdm-amortised/rerender/decisive": 0.2 + 0.1 * s,
                "validity/best_pdm_decisive": 0.9 + 0.02 * s} for s in (0, 1, 2)}
    md = seeds_markdown(seed_table(runs), [0, 1, 2])
    lines = md.splitlines()
    i = next(j for j, line in enumerate(lines) if "decisive-part accuracy, default rule" in line)
    assert "| 0.300 ± 0.100 |" in lines[i]
    assert lines[i + 1].startswith("| decisive-part accuracy, region rule (the paper's) | "
                                   "0.250 ± 0.000")
    assert lines[i + 2].startswith("| decisive-part accuracy, best PDM mode | 0.920 ± 0.020")


def test_report_shows_the_seeds_run_beside_it(run_dir):
    """With results/seeds/seeds.csv next to the run, the report carries the headline's
    quality rows as mean ± sd over the seeds; without it, no seeds section."""
    from partslib.report import build_report
    from partslib.report.seeds import write_seed_summary

    assert "Seeds ·" not in _text(build_report(run_dir))
    runs = {s: {**METRICS, "classifier/test_accuracy": 0.95 + 0.01 * s} for s in (0, 1, 2)}
    write_seed_summary(run_dir.parent / "seeds", runs)
    html = _text(build_report(run_dir))
    assert "Seeds · the headline over training seeds 0, 1, 2" in html
    assert "0.960 ± 0.010" in html and "0.950 – 0.970" in html


def test_report_shows_the_funnybirds_checks_with_both_part_sources(run_dir):
    from partslib.report import build_report

    assert "FunnyBirds checks ·" not in _text(build_report(run_dir))
    fb = run_dir.parent / "funnybirds" / "validity"
    fb.mkdir(parents=True)
    (fb / "funnybirds.csv").write_text(
        "method,parts,Com,Cor,Con\n"
        "pdm-region-soft,gt,0.859,0.804,0.761\npdm-region-soft,pdm,0.862,0.806,0.761\n"
        "ibd,gt,0.748,0.492,\nibd,pdm,0.748,0.492,\n")
    html = _text(build_report(run_dir))
    assert "FunnyBirds checks · ground-truth parts (gt)" in html
    row = re.search(r"<tr><td>pdm-region-soft</td>(.*?)</tr>", html).group(1)
    assert re.findall(r">([0-9.–]+)<", row) == ["0.859", "0.862", "0.804", "0.806", "0.761",
                                                 "0.761"]
    assert "nan" not in html.lower()
