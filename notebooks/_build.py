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

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent


def nb_06_validity() -> list:
    from _nb_validity import nb_06_validity as build  # noqa: PLC0415 - its own module

    return build()


def _realphoto_notebooks() -> dict:
    import _nb_realphoto  # noqa: PLC0415 - its own module

    return _nb_realphoto.NOTEBOOKS


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


PDM_PARAMS = """\
pdm_n_train: int = 5000  # training images for the PDM (the classifier's training split)
pdm_epochs: int = 14  # PDM training epochs (on features computed once)
pdm_lr: float = 0.005  # peak learning rate
pdm_batch_size: int = 16  # batch size
pdm_widths: list[int] = [48, 24]  # decoder widths after each upsampling, deep to shallow
pdm_image_width: int = 0  # channels of a full-resolution image step; 0 disables it
pdm_separable: bool = False  # depthwise-separable decoder blocks
device: str = "cpu"  # "cpu" or "cuda"
resume: bool = True  # resume from / reuse a checkpoint of the same configuration
"""
PDM_NAMES = ("pdm_n_train", "pdm_epochs", "pdm_lr", "pdm_batch_size", "pdm_widths",
             "pdm_image_width", "pdm_separable", "device", "resume")


def nb_03_pdm() -> list:
    return [
        md("""
# 03 · The Parts Detection Module

The PDM (SPEC §3) locates the parts the explanations are about. It is a top-down decoder on the
**frozen** classifier's stage features: start from the last stage, then repeatedly upsample ×2,
merge a 1×1 projection of the matching earlier stage, and apply 3×3 conv–BN–ReLU; a 1×1 conv
gives background + P part logits, resized to the image. Its heavy work runs at low resolution,
so explaining an image costs little more than classifying it (benchmark in notebook 07).

The classifier's stage features are computed **once** and the decoder trains on them with the
same training loop as the classifier (`partslib.training.fit`); the classifier's weights and
predictions are untouched, which this notebook checks.

Outputs: `results_dir/pdm/` (`metrics.json`, `iou.csv`, `history.json`, figures) and
`results_dir/checkpoints/pdm.pt`.
"""),
        parameters(PDM_PARAMS),
        setup_cell("pdm", PDM_NAMES, imports="import pandas as pd\n"),
        code(LOAD_SPLITS),
        code("""
classifier = pipeline.load_classifier(results_dir, device=device)
pdm, metrics, history = pipeline.train_pdm(
    classifier, train, test, results_dir=results_dir, n_train=pdm_n_train, epochs=pdm_epochs,
    lr=pdm_lr, batch_size=pdm_batch_size, widths=pdm_widths, image_width=pdm_image_width,
    separable=pdm_separable, seed=seed, resume=resume, progress=progress, device=device)
pipeline.write_json(out_dir / "history.json", history)
print(f"{metrics['num_parameters']:,} PDM parameters, trained in {metrics['train_seconds']:.1f} s")
"""),
        md("""
## Learning curve

Training loss, and the test mIoU on 500 images after each epoch (recorded for the curve only;
nothing is selected on it).
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_history(history)
viz.save_figure(fig, out_dir / "learning_curve.png");
"""),
        md("""
## Accuracy of the part maps

Per-part IoU on the whole test split, summed over the dataset before dividing (the
segmentation convention), and the mean over parts (mIoU, background included).
"""),
        code("""
iou = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("iou/")}
iou_table = pd.DataFrame({"IoU": iou}).T
iou_table.to_csv(out_dir / "iou.csv")
iou_table.round(3)
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_iou(iou)
viz.save_figure(fig, out_dir / "iou.png");
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
from partslib.pdm import segment

x = test.images[:6]
pred = segment(classifier, pdm, x).argmax(1)  # on the classifier's device, returned on the CPU
fig = viz.plot_segmentations(x, {"ground truth": test.masks[:6], "PDM": pred}, test.part_names)
viz.save_figure(fig, out_dir / "segmentations.png");
"""),
        code("""
confusion = pd.DataFrame(metrics.pop("confusion_matrix"), index=test.part_names,
                         columns=test.part_names)
confusion.to_csv(out_dir / "confusion_matrix.csv")
pipeline.write_metrics(out_dir, metrics);
"""),
        code("""
# NBVAL_CHECK_OUTPUT
print(f"PDM test mIoU: {metrics['miou']:.3f}")
print("per-part IoU: " + ", ".join(f"{k} {v:.3f}" for k, v in iou.items()))
print(f"classifier unchanged by the PDM: {metrics['classifier_unchanged']}")
"""),
    ]


