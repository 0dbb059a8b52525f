# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Real photos: your own model, your own parts
#
# The study on **real photographs** and on a model of your choice. Everything runs on a dataset in
# the partslib **folder format** (`docs/data_format.md`: photos, PNG part masks with 0 = background
# and 255 = ignore, a part list and an image-to-class table) and on any classifier with the
# feature contract (`small_resnet`, or a torchvision ResNet, optionally from a local weights file).
#
# The defaults (and `profiles/carparts.yaml`) use the **Car Parts** dataset (18 annotated car parts,
# 500 photos) with the **viewpoint** as the class: front, back or side/angled, derived from the
# annotated areas of the front and back parts (`docs/data_format.md` §5). A viewpoint class has
# known decisive parts (the parts that define it), which lets the validity study check whether an
# explanation points at them.
#
# Steps: prepare the data → train the classifier → train the PDM on its frozen features → explain
# (gallery, part × class table) → T1 localisation (PDM vs IBD's linear maps vs Grad-CAM) → T2
# validity with the imputation operators (mean colour, Gaussian blur, ROAD) → any photograph
# through the explainer. Outputs: `results_dir/realphoto/` (`metrics.json` with keys
# `<dataset>/...`, CSV tables, figures); checkpoints in `results_dir/checkpoints/`.

# %% tags=["parameters"]
# Parameters: papermill overrides these; the defaults are the carparts profile's.
profile: str = "interactive"  # study profile; the runner sets it
results_dir: str = "../results/interactive"  # run folder (the runner passes an absolute path)
data_dir: str = "../data"  # cache folder: the loaded photo tensors go to data_dir/cache/
seed: int = 0  # global seed: torch, numpy, random
threads: int = 2  # torch CPU threads (CPU results depend on the thread count)
progress: bool = True  # progress bars (off in headless runs)
resume: bool = True  # resume from / reuse checkpoints of the same configuration
dataset_name: str = "carparts"  # names the metrics (carparts/...) and the checkpoints
dataset_path: str = "data/carparts"  # folder-format dataset (relative: to the repository root)
prepare: str = "carparts"  # when dataset_path is missing, convert it: "carparts", "ccp" or ""
prepare_source: str = ""  # downloaded source, or "" for $PARTSLIB_CARPARTS_SRC (docs/real_data.md)
image_size: int = 128  # photos are resized to image_size x image_size (aspect not kept)
backbone: str = "small_resnet"  # "small_resnet" or a torchvision ResNet name ("resnet18", ...)
weights: str = ""  # optional local weights file (a state dict), or "" to start from scratch
widths: list[int] = [8, 16, 32, 64, 128]  # SmallResNet stage widths (ignored for torchvision)
epochs: int = 40  # classifier epochs (0: use the weights file as it is)
lr: float = 0.003  # peak learning rate of the one-cycle schedule
weight_decay: float = 0.0005  # AdamW weight decay
batch_size: int = 32  # training batch size
augment: bool = True  # random horizontal flips and shifts of up to 8%
val_fraction: float = 0.2  # share of each class's training photos held out for validation
val_seed: int = 0  # seed of the validation carve
class_weighted: bool = False  # inverse-frequency class weights in the loss
removal_fraction: float = 0.0  # share of training photos with random parts filled (BackgroundFill)
device: str = "cpu"  # "cpu" or "cuda"
pdm_epochs: int = 30  # PDM epochs (on the frozen classifier's features, computed once)
pdm_lr: float = 0.01  # PDM peak learning rate
pdm_batch_size: int = 32  # PDM batch size
pdm_widths: list[int] = [32, 16, 16, 16]  # decoder widths, deep to shallow ([]: auto)
pdm_image_width: int = 0  # channels of a full-resolution image step (0: none, output at stride 2)
pdm_separable: bool = False  # depthwise-separable decoder blocks
pdm_balance: bool = True  # median-frequency label weights (rare parts weigh more)
ibd_epochs: int = 15  # IBD concept-classifier epochs (the baseline of T1/T2)
decisive_parts: dict = {  # decisive parts of each class: V4 and T1's region columns
    "front": ["front_bumper", "front_glass", "front_left_light", "front_right_light", "hood"],
    "back": ["back_bumper", "back_glass", "back_left_light", "back_right_light", "tailgate",
             "trunk"],
    "side": ["front_left_door", "front_right_door", "back_left_door", "back_right_door",
             "left_mirror", "right_mirror", "wheel"],
}
t2_operators: list[str] = ["mean", "blur", "road"]  # imputation operators of T2
t2_methods: list[str] = []  # explainers of T2, by name in partslib.REGISTRY (empty: all fast)
n_eval: int = 100  # T2: at most this many correctly classified test photos
n_eval_road: int = 40  # T2 with ROAD (a sparse solve per removal): fewer photos
n_sanity: int = 16  # T2 V5: photos of the cascading randomisation
n_gallery: int = 6  # rows of the gallery figures
photo_path: str = ""  # any photograph to explain, or "" for the first test photo's file

