"""Tests of the study runner (partslib.runner) on tiny fake notebooks, plus the smoke profile's
determinism."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from partslib import runner

ROOT = Path(__file__).resolve().parents[1]

FAKE_PARAMS = '''\
profile: str = "none"  # set by the runner
results_dir: str = "."  # set by the runner
value: int = 1  # a number to report
seed: int = 0  # added to the value (a seeds profile sets it)
rate: float = 0.5  # a float knob
fail: bool = False  # raise in the second cell
resume: bool = True  # reuse checkpoints (the runner's --retrain sets False)
'''

FAKE_BODY = '''\
import json
from pathlib import Path
if fail:
    raise ValueError("deliberate failure")
out = Path(results_dir) / STAGE
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"value": value + seed, "nested": {"rate": rate}}))
(out / "resume.txt").write_text(str(resume))
'''


def _fake_notebook(path: Path, stage: str) -> None:
    params = new_code_cell(FAKE_PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(FAKE_BODY.replace("STAGE", repr(stage)))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


def _project(tmp_path: Path, profile: str, notebooks=("01_alpha", "02_beta")) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "profiles").mkdir()
    for name in notebooks:
        _fake_notebook(tmp_path / "notebooks" / f"{name}.ipynb", runner.stage_name(name))
    (tmp_path / "profiles" / "p.yaml").write_text(profile)
    return tmp_path


GOOD = """
notebooks: [01_alpha, 02_beta]
common:
  value: 3
02_beta:
  rate: 0.25
