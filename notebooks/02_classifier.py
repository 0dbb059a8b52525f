# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The classifier
#
# Trains the CNN whose decisions the study explains: a ResNet with the *feature contract* of
# `partslib.models` (named stage features, global average pooling, linear head), so that
# `logit_k = w_k · mean_u A(u) + b_k` holds exactly. Training is `partslib.training.fit`
# (AdamW with a one-cycle schedule); the checkpoint `results_dir/checkpoints/classifier.pt` is
# written atomically after every epoch, and a rerun with the same configuration resumes from it
# (or just loads it when training had finished). Later notebooks load the trained model with
# `pipeline.load_classifier(results_dir)`.
#
# Outputs: `results_dir/classifier/` (`metrics.json`, `params.json`, `history.json`,
# `confusion_matrix.csv`, `learning_curves.png`, `confusion.png`).

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
device: str = "cpu"  # "cpu" or "cuda"
arch: str = "small_resnet"  # "small_resnet" or a torchvision ResNet name ("resnet18", ...)
widths: list[int] = [24, 48, 96]  # SmallResNet stage widths (ignored for torchvision ResNets)
epochs: int = 14  # training epochs
lr: float = 0.003  # peak learning rate of the one-cycle schedule
weight_decay: float = 0.0001  # AdamW weight decay
batch_size: int = 128  # training batch size
removal_fraction: float = 0.0  # share of training images re-rendered with labels removed (0: off)
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
    device=device,
    arch=arch,
    widths=widths,
    epochs=epochs,
    lr=lr,
    weight_decay=weight_decay,
    batch_size=batch_size,
    removal_fraction=removal_fraction,
    resume=resume,
)
out_dir = pipeline.stage_dir(results_dir, "classifier")
pipeline.write_params(out_dir, params);

# %% [markdown]
# ## Data
#
# The splits of notebook 01 (generated here if that notebook has not run): the classifier trains
# on `train`; its settings (epochs, widths, learning rate) are chosen on `val`, which the
# per-epoch learning curves show; `test` is evaluated once, after training.

# %%
train, val, test = pipeline.load_splits(
    data_dir, image_size=image_size, train_seed=train_seed, n_train=n_train,
    test_seed=test_seed, n_test=n_test, val_seed=val_seed, n_val=n_val,
    classes=classes, progress=progress)
print(f"train: {len(train)}, validation: {len(val)}, test: {len(test)} images, "
      f"{image_size}x{image_size}")

# %% [markdown]
# ## Train
#
# No augmentation: SynthParts already randomises colour, position, scale and flip. With
# `removal_fraction > 0` (in-domain removal training, off by default; the `removal` profile uses
# 0.5) that share of the training images is re-rendered once, up front and seeded, without a
# random non-empty subset of its labels (background included; with the background kept, each
# distractor with probability 1/2), and trained against the uniform target over the classes
# still consistent with the parts that remain, as FunnyBirds' `--multi_target` does
# (`partslib.data.removal_training`). Validation and test stay on intact images.

# %%
from partslib.config import ClassifierConfig

config = ClassifierConfig(arch=arch, widths=tuple(widths), epochs=epochs, lr=lr,
                          weight_decay=weight_decay, batch_size=batch_size,
                          removal_fraction=removal_fraction)
model, metrics, history = pipeline.train_classifier(
    train, val, test, results_dir=results_dir, config=config, seed=seed, device=device,
    resume=resume, progress=progress)
pipeline.write_json(out_dir / "history.json", history)
print(f"{metrics['epochs_trained']} epoch(s) trained in {metrics['train_seconds']:.1f} s, "
      f"{metrics['num_parameters']:,} parameters")
if removal_fraction > 0:
    print(f"removal training: {metrics['removal_images']} of {len(train)} training images "
          f"re-rendered, {metrics['removal_mean_labels_removed']:.2f} labels removed and "
          f"{metrics['removal_mean_consistent']:.2f} consistent classes on average")

# %% [markdown]
# ## Learning curves
#
# Validation loss and accuracy after every epoch (the test split is never looked at during
# training). The training settings are chosen on these curves and on the final validation
# accuracy; the test accuracy below is measured once, after training, so it stays an unbiased
# estimate.

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_history(history)
viz.save_figure(fig, out_dir / "learning_curves.png");

# %% [markdown]
# ## Evaluation
#
# Accuracy, balanced accuracy (mean per-class recall) and the confusion matrix on the test split.
# Classes that share a pattern on different parts (stripes-head / stripes-body, dots-tail /
# dots-body) are the ones a model that ignores *where* the pattern is would confuse.

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_confusion(metrics["confusion_matrix"], test.class_names)
viz.save_figure(fig, out_dir / "confusion.png");

# %%
confusion = pd.DataFrame(metrics.pop("confusion_matrix"), index=test.class_names,
                         columns=test.class_names)
write_csv(confusion, out_dir / "confusion_matrix.csv")
pipeline.write_metrics(out_dir, metrics);

# %%
# NBVAL_CHECK_OUTPUT
print(f"validation accuracy: {metrics['val_accuracy']:.3f}")
print(f"test accuracy: {metrics['test_accuracy']:.3f}")
print(f"balanced accuracy: {metrics['balanced_accuracy']:.3f}")
print(f"train accuracy: {metrics['train_accuracy']:.3f}")
print(f"final train loss: {metrics['final_train_loss']:.3f}")