# %%
import time
from pathlib import Path

import pandas as pd
import torch

from partslib import pipeline, viz
from partslib.io import write_csv

pipeline.setup(seed=seed, threads=threads)  # torch.set_num_threads, seeds, deterministic kernels
viz.set_style()
wall0, cpu0 = time.perf_counter(), time.process_time()  # this notebook's wall and CPU time
params = dict(
    profile=profile,
    results_dir=results_dir,
    data_dir=data_dir,
    seed=seed,
    threads=threads,
    progress=progress,
    resume=resume,
    dataset_name=dataset_name,
    dataset_path=dataset_path,
    prepare=prepare,
    prepare_source=prepare_source,
    image_size=image_size,
    backbone=backbone,
    weights=weights,
    widths=widths,
    epochs=epochs,
    lr=lr,
    weight_decay=weight_decay,
    batch_size=batch_size,
    augment=augment,
    val_fraction=val_fraction,
    val_seed=val_seed,
    class_weighted=class_weighted,
    removal_fraction=removal_fraction,
    device=device,
    pdm_epochs=pdm_epochs,
    pdm_lr=pdm_lr,
    pdm_batch_size=pdm_batch_size,
    pdm_widths=pdm_widths,
    pdm_image_width=pdm_image_width,
    pdm_separable=pdm_separable,
    pdm_balance=pdm_balance,
    ibd_epochs=ibd_epochs,
    decisive_parts=decisive_parts,
    t2_operators=t2_operators,
    t2_methods=t2_methods,
    n_eval=n_eval,
    n_eval_road=n_eval_road,
    n_sanity=n_sanity,
    n_gallery=n_gallery,
    photo_path=photo_path,
)
out_dir = pipeline.stage_dir(results_dir, "realphoto")
pipeline.write_params(out_dir, params);

# %% [markdown]
# ## Data
#
# When `dataset_path` does not exist yet, `prepare` names the public format to convert it from
# (`python -m partslib.data.prepare carparts SRC DST` does the same from a shell). The source is
# `prepare_source`, else `$PARTSLIB_CARPARTS_SRC` (a `git clone` of `dsmlr/Car-Parts-Segmentation`;
# see `docs/real_data.md`). Photos and masks are resized to `image_size` (bilinear with
# antialiasing / nearest), aspect ratio not kept; the loaded tensors are cached in
# `data_dir/cache/`.

# %%
from partslib.data.prepare import ensure_dataset
from partslib.studies import realphoto as rs

path = rs.resolve_path(dataset_path)
if prepare:
    ensure_dataset(prepare, path, src=prepare_source or None)  # converts only when missing
data = rs.load_real_data(path, image_size, name=dataset_name,
                         cache_dir=rs.resolve_path(data_dir, Path.cwd()) / "cache",
                         val_fraction=val_fraction, val_seed=val_seed)
