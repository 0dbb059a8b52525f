"""Distributed training run for real on CPUs: torchrun (gloo), two launchers with a c10d
rendezvous on localhost, a failing rank, a run killed mid-epoch and resumed, bf16 autocast and
channels-last, and the batching that makes the global batch independent of the processes.

Tolerances. Two processes × one micro-batch per step and one process accumulating two
micro-batches of the same size see the same micro-batches (:class:`StepLoader`), so BatchNorm
normalises the same samples together and the gradients differ only by the order in which the
two micro-batches' gradients are summed (gloo's all-reduce of two addends is exact up to the
halving, which is exact in binary): per-step losses and parameters are compared at 1e-6
(observed: equal). The BatchNorm running statistics differ by design: each rank updates its
own from its micro-batch and DDP broadcasts rank 0's, while one process updates them from
both micro-batches in turn; evaluation uses them, so the final validation metrics are compared
(a) exactly once the reference's running statistics are copied in (logits at 1e-5: the only
difference is that bookkeeping) and (b) with their own statistics within 0.1 accuracy and 5%
loss (two estimates of the same statistics from half and all of the samples of 8 steps).
The PDM is compared the same way (validation mIoU within 0.05); the amortised rule's head has
no BatchNorm, so its best validation score must agree to 1e-6.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from partslib.distributed import FAULT_ENV, DistEnv, StepLoader, maybe_fault
from partslib.training import fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds a launched run may take before the test fails (a hang)
DATA = ["--data", "synthparts", "--n-train", "128", "--n-val", "64", "--image-size", "32",
        "--quiet", "--threads", "1"]
CLASSIFIER = ["classifier", *DATA, "--epochs", "2", "--batch-size", "32", "--widths", "8,16,32"]
PDM = ["pdm", *DATA, "--epochs", "1", "--batch-size", "32"]
HEAD = ["head", *DATA, "--n-train", "64", "--n-val", "32", "--epochs", "2", "--batch-size", "32"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV and not k.startswith(
        ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _train(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "partslib.train", *args, "--out", str(out)], **env)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"


def _summary(out: Path, kind: str = "classifier") -> dict:
    return json.loads((out / "train" / f"{kind}.json").read_text())


def _state(out: Path, kind: str = "classifier") -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / f"{kind}.pt")["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, global batch 32 as 2 accumulated micro-batches of 16, checkpoints every
    5 steps: the run every launch below is compared with."""
    out = tmp_path_factory.mktemp("reference")
    _ok(_train(out, *CLASSIFIER, "--accum", "2", "--checkpoint-every", "5"))
    return out


def _same_as_reference(reference: Path, out: Path) -> None:
    from partslib.pipeline import load_classifier
    from partslib.train import _accuracy, load_data

    a, b = _summary(reference), _summary(out)
    assert len(a["step_losses"]) == len(b["step_losses"]) == 8
    torch.testing.assert_close(torch.tensor(b["step_losses"]), torch.tensor(a["step_losses"]),
                               rtol=1e-6, atol=1e-6)
    sa, sb = _state(reference), _state(out)
    for k in sa:
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-6, atol=1e-6, msg=k)
    # with the reference's BatchNorm running statistics the two models are one
    ma, mb = load_classifier(reference), load_classifier(out)
    buffers = {k: v for k, v in sa.items() if "running" in k or "num_batches" in k}
    mb.load_state_dict({**sb, **buffers})
    import argparse

    data = load_data(argparse.Namespace(data="synthparts", image_size=32, n_train=128,
                                        n_val=64, data_cache=None), DistEnv())
    x = torch.stack([data["val"][i]["image"] for i in range(64)])
    torch.testing.assert_close(mb(x), ma(x), rtol=1e-5, atol=1e-5)
    own = _accuracy(load_classifier(out), data["val"], DistEnv())
    assert own == pytest.approx(b["metrics"])
    assert abs(own["val_accuracy"] - a["metrics"]["val_accuracy"]) <= 0.1
    assert own["val_loss"] == pytest.approx(a["metrics"]["val_loss"], rel=0.05)


# -- fast tests, in process --------------------------------------------------------------------

class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(i)]), torch.tensor(i)


