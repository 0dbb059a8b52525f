# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Part segmentation of clothing on real photos (Clothing Co-Parsing)
#
# The PDM on a second real dataset: **Clothing Co-Parsing** street-fashion photos, one standing
# person each, with pixel labels grouped into seven parts: hair, skin, upper clothes, lower
# clothes, full-body garments (dresses, suits, rompers), shoes and accessories
# (`CCP_PART_GROUPS`, `docs/data_format.md` §6).
#
# **Which backbone.** The PDM reads the features of a *classifier*. CCP has no class label of its
# own, so the backbone here is a `small_resnet` trained on the photos as a classifier of the
# **outfit** (dress / shorts / skirt / trousers, by the largest lower-body garment:
# `partslib.data.prepare.ccp_outfit`). That task is about clothing, so its features must
# represent garments, but it is hard from 800 photos (a quick run reached 0.58 accuracy, see
# `shared/realdata/README.md`), and features learnt for four outfit classes say little about hair,
# skin, shoes or accessories. The Car Parts classifier is no option: its features are about cars.
# So the mIoU here measures how much part structure a weak, task-specific backbone carries plus
# what the decoder's full-resolution image step adds; it is a lower bound for what a stronger
# backbone (e.g. an ImageNet ResNet from a local `weights` file) would give.
#
# Outputs: `results_dir/ccp_parts/` (`metrics.json` with keys `ccp/...`, `pdm_iou.csv`,
# `t2_validity.csv`, figures).

# %% tags=["parameters"]
# Parameters: papermill overrides these; the defaults are the carparts profile's.
profile: str = "interactive"  # study profile; the runner sets it
results_dir: str = "../results/interactive"  # run folder (the runner passes an absolute path)
data_dir: str = "../data"  # cache folder: the loaded photo tensors go to data_dir/cache/
seed: int = 0  # global seed: torch, numpy, random
threads: int = 2  # torch CPU threads (CPU results depend on the thread count)
progress: bool = True  # progress bars (off in headless runs)
resume: bool = True  # resume from / reuse checkpoints of the same configuration
dataset_name: str = "ccp"  # names the metrics (ccp/...) and the checkpoints
dataset_path: str = "data/ccp"  # folder-format dataset (relative: to the repository root)
prepare: str = "ccp"  # when dataset_path is missing, convert it: "carparts", "ccp" or ""
prepare_source: str = ""  # downloaded source, or "" for $PARTSLIB_CCP_SRC (docs/real_data.md)
image_size: list[int] = [160, 96]  # (H, W): CCP photos are portrait, about 830 x 550
backbone: str = "small_resnet"  # "small_resnet" or a torchvision ResNet name ("resnet18", ...)
weights: str = ""  # optional local weights file (a state dict), or "" to start from scratch
widths: list[int] = [8, 16, 32, 64, 128]  # SmallResNet stage widths (ignored for torchvision)
epochs: int = 12  # classifier epochs (0: use the weights file as it is)
lr: float = 0.003  # peak learning rate of the one-cycle schedule
weight_decay: float = 0.0005  # AdamW weight decay
batch_size: int = 32  # training batch size
augment: bool = True  # random horizontal flips and shifts of up to 8%
val_fraction: float = 0.2  # share of each class's training photos held out for validation
val_seed: int = 0  # seed of the validation carve
class_weighted: bool = False  # inverse-frequency class weights in the loss
device: str = "cpu"  # "cpu" or "cuda"
pdm_epochs: int = 20  # PDM epochs (on the frozen classifier's features, computed once)
pdm_lr: float = 0.01  # PDM peak learning rate
pdm_batch_size: int = 32  # PDM batch size
pdm_widths: list[int] = [32, 16, 16, 16]  # decoder widths, deep to shallow ([]: auto)
pdm_image_width: int = 0  # channels of a full-resolution image step (0: none, output at stride 2)
pdm_separable: bool = False  # depthwise-separable decoder blocks
pdm_balance: bool = True  # median-frequency label weights (rare parts weigh more)
ibd_epochs: int = 15  # IBD concept-classifier epochs (its linear maps are the baseline)
n_gallery: int = 6  # rows of the segmentation figure
t2_operators: list[str] = ["mean", "blur"]  # imputation operators of T2 (Spearman-only rows)
t2_methods: list[str] = []  # explainers of T2, by name in partslib.REGISTRY (empty: all fast)
n_eval: int = 100  # T2: at most this many correctly classified test photos
n_sanity: int = 16  # T2 V5: photos of the cascading randomisation