n_val = 0 if data.val_labels is None else len(data.val_labels)
print(f"{dataset_name}: {len(data.train_labels)} training, {n_val} validation and "
      f"{len(data.test_labels)} test photos at {data.image_size[0]}x{data.image_size[1]}, "
      f"{data.num_classes} classes, {data.num_labels - 1} parts; split: {data.split_rule}")

# %%
counts, parts_table = rs.data_tables(data)
write_csv(counts, out_dir / "class_counts.csv")
write_csv(parts_table, out_dir / "part_table.csv")
counts

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_segmentations(data.train_images[:n_gallery],
                             {"ground truth": data.train_masks[:n_gallery]}, data.part_names,
                             n=min(n_gallery, len(data.train_labels)))
viz.save_figure(fig, out_dir / "samples.png");

# %% [markdown]
# ## The classifier
#
# `backbone` and `weights` choose the model: `small_resnet` (trained from scratch), or a
# torchvision ResNet trained from scratch or fine-tuned from a local file (an ImageNet file's
# 1000-class head is replaced). Training is `partslib.training.fit` with flips and small shifts as
# augmentation; the checkpoint is resumed / reused when its configuration matches. The validation
# photos (`val_fraction` of each class's *training* photos, never test photos) give the per-epoch
# loss and accuracy; epochs, widths and the PDM's settings are chosen on them. The test photos are
# evaluated once, after training.
#
# `removal_fraction > 0` makes removal in-domain: that share of the training photos has a random
# subset of its ground-truth parts filled from the kept background (`BackgroundFill`, the game the
# contribution head learns below), its class kept (profile `carparts-removal`).

# %%
model, clf_metrics, clf_history = rs.train_classifier(
    data, results_dir=results_dir, backbone=backbone, weights=weights or None, widths=widths,
    epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, augment=augment,
    class_weighted=class_weighted, removal_fraction=removal_fraction, seed=seed, device=device,
    resume=resume, progress=progress)
pipeline.write_json(out_dir / "classifier_history.json", clf_history)
print(f"{clf_metrics['epochs_trained']} epoch(s) trained in {clf_metrics['train_seconds']:.0f} s, "
      f"{clf_metrics['num_parameters']:,} parameters")

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_history(clf_history) if clf_history else None
if fig is not None:
    viz.save_figure(fig, out_dir / "classifier_curves.png")
fig = viz.plot_confusion(clf_metrics["confusion_matrix"], data.class_names)
viz.save_figure(fig, out_dir / "confusion.png");

# %%
pd.Series({k: v for k, v in clf_metrics.items() if k != "confusion_matrix"},
          name="classifier").to_frame()

# %% [markdown]
# ## The Parts Detection Module on real photos
#
# A segmentation decoder on the **frozen** classifier's stage features (SPEC §3), trained on the
# part masks (pixels marked 255 are ignored) with median-frequency label weights, so that rare,
# small parts (lights, mirrors) are not drowned by the background. Per-part IoU is summed over
# the test photos before dividing; mIoU averages the labels present (background included).

# %%
pdm, pdm_metrics, pdm_history = rs.train_part_model(
    model, data, results_dir=results_dir, epochs=pdm_epochs, lr=pdm_lr,
    batch_size=pdm_batch_size, widths=pdm_widths or None, image_width=pdm_image_width,
    separable=pdm_separable, balance=pdm_balance, seed=seed, resume=resume, progress=progress)
pipeline.write_json(out_dir / "pdm_history.json", pdm_history)
print(f"PDM: {pdm_metrics['num_parameters']:,} parameters, trained in "
      f"{pdm_metrics['train_seconds']:.0f} s; classifier unchanged: "
      f"{pdm_metrics['classifier_unchanged']}")

# %%
iou = {k.split("/", 1)[1]: v for k, v in pdm_metrics.items() if k.startswith("iou/")}
iou_table = pd.DataFrame({"IoU (test)": iou,
                          "present in train photos": parts_table[("train", "present")]})
