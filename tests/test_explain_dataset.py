"""Explaining a whole dataset: Parquet shards, exactly-once rows after a SIGKILL, rank shares,
torchrun, summary and figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_streaming import CFG, _synth_folder

from partslib.data.folder import FolderDataset
from partslib.data.streaming import PartStream
from partslib.explain.amortised import ContributionHead
from partslib.explain.dataset import explain_dataset, read_rows
from partslib.training import save_checkpoint

from toys import small_classifier, small_pdm

ROOT = Path(__file__).resolve().parents[1]
L = CFG.num_parts + 1


def _models():
    clf = small_classifier(CFG.num_classes, widths=(4, 8, 8), size=32)
    return clf, small_pdm(clf, L)


def _save_models(d: Path) -> tuple[Path, Path]:
    clf, pdm = _models()
    c = save_checkpoint(d / "classifier.pt", state_dict=clf.state_dict(), kind="classifier",
                        config={"model": {"classifier": clf.config(), "image_size": [32, 32]},
                                "epochs": 1}, epoch=1)
    p = save_checkpoint(d / "pdm.pt", state_dict=pdm.state_dict(), kind="pdm",
                        config={"model": pdm.config()})
    return c, p


def _data(root: Path) -> PartStream:
    return PartStream(FolderDataset(root), size=(32, 32), dtype="uint8")


def _exactly_once(out: Path, n: int) -> pd.DataFrame:
    rows = read_rows(out)
    assert len(rows) == n * L
    assert not rows.duplicated(["index", "part_id"]).any()
    assert sorted(rows["index"].unique()) == list(range(n))
    return rows.sort_values(["index", "part_id"]).reset_index(drop=True)


def test_explains_every_image_once_and_resumes_without_work(tmp_path):
    root = _synth_folder(tmp_path / "f", n=22)
    clf, pdm = _models()
    out = tmp_path / "run"
    run = explain_dataset(clf, pdm, _data(root), out, method="pdm-region-soft", batch_size=4,
                          shard_batches=2, progress=False, examples=2)
    assert run.shards == 3 and run.written == [0, 1, 2]
    rows = _exactly_once(out, 22)
    # the rows are the explainer's own numbers for these images
    x = torch.stack([_data(root)[i]["image"] for i in range(22)])
    from partslib.explain.registry import get_method

    e = get_method("pdm-region-soft").build(clf, pdm=pdm)(x)
    assert np.allclose(rows["contribution"].to_numpy().reshape(22, L), e.contributions.numpy())
    assert (rows["target"].to_numpy()[::L] == e.target.numpy()).all()
    assert rows["name"].iloc[0] == "s000" and (rows["label"][::L] >= 0).all()
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.columns) >= {"class", "part", "mean_contribution", "images"}
    assert summary.groupby("class")["images"].first().sum() == 22
    assert (out / "summary_heatmap.png").stat().st_size > 0 and (out / "examples.png").exists()
    (out / "contributions" / ".shard-000001.parquet.99.tmp").write_bytes(b"half")
    again = explain_dataset(clf, pdm, _data(root), out, method="pdm-region-soft", batch_size=4,
                            shard_batches=2, progress=False, examples=0)
    assert again.written == [] and again.skipped == [0, 1, 2]
    assert not list((out / "contributions").glob(".*.tmp"))  # a killed run's half shard
    with pytest.raises(ValueError, match="differing: batch_size"):
        explain_dataset(clf, pdm, _data(root), out, method="pdm-region-soft", batch_size=8,
                        shard_batches=2, progress=False)


def test_rank_shares_write_their_own_shards_and_match_one_process(tmp_path):
    root = _synth_folder(tmp_path / "f", n=18)
    clf, pdm = _models()
    g = torch.Generator().manual_seed(0)
    head = ContributionHead(clf.fc.in_features, L, CFG.num_classes, hidden=8,
                            baseline=torch.randn(CFG.num_classes, generator=g)).eval()
    kw = dict(method="pdm-amortised", head=head, batch_size=3, shard_batches=2,
              progress=False, examples=0)
    one = tmp_path / "one"
    explain_dataset(clf, pdm, _data(root), one, **kw)
    two = tmp_path / "two"
    r1 = explain_dataset(clf, pdm, _data(root), two, rank=1, world=2, **kw)
    assert r1.written == [1] and r1.summary is None and not (two / "summary.csv").exists()
    r0 = explain_dataset(clf, pdm, _data(root), two, rank=0, world=2, **kw)
    assert r0.written == [0, 2]
    a, b = _exactly_once(one, 18), _exactly_once(two, 18)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(one / "summary.csv"),
                                  pd.read_csv(two / "summary.csv"))


def _cli(root: Path, out: Path, models: tuple[Path, Path], *extra: str) -> list[str]:
    return ["--data", str(root), "--out", str(out), "--classifier", str(models[0]),
            "--pdm", str(models[1]), "--rule", "pdm-region-soft", "--threads", "1",
            "--examples", "1", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_run_then_rerun_gives_every_row_once(tmp_path):
    n = 160
    root = _synth_folder(tmp_path / "f", n=n)
    models = _save_models(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "partslib.explain_dataset",
           *_cli(root, out, models, "--batch-size", "2", "--shard-batches", "1",
                 "--no-progress")]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    shards = out / "contributions"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("shard-*.parquet"))) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(shards.glob("shard-*.parquet")))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert 3 <= written < n // 2 and not (out / "summary.csv").exists()
    res = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{written} found done" in res.stdout
    rows = _exactly_once(out, n)
    clf, pdm = _models()
    ref = tmp_path / "ref"
    explain_dataset(clf, pdm, _data(root), ref, method="pdm-region-soft", batch_size=2,
                    shard_batches=1, progress=False, examples=0)
    pd.testing.assert_frame_equal(rows, _exactly_once(ref, n))
    assert not list(shards.glob(".*.tmp"))  # the killed run's half shard, if any, is gone


def test_torchrun_two_ranks_write_shares_and_one_summary(tmp_path):
    n = 20
    root = _synth_folder(tmp_path / "f", n=n)
    models = _save_models(tmp_path)
    out = tmp_path / "run"
    script = Path(sys.executable).parent / "torchrun"  # or the module torchrun runs
    torchrun = [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]
    # its own process group: a timeout takes the launcher's workers down with it
    proc = subprocess.Popen([*torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                             "partslib.explain_dataset",
                             *_cli(root, out, models, "--batch-size", "3", "--shard-batches",
                                   "1", "--no-progress")],
                            env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert "explained 20 images in 7 shards (0 found done, 4 written by rank 0)" in stdout
    rows = _exactly_once(out, n)
    clf, pdm = _models()
    explain_dataset(clf, pdm, _data(root), tmp_path / "ref", method="pdm-region-soft",
                    batch_size=3, shard_batches=1, progress=False, examples=0)
    pd.testing.assert_frame_equal(rows, _exactly_once(tmp_path / "ref", n))
    assert json.loads((out / "run.json").read_text())["rows"] == n * L
    assert (out / "summary.csv").exists() and (out / "examples.png").exists()


def test_cli_reads_coco_and_broden_and_names_classes_it_cannot_map(tmp_path):
    from test_realdata import _write_broden, _write_carparts_layout

    from partslib.explain_dataset import main

    _write_carparts_layout(tmp_path / "car")
    clf = small_classifier(3, widths=(4, 8, 8), size=32)
    paths = []
    for labels, name in ((5, "coco"), (4, "broden")):  # background + the fixtures' parts
        pdm = small_pdm(clf, labels)
        paths.append(save_checkpoint(tmp_path / f"pdm-{name}.pt", state_dict=pdm.state_dict(),
                                     kind="pdm", config={"model": pdm.config()}))
    c = save_checkpoint(tmp_path / "clf.pt", state_dict=clf.state_dict(), kind="classifier",
                        config={"model": {"classifier": clf.config(), "image_size": [32, 32]},
                                "epochs": 1}, epoch=1)
    common = ["--classifier", str(c), "--rule", "pdm-region-soft", "--no-progress",
              "--examples", "1"]
    sub = tmp_path / "car" / "trainingset"
    assert main(["--format", "coco", "--data", str(sub / "JPEGImages"), "--annotations",
                 str(sub / "annotations.json"), "--out", str(tmp_path / "coco"),
                 "--pdm", str(paths[0]), *common]) == 0
    rows = read_rows(tmp_path / "coco")
    assert len(rows) == 2 * 5 and (rows["label"] == -1).all()
    assert set(pd.read_csv(tmp_path / "coco" / "summary.csv")["class"]) <= {
        "class 0", "class 1", "class 2"}
    _write_broden(tmp_path / "broden")
    with pytest.warns(UserWarning, match="the dataset has 2 classes, the classifier 3"):
        main(["--format", "broden", "--data", str(tmp_path / "broden"), "--out",
              str(tmp_path / "b"), "--pdm", str(paths[1]), *common])
    assert len(read_rows(tmp_path / "b")) == 2 * 4
    with pytest.raises(ValueError, match="needs annotations="):
        main(["--format", "pascal-part", "--data", str(tmp_path), "--out", str(tmp_path / "p"),
              "--pdm", str(paths[0]), *common])