"""


def _validate(root: Path, only=None):
    prof = runner.load_profile("p", root)
    return runner.validate_profile(prof, root / "notebooks", only)


def test_stage_name():
    assert runner.stage_name("02_classifier") == "classifier"
    assert runner.stage_name("07-summary") == "summary"
    assert runner.stage_name("scratch") == "scratch"


def test_dry_run_accepts_a_valid_profile(tmp_path, capsys):
    root = _project(tmp_path, GOOD)
    plan = _validate(root)
    assert plan == {"01_alpha": {"value": 3}, "02_beta": {"value": 3, "rate": 0.25}}
    assert runner.main(["--root", str(root), "--profile", "p", "--dry-run"]) == 0
    assert "profile is valid" in capsys.readouterr().out


def test_dry_run_rejects_an_unknown_parameter(tmp_path, capsys):
    root = _project(tmp_path, GOOD.replace("rate: 0.25", "rte: 0.25"))
    with pytest.raises(runner.ProfileError) as err:
        _validate(root)
    msg = str(err.value)
    assert "02_beta.rte: unknown parameter" in msg
    assert "02_beta.ipynb" in msg and "did you mean 'rate'?" in msg
    # the CLI prints the same and exits non-zero
    assert runner.main(["--root", str(root), "--profile", "p", "--dry-run"]) == 2
    assert "rte" in capsys.readouterr().err


def test_dry_run_rejects_an_unknown_common_parameter(tmp_path):
    root = _project(tmp_path, GOOD.replace("value: 3", "valeu: 3"))
    with pytest.raises(runner.ProfileError, match=r"common\.valeu: no notebook .* declares"):
        _validate(root)


def test_dry_run_rejects_a_missing_notebook(tmp_path):
    root = _project(tmp_path, GOOD.replace("[01_alpha, 02_beta]", "[01_alpha, 02_beta, 03_gamma]"))
    with pytest.raises(runner.ProfileError) as err:
        _validate(root)
    assert "notebook '03_gamma' does not exist" in str(err.value)
    assert str(root / "notebooks" / "03_gamma.ipynb") in str(err.value)


def test_dry_run_reports_every_problem_at_once(tmp_path):
    profile = GOOD.replace("[01_alpha, 02_beta]", "[01_alpha, 02_beta, 09_x]") \
        .replace("rate: 0.25", "rate: 3e-3\n  bogus: 1")
    root = _project(tmp_path, profile)
    with pytest.raises(runner.ProfileError) as err:
        _validate(root)
    msg = str(err.value)
    assert "09_x" in msg and "bogus" in msg
    # YAML 1.1 reads 3e-3 as a string: say so instead of running with a string
    assert "02_beta.rate is '3e-3' (str)" in msg and "0.003" in msg


def test_profile_structure_errors(tmp_path):
    root = _project(tmp_path, GOOD + "03_gamma:\n  value: 1\ncommon2: {}\n")
    with pytest.raises(runner.ProfileError) as err:
        runner.load_profile("p", root)
    assert "section '03_gamma' is not a notebook" in str(err.value)
    root2 = tmp_path / "b"
    root2.mkdir()
    _project(root2, GOOD.replace("value: 3", "results_dir: /tmp"))
    with pytest.raises(runner.ProfileError, match="set by the runner"):
        runner.load_profile("p", root2)
    with pytest.raises(runner.ProfileError, match="known profiles: p"):
        runner.load_profile("nope", root)


def test_only_must_name_a_notebook_of_the_profile(tmp_path):
    root = _project(tmp_path, GOOD)
    assert list(_validate(root, only=["02_beta"])) == ["02_beta"]
    with pytest.raises(runner.ProfileError, match="--only 02_bta.*did you mean '02_beta'"):
        _validate(root, only=["02_bta"])


def test_profile_extends_another_and_lists_seeds(tmp_path):
    root = _project(tmp_path, GOOD)
    (root / "profiles" / "q.yaml").write_text(
        "extends: p\nnotebooks: [02_beta]\n02_beta:\n  value: 9\nseeds: [0, 2]\n")
    q = runner.load_profile("q", root)
    assert q.notebooks == ["02_beta"] and q.seeds == [0, 2]
    assert q.common == {"value": 3} and q.sections == {"02_beta": {"rate": 0.25, "value": 9}}
    assert runner.load_profile("p", root).seeds == []
    (root / "profiles" / "r.yaml").write_text("extends: p\nseeds: [1, 1]\n")
    with pytest.raises(runner.ProfileError, match="lists a seed twice"):
        runner.load_profile("r", root)
    (root / "profiles" / "s.yaml").write_text("extends: t\n")
    (root / "profiles" / "t.yaml").write_text("extends: s\n")
    with pytest.raises(runner.ProfileError, match="cycle"):
        runner.load_profile("s", root)


def test_a_seeds_profile_runs_once_per_seed_and_summarises(tmp_path):
    root = _project(tmp_path, GOOD + "seeds: [0, 2]\n")
    results = tmp_path / "results"
    merged = runner.run_study("p", root=root, results=results, log=lambda *a, **k: None)
    for s in (0, 2):
        per_seed = json.loads((results / "p" / f"seed-{s}" / "metrics.json").read_text())
        assert per_seed["alpha/value"] == 3 + s
    table = pd.read_csv(results / "p" / "seeds.csv", index_col="metric")
    assert table.loc["alpha/value", "mean"] == 4 and table.loc["alpha/value", "n"] == 2
    assert table.loc["alpha/value", "sd"] == pytest.approx(2 ** 0.5)
    assert table.loc["beta/nested/rate", "sd"] == 0
    summary = json.loads((results / "p" / "metrics.json").read_text())
    assert summary["alpha/value/mean"] == 4 and merged["alpha/value/mean"] == 4
    # a second run keeps the first summary in previous/
    runner.run_study("p", root=root, results=results, log=lambda *a, **k: None)
    assert len(list((results / "p" / "previous").glob("*/seeds.csv"))) == 1


def test_archive_keeps_checkpoints_unless_asked(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "m.pt").write_text("w")
    (run / "metrics.json").write_text("{}")
    (run / "timings.json").write_text(json.dumps({"started": "2026-01-02T03:04:05"}))
    dest = runner.archive_previous_run(run)
    assert dest == run / "previous" / "20260102-030405"
    assert dest is not None
    assert sorted(p.name for p in dest.iterdir()) == ["metrics.json", "timings.json"]
    assert (run / "checkpoints" / "m.pt").exists()
    assert runner.archive_previous_run(run) is None  # nothing left to move
    dest2 = runner.archive_previous_run(run, include_checkpoints=True)
    assert dest2 is not None
    assert (dest2 / "checkpoints" / "m.pt").exists() and dest2 != dest


@pytest.mark.notebooks
def test_run_moves_the_previous_run_and_merges_metrics(tmp_path):
    root = _project(tmp_path, GOOD)
    results = tmp_path / "results"
    logs: list[str] = []
    log = lambda *a, **k: logs.append(" ".join(map(str, a)))  # noqa: E731
    merged = runner.run_study("p", root=root, results=results, log=log)
    run = results / "p"
    assert merged == {"alpha/value": 3, "alpha/nested/rate": 0.5,
                      "beta/value": 3, "beta/nested/rate": 0.25}
    assert json.loads((run / "metrics.json").read_text()) == merged
    timings = json.loads((run / "timings.json").read_text())
    assert timings["status"] == "ok" and list(timings["stages"]) == ["01_alpha", "02_beta"]
    assert (run / "notebooks" / "02_beta.ipynb").exists()
    assert any(line.startswith("[2/2] 02_beta") for line in logs)

    # second run, only one notebook: the first run is archived, not overwritten, and the
    # stages that are not rerun keep their results in the run folder
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "c.pt").write_text("keep")
    (run / "alpha" / "stale.txt").write_text("from the first run")
    logs.clear()
    merged2 = runner.run_study("p", root=root, results=results, only=["01_alpha"], log=log)
    previous = list((run / "previous").iterdir())
    assert len(previous) == 1
    assert any("copied to" in line and "previous" in line for line in logs)
    assert json.loads((previous[0] / "metrics.json").read_text()) == merged
    assert (previous[0] / "beta" / "metrics.json").exists()
    assert (previous[0] / "alpha" / "stale.txt").exists()
    assert not (run / "alpha" / "stale.txt").exists()  # the rerun stage starts clean
    assert merged2 == merged
    assert (run / "beta" / "metrics.json").exists()
    assert list(json.loads((run / "timings.json").read_text())["stages"]) == ["01_alpha",
                                                                               "02_beta"]
    assert (run / "checkpoints" / "c.pt").read_text() == "keep"

    # a full run moves everything
    logs.clear()
    runner.run_study("p", root=root, results=results, log=log)
    assert any("moved to" in line for line in logs)
    assert len(list((run / "previous").iterdir())) == 2
    assert (run / "alpha" / "resume.txt").read_text() == "True"

    # --only --retrain: the checkpoints are copied along, so the rerun stage must not reuse
    # them: it is run with resume=False
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "c.pt").write_text("keep")
    runner.run_study("p", root=root, results=results, only=["02_beta"], retrain=True, log=log)
    assert (run / "beta" / "resume.txt").read_text() == "False"
    assert (run / "alpha" / "resume.txt").read_text() == "True"  # not rerun


@pytest.mark.notebooks
def test_a_failing_notebook_stops_the_run(tmp_path):
    root = _project(tmp_path, GOOD.replace("rate: 0.25", "rate: 0.25\n  fail: true"))
    results = tmp_path / "results"
    with pytest.raises(runner.StageError) as err:
        runner.run_study("p", root=root, results=results, log=lambda *a, **k: None)
    msg = str(err.value)
    assert "02_beta" in msg and "02_beta.ipynb" in msg
    assert "ValueError: deliberate failure" in msg
    timings = json.loads((results / "p" / "timings.json").read_text())
    assert timings["status"] == "failed" and timings["failed"] == "02_beta"


READER_BODY = """
import json
from pathlib import Path
run = Path(results_dir)
timings = json.loads((run / "timings.json").read_text())
merged = json.loads((run / "metrics.json").read_text())
out = run / "gamma"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({
    "status": timings["status"], "stages": ",".join(timings["stages"]),
    "total_is_set": timings["total_seconds"] is not None,
    "merged_keys": ",".join(sorted(merged))}))