EXPLAIN_PARAMS = """\
n_explain: int = 1000  # test images explained for the tables
n_gallery: int = 6  # rows of each gallery figure
interactive: bool = True  # build the ipywidgets explorer (off in headless runs)
"""


def nb_04_explanations() -> list:
    return [
        md("""
# 04 · Part explanations: gallery and explorer

For each image, **which parts drove the class score, by how much, and exactly where they are**.
In region mode (SPEC §4) the class activation map `CAM_k(u) = w_k · A(u)` is split between the
parts by how much of each feature cell the PDM assigns to each part, so the contributions add up
exactly to the logit: `b_k + Σ_p c_p = logit_k` (completeness). Occlusion mode removes each
PDM part with an imputer and measures the drop; the contrastive variant explains
`logit_k − logit_j` against the runner-up class.

Outputs: `results_dir/explanations/` (`metrics.json`, `contributions.csv`, `part_class.csv`,
gallery figures).
"""),
        parameters(EXPLAIN_PARAMS),
        setup_cell("explanations", ("n_explain", "n_gallery", "interactive"),
                   imports="import pandas as pd\nimport torch\n"),
        code(LOAD_SPLITS),
        code("""
from partslib.explain import PartExplainer

classifier = pipeline.load_classifier(results_dir)
pdm = pipeline.load_pdm(results_dir)
explainer = PartExplainer(classifier, pdm, test.part_names)
images, masks, labels = test.tensors(slice(0, n_explain))
e = explainer(images)  # region mode, soft occupancy, predicted class
correct = e.target == labels
print(f"explained {len(e)} test images; {int(correct.sum())} correctly classified")
"""),
        md("""
## Completeness

The region-mode identity holds to float precision for every image, for soft and hard
occupancy and for the contrastive margin.
"""),
        code("""
hard = explainer(images, hard=True)
contrastive = explainer(images, contrastive=True)
completeness = {
    "soft": float(e.completeness_error().max()),
    "hard": float(hard.completeness_error().max()),
    "contrastive": float(contrastive.completeness_error().max()),
}
pd.Series(completeness, name="max relative error").to_frame()
"""),
        md("""
## Gallery: correctly classified images

Each row: the image, the PDM's parts, and the contributions of the parts to the predicted
class's logit (bars coloured like the parts; percentages are shares of Σ|c|).
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
ok = torch.nonzero(correct).flatten()
picks = [int(ok[(labels[ok] == k).nonzero()[0]]) for k in range(len(test.class_names))
         if (labels[ok] == k).any()][:n_gallery]
fig = viz.plot_gallery(e, images, picks, test.class_names, labels)
viz.save_figure(fig, out_dir / "gallery_correct.png");
"""),
        md("""
## Gallery: misclassified images

What the model relied on when it was wrong; the contrastive explanation says why it chose the
wrong class over the runner-up.
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
wrong = torch.nonzero(~correct).flatten()[:n_gallery].tolist()
if wrong:
    fig = viz.plot_gallery(contrastive, images, wrong, test.class_names, labels,
                           suptitle="misclassified: predicted class vs runner-up")
    viz.save_figure(fig, out_dir / "gallery_misclassified.png")
else:
    print("no misclassified image among the explained ones")
"""),
        md("""
## Which parts does each class rest on?

Mean contribution of each part to the logit of the predicted class, over correctly classified
images, by class. The decisive parts of each class's signature should stand out.
"""),
        code("""
from partslib.explain import part_class_table

df, part_class = part_class_table(e, test.class_names, correct)
df.to_csv(out_dir / "contributions.csv", index=False)
part_class.to_csv(out_dir / "part_class.csv")
part_class.round(2)
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_part_class_heatmap(part_class)
viz.save_figure(fig, out_dir / "part_class.png");
"""),
        md("""
## Explorer

Choose an image, the class to explain and the mode; see the parts, one part's probability
map and the contributions. It uses core ipywidgets only, so it works in JupyterLab 4 without
an extension. The figure below is the explorer's first view, rendered by the same function
(`partslib.explorer.render`), for readers of the static notebook.
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
from partslib import explorer as xp

fig = xp.render(explainer, images, xp.ExplorerState(index=int(ok[0])), test.class_names, labels)
viz.save_figure(fig, out_dir / "explorer_first_view.png")
if interactive:
    display(xp.build_explorer(explainer, images[:200], test.class_names, labels[:200],
                              state=xp.ExplorerState(index=int(ok[0]))))
"""),
        code("""
top = e.contributions.masked_fill(~e.present, float("-inf")).argmax(1)
decisive = test.decisive[:n_explain]
metrics = {
    "n_explained": len(e),
    "completeness_max_rel_error": max(completeness.values()),
    **{f"completeness_{k}": v for k, v in completeness.items()},
    "top_part_is_decisive": float(decisive[torch.arange(len(e)), top][correct].float().mean()),
    "mean_background_share": float(e.shares[:, 0][correct].mean()),
}
pipeline.write_metrics(out_dir, metrics);
"""),
        code("""
# NBVAL_CHECK_OUTPUT
print(f"completeness max relative error <= 1e-4: {metrics['completeness_max_rel_error'] <= 1e-4}")
print(f"top part is a decisive part (correct images): {metrics['top_part_is_decisive']:.2f}")
print(f"mean background share: {metrics['mean_background_share']:.2f}")
"""),
    ]