write_csv(iou_table, out_dir / "pdm_iou.csv")
iou_table.round(3)

# %%
# NBVAL_IGNORE_OUTPUT
from partslib.pdm import segment

n_show = min(n_gallery, len(data.test_labels))
pred = segment(model, pdm, data.test_images[:n_show]).argmax(1)
fig = viz.plot_segmentations(data.test_images[:n_show],
                             {"ground truth": data.test_masks[:n_show], "PDM": pred},
                             data.part_names, n=n_show)
viz.save_figure(fig, out_dir / "segmentations.png")
fig = viz.plot_iou(iou, title=f"{dataset_name}: PDM per-part IoU (test)")
viz.save_figure(fig, out_dir / "pdm_iou.png");

# %% [markdown]
# ## The amortised contribution head
#
# A photo cannot be re-rendered without a part, so the head of the default rule learns the
# removal effects of the game a user can play on any photo: each of the PDM's parts removed by
# inpainting it from the kept background (`BackgroundFill`; a removed background turns flat
# grey), one classifier pass per part of every training photo. Its epoch is chosen on the
# validation photos; the test photos are not seen.

# %%
from partslib.explain import amortised_training
from partslib.removal import BackgroundFill

head_val = data.split("val" if data.has_val else "train")  # the validation photos choose
head, head_info = amortised_training.train_head(
    model, pdm, data.split("train"), head_val, n_train=len(data.train_labels),
    n_val=len(head_val.labels), operator=BackgroundFill(), seed=seed, progress=progress,
    checkpoint=f"{results_dir}/checkpoints/head_{dataset_name}.pt", resume=resume)
print(f"contribution head: {head_info['parameters']:,} parameters, epoch "
      f"{head_info['best_epoch']}, validation Spearman {head_info['val_spearman']:.3f}")

# %% [markdown]
# ## Explanations
#
# The default rule is the amortised one (its bias is the score of the flat grey photo, and
# `bias + Σ_p c_p = logit_k` exactly); the paper's region rule (SPEC §4: `c_p` is the share of
# the class activation map that falls on the PDM's part `p`, background included) is complete
# too.

# %%
from partslib.explain import PartExplainer

explainer = PartExplainer(model, pdm, data.part_names, head=head)
x_test = data.test_images.float() / 255
e = explainer(x_test)
correct = e.target == data.test_labels
contrastive = explainer(x_test, contrastive=True)
completeness = max(float(e.completeness_error().max()),
                   float(contrastive.completeness_error().max()))
print(f"{int(correct.sum())}/{len(e)} test photos correctly classified; "
      f"completeness max relative error {completeness:.1e}")

# %%
# NBVAL_IGNORE_OUTPUT
ok = torch.nonzero(correct).flatten()
picks = [int(ok[(data.test_labels[ok] == k).nonzero()[0]]) for k in range(data.num_classes)
         if (data.test_labels[ok] == k).any()]
picks += [int(i) for i in ok if int(i) not in picks][: max(0, n_gallery - len(picks))]
fig = viz.plot_gallery(e, x_test, picks[:n_gallery], data.class_names, data.test_labels)
viz.save_figure(fig, out_dir / "gallery_correct.png")
wrong = torch.nonzero(~correct).flatten()[:n_gallery].tolist()
if wrong:
    fig = viz.plot_gallery(contrastive, x_test, wrong, data.class_names, data.test_labels,
                           suptitle="misclassified: predicted class vs runner-up")
    viz.save_figure(fig, out_dir / "gallery_misclassified.png")

# %% [markdown]
# Mean contribution of each part to the predicted class's logit, over the correctly classified
# test photos, by class. With the viewpoint classes, the front parts should carry "front" and the
# back parts "back"; "side" has no defining part (see the T2 section for the choice made).

# %%
from partslib.explain import part_class_table