"""


@pytest.mark.notebooks
def test_timings_and_metrics_are_written_after_each_stage(tmp_path):
    """A later stage reads the run's timings (status running, the stages so far) and the merged
    metrics of the earlier stages: the runner rewrites both after every stage."""
    root = _project(tmp_path, GOOD.replace("[01_alpha, 02_beta]", "[01_alpha, 02_beta, 03_gamma]"),
                    notebooks=("01_alpha", "02_beta"))
    params = new_code_cell(FAKE_PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(READER_BODY)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, root / "notebooks" / "03_gamma.ipynb")
    merged = runner.run_study("p", root=root, results=tmp_path / "results",
                              log=lambda *a, **k: None)
    assert merged["gamma/status"] == "running"
    assert merged["gamma/stages"] == "01_alpha,02_beta"
    assert merged["gamma/total_is_set"] is False
    assert merged["gamma/merged_keys"] == \
        "alpha/nested/rate,alpha/value,beta/nested/rate,beta/value"
    timings = json.loads((tmp_path / "results" / "p" / "timings.json").read_text())
    assert timings["status"] == "ok" and list(timings["stages"]) == ["01_alpha", "02_beta",
                                                                      "03_gamma"]
    # each time is rounded to 0.01 s: the rounded stages may exceed the rounded total by 0.005 each
    assert timings["total_seconds"] >= sum(timings["stages"].values()) \
        - 0.005 * (len(timings["stages"]) + 1)
    assert not (tmp_path / "results" / "p" / "report.html").exists()  # no summary stage


def test_run_timings_file_is_rewritten_per_stage(tmp_path):
    prof = runner.Profile(name="p", path=tmp_path / "p.yaml", notebooks=["01_a", "02_b", "03_c"])
    path = tmp_path / "timings.json"
    t = runner.RunTimings(path, prof, ["02_b", "03_c"], only=True, kept_stages={"01_a": 5.0})
    t.start()
    first = json.loads(path.read_text())
    assert first["status"] == "running" and first["stages"] == {"01_a": 5.0}
    assert first["only"] == ["02_b", "03_c"] and first["total_seconds"] is None
    t.stage_done("02_b", 1.234)
    assert json.loads(path.read_text())["stages"] == {"01_a": 5.0, "02_b": 1.23}
    t.finish("failed", failed="03_c")
    last = json.loads(path.read_text())
    assert last["status"] == "failed" and last["failed"] == "03_c"
    assert last["total_seconds"] is not None


def test_repository_profiles_are_valid():
    """Every committed profile fits the committed notebooks (what --dry-run checks)."""
    profiles = sorted((ROOT / "profiles").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "default", "gpu"}
    for path in profiles:
        prof = runner.load_profile(path.stem, ROOT)
        runner.validate_profile(prof, ROOT / "notebooks")


def _is_timing(key: str) -> bool:
    """Wall-clock measurements (stage seconds, benchmark ratios, the count of targets that
    includes the cost targets) differ run to run by design."""
    return (key.startswith(("benchmark/", "summary/targets_", "study/")) or key.endswith("seconds"))


def test_timing_keys_are_the_only_ones_excluded():
    assert _is_timing("benchmark/pdm-region-soft_vs_forward@64")
    assert _is_timing("validity/seconds") and _is_timing("stages/03_pdm_seconds")
    assert _is_timing("summary/targets_met") and not _is_timing("summary/quality_targets_met")
    assert not _is_timing("pdm/miou") and not _is_timing("validity/pdm-occlusion/rerender/decisive")


@pytest.mark.slow
@pytest.mark.notebooks
def test_smoke_profile_is_deterministic(tmp_path):
    """Same seed, same machine: a rerun of the smoke profile gives identical metrics."""
    runs = []
    for name in ("a", "b"):
        merged = runner.run_study("smoke", root=ROOT, results=tmp_path / name,
                                 log=lambda *a, **k: None)
        runs.append({k: v for k, v in merged.items() if not _is_timing(k)})
    assert runs[0] == runs[1]
    # the comparison covers the quality metrics of every stage, not only the first ones
    assert any(k.startswith("validity/") for k in runs[0])
    assert any(k.startswith("pdm/") for k in runs[0])
    assert runs[0]["data/n_train"] > 0 and "classifier/test_accuracy" in runs[0]