def _micro_batches(world: int, accum: int, n: int = 48, batch: int = 12, epoch: int = 3
                   ) -> list[list[list[int]]]:
    """Per step, the micro-batches (sample ids) of every rank."""
    per_rank = []
    for r in range(world):
        loader = StepLoader(_Items(n), batch, env=DistEnv(r, world), accum=accum, seed=5)
        loader.set_epoch(epoch)
        per_rank.append([[y.tolist() for _, y, _ in step] for step in loader.steps()])
    return [[mb for r in range(world) for mb in per_rank[r][s]] for s in range(len(per_rank[0]))]


def _flat(lists: list[list[int]]) -> list[int]:
    return sorted(i for mb in lists for i in mb)


def test_global_batch_and_micro_batches_do_not_depend_on_the_processes():
    one = _micro_batches(1, 1)
    assert [_flat(s) for s in one] == [sorted(s[0]) for s in one]
    assert _flat([s[0] for s in one]) == list(range(48))  # an epoch: each sample once
    for world, accum, like in ((2, 1, (1, 2)), (2, 2, (1, 4)), (4, 1, (1, 4)), (3, 1, (1, 3))):
        a, b = _micro_batches(world, accum), _micro_batches(*like)
        assert [sorted(map(sorted, s)) for s in a] == [sorted(map(sorted, s)) for s in b]
        assert [_flat(s) for s in a] == [_flat(s) for s in one]
    assert _micro_batches(1, 1, epoch=4) != one  # set_epoch reshuffles


def test_resumed_steps_skip_without_loading_and_weights_sum_to_one():
    loader = StepLoader(_Items(40), 12, accum=2, seed=1)
    loader.set_epoch(0)
    steps = list(loader.steps())
    assert len(steps) == len(loader) == 4  # 12, 12, 12, 4
    assert [len(s) for s in steps] == [2, 2, 2, 2]
    for s in steps:
        assert sum(w for _, _, w in s) == pytest.approx(1.0)
    later = [[y.tolist() for _, y, _ in s] for s in loader.steps(2)]
    assert later == [[y.tolist() for _, y, _ in s] for s in steps[2:]]


def test_worker_processes_load_the_same_batches():
    def ids(workers: int) -> list[list[list[int]]]:
        loader = StepLoader(_Items(24), 8, accum=2, seed=4, workers=workers)
        loader.set_epoch(1)
        return [[y.tolist() for _, y, _ in s] for s in loader.steps(1)]

    assert ids(2) == ids(0)


def test_bad_batching_and_fault_specs_are_named():
    with pytest.raises(ValueError, match="global batch 10 must be a positive multiple of world "
                                         "size 2 x accum 3"):
        StepLoader(_Items(8), 10, env=DistEnv(0, 2), accum=3)
    with pytest.raises(ValueError, match="accum must be >= 1"):
        StepLoader(_Items(8), 8, accum=0)
    with pytest.raises(ValueError, match="amp must be None or 'bf16'"):
        fit(nn.Linear(1, 1), StepLoader(_Items(8), 4), epochs=1, loss_fn=nn.MSELoss(),
            amp="fp16", progress=False)
    os.environ[FAULT_ENV] = "one:two"
    try:
        with pytest.raises(ValueError, match="must be 'RANK:STEP'"):
            maybe_fault(0, 1)
    finally:
        del os.environ[FAULT_ENV]


def _regression(n: int = 64) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    return torch.utils.data.TensorDataset(x, x @ torch.arange(5.0) + 0.1 * torch.randn(n,
                                                                                       generator=g))


def _linear_fit(accum: int, **kw) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    r = fit(model, StepLoader(_regression(), 16, accum=accum, seed=2), epochs=3, lr=0.05,
            loss_fn=lambda p, y: ((p[:, 0] - y) ** 2).mean(), progress=False, **kw)
    return model, r.step_losses


def test_accumulation_keeps_the_global_batch():
    """No BatchNorm: 4 accumulated micro-batches of 4 = one batch of 16 (float summation order
    only: 1e-6)."""
    a, la = _linear_fit(1)
    b, lb = _linear_fit(4)
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-6, atol=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-6)


def test_fit_takes_a_plain_dataloader_and_sets_its_samplers_epoch():
    data = _regression(32)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)
    r = fit(nn.Linear(5, 1), loader, epochs=2, lr=0.05, progress=False,
            loss_fn=lambda p, y: ((p[:, 0] - y) ** 2).mean())
    assert len(r.step_losses) == 8 and sampler.epoch == 1
    assert r.history[1]["train_loss"] < r.history[0]["train_loss"]