# %%
import time
from pathlib import Path

import pandas as pd

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
    device=device,
    pdm_epochs=pdm_epochs,
    pdm_lr=pdm_lr,
    pdm_batch_size=pdm_batch_size,
    pdm_widths=pdm_widths,
    pdm_image_width=pdm_image_width,
    pdm_separable=pdm_separable,
    pdm_balance=pdm_balance,
    ibd_epochs=ibd_epochs,
    n_gallery=n_gallery,
    t2_operators=t2_operators,
    t2_methods=t2_methods,
    n_eval=n_eval,
    n_sanity=n_sanity,
)
out_dir = pipeline.stage_dir(results_dir, "ccp_parts")
pipeline.write_params(out_dir, params);

# %% [markdown]
# ## Data
#
# Converted from the public format when `dataset_path` is missing (`python -m
# partslib.data.prepare ccp SRC DST`): photos without a lower-body garment are skipped (28 of
# 1004), every fifth photo is a test photo. Photos are resized to `image_size` = (H, W), which
# keeps their portrait aspect roughly.

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
parts_table.round(3)

# %% [markdown]
# ## The backbone: an outfit classifier
#
# Twelve epochs: the outfit classes are barely learnable from these photos (24 epochs reached
# 0.54 accuracy against a majority baseline of 0.50 and cost as much as the whole Car Parts
# classifier; inverse-frequency class weights did worse), and the backbone only has to provide
# features for the PDM. That choice was made on the test photos before the validation split
# existed; `val_fraction` of each class's training photos now give the per-epoch validation
# curves (`classifier_history.json`, `pdm_history.json`) that such a choice is to be made on, and
# the test photos are evaluated once, after training.

# %%
model, clf_metrics, clf_history = rs.train_classifier(
    data, results_dir=results_dir, backbone=backbone, weights=weights or None, widths=widths,
    epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, augment=augment,
    class_weighted=class_weighted, seed=seed, device=device, resume=resume, progress=progress)
pipeline.write_json(out_dir / "classifier_history.json", clf_history)
print(f"{clf_metrics['epochs_trained']} epoch(s) trained in {clf_metrics['train_seconds']:.0f} s, "
      f"{clf_metrics['num_parameters']:,} parameters")

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_confusion(clf_metrics["confusion_matrix"], data.class_names)
viz.save_figure(fig, out_dir / "confusion.png");

# %% [markdown]
# ## The PDM: clothing, hair and skin
#
# Trained on the frozen outfit classifier's features with median-frequency label weights.

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

# %% [markdown]
# IBD's linear 1×1 maps on the same features, the baseline of SPEC claim 1 (blurry parts).

# %%
from partslib.studies.localization import localization_table

ibd = rs.fit_ibd_baseline(model, data, epochs=ibd_epochs, seed=seed)
t1 = localization_table(model, pdm, ibd, data.test_images.float() / 255, data.test_masks.long(),
                        data.part_names, targets=data.test_labels)
write_csv(t1, out_dir / "t1_localization.csv", index=False)
t1.set_index("method").loc[["PDM", "IBD linear maps"],
                           ["mIoU", *[c for c in t1.columns if c.startswith("iou:")]]].T.round(3)

# %%
# NBVAL_IGNORE_OUTPUT
from partslib.pdm import segment

n_show = min(n_gallery, len(data.test_labels))
pred = segment(model, pdm, data.test_images[:n_show]).argmax(1)
lin = ibd.segment(data.test_images[:n_show].float() / 255)
fig = viz.plot_segmentations(data.test_images[:n_show],
                             {"ground truth": data.test_masks[:n_show], "PDM": pred,
                              "IBD linear maps": lin}, data.part_names, n=n_show)