BASELINE_PARAMS = """\
ibd_n_train: int = 2000  # training images for IBD's concept classifiers
ibd_epochs: int = 15  # IBD concept-classifier epochs (the reference's 15)
ibd_components: int = 7  # IBD basis size (capped at the number of part concepts)
n_eval: int = 1000  # test images for table T1
gradcam_method: str = "gradcam"  # pytorch-grad-cam method for the heatmap baseline
"""


def nb_05_baselines() -> list:
    return [
        md("""
# 05 · Baselines and localisation (table T1)

The paper's first claim: IBD's component maps are blurry because each is a *linear 1×1*
classifier on the coarse last feature map, while the PDM, a decoder that upsamples and
convolves stepwise, locates parts accurately. This notebook fits **IBD** exactly as its
reference code does (sigmoid concept classifiers with MSE loss, SGD and hard negatives on the
nearest-sampled feature grid; greedy Gram–Schmidt decomposition of the class weights) and runs
**Grad-CAM** through pytorch-grad-cam, then measures how well each locates the parts.

T1 columns: per-part IoU and mIoU (dataset-summed) for the part segmenters (PDM; IBD's linear
concept maps, argmax over the upsampled concept scores including a background concept);
pointing game per part; for the class heatmaps (Grad-CAM, CAM), which are not part
segmenters, the IoU of the thresholded map with the decisive parts and pointing into them;
Network Dissection IoU (top 0.5% quantile, dataset-summed) for IBD's linear maps.

Outputs: `results_dir/baselines/` (`t1.csv`, `metrics.json`, `localization.png`).
"""),
        parameters(BASELINE_PARAMS),
        setup_cell("baselines", ("ibd_n_train", "ibd_epochs", "ibd_components", "n_eval",
                                 "gradcam_method"), imports="import pandas as pd\n"),
        code(LOAD_SPLITS),
        code("""
from partslib.baselines import fit_ibd
from partslib.localization_study import localization_figure, localization_table

classifier = pipeline.load_classifier(results_dir)
pdm = pipeline.load_pdm(results_dir)
ibd = fit_ibd(classifier, train.images[:ibd_n_train], train.masks[:ibd_n_train],
              len(train.part_names), n_components=ibd_components, epochs=ibd_epochs, seed=seed)
ap = dict(zip([train.part_names[c] for c in ibd.concept_classifiers.concepts],
              ibd.concept_classifiers.ap.tolist()))
pd.Series(ap, name="IBD concept AP (held-out quarter)").round(3).to_frame()
"""),
        md("""
## Table T1

Grad-CAM and CAM explain the true class; IoU with the decisive parts uses the normalised map
thresholded at 0.5.
"""),
        code("""
images, masks, labels = test.tensors(slice(0, n_eval))
t1 = localization_table(classifier, pdm, ibd, images, masks, test.part_names, targets=labels,
                        decisive=test.decisive[:n_eval],
                        gradcam_method=gradcam_method).set_index("method")
t1.to_csv(out_dir / "t1.csv")
t1.round(3)
"""),
        code("""
# NBVAL_IGNORE_OUTPUT
fig = localization_figure(classifier, pdm, ibd, images, masks, test.part_names, targets=labels,
                          n=5, class_names=test.class_names)
viz.save_figure(fig, out_dir / "localization.png");
"""),
        md("""
## Reading T1

The PDM's mIoU against IBD's linear maps is the "accurate parts" claim as a number. IBD's maps
are 1×1 linear scores on the last feature grid (8×8 here for 64×64 images), trained on labels
sampled at the grid's block centres: each map is a few dozen numbers, bilinearly upsampled,
which is why small and thin parts (legs, tail) are where it loses most. Grad-CAM and CAM are
class heatmaps: they say *where the evidence is*, not *which part is where*, and their IoU with
the decisive parts shows how far a thresholded heatmap is from a part map.
"""),
        code("""
row = lambda name: t1.loc[name]  # noqa: E731
metrics = {
    "pdm/miou": float(row("PDM")["mIoU"]),
    "ibd_linear/miou": float(row("IBD linear maps")["mIoU"]),
    "pdm_minus_ibd_miou": float(row("PDM")["mIoU"] - row("IBD linear maps")["mIoU"]),
    "pdm/pointing_game": float(row("PDM")["pointing_game"]),
    "ibd_linear/pointing_game": float(row("IBD linear maps")["pointing_game"]),
    "ibd_linear/netdissect_mean": float(row("IBD linear maps")["netdissect_mean"]),
    **{f"{m}/region_iou": float(row(n)["region_iou"]) for m, n in
       [("pdm", "PDM"), ("ibd_linear", "IBD linear maps"), ("gradcam", "Grad-CAM (thresholded)"), ("cam", "CAM")]},
    **{f"{m}/iou/{p}": float(row(n)[f"iou:{p}"]) for m, n in
       [("pdm", "PDM"), ("ibd_linear", "IBD linear maps")] for p in test.part_names},
    "ibd/n_components": ibd.decomposition.n_components,
}
pipeline.write_metrics(out_dir, metrics);
"""),
        code("""
# NBVAL_CHECK_OUTPUT
print(f"PDM mIoU: {metrics['pdm/miou']:.3f}")
print(f"IBD linear maps mIoU: {metrics['ibd_linear/miou']:.3f}")
print(f"PDM - IBD: {metrics['pdm_minus_ibd_miou']:.3f}")
print(f"decisive-region IoU: PDM {metrics['pdm/region_iou']:.3f}, "
      f"Grad-CAM {metrics['gradcam/region_iou']:.3f}")
"""),
    ]