df, part_class = part_class_table(e, data.class_names, correct)
write_csv(df, out_dir / "contributions.csv", index=False)
write_csv(part_class, out_dir / "part_class.csv")
part_class.round(2)

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_part_class_heatmap(part_class)
viz.save_figure(fig, out_dir / "part_class.png");

# %% [markdown]
# ## T1 · Localisation: PDM vs IBD's linear maps vs Grad-CAM
#
# IBD is fitted on the training photos (one linear 1×1 concept classifier per label on the last
# features). Per-part IoU and mIoU for the two segmenters; for every method the IoU and pointing
# game of the *decisive region* (the decisive parts of the photo's true class; Grad-CAM and CAM
# thresholded at 0.5 of their range).

# %%
t0 = time.perf_counter()
ibd = rs.fit_ibd_baseline(model, data, epochs=ibd_epochs, seed=seed)
t1 = rs.localization(model, pdm, ibd, data, decisive_parts)
write_csv(t1, out_dir / "t1_localization.csv", index=False)
t1_seconds = time.perf_counter() - t0
cols = ["method", "mIoU", "pointing_game", "region_iou", "region_pointing"]
t1[cols].round(3)

# %%
t1.set_index("method")[[c for c in t1.columns if c.startswith("iou:")]].T.round(3)

# %%
# NBVAL_IGNORE_OUTPUT
from partslib.studies.localization import localization_figure

fig = localization_figure(model, pdm, ibd, x_test[picks[:4]], data.test_masks[picks[:4]].long(),
                          data.part_names, targets=data.test_labels[picks[:4]],
                          class_names=data.class_names, n=min(4, len(picks)))
viz.save_figure(fig, out_dir / "t1_localization.png");

# %% [markdown]
# ## T2 · Are the quantitative explanations valid?
#
# Real photos have no exact counterfactual, so a part is removed by **imputation**: its pixels are
# filled with the photo's mean colour, with the Gaussian-blurred photo (kernel 11, σ 5, as RISE)
# or by ROAD's noisy linear imputation. The measured effect of a part is the drop of the class
# logit when its **ground-truth** mask is removed; every method's claim is scored against the
# effects of every operator (V2 Spearman / top part / error, V3 deletion AUC, V4 decisive-part
# accuracy with the effects' own ceiling, V5 cascading randomisation). `pdm-occlusion` claims
# the blur effect of the PDM's own masks, so against `blur` it is nearly scored by its own
# operator: compare it on `mean` and `road`.
#
# Decisive parts: "front" and "back" are defined by their parts; "side" is defined by the
# *absence* of a dominant front or back, so its decisive parts are a choice: the doors, mirrors
# and wheels, which only a side or angled view shows at length. The viewpoint classes are
# defined by the areas of the same front and back parts, so V4 (`decisive`) is close to
# circular here: ranking the biggest front or back part first scores well whether or not the
# model relies on it. Read the Spearman columns first; `n_images` says how many photos each
# operator ran on (ROAD: fewer).

# %%
from partslib.bench import SLOW_METHODS
from partslib.explain import METHODS
from partslib.studies import validity_plots as t2_plots
from partslib.studies import validity_text as t2_text

# the Shapley methods need 2^n (or n x permutations) passes per photo, and a car shows a dozen
# parts: left out unless listed
t2_methods = list(t2_methods) or [m for m in METHODS if m not in SLOW_METHODS]
t0 = time.perf_counter()
t2, extras = rs.validity(model, pdm, ibd, data, decisive_parts, operators=t2_operators,
                         methods=t2_methods, n_eval=n_eval,
                         n_eval_by_operator={"road": n_eval_road},
                         n_sanity=n_sanity, seed=seed, head=head)
t2_seconds = time.perf_counter() - t0
sanity = extras[t2_operators[0]].sanity
write_csv(t2, out_dir / "t2_validity.csv", index=False)
write_csv(sanity, out_dir / "t2_sanity.csv", index=False)
show = ["method", "operator", "n_images", "spearman", "top_part", "norm_abs_error", "auc_claimed",
        "auc_random", "auc_greedy", "decisive", "decisive_lo", "decisive_hi", "decisive_ceiling"]
