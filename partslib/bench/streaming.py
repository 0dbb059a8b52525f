"""Memory of streaming: peak RSS of training and of explaining as a folder dataset grows.

``python -m partslib.bench.streaming`` writes SynthParts folders of each ``--images`` size
(default 1,000 and 10,000 images, 64 px; kept in ``--data-dir`` for the next run), then, each
in a fresh subprocess:

* ``train``: one epoch of the default classifier (:class:`~partslib.config.ClassifierConfig`)
  on the folder through :class:`~partslib.data.streaming.PartStream` and
  :func:`~partslib.data.streaming.make_loader` (``--workers`` decoding processes);
* ``explain`` (with ``--explain``): ``python -m partslib.explain_dataset`` over the whole
  folder (the models of ``--models DIR/checkpoints``, or random ones of the default
  architectures with the region rule: memory does not depend on the weights);
* ``kill-resume`` (with ``--kill-resume N``): the same command on the ``N``-image folder,
  killed with SIGKILL once ``--kill-at`` of its shards are written, then rerun; the rows read
  back are checked to be every image x label exactly once.

Each subprocess reports its peak RSS (``VmHWM``; its DataLoader workers' largest peak
separately) and its RSS before the measured work. The growth from the smallest to the largest
size is the result (the target of the change: < 20%). Writes ``--out`` (default
``results/streaming/bench_streaming.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from partslib.bench.memory import _proc_status_mib

__all__ = ["child_explain", "child_train", "kill_resume", "main", "synth_folder"]

GEN_SEED = 11  # a stream of SynthParts no split of the study uses


def synth_folder(root: Path, n: int, size: int = 64) -> Path:
    """A SynthParts folder of ``n`` images (``size`` px), written once: a ``.complete`` marker
    says a folder is whole; samples are rendered and written one at a time."""
    from partslib.data.folder import write_folder
    from partslib.data.streaming import SynthPartsStream
    from partslib.data.synthparts import SynthPartsConfig

    if (root / ".complete").exists():
        return root
    cfg = SynthPartsConfig(size=size)
    stream = SynthPartsStream(cfg, seed=GEN_SEED, n=n)
    write_folder(root, stream.folder_samples(), cfg.part_names[1:], cfg.names, overwrite=True)
    (root / ".complete").write_text(f"{n}\n")
    return root


def _children_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def child_train(folder: str, workers: int, threads: int) -> dict[str, Any]:
    """In this (fresh) process: one epoch of the default classifier on ``folder``."""
    import torch
    import torch.nn.functional as F

    from partslib.config import ClassifierConfig
    from partslib.data.folder import FolderDataset
    from partslib.data.streaming import PartStream, make_loader
    from partslib.models import create_classifier
    from partslib.training import fit

    torch.set_num_threads(threads)
    cfg = ClassifierConfig()
    ds = FolderDataset(folder, validate=False)
    size = tuple(ds[0]["image"].shape[-2:])
    data = PartStream(ds, size=size, augment=cfg.augment, keys=("image", "label"))
    model = create_classifier(cfg.arch, len(ds.class_names), size, weights=cfg.weights,
                              widths=cfg.widths)
    loader = make_loader(data, cfg.batch_size, shuffle=True, workers=workers, seed=0)
    before = _proc_status_mib("VmRSS")
    t0 = time.perf_counter()
    result = fit(model, loader, epochs=1, loss_fn=F.cross_entropy, lr=cfg.lr,
                 weight_decay=cfg.weight_decay, progress=False)
    return {"images": len(ds), "seconds": time.perf_counter() - t0, "rss_before_mib": before,
            "peak_rss_mib": _proc_status_mib("VmHWM"), "workers_peak_rss_mib":
            _children_peak_mib() if workers else None, "batch": cfg.batch_size,
            "workers": workers, "train_loss": result.history[-1]["train_loss"]}


def child_explain(argv: Sequence[str]) -> dict[str, Any]:
    """In this (fresh) process: ``python -m partslib.explain_dataset argv``, with its peak."""
    from partslib.explain_dataset import main as explain_main

    before = _proc_status_mib("VmRSS")
    t0 = time.perf_counter()
    explain_main(list(argv))
    return {"seconds": time.perf_counter() - t0, "rss_before_mib": before,
            "peak_rss_mib": _proc_status_mib("VmHWM"),
            "workers_peak_rss_mib": _children_peak_mib()}


def _run_child(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "partslib.bench.streaming", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _random_models(out: Path, size: int) -> Path:
    """Random default-architecture classifier and PDM checkpoints under ``out/checkpoints``."""
    from partslib.config import ClassifierConfig, PDMConfig
    from partslib.data.synthparts import SynthPartsConfig
    from partslib.models import create_classifier
    from partslib.pdm import PartsDetectionModule
    from partslib.training import save_checkpoint

    syn, cfg = SynthPartsConfig(size=size), ClassifierConfig()
    clf = create_classifier(cfg.arch, syn.num_classes, (size, size), widths=cfg.widths)
    pdm = PartsDetectionModule.from_config(clf, syn.num_parts + 1, PDMConfig())
    save_checkpoint(out / "checkpoints" / "classifier.pt", state_dict=clf.state_dict(),
                    kind="classifier", epoch=1, config={"model": {
                        "classifier": clf.config(), "image_size": [size, size]}, "epochs": 1})
    save_checkpoint(out / "checkpoints" / "pdm.pt", state_dict=pdm.state_dict(), kind="pdm",
                    config={"model": pdm.config()})
    return out


def _explain_argv(folder: Path, out: Path, models: Path, rule: str, batch: int,
                  threads: int, workers: int) -> list[str]:
    return ["--data", str(folder), "--out", str(out), "--results", str(models), "--rule", rule,
            "--batch-size", str(batch), "--threads", str(threads), "--workers", str(workers),
            "--no-validate", "--no-progress"]


def kill_resume(argv: list[str], out: Path, n: int, labels: int, kill_at: float
                ) -> dict[str, Any]:
    """Run ``explain_dataset argv`` into ``out``, SIGKILL it once ``kill_at`` of its shards
    exist, rerun it (measured) and check every image x label is read back exactly once."""
    import numpy as np
    import pyarrow.parquet as pq

    cmd = [sys.executable, "-m", "partslib.explain_dataset", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "contributions"
    manifest = out / "manifest.json"
    while proc.poll() is None:
        if manifest.exists():
            m = json.loads(manifest.read_text())
            total = -(-m["images"] // (m["batch_size"] * m["shard_batches"]))
            if len(list(shards.glob("shard-*.parquet"))) >= kill_at * total:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(list(shards.glob("shard-*.parquet")))
    rerun = _run_child(["--child-explain", *argv])
    idx = [pq.read_table(f, columns=["index", "part_id"]).to_pandas()
           for f in sorted(shards.glob("shard-*.parquet"))]
    rows = np.concatenate([d["index"].to_numpy() * labels + d["part_id"].to_numpy()
                           for d in idx])
    return {"images": n, "killed_returncode": proc.returncode, "shards_at_kill": at_kill,
            "shards": len(idx), "rows": len(rows), "expected_rows": n * labels,
            "unique_rows": len(np.unique(rows)),
            "exactly_once": bool(len(rows) == n * labels == len(np.unique(rows))),
            "rerun": rerun}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partslib.bench.streaming",
                                description="Peak RSS of streaming training and explanation "
                                            "on growing folder datasets.")
    p.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--data-dir", default="data/streaming")
    p.add_argument("--out", default="results/streaming/bench_streaming.json")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--explain", action="store_true", help="also measure explain_dataset")
    p.add_argument("--models", default=None, help="run folder with checkpoints/ to explain with")
    p.add_argument("--rule", default=None, help="default: pdm-amortised with a head, else "
                                                "pdm-region-soft")
    p.add_argument("--explain-batch", type=int, default=64)
    p.add_argument("--kill-resume", type=int, default=None, metavar="N",
                   help="SIGKILL explain_dataset on the N-image folder, rerun, check rows")
    p.add_argument("--kill-at", type=float, default=0.4, help="share of shards before the kill")
    p.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-explain", nargs=argparse.REMAINDER, default=None,
                   help=argparse.SUPPRESS)
    return p


def _growth(rows: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    if len(rows) < 2:
        return None
    sizes = sorted(rows, key=int)
    lo, hi = rows[sizes[0]]["peak_rss_mib"], rows[sizes[-1]]["peak_rss_mib"]
    return {"from": int(sizes[0]), "to": int(sizes[-1]), "peak_growth": hi / lo - 1}


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    data_dir, out_dir = Path(args.data_dir), Path(args.out).parent
    folders = {n: synth_folder(data_dir / f"synthparts-{args.size}px-{n}", n, args.size)
               for n in args.images}
    payload: dict[str, Any] = {"size": args.size, "workers": args.workers,
                               "threads": args.threads, "train": {}, "explain": {}}
    for n, folder in folders.items():
        payload["train"][str(n)] = _run_child(
            ["--child-train", str(folder), "--workers", str(args.workers),
             "--threads", str(args.threads)])
    payload["train_growth"] = _growth(payload["train"])
    if args.explain or args.kill_resume:
        models = Path(args.models) if args.models else _random_models(out_dir / "random",
                                                                      args.size)
        rule = args.rule or ("pdm-amortised" if (models / "checkpoints" / "head.pt").exists()
                             else "pdm-region-soft")
        payload.update(models=str(models), rule=rule, explain_batch=args.explain_batch)
        runs = out_dir / "runs"
        shutil.rmtree(runs, ignore_errors=True)  # measure whole runs, not resumed ones
        for n, folder in folders.items() if args.explain else ():
            argv = _explain_argv(folder, runs / f"explain-{n}", models, rule,
                                 args.explain_batch, args.threads, args.workers)
            payload["explain"][str(n)] = _run_child(["--child-explain", *argv])
        payload["explain_growth"] = _growth(payload["explain"])
        if args.kill_resume:
            n = args.kill_resume
            folder = synth_folder(data_dir / f"synthparts-{args.size}px-{n}", n, args.size)
            out = runs / f"kill-resume-{n}"
            argv = _explain_argv(folder, out, models, rule, args.explain_batch, args.threads,
                                 args.workers)
            from partslib.data.synthparts import SynthPartsConfig

            labels = SynthPartsConfig(size=args.size).num_parts + 1
            payload["kill_resume"] = kill_resume(argv, out, n, labels, args.kill_at)
    return payload


def _table(p: dict[str, Any]) -> str:
    lines = ["what        images  peak RSS MiB  before MiB  workers' peak MiB  seconds"]
    for what in ("train", "explain"):
        for n, r in p.get(what, {}).items():
            w = r.get("workers_peak_rss_mib")
            lines.append(f"{what:<10}{int(n):>8}  {r['peak_rss_mib']:>12.1f}  "
                         f"{r['rss_before_mib']:>10.1f}  {'-' if not w else f'{w:.1f}':>17}  "
                         f"{r['seconds']:>7.1f}")
        g = p.get(f"{what}_growth")
        if g:
            lines.append(f"{what} peak RSS growth {g['from']} -> {g['to']} images: "
                         f"{100 * g['peak_growth']:+.1f}%")
    if "kill_resume" in p:
        k = p["kill_resume"]
        lines.append(f"kill-resume {k['images']} images: killed at {k['shards_at_kill']} of "
                     f"{k['shards']} shards; rows {k['rows']} (expected {k['expected_rows']}, "
                     f"unique {k['unique_rows']}); rerun peak {k['rerun']['peak_rss_mib']:.1f} "
                     f"MiB in {k['rerun']['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement (or, internally, one child) and write the JSON."""
    args = _parser().parse_args(argv)
    if args.child_train:
        print(json.dumps(child_train(args.child_train, args.workers, args.threads)))
        return 0
    if args.child_explain is not None:
        print(json.dumps(child_explain(args.child_explain)))
        return 0
    payload = _measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(_table(payload))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