def nb_08_summary() -> list:
    return [
        md("""
# Summary report

The headline numbers of this run against the study's targets, the tables T1–T4, the key
figures, and the configuration and library versions that produced them. The runner exports
this notebook to `results_dir/report.html`; the README's headline table is generated from
the same `metrics.json` (`python -m partslib.report --profile default --readme`).
"""),
        parameters(),
        setup_cell("summary", imports="import json\nfrom pathlib import Path\n\nimport pandas as pd\n"
                   "from IPython.display import Image, display\n"),
        code("""
from partslib import report

run = Path(results_dir)
metrics = {}
for stage_metrics in sorted(run.glob("*/metrics.json")):
    stage = stage_metrics.parent.name
    if stage != "summary":
        metrics.update({f"{stage}/{k}": v for k, v in json.loads(stage_metrics.read_text()).items()})
timings_path = run / "timings.json"
if timings_path.exists():
    timings = json.loads(timings_path.read_text())
    metrics.update({f"study/stage_seconds/{k}": v for k, v in timings["stages"].items()})
targets = report.targets_table(metrics).drop(columns="key")
targets
"""),
        md("## T1 · Localisation of parts (notebook 05)"),
        code("""
t1_path = run / "baselines" / "t1.csv"
pd.read_csv(t1_path, index_col=0).round(3) if t1_path.exists() else "T1 not computed in this run"
"""),
        md("## T2 · Validity of the quantitative explanations (notebook 06)"),
        code("""
t2_path = run / "validity" / "t2.csv"
pd.read_csv(t2_path).round(3) if t2_path.exists() else "T2 not computed in this run"
"""),
        md("## T3 · Models"),
        code("""
t3 = pd.DataFrame({
    "value": {
        "classifier test accuracy": metrics.get("classifier/test_accuracy"),
        "classifier balanced accuracy": metrics.get("classifier/balanced_accuracy"),
        "PDM test mIoU": metrics.get("pdm/miou"),
        "classifier logits unchanged with the PDM attached": metrics.get("pdm/classifier_unchanged"),
        "classifier train seconds": metrics.get("classifier/train_seconds"),
        "PDM train seconds": metrics.get("pdm/train_seconds"),
    }})
t3
"""),
        md("## T4 · Cost (notebook 07)"),
        code("""
t4_path = run / "benchmark" / "t4.csv"
pd.read_csv(t4_path).round(3) if t4_path.exists() else "T4 not computed in this run"
"""),
        code("""
stages = pd.Series({k.split("/")[-1]: v for k, v in metrics.items()
                    if k.startswith("study/stage_seconds/")}, name="seconds", dtype=float)
stages.to_frame()
"""),
        md("## Key figures"),
        code("""
# NBVAL_IGNORE_OUTPUT
for rel in ["explanations/gallery_correct.png", "pdm/segmentations.png",
            "baselines/localization.png", "explanations/part_class.png",
            "validity/scatter.png", "validity/deletion.png", "validity/sanity.png"]:
    if (run / rel).exists():
        print(rel)
        display(Image(filename=str(run / rel)))
"""),
        md("## Configuration and library versions"),
        code("""
# NBVAL_IGNORE_OUTPUT
config = {p.parent.name: json.loads(p.read_text()) for p in sorted(run.glob("*/params.json"))}
print(json.dumps(config.get("summary", {}).get("versions", {}), indent=1))
pd.DataFrame({stage: pd.Series({k: str(v) for k, v in c["parameters"].items()})
              for stage, c in config.items()})
"""),
        code("""
# timing targets (cost ratios, wall time) depend on the machine and its load: counted apart
timing = report.targets_table(metrics).key.str.startswith(("benchmark/", "study/"))
quality = targets[~timing.to_numpy()]
pipeline.write_metrics(out_dir, {"targets_met": int((targets.met == "yes").sum()),
                                 "targets_measured": int((targets.met != "–").sum()),
                                 "quality_targets_met": int((quality.met == "yes").sum()),
                                 "quality_targets_measured": int((quality.met != "–").sum())});
"""),
        code("""
# NBVAL_CHECK_OUTPUT
print(f"quality targets met: {int((quality.met == 'yes').sum())} "
      f"of {int((quality.met != '–').sum())} measured")
"""),
    ]