t2[show].round(3)

# %%
pd.concat({op: t2_text.ablation_table(t2, operator=op) for op in t2_operators},
          names=["operator"]).round(3)

# %%
# NBVAL_IGNORE_OUTPUT
shown = [m for m in ("pdm-amortised", "pdm-region-soft", "pdm-occlusion", "ibd", "gradcam-mass")
         if m in t2_methods]
for op in t2_operators:
    fig = t2_plots.plot_deletion_curves(extras[op], operators=[op], methods=shown)
    viz.save_figure(fig, out_dir / f"t2_deletion_{op}.png")
    fig = t2_plots.plot_claimed_vs_measured(extras[op], operator=op, part_names=data.part_names,
                                      methods=shown)
    viz.save_figure(fig, out_dir / f"t2_claimed_vs_measured_{op}.png")
if len(sanity):
    fig = t2_plots.plot_sanity(sanity)
    viz.save_figure(fig, out_dir / "t2_sanity.png");

# %% [markdown]
# ## Any photograph
#
# `rs.explain_photo(explainer, path)` takes a photograph of any size and PIL mode: EXIF
# orientation is applied, grayscale and palette images become RGB, transparency is composited on
# white, a large photo is reduced while it is decoded, and the photo is fitted into the model's
# input keeping its aspect ratio (`fit="pad"`, the default: scaled to fit and padded with flat
# grey; the part maps and the image returned are cropped back to the photo). `fit="squash"`
# resizes it exactly as the training photos were (bilinear with antialiasing, aspect ratio not
# kept). Here: `photo_path`, else the original file of the first correctly classified test
# photo, at its full size.

# %%
# NBVAL_IGNORE_OUTPUT
from PIL import Image

photo = Path(photo_path) if photo_path else data.image_path("test", picks[0])
with Image.open(photo) as im:
    print(f"{photo.name}: {im.size[0]}x{im.size[1]} {im.mode}")
one, image = rs.explain_photo(explainer, photo)
fig = viz.plot_explanation(one, image[None], 0, data.class_names)
viz.save_figure(fig, out_dir / "photo_explained.png");

# %% [markdown]
# ## Summary

# %%
name = dataset_name
metrics = {
    **rs.prefixed(f"{name}/classifier", clf_metrics),
    **rs.prefixed(f"{name}/pdm", pdm_metrics),
    f"{name}/explanations/completeness_max_rel_error": completeness,
    **rs.prefixed(f"{name}/t1", rs.t1_metrics(t1)),
    **rs.prefixed(f"{name}/t2", t2_text.metrics_dict(t2, sanity)),
    **{f"{name}/t2/headline/{op}/{k}": v for op in t2_operators
       for k, v in t2_text.headline(t2, reference=op).items()},
    f"{name}/timing/t1_seconds": t1_seconds,
    f"{name}/timing/t2_seconds": t2_seconds,
    f"{name}/timing/wall_seconds": time.perf_counter() - wall0,
    f"{name}/timing/cpu_seconds": time.process_time() - cpu0,  # all threads of the kernel
}
pipeline.write_metrics(out_dir, metrics)
rs.headline(metrics, name).round(3)

# %%
# NBVAL_CHECK_OUTPUT
print(f"classifier test accuracy: {clf_metrics['test_accuracy']:.2f} "
      f"(balanced {clf_metrics['balanced_accuracy']:.2f})")
print(f"PDM mIoU (test): {pdm_metrics['miou']:.2f}, "
      f"classifier unchanged: {pdm_metrics['classifier_unchanged']}")
print(f"completeness max relative error <= 1e-4: {completeness <= 1e-4}")
print(f"T2 operators: {', '.join(t2_operators)}; photos evaluated: {t2['n_images'].max()}")
