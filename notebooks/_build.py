"""Build the study notebooks from the sources below (reviewable, reproducible .ipynb files).

    python notebooks/_build.py            # (re)write the notebooks listed in NOTEBOOKS
    python notebooks/_build.py --check    # exit 1 when a committed notebook differs from its source

The notebooks are written with outputs stripped and deterministic cell ids, so rebuilding an
unchanged source gives a byte-identical file. Conventions (docs/notebooks.md):

* one cell tagged ``parameters`` with typed, literal defaults (those of the default profile) and a
  comment per knob; papermill injects the profile's values after it;
* the next cell calls ``pipeline.setup`` (threads, seeds, determinism) and writes ``params.json``;
* figure cells start with ``# NBVAL_IGNORE_OUTPUT``; one cell ``# NBVAL_CHECK_OUTPUT`` prints the
  rounded summary metrics that the nbval regression compares.

To add a notebook, write a function returning its cells and register it in ``NOTEBOOKS`` (or
commit a hand-made ``NN_<stage>.ipynb`` following the same conventions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

COMMON_PARAMS = '''\
profile: str = "interactive"  # study profile; the runner sets it
results_dir: str = "../results/interactive"  # run folder (the runner passes an absolute path)
data_dir: str = "../data"  # cache of generated SynthParts splits
seed: int = 0  # global seed: torch, numpy, random
threads: int = 2  # torch CPU threads (CPU results depend on the thread count)
progress: bool = True  # progress bars (off in headless runs)
image_size: int = 64  # SynthParts image side, pixels
train_seed: int = 0  # stream seed of the training split
n_train: int = 5000  # training images
test_seed: int = 1  # stream seed of the test split (a disjoint stream)
n_test: int = 1000  # test images
'''

COMMON_NAMES = ("profile", "results_dir", "data_dir", "seed", "threads", "progress",
                "image_size", "train_seed", "n_train", "test_seed", "n_test")


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def parameters(extra: str = "") -> object:
    return code("# Parameters: papermill overrides these; the defaults are the default profile's.\n"
                + COMMON_PARAMS + extra, tags=("parameters",))


def setup_cell(stage: str, extra_names: tuple[str, ...] = (), imports: str = "") -> object:
    names = COMMON_NAMES + extra_names
    params = ",\n    ".join(f"{n}={n}" for n in names)
    return code(f'''
{imports}from partslib import pipeline, viz

pipeline.setup(seed=seed, threads=threads)  # torch.set_num_threads, seeds, deterministic kernels
viz.set_style()
params = dict(
    {params},
)
out_dir = pipeline.stage_dir(results_dir, "{stage}")
pipeline.write_params(out_dir, params);
''')


LOAD_SPLITS = '''
train, test = pipeline.load_splits(
    data_dir, image_size=image_size, train_seed=train_seed, n_train=n_train,
    test_seed=test_seed, n_test=n_test, progress=progress)
print(f"train: {len(train)} images, test: {len(test)} images, {image_size}x{image_size}")
'''


def nb_01_data() -> list:
    return [
        md('''
# 01 · SynthParts: the data

SynthParts draws single-object scenes: an object made of named **parts** (head, body, tail, legs,
wing) on a textured background with distractor shapes that are not parts. Each class is defined by
a **signature**: one or two parts that carry a class-specific pattern. Everything else (colours,
position, scale, flip, the patterns of the other parts) is random, and a pattern that is decisive
on one part for one class appears as a nuisance on other parts, so a classifier has to bind
pattern *to part*. Every sample is a pure function of `(seed, index)` and comes with its exact part
mask, which is what lets the later notebooks measure how accurately parts are located and what
happens when a part is removed.

This notebook generates (or loads from `data_dir`) the train and test splits, shows samples with
their part masks, the class signatures, and the class and part-area statistics.
Outputs: `results_dir/data/` (`metrics.json`, `params.json`, tables, `samples.png`).
'''),
        parameters("n_show: int = 12  # samples in the overview grid\n"),
        setup_cell("data", ("n_show",), imports="from partslib.data import summary\n"),
        md('''
## Generate or load the splits

The splits are cached under `data_dir` as `.npz` files with a manifest holding the generator's
configuration, seed, size and a SHA-256 checksum of the arrays: a changed parameter never reuses
stale data, and a corrupted file is regenerated.
'''),
        code(LOAD_SPLITS),
        md('''
## Classes are part signatures

The decisive part(s) of each class and the pattern they carry. Classes 0 and 1 share a pattern on
different parts (as do 2 and 3): only the *location* of the pattern tells them apart.
'''),
        code("summary.signature_table(train.cfg)"),
        md('''
## Samples and their part masks

Each image above its part mask (background left uncoloured).
'''),
        code('''
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_samples(train, n=n_show, seed=seed)
viz.save_figure(fig, out_dir / "samples.png");
'''),
        md('''
## Class balance and part areas

Classes are balanced by construction (`label = index % num_classes`). The mean share of the image
that each part covers is the same for every class: part *size* carries no class information.
'''),
        code('''
counts = summary.class_counts(("train", train), ("test", test))
counts.to_csv(out_dir / "class_counts.csv")
counts
'''),
        code('''
areas = summary.part_areas(train)
areas.to_csv(out_dir / "part_areas.csv")
areas.round(3)
'''),
        md("## Summary"),
        code('''
metrics = {
    "n_train": len(train),
    "n_test": len(test),
    "image_size": image_size,
    "num_classes": train.cfg.num_classes,
    "num_parts": train.cfg.num_parts,
    "train_sha256": summary.split_checksum(train),
    "test_sha256": summary.split_checksum(test),
}
pipeline.write_metrics(out_dir, metrics);
'''),
        code('''
# NBVAL_CHECK_OUTPUT
print(f"classes: {metrics['num_classes']}, parts: {metrics['num_parts']}")
print(f"train: {metrics['n_train']} images, checksum {metrics['train_sha256'][:16]}")
print(f"test: {metrics['n_test']} images, checksum {metrics['test_sha256'][:16]}")
print(f"mean object area: {1 - areas.loc['all', 'background']:.3f}")
'''),
    ]


def nb_02_classifier() -> list:
    return [
        md('''
# 02 · The classifier

Trains the CNN whose decisions the study explains: a ResNet with the *feature contract* of
`partslib.models` (named stage features, global average pooling, linear head), so that
`logit_k = w_k · mean_u A(u) + b_k` holds exactly. Training is `partslib.training.fit`
(AdamW with a one-cycle schedule); the checkpoint `results_dir/checkpoints/classifier.pt` is
written atomically after every epoch, and a rerun with the same configuration resumes from it
(or just loads it when training had finished). Later notebooks load the trained model with
`pipeline.load_classifier(results_dir)`.

Outputs: `results_dir/classifier/` (`metrics.json`, `params.json`, `history.json`,
`confusion_matrix.csv`, `learning_curves.png`, `confusion.png`).
'''),
        parameters('''\
device: str = "cpu"  # "cpu" or "cuda"
arch: str = "small_resnet"  # "small_resnet" or a torchvision ResNet name ("resnet18", ...)
widths: list[int] = [24, 48, 96]  # SmallResNet stage widths (ignored for torchvision ResNets)
epochs: int = 14  # training epochs
lr: float = 0.003  # peak learning rate of the one-cycle schedule
weight_decay: float = 0.0001  # AdamW weight decay
batch_size: int = 128  # training batch size
resume: bool = True  # resume from / reuse a checkpoint of the same configuration
'''),
        setup_cell("classifier", ("device", "arch", "widths", "epochs", "lr", "weight_decay",
                                  "batch_size", "resume"), imports="import pandas as pd\n"),
        md("## Data\n\nThe splits of notebook 01 (generated here if that notebook has not run)."),
        code(LOAD_SPLITS),
        md('''
## Train

No augmentation: SynthParts already randomises colour, position, scale and flip.
'''),
        code('''
model, metrics, history = pipeline.train_classifier(
    train, test, results_dir=results_dir, arch=arch, widths=widths, epochs=epochs, lr=lr,
    weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=device, resume=resume,
    progress=progress)
pipeline.write_json(out_dir / "history.json", history)
print(f"{metrics['epochs_trained']} epoch(s) trained in {metrics['train_seconds']:.1f} s, "
      f"{metrics['num_parameters']:,} parameters")
'''),
        md('''
## Learning curves

Test loss and accuracy are recorded after every epoch for the curves only; nothing is selected on
them (no early stopping), so the final test accuracy stays an unbiased estimate.
'''),
        code('''
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_history(history)
viz.save_figure(fig, out_dir / "learning_curves.png");
'''),
        md('''
## Evaluation

Accuracy, balanced accuracy (mean per-class recall) and the confusion matrix on the test split.
Classes that share a pattern on different parts (stripes-head / stripes-body, dots-tail /
dots-body) are the ones a model that ignores *where* the pattern is would confuse.
'''),
        code('''
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_confusion(metrics["confusion_matrix"], test.class_names)
viz.save_figure(fig, out_dir / "confusion.png");
'''),
        code('''
confusion = pd.DataFrame(metrics.pop("confusion_matrix"), index=test.class_names,
                         columns=test.class_names)
confusion.to_csv(out_dir / "confusion_matrix.csv")
pipeline.write_metrics(out_dir, metrics);
'''),
        code('''
# NBVAL_CHECK_OUTPUT
print(f"test accuracy: {metrics['test_accuracy']:.3f}")
print(f"balanced accuracy: {metrics['balanced_accuracy']:.3f}")
print(f"train accuracy: {metrics['train_accuracy']:.3f}")
print(f"final train loss: {metrics['final_train_loss']:.3f}")
'''),
    ]


NOTEBOOKS: dict[str, Callable[[], list]] = {
    "01_data": nb_01_data,
    "02_classifier": nb_02_classifier,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=NOTEBOOKS[name]())
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name}-{i:02d}"  # deterministic ids: rebuilding gives identical files
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                       "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="report notebooks that differ from their source; write nothing")
    ap.add_argument("names", nargs="*", help=f"notebooks to build (default: {list(NOTEBOOKS)})")
    args = ap.parse_args(argv)
    stale = []
    for name in args.names or NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(name)) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        elif not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python notebooks/_build.py): "
              + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