BENCH_PARAMS = """\
bench_sizes: list[int] = [64, 224]  # image sizes: SynthParts backbone, torchvision resnet18
bench_repeats: int = 15  # timed rounds (every method once per round; minimum reported)
bench_batch: list[int] = [64, 16]  # batch of every method: one per size, or one for all
bench_memory: bool = True  # per-method peak memory in subprocesses
"""


def nb_07_benchmark() -> list:
    return [
        md("""
# 07 · Cost of the explanations (table T4)

One run, same model and batch for every method: a plain classifier forward pass, PDM-region
(classifier forward + PDM maps + contributions), IBD, pytorch-grad-cam's `GradCAM`, Captum's
`FeatureAblation` over the PDM's part masks (occlusion of parts) and PDM-occlusion (the same
idea, batched). At 64×64 with this run's trained models and at 224×224 with a randomly
initialised torchvision ResNet-18 (timing does not depend on the weights). Methods run
round-robin and the minimum over the repeats is reported, so a busy machine inflates all
methods alike less than it would a one-after-the-other measurement; ratios are what to read.

Also records the time of each study stage and the peak memory. Outputs:
`results_dir/bench.json`, `results_dir/benchmark/t4.csv`, `results_dir/benchmark/metrics.json`.
"""),
        parameters(BENCH_PARAMS),
        setup_cell("benchmark", ("bench_sizes", "bench_repeats", "bench_batch", "bench_memory"),
                   imports="import shutil\n\nimport pandas as pd\n"),
        code("""
from partslib import bench

cfg = bench.BenchConfig(results_dir=str(results_dir), sizes=tuple(bench_sizes),
                        repeats=bench_repeats, batch=bench_batch, threads=threads,
                        memory=bench_memory, progress=progress)
payload = bench.run_bench(cfg)
bench_json, t4_csv = bench.write_outputs(results_dir, payload)
shutil.copy2(t4_csv, out_dir / "t4.csv")
print(bench.format_table(payload))
"""),
        code("""
t4 = pd.read_csv(out_dir / "t4.csv")
t4.round(3)
"""),
        code("""
ratios = {k: v for k, v in payload.items() if "_vs_" in k and isinstance(v, (int, float))}
pipeline.write_metrics(out_dir, ratios);
pd.Series(ratios, name="ratio (min wall time)").round(2).to_frame()
"""),
        code("""
# NBVAL_CHECK_OUTPUT
print(f"ratios measured: {len(ratios)} over sizes {list(bench_sizes)}")
"""),
    ]


NOTEBOOKS: dict[str, Callable[[], list]] = {
    "01_data": nb_01_data,
    "02_classifier": nb_02_classifier,
    "03_pdm": nb_03_pdm,
    "04_explanations": nb_04_explanations,
    "05_baselines": nb_05_baselines,
    "06_validity": nb_06_validity,
    "07_benchmark": nb_07_benchmark,
    "08_summary": nb_08_summary,
    **_realphoto_notebooks(),  # 10_realphoto, 11_ccp_parts (profile carparts)
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
