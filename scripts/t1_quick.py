"""A quick table T1 on SynthParts (CPU, a few minutes): PDM vs IBD linear maps vs Grad-CAM/CAM.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/t1_quick.py [--out DIR] [--n-train 1500]

Small on purpose (a smoke-sized classifier and PDM): the numbers are rough, not the study's.
The classifier checkpoint is cached in ``--out`` so reruns only redo PDM, IBD and T1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from partslib.baselines import ablation_2x2, fit_ibd
from partslib.data import SynthParts
from partslib.localization_study import localization_figure, localization_table
from partslib.metrics import spearman
from partslib.models import SmallResNet
from partslib.pdm import train_pdm
from partslib.training import TensorLoader, evaluate_classifier, fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/t1_quick")
    ap.add_argument("--data", default="data")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--clf-epochs", type=int, default=8)
    ap.add_argument("--pdm-epochs", type=int, default=4)
    ap.add_argument("--ibd-epochs", type=int, default=15)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # the study's cached splits (seed 0 / seed 1); their first samples
    train = SynthParts(seed=0, n=5000, cache_dir=args.data, progress=False)
    test = SynthParts(seed=1, n=1000, cache_dir=args.data, progress=False)
    xtr, mtr, ytr = train.tensors(slice(0, args.n_train))
    xte, mte, yte = test.tensors(slice(0, args.n_test))
    dte = test.decisive[: args.n_test]
    names = train.part_names
    L = len(names)

    clf = SmallResNet(train.cfg.num_classes, widths=(24, 48, 96))
    loader = TensorLoader(xtr, ytr, batch_size=64, shuffle=True, seed=0)
    fit(clf, loader, epochs=args.clf_epochs, loss_fn=nn.functional.cross_entropy, lr=3e-3,
        checkpoint=out / f"classifier-{args.n_train}.pt", config={"n_train": args.n_train},
        kind="classifier", progress=False)
    clf.eval().requires_grad_(False)
    acc = evaluate_classifier(clf, xte, yte, train.cfg.num_classes)["accuracy"]
    t_clf = time.perf_counter()
    print(f"classifier: test accuracy {acc:.3f} ({t_clf - t0:.0f}s)", flush=True)

    pdm, _ = train_pdm(clf, xtr, mtr, L, epochs=args.pdm_epochs, widths=[48, 24],
                       image_width=16, image_kernel=1, batch_size=16, lr=5e-3, progress=False)
    pdm.eval()
    t_pdm = time.perf_counter()
    print(f"PDM trained ({t_pdm - t_clf:.0f}s)", flush=True)
    ibd = fit_ibd(clf, xtr, mtr, L, epochs=args.ibd_epochs, seed=0)
    t_ibd = time.perf_counter()
    print(f"IBD fitted: concept AP {[round(a, 3) for a in ibd.concept_classifiers.ap.tolist()]}, "
          f"{ibd.decomposition.n_components} components, mean residual "
          f"{float(ibd.decomposition.errvar[:, -1].mean()):.3f} ({t_ibd - t_pdm:.0f}s)",
          flush=True)

    df = localization_table(clf, pdm, ibd, xte, mte, names, targets=yte, decisive=dte)
    t_t1 = time.perf_counter()
    df.to_csv(out / "t1.csv", index=False)
    with open(out / "t1_attrs.json", "w") as f:
        json.dump({**df.attrs, "classifier_test_accuracy": acc}, f, indent=1)
    print(df.set_index("method").T.round(3).to_string())
    print(f"T1 ({t_t1 - t_ibd:.0f}s)")

    ab = ablation_2x2(clf, pdm, ibd, xte[:200], targets=yte[:200])
    ref = ab.pdm_region
    rho = {f"{a}/{b} vs pdm/region":
           float(np.nanmean([spearman(c[i], ref[i]) for i in range(len(ref))]))
           for (a, b), c in ab.cells().items() if (a, b) != ("pdm", "region")}
    print("2x2: mean per-image Spearman against (pdm, region):", json.dumps(rho, indent=1))
    fig = localization_figure(clf, pdm, ibd, xte, mte, names, targets=yte, n=4,
                              class_names=train.class_names)
    fig.savefig(out / "t1_figure.png", dpi=120)
    print(f"total {time.perf_counter() - t0:.0f}s; outputs in {out}")


if __name__ == "__main__":
    main()
