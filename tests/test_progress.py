"""Progress on the runner's terminal: the library's loops write events to the file named by
``PARTSLIB_PROGRESS``, the runner shows them as one bar per stage (quiet in CI and off a
terminal) and logs the warnings a notebook showed, named with the notebook."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from partslib import progress, runner
from partslib.training import TensorLoader, fit

ROOT = Path(__file__).resolve().parents[1]


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_progress_writes_events_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert list(progress.Progress(range(3), desc="quiet")) == [0, 1, 2]  # nothing to write
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    items = list(progress.Progress(range(4), desc="loop", unit="step", min_interval=0.0))
    assert items == [0, 1, 2, 3]
    events = _events(path)
    assert [e["n"] for e in events] == [0, 1, 2, 3, 4, 4]
    assert all(e["task"] == "loop" and e["total"] == 4 and e["unit"] == "step" for e in events)
    assert [e["done"] for e in events] == [False] * 5 + [True]
    path.unlink()
    with progress.Progress(total=1000, desc="throttled", min_interval=60.0) as p:
        for _ in range(1000):
            p.update()
    assert [e["n"] for e in _events(path)] == [0, 1000, 1000]  # first, complete, done


def test_fit_reports_epochs_and_batches(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    torch.manual_seed(0)
    x, y = torch.randn(24, 4), torch.randint(0, 3, (24,))
    fit(torch.nn.Linear(4, 3), TensorLoader(x, y, batch_size=8), epochs=2,
        loss_fn=torch.nn.functional.cross_entropy, desc="toy", progress=False)
    events = [e for e in _events(path) if e["task"] == "toy"]
    assert events[0]["n"] == 0 and events[0]["total"] == 6 and events[0]["unit"] == "batch"
    last = events[-1]
    assert last["done"] and last["n"] == 6 and last["info"]["epoch"] == "2/2"
    assert float(last["info"]["loss"]) > 0


def test_stage_monitor_shows_the_running_loop_and_its_time_left(tmp_path):
    stream = io.StringIO()
    with progress.StageMonitor("[2/8] 03_pdm ...", stream=stream, interval=60.0) as mon:
        assert os.environ[progress.ENV] == str(mon.path)
        progress.emit({"task": "cells", "n": 4, "total": 19, "t": 100.0})
        for n, t in ((0, 100.0), (50, 110.0)):  # 50 batches in 10 s: 100 left, ~20 s
            progress.emit({"task": "pdm", "n": n, "total": 150, "unit": "batch", "t": t,
                           "info": {"epoch": "2/6", "loss": "0.41"}, "done": False})
        mon.poll()
        n, total, text = mon.status()
        assert (n, total) == (50, 150)
        assert text == "cell 4/19 · pdm · 50/150 batch · epoch 2/6 · loss 0.41 · ~20s left"
        assert "~20s left" in stream.getvalue() and "[2/8] 03_pdm" in stream.getvalue()
        progress.emit({"task": "pdm", "n": 150, "total": 150, "unit": "batch", "t": 130.0,
                       "info": {}, "done": True})
        mon.poll()
        assert mon.status() == (4, 19, "cell 4/19")  # between loops: the notebook's cells
    assert progress.ENV not in os.environ and not mon.path.exists()
    # with the stage's seconds of the last run, the stage's time left by them
    with progress.StageMonitor("[2/8] 03_pdm ...", stream=io.StringIO(), interval=60.0,
                               expected=600.0) as mon:
        assert re.fullmatch(r"starting · stage ~(9m5\ds|10m00s) left", mon.status()[2])
        mon._t0 -= 700.0  # as if the stage had run 700 s
        assert mon.status()[2] == "starting · stage over its last 10m00s"


def test_bars_are_quiet_in_ci_and_off_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress.show_progress(Tty()) is True
    assert progress.show_progress(io.StringIO()) is False
    monkeypatch.setenv("CI", "true")
    assert progress.show_progress(Tty()) is False
    monkeypatch.setenv("CI", "0")
    assert progress.show_progress(Tty()) is True


BODY = '''\
import time, warnings
from partslib.progress import Progress
warnings.warn("checkpoint pdm.pt could not be read: the file is truncated")
for _ in Progress(range(10), desc="fake training", unit="batch", min_interval=0.0):
    time.sleep(0.2)
'''


def _tiny_project(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "profiles").mkdir()
    params = new_code_cell('results_dir: str = "."  # set by the runner')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(BODY)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_fake.ipynb")
    (tmp_path / "profiles" / "p.yaml").write_text("notebooks: [01_fake]\n")
    return tmp_path


@pytest.mark.notebooks
def test_runner_shows_progress_and_the_notebooks_warnings(tmp_path, monkeypatch, capsys):
    root = _tiny_project(tmp_path)
    # the kernel imports this checkout's partslib
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                   "")]))
    logs: list[str] = []
    log = lambda *a, **k: logs.append(" ".join(map(str, a)))  # noqa: E731
    runner.run_study("p", root=root, results=tmp_path / "results", log=log, progress=True)
    bar = capsys.readouterr().err
    assert "[1/1] 01_fake ..." in bar and "fake training" in bar and "batch" in bar
    assert "left" in bar  # an estimate of the time left, from the loop's rate
    assert any(line.startswith("[1/1] 01_fake ... ") and line.endswith(" s") for line in logs)
    warned = [line for line in logs if line.startswith("warning in 01_fake")]
    assert len(warned) == 1 and warned[0].endswith(
        "UserWarning: checkpoint pdm.pt could not be read: the file is truncated")

    # in CI: no bar, the same lines
    monkeypatch.setenv("CI", "1")
    logs.clear()
    runner.run_study("p", root=root, results=tmp_path / "results", log=log)
    assert "fake training" not in capsys.readouterr().err
    assert [line for line in logs if line.startswith("warning in 01_fake")] == warned

    # a rerun knows the stage's seconds of the last run: the bar says what is left of them
    monkeypatch.delenv("CI")
    runner.run_study("p", root=root, results=tmp_path / "results", log=log, progress=True)
    assert re.search(r"stage (~\S+ left|over its last \S+)", capsys.readouterr().err)