def test_folder_dataset_trains_in_process_with_a_stratified_validation_split(tmp_path):
    import numpy as np

    from partslib.data.folder import write_folder
    from partslib.data.synthparts import SynthParts, SynthPartsConfig
    from partslib.train import main

    cfg = SynthPartsConfig.from_classes("default", size=32)
    ds = SynthParts(cfg, seed=0, n=36, progress=False)
    write_folder(tmp_path / "folder", [
        (f"s{i:02d}", ds.images[i].permute(1, 2, 0).numpy(), ds.masks[i].numpy().astype(np.uint8),
         cfg.names[int(ds.labels[i])], "train" if i < 30 else "test") for i in range(36)],
        cfg.part_names[1:], cfg.names)
    out = tmp_path / "run"
    assert main(["classifier", "--data", str(tmp_path / "folder"), "--image-size", "32",
                 "--out", str(out), "--epochs", "1", "--batch-size", "8", "--widths", "4,8,8",
                 "--val-fraction", "0.2", "--quiet"]) == 0
    counts = torch.bincount(ds.labels[:30], minlength=6).tolist()
    n_val = sum(min(round(0.2 * n), max(n - 1, 0)) for n in counts)
    s = _summary(out)
    assert s["world_size"] == 1 and len(s["step_losses"]) == -(-(30 - n_val) // 8)
    assert 0.0 <= s["metrics"]["val_accuracy"] <= 1.0
    info = load_checkpoint(out / "checkpoints" / "classifier.pt")["config"]["model"]["data"]
    assert info["n_train"] == 30 - n_val and info["val_fraction"] == 0.2


def test_bf16_autocast_and_channels_last_train_on_cpu():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.rand(32, 3, 16, 16, generator=g),
                                          torch.randint(0, 3, (32,), generator=g))
    seen = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append((x.is_contiguous(memory_format=torch.channels_last),
                     torch.is_autocast_enabled("cpu")))
        return m(x)

    ref = fit(copy.deepcopy(conv), StepLoader(data, 8), epochs=2,
              loss_fn=nn.functional.cross_entropy, progress=False).step_losses
    r = fit(conv, StepLoader(data, 8), epochs=2, loss_fn=nn.functional.cross_entropy,
            amp="bf16", channels_last=True, forward=forward, progress=False)
    assert all(seen) and len(seen) == 8
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    losses = torch.tensor(r.step_losses)
    assert torch.isfinite(losses).all()
    assert not torch.equal(losses, torch.tensor(ref))  # bf16 did run: other rounding
    torch.testing.assert_close(losses, torch.tensor(ref), rtol=0.05, atol=0.05)


# -- launched runs --------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_bf16_channels_last_and_head(tmp_path):
    """The three kinds chain through one run folder (bf16 + channels-last on the CPU)."""
    out = tmp_path / "run"
    fast = [*DATA, "--n-train", "64", "--n-val", "32", "--epochs", "1", "--amp", "bf16",
            "--channels-last"]
    _ok(_train(out, "classifier", *fast, "--batch-size", "32", "--widths", "8,16,32"))
    _ok(_train(out, "pdm", *fast, "--batch-size", "32"))
    _ok(_train(out, *HEAD))
    from partslib.explain.amortised_training import load_head
    from partslib.pipeline import load_pdm

    assert load_head(str(out)).num_labels == load_pdm(out).num_labels
    for kind in ("classifier", "pdm", "head"):
        s = _summary(out, kind)
        assert s["world_size"] == 1 and s["global_batch"] == 32
        assert torch.isfinite(torch.tensor(s["step_losses"])).all()
    assert _summary(out, "pdm")["amp"] == "bf16"


