# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The Parts Detection Module
#
# The PDM (SPEC §3) locates the parts the explanations are about. It is a top-down decoder on the
# **frozen** classifier's stage features: start from the last stage, then repeatedly upsample ×2,
# merge a 1×1 projection of the matching earlier stage, and apply 3×3 conv–BN–ReLU; a 1×1 conv
# gives background + P part logits, resized to the image. Its heavy work runs at low resolution,
# so explaining an image costs little more than classifying it (benchmark in notebook 07).
#
# The classifier's stage features are computed **once** and the decoder trains on them with the
# same training loop as the classifier (`partslib.training.fit`); the classifier's weights and
# predictions are untouched, which this notebook checks.
#
# Last, the head of the amortised contribution rule (partslib's default rule) is trained on
# the PDM's parts.
#
# Outputs: `results_dir/pdm/` (`metrics.json`, `iou.csv`, `history.json`, figures) and
# `results_dir/checkpoints/pdm.pt`, `results_dir/checkpoints/head.pt`.

# %% tags=["parameters"]
# Parameters: papermill overrides these; the defaults are the default profile's.
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
val_seed: int = 2  # stream seed of the validation split (model selection; a third stream)
n_val: int = 1000  # validation images
classes: object = "default"  # class table: "default" (6), "funnybirds" (50), [{part: pattern}]
pdm_n_train: int = 5000  # training images for the PDM (the classifier's training split)
pdm_epochs: int = 20  # PDM training epochs (on features computed once)
pdm_lr: float = 0.005  # peak learning rate
pdm_batch_size: int = 16  # batch size
pdm_widths: list[int] = [48, 24]  # decoder widths after each upsampling, deep to shallow
pdm_image_width: int = 8  # channels of a full-resolution image step; 0 disables it (torchvision: 0)
pdm_separable: bool = False  # depthwise-separable decoder blocks
also_features_only: bool = True  # also train the PDM without the image step (T1 reports both)
head_n_train: int = 5000  # training images of the amortised rule's head (their removal game)
head_n_val: int = 500  # validation images that choose the head's epoch
head_epochs: int = 100  # epochs of the head
head_target: str = "occlusion"  # what the head learns: "occlusion" effects or "shapley" values
device: str = "cpu"  # "cpu" or "cuda"
resume: bool = True  # resume from / reuse a checkpoint of the same configuration

# %%
import pandas as pd

from partslib import pipeline, viz
from partslib.io import write_csv

pipeline.setup(seed=seed, threads=threads)  # torch.set_num_threads, seeds, deterministic kernels
viz.set_style()
params = dict(
    profile=profile,
    results_dir=results_dir,
    data_dir=data_dir,
    seed=seed,
    threads=threads,
    progress=progress,
    image_size=image_size,
    train_seed=train_seed,
    n_train=n_train,
    test_seed=test_seed,
    n_test=n_test,
    val_seed=val_seed,
    n_val=n_val,
    classes=classes,
    pdm_n_train=pdm_n_train,
    pdm_epochs=pdm_epochs,
    pdm_lr=pdm_lr,
    pdm_batch_size=pdm_batch_size,
    pdm_widths=pdm_widths,
    pdm_image_width=pdm_image_width,
    pdm_separable=pdm_separable,
    also_features_only=also_features_only,
    head_n_train=head_n_train,
    head_n_val=head_n_val,
    head_epochs=head_epochs,
    head_target=head_target,
    device=device,
    resume=resume,
)
out_dir = pipeline.stage_dir(results_dir, "pdm")
pipeline.write_params(out_dir, params);

# %%
train, val, test = pipeline.load_splits(
    data_dir, image_size=image_size, train_seed=train_seed, n_train=n_train,
    test_seed=test_seed, n_test=n_test, val_seed=val_seed, n_val=n_val,
    classes=classes, progress=progress)
print(f"train: {len(train)}, validation: {len(val)}, test: {len(test)} images, "
      f"{image_size}x{image_size}")

# %%
from partslib.config import PDMConfig

config = PDMConfig(n_train=pdm_n_train, epochs=pdm_epochs, lr=pdm_lr, batch_size=pdm_batch_size,
                   widths=tuple(pdm_widths), image_width=pdm_image_width, separable=pdm_separable)
classifier = pipeline.load_classifier(results_dir, device=device)
pdm, metrics, history = pipeline.train_pdm(
    classifier, train, val, test, results_dir=results_dir, config=config, seed=seed, resume=resume,
    progress=progress, device=device)
pipeline.write_json(out_dir / "history.json", history)
print(f"{metrics['num_parameters']:,} PDM parameters, trained in {metrics['train_seconds']:.1f} s")