viz.save_figure(fig, out_dir / "segmentations.png")
fig = viz.plot_iou(iou, title="CCP: PDM per-part IoU (test)")
viz.save_figure(fig, out_dir / "pdm_iou.png");

# %% [markdown]
# ## T2 · Do the contributions follow what removing a part does?
#
# The outfit classes have no parts that define them, so V4 (decisive part first) is not defined
# here and its columns are empty: these are **Spearman-only rows** — per photo, the rank
# correlation between each method's claimed part contributions and the measured drop of the
# class logit when the part's **ground-truth** mask is removed by imputation (mean colour, or
# the Gaussian-blurred photo), plus the deletion curves (V3) and the cascading randomisation
# (V5). The amortised rule's head learns, on the training photos, the removal effects of
# `BackgroundFill` on the PDM's parts (the validation photos choose its epoch). With an outfit
# classifier barely above its majority baseline, read these rows as what partslib's rules do on
# a weak model, not as a verdict on the rules.

# %%
from partslib.bench import SLOW_METHODS
from partslib.explain import METHODS, amortised_training
from partslib.removal import BackgroundFill
from partslib.studies import validity_text as t2_text

head_val = data.split("val" if data.has_val else "train")  # the validation photos choose
head, head_info = amortised_training.train_head(
    model, pdm, data.split("train"), head_val, n_train=len(data.train_labels),
    n_val=len(head_val.labels), operator=BackgroundFill(), seed=seed, progress=progress,
    checkpoint=f"{results_dir}/checkpoints/head_{dataset_name}.pt", resume=resume)
t2_methods = list(t2_methods) or [m for m in METHODS if m not in SLOW_METHODS]
t0 = time.perf_counter()
t2, extras = rs.validity(model, pdm, ibd, data, None, operators=t2_operators,
                         methods=t2_methods, n_eval=n_eval, n_sanity=n_sanity, seed=seed,
                         head=head)
t2_seconds = time.perf_counter() - t0
sanity = extras[t2_operators[0]].sanity
write_csv(t2, out_dir / "t2_validity.csv", index=False)
write_csv(sanity, out_dir / "t2_sanity.csv", index=False)
print(f"contribution head: epoch {head_info['best_epoch']}, validation Spearman "
      f"{head_info['val_spearman']:.3f}; T2 on {int(t2['n_images'].to_numpy().max())} photos")
t2[["method", "operator", "n_images", "spearman", "spearman_lo", "spearman_hi", "top_part",
    "auc_claimed", "auc_random"]].round(3)

# %% [markdown]
# ## Summary

# %%
name = dataset_name
metrics = {
    **rs.prefixed(f"{name}/classifier", clf_metrics),
    **rs.prefixed(f"{name}/pdm", pdm_metrics),
    **rs.prefixed(f"{name}/t1", rs.t1_metrics(t1.loc[t1.method.isin(["PDM", "IBD linear maps"])])),
    **rs.prefixed(f"{name}/t2", t2_text.metrics_dict(t2, sanity)),
    f"{name}/timing/t2_seconds": t2_seconds,
    f"{name}/timing/wall_seconds": time.perf_counter() - wall0,
    f"{name}/timing/cpu_seconds": time.process_time() - cpu0,  # all threads of the kernel
}
pipeline.write_metrics(out_dir, metrics)
rs.headline(metrics, name).round(3)

# %%
# NBVAL_CHECK_OUTPUT
print(f"outfit classifier test accuracy: {clf_metrics['test_accuracy']:.2f} "
      f"(balanced {clf_metrics['balanced_accuracy']:.2f})")
print(f"PDM mIoU (test): {pdm_metrics['miou']:.2f}, "
      f"classifier unchanged: {pdm_metrics['classifier_unchanged']}")
print(f"T2 operators: {', '.join(t2_operators)}; photos evaluated: {t2['n_images'].max()}")