@pytest.mark.slow
def test_killed_mid_epoch_resumes_to_the_same_weights(reference, tmp_path):
    """SIGKILL after step 7 (epoch 2, step 3 of 4); the checkpoint of step 5 is mid-epoch 2;
    the resumed run ends bit-identical to the uninterrupted reference (torch.equal)."""
    out = tmp_path / "killed"
    args = [*CLASSIFIER, "--accum", "2", "--checkpoint-every", "5"]
    killed = _train(out, *args, **{FAULT_ENV: "0:7:kill"})
    assert killed.returncode == -9
    ckpt = load_checkpoint(out / "checkpoints" / "classifier.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 1, 5)
    _ok(_train(out, *args))
    assert _summary(out)["resumed_from_step"] == 5
    assert _summary(out)["step_losses"] == _summary(reference)["step_losses"]
    sa, sb = _state(reference), _state(out)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_torchrun_killed_rank_resumes(reference, tmp_path):
    """Two processes; rank 1 is SIGKILLed after step 7, torchrun stops rank 0; the same
    command again resumes both ranks from the checkpoint of step 5 and ends as the
    uninterrupted runs do."""
    out = tmp_path / "ddp-killed"
    cmd = [*_launch(2), *CLASSIFIER, "--checkpoint-every", "5", "--out", str(out)]
    killed = _run(cmd, **{FAULT_ENV: "1:7:kill"})
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr
    assert load_checkpoint(out / "checkpoints" / "classifier.pt")["global_step"] == 5
    cmd[cmd.index("--master-port") + 1] = str(_free_port())
    _ok(_run(cmd))
    assert _summary(out)["resumed_from_step"] == 5
    _same_steps(reference, out, "classifier")


@pytest.mark.slow
def test_torchrun_two_processes_match_one(reference, tmp_path):
    out = tmp_path / "ddp"
    proc = _run([*_torchrun(), "--nproc_per_node", "2", "--master-port", str(_free_port()),
                 "-m", "partslib.train", *CLASSIFIER, "--out", str(out)])
    _ok(proc)
    assert "[rank 0/2] classifier: 8 steps" in proc.stdout
    assert _summary(out)["world_size"] == 2 and _summary(out)["accum"] == 1
    _same_as_reference(reference, out)


@pytest.mark.slow
def test_two_launchers_rendezvous_on_localhost(reference, tmp_path):
    """Two torchrun launchers, --nnodes 2 (node rank 0 and 1), c10d rendezvous on localhost."""
    out, port = tmp_path / "nodes", _free_port()
    cmds = [[*_torchrun(), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(n),
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
             "--rdzv-id", "partslib-test", "-m", "partslib.train", *CLASSIFIER,
             "--out", str(out)] for n in (0, 1)]
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, f"{so[-2000:]}\n{se[-3000:]}"
    assert any("[rank 0/2] classifier: 8 steps" in so for so, _ in outs)
    assert _summary(out)["world_size"] == 2
    _same_as_reference(reference, out)


@pytest.mark.slow
def test_a_failing_rank_brings_the_run_down(tmp_path):
    """Rank 1 raises after optimiser step 2: torchrun stops rank 0 (waiting in its next
    all-reduce) and exits non-zero with the failure recorded by ``@record``, well before the
    collective timeout (600 s; ``_run`` fails the test after TIMEOUT = 120 s)."""
    proc = _run([*_torchrun(), "--nproc_per_node", "2", "--master-port", str(_free_port()),
                 "-m", "partslib.train", *CLASSIFIER, "--dist-timeout", "600",
                 "--out", str(tmp_path / "fail")], **{FAULT_ENV: "1:2"})
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "fault injected by PARTSLIB_FAULT=1:2: rank 1 fails after optimiser step 2" in text
    assert "ChildFailedError" in text and re.search(r"rank\s*:\s*1 \(local_rank: 1\)", text)
    assert not (tmp_path / "fail" / "train" / "classifier.json").exists()


def _with_models(out: Path, *sources: Path) -> Path:
    """A run folder holding copies of the checkpoints in ``sources``."""
    (out / "checkpoints").mkdir(parents=True)
    for src in sources:
        shutil.copy(src, out / "checkpoints")
    return out


def _launch(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "partslib.train"]
    return [*_torchrun(), "--nproc_per_node", str(processes), "--master-port",
            str(_free_port()), "-m", "partslib.train"]


@pytest.fixture(scope="module")
def pdm_reference(reference, tmp_path_factory) -> Path:
    """The PDM on the reference's classifier, one process, 2 micro-batches of 16 per step."""
    out = _with_models(tmp_path_factory.mktemp("pdm") / "one",
                       reference / "checkpoints" / "classifier.pt")
    _ok(_run([*_launch(1), *PDM, "--accum", "2", "--out", str(out)]))
    return out


def _same_steps(a: Path, b: Path, kind: str, checkpoint: str = "") -> None:
    sa, sb = _summary(a, kind), _summary(b, kind)
    torch.testing.assert_close(torch.tensor(sb["step_losses"]), torch.tensor(sa["step_losses"]),
                               rtol=1e-6, atol=1e-6)
    wa, wb = _state(a, checkpoint or kind), _state(b, checkpoint or kind)
    for k in wa:
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.slow
def test_torchrun_pdm_matches_one_process(reference, pdm_reference, tmp_path):
    """The PDM on the reference's classifier: 2 processes vs 1 process with 2 micro-batches
    (running statistics aside; validation mIoU within 0.05)."""
    out = _with_models(tmp_path / "two", reference / "checkpoints" / "classifier.pt")
    _ok(_run([*_launch(2), *PDM, "--out", str(out)]))
    _same_steps(pdm_reference, out, "pdm")
    a, b = _summary(pdm_reference, "pdm"), _summary(out, "pdm")
    assert abs(b["metrics"]["val_miou"] - a["metrics"]["val_miou"]) <= 0.05


@pytest.mark.slow
def test_torchrun_head_matches_one_process(pdm_reference, tmp_path):
    """The amortised rule's head (no BatchNorm) on the same classifier and PDM: 2 processes
    vs 1 process with 2 micro-batches, the best epoch's validation score equal."""
    ckpts = [pdm_reference / "checkpoints" / f"{k}.pt" for k in ("classifier", "pdm")]
    runs = {n: _with_models(tmp_path / str(n), *ckpts) for n in (1, 2)}
    for n, out in runs.items():
        _ok(_run([*_launch(n), *HEAD, *(["--accum", "2"] if n == 1 else []),
                  "--out", str(out)]))
    _same_steps(runs[1], runs[2], "head", "head-fit")
    a, b = _summary(runs[1], "head"), _summary(runs[2], "head")
    assert b["metrics"]["val_score"] == pytest.approx(a["metrics"]["val_score"], abs=1e-6)


@pytest.mark.slow
def test_a_hung_rank_times_out(tmp_path):
    """Rank 1 stops responding after step 2: rank 0's next all-reduce fails after the
    collective timeout (--dist-timeout 10) and torchrun stops rank 1 -- no hang (``_run``
    fails the test after TIMEOUT = 120 s)."""
    t0 = time.perf_counter()
    proc = _run([*_torchrun(), "--nproc_per_node", "2", "--master-port", str(_free_port()),
                 "-m", "partslib.train", *CLASSIFIER, "--dist-timeout", "10",
                 "--out", str(tmp_path / "hang")], **{FAULT_ENV: "1:2:hang"})
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert elapsed >= 10  # it did wait for the collective timeout
    text = proc.stdout + proc.stderr
    assert "ChildFailedError" in text and re.search(r"rank\s*:\s*0 \(local_rank: 0\)", text)
    assert re.search(r"time ?out|timed out", text, re.IGNORECASE), text[-3000:]


@pytest.mark.slow
def test_ranks_that_disagree_on_the_resume_step_fail_clearly(tmp_path):
    """What a run whose ranks read different checkpoints (``--out`` not shared between nodes)
    meets: every rank raises, naming the disagreement, instead of training out of step."""
    script = tmp_path / "disagree.py"
    script.write_text("from partslib.distributed import check_same, init_distributed\n"
                      "env = init_distributed('cpu', timeout_s=30)\n"
                      "check_same(5 * env.rank, env, 'the step to resume from')\n")
    proc = _run([*_torchrun(), "--nproc_per_node", "2", "--master-port", str(_free_port()),
                 str(script)])
    assert proc.returncode != 0
    assert "the ranks disagree on the step to resume from: from 0 to 5" in proc.stderr


def test_error_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """torchrun reads the error file of every failed rank; when it stops a rank (SIGTERM) while
    that rank is writing its error, a file written in place is empty and the launcher dies of a
    JSONDecodeError. The handler partslib's ``record`` uses writes a sibling and renames it."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from partslib.distributed import _AtomicErrorHandler

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))

    def signal_before_rename(src, dst):
        raise KeyboardInterrupt  # the launcher's SIGTERM arriving mid-write

    with monkeypatch.context() as m:
        m.setattr(os, "replace", signal_before_rename)
        with pytest.raises(KeyboardInterrupt):
            _AtomicErrorHandler().record_exception(RuntimeError("gloo: peer closed"))
    assert not path.exists()
    _AtomicErrorHandler().record_exception(RuntimeError("gloo: peer closed"))
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(path))
    assert "gloo: peer closed" in failure.message["message"]