# %% [markdown]
# ## Learning curve
#
# Training loss, and the validation mIoU (first 500 validation images) after each epoch; the
# whole validation split is evaluated once at the end (`val_miou`). The PDM's settings (epochs,
# decoder widths, the full-resolution image step, the learning rate) are chosen on the
# validation split only; the test split is evaluated once, below, after training.

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_history(history)
viz.save_figure(fig, out_dir / "learning_curve.png");

# %% [markdown]
# ## Accuracy of the part maps
#
# Per-part IoU on the whole test split, summed over the dataset before dividing (the
# segmentation convention), and the mean over parts (mIoU, background included).

# %%
iou = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("iou/")}
iou_table = pd.DataFrame({"IoU": iou}).T
write_csv(iou_table, out_dir / "iou.csv")
iou_table.round(3)

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_iou(iou)
viz.save_figure(fig, out_dir / "iou.png");

# %%
# NBVAL_IGNORE_OUTPUT
from partslib.pdm import segment

x = test.images[:6]
pred = segment(classifier, pdm, x).argmax(1)  # on the classifier's device, returned on the CPU
fig = viz.plot_segmentations(x, {"ground truth": test.masks[:6], "PDM": pred}, test.part_names)
viz.save_figure(fig, out_dir / "segmentations.png");

# %%
confusion = pd.DataFrame(metrics.pop("confusion_matrix"), index=test.part_names,
                         columns=test.part_names)
write_csv(confusion, out_dir / "confusion_matrix.csv")

# %% [markdown]
# ## The PDM on features only
#
# The default PDM ends with a full-resolution step that merges a 1×1 projection of the raw
# image (`pdm_image_width` channels): it sharpens thin parts, but IBD's maps and the paper's PDM
# see the classifier's features only. The same decoder without that step (`image_width=0`,
# otherwise the same settings) is trained here too, so that T1 (notebook 05) reports both.

# %%
if also_features_only and pdm_image_width > 0:
    pdm_f, metrics_f, history_f = pipeline.train_pdm(
        classifier, train, val, test, results_dir=results_dir,
        config=config.replace(image_width=0), checkpoint=pipeline.PDM_FEATURES_ONLY_CHECKPOINT,
        seed=seed, resume=resume, progress=progress, device=device)
    pipeline.write_json(out_dir / "history_features_only.json", history_f)
    metrics_f.pop("confusion_matrix")
    metrics.update({f"features_only/{k}": v for k, v in metrics_f.items()})
    print(f"features-only PDM: validation mIoU {metrics_f['val_miou']:.3f}, "
          f"test mIoU {metrics_f['miou']:.3f}")

# %% [markdown]
# ## The amortised contribution head
#
# How much did each part drive the class score? The faithful answer removes the part and
# measures the drop, one classifier pass per part; on SynthParts every training image can be
# re-rendered without any of its labels (background included), which gives the exact effects.
# A small head on the classifier's features pooled inside each PDM part (final and `layer2`
# stages), the parts' areas and region contributions learns to predict them for every class
# from the training images, and is made complete: its values are shifted so that they sum to
# `logit − logit(flat grey)`, the score of the image with every label removed. At explanation
# time it costs one classifier + PDM pass (T4). Its epoch is chosen on validation images, by
# the agreement of its ranking with their measured effects.

# %%
from partslib.explain import amortised_training

head, head_info = amortised_training.train_head(
    classifier, pdm, train, val, n_train=head_n_train, n_val=head_n_val, target=head_target,
    epochs=head_epochs, seed=seed,
    checkpoint=f"{results_dir}/{amortised_training.HEAD_CHECKPOINT}", resume=resume,
    progress=progress)
write_csv(pd.DataFrame(head_info["history"]), out_dir / "head_history.csv", index=False)
metrics.update({"head/val_spearman": head_info["val_spearman"],
                "head/val_top_part": head_info["val_top_part"],
                "head/best_epoch": head_info["best_epoch"],
                "head/parameters": head_info["parameters"],
                "head/game_seconds": head_info["game_seconds"],
                "head/fit_seconds": head_info["fit_seconds"]})
pipeline.write_metrics(out_dir, metrics);

# %%
# NBVAL_CHECK_OUTPUT
print(f"PDM validation mIoU: {metrics['val_miou']:.3f}")
print(f"PDM test mIoU: {metrics['miou']:.3f}")
print("per-part IoU: " + ", ".join(f"{k} {v:.3f}" for k, v in iou.items()))
print(f"classifier unchanged by the PDM: {metrics['classifier_unchanged']}")
print(f"contribution head: {head_info['parameters']} parameters, epoch {head_info['best_epoch']}, "
      f"validation Spearman {head_info['val_spearman']:.3f}, "
      f"top part {head_info['val_top_part']:.3f}")
