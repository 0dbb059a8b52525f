#!/usr/bin/env python
"""Is a SynthParts class table learnable? Train the study's small classifier on it briefly.

    python scripts/learnability.py [--classes funnybirds] [--n-train 3000] [--n-val 500]
                                   [--n-test 1000] [--epochs 10] [--size 64] [--threads 1]
                                   [--out DIR]

Generates the splits (not cached), trains ``ClassifierConfig`` with the given epochs and prints
the test accuracy, the balanced accuracy, the per-epoch validation log and the wall time as JSON
(also written to ``DIR/learnability.json`` with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from partslib import pipeline


def main() -> None:
    """Parse the arguments, train, print the result."""
    ap = argparse.ArgumentParser(description="Train the small classifier on a class table.")
    ap.add_argument("--classes", default="funnybirds")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    pipeline.setup(seed=0, threads=args.threads)
    t0 = time.perf_counter()
    train, val, test = pipeline.load_splits(None, classes=args.classes, image_size=args.size,
                                            n_train=args.n_train, n_val=args.n_val,
                                            n_test=args.n_test)
    t_data = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        _, metrics, history = pipeline.train_classifier(
            train, val, test, results_dir=tmp, epochs=args.epochs, device=args.device)
    result = {"classes": args.classes, "num_classes": train.cfg.num_classes,
              "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
              "image_size": args.size,
              "epochs": args.epochs, "threads": args.threads,
              "test_accuracy": metrics["test_accuracy"],
              "balanced_accuracy": metrics["balanced_accuracy"],
              "train_accuracy": metrics["train_accuracy"],
              "data_seconds": round(t_data, 1), "train_seconds": round(metrics["train_seconds"], 1),
              "history": history}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "learnability.json").write_text(text)


if __name__ == "__main__":
    main()
