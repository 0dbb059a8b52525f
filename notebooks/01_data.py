# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · SynthParts: the data
#
# SynthParts draws single-object scenes: an object made of named **parts** (head, body, tail, legs,
# wing) on a textured background with distractor shapes that are not parts. Each class is defined by
# a **signature**: one or two parts that carry a class-specific pattern. Everything else (colours,
# position, scale, flip, the patterns of the other parts) is random, and a pattern that is
# decisive on one part for one class appears as a nuisance on other parts, so a classifier has to
# bind pattern *to part*. Every sample is a pure function of `(seed, index)` and comes with its
# exact part mask, which is what lets the later notebooks measure how accurately parts are located
# and what happens when a part is removed.
#
# This notebook generates (or loads from `data_dir`) the train, validation and test splits, shows
# samples with their part masks, the class signatures, and the class and part-area statistics.
# Outputs: `results_dir/data/` (`metrics.json`, `params.json`, tables, `samples.png`).

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
n_show: int = 12  # samples in the overview grid

# %%
from partslib import pipeline, viz
from partslib.data import summary
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
    n_show=n_show,
)
out_dir = pipeline.stage_dir(results_dir, "data")
pipeline.write_params(out_dir, params);

# %% [markdown]
# ## Generate or load the splits
#
# The splits are cached under `data_dir` as `.npz` files with a manifest holding the generator's
# configuration, seed, size and a SHA-256 checksum of the arrays: a changed parameter never reuses
# stale data, and a corrupted file is regenerated.

# %%
train, val, test = pipeline.load_splits(
    data_dir, image_size=image_size, train_seed=train_seed, n_train=n_train,
    test_seed=test_seed, n_test=n_test, val_seed=val_seed, n_val=n_val,
    classes=classes, progress=progress)
print(f"train: {len(train)}, validation: {len(val)}, test: {len(test)} images, "
      f"{image_size}x{image_size}")

# %% [markdown]
# ## Classes are part signatures
#
# The decisive part(s) of each class and the pattern they carry. Classes 0 and 1 share a pattern on
# different parts (as do 2 and 3): only the *location* of the pattern tells them apart.
# A part set is *sufficient* for a class when the patterns on it rule out every other class;
# the last column lists the minimal ones. The `classes` parameter picks the class table:
# `"funnybirds"` has 50 classes that each fix a pattern on all five parts, in the manner of
# FunnyBirds (`partslib.data.classtables`).

# %%
summary.signature_table(train.cfg)

# %% [markdown]
# ## Samples and their part masks
#
# Each image above its part mask (background left uncoloured).

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_samples(train, n=n_show, seed=seed)
viz.save_figure(fig, out_dir / "samples.png");

# %% [markdown]
# ## Class balance and part areas
#
# Classes are balanced by construction (`label = index % num_classes`). The mean share of the image
# that each part covers is the same for every class: part *size* carries no class information.

# %%
counts = summary.class_counts(("train", train), ("val", val), ("test", test))
write_csv(counts, out_dir / "class_counts.csv")
counts

# %%
areas = summary.part_areas(train)
write_csv(areas, out_dir / "part_areas.csv")
areas.round(3)

# %% [markdown]
# ## Three disjoint streams
#
# `train` fits the models, `val` is what every model-selection choice (classifier and PDM
# epochs, widths, the PDM's image step, rule settings) is made on and what the per-epoch
# learning curves show, and `test` is evaluated once per run for the reported numbers. The
# three are different seeds of the generator (the seeds must differ pairwise); no image is
# shared between them:

# %%
shared = summary.shared_images(("train", train), ("val", val), ("test", test))
assert not any(shared.values()), f"splits share images: {shared}"
shared

# %% [markdown]
# ## Summary

# %%
metrics = {
    "n_train": len(train),
    "n_test": len(test),
    "n_val": len(val),
    "image_size": image_size,
    "num_classes": train.cfg.num_classes,
    "num_parts": train.cfg.num_parts,
    "train_sha256": summary.split_checksum(train),
    "test_sha256": summary.split_checksum(test),
    "val_sha256": summary.split_checksum(val),
    **{f"shared_images/{k}": v for k, v in shared.items()},
}
pipeline.write_metrics(out_dir, metrics);

# %%
# NBVAL_CHECK_OUTPUT
print(f"classes: {metrics['num_classes']}, parts: {metrics['num_parts']}")
print(f"train: {metrics['n_train']} images, checksum {metrics['train_sha256'][:16]}")
print(f"test: {metrics['n_test']} images, checksum {metrics['test_sha256'][:16]}")
print(f"validation: {metrics['n_val']} images, checksum {metrics['val_sha256'][:16]}")
print(f"images shared between splits: {shared}")
print(f"mean object area: {1 - areas.loc['all', 'background']:.3f}")
