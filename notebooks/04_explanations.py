# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Part explanations: gallery and explorer
#
# For each image, **which parts drove the class score, by how much, and exactly where they are**.
# In region mode (SPEC §4) the class activation map `CAM_k(u) = w_k · A(u)` is split between the
# parts by how much of each feature cell the PDM assigns to each part, so the contributions add up
# exactly to the logit: `b_k + Σ_p c_p = logit_k` (completeness). Occlusion mode removes each
# PDM part with an imputer and measures the drop; the contrastive variant explains
# `logit_k − logit_j` against the runner-up class.
#
# Outputs: `results_dir/explanations/` (`metrics.json`, `contributions.csv`, `part_class.csv`,
# gallery figures).

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
n_explain: int = 1000  # test images explained for the tables
n_gallery: int = 6  # rows of each gallery figure
interactive: bool = True  # build the ipywidgets explorer (off in headless runs)

# %%
import pandas as pd
import torch

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
    n_explain=n_explain,
    n_gallery=n_gallery,
    interactive=interactive,
)
out_dir = pipeline.stage_dir(results_dir, "explanations")
pipeline.write_params(out_dir, params);

# %%
train, _, test = pipeline.load_splits(
    data_dir, image_size=image_size, train_seed=train_seed, n_train=n_train,
    test_seed=test_seed, n_test=n_test, val_seed=val_seed, n_val=n_val,
    classes=classes, progress=progress)
print(f"train: {len(train)} images, test: {len(test)} images, {image_size}x{image_size}")

# %%
from partslib.explain import PartExplainer
from partslib.explain.amortised_training import load_head

classifier = pipeline.load_classifier(results_dir)
pdm = pipeline.load_pdm(results_dir)
head = load_head(results_dir)  # the amortised rule's head (notebook 03)
explainer = PartExplainer(classifier, pdm, test.part_names, head=head)
images, masks, labels = test.tensors(slice(0, n_explain))
e = explainer(images)  # the default rule (amortised), predicted class
region = explainer(images, mode="region")  # the paper's region rule, soft occupancy
correct = e.target == labels
print(f"explained {len(e)} test images; {int(correct.sum())} correctly classified")

# %% [markdown]
# ## Completeness
#
# `bias + Σ_p c_p = score` holds to float precision for every image: for the default
# (amortised) rule, whose bias is the score of the flat grey image, and for the region rule
# (soft and hard occupancy), and for the contrastive margin.

# %%
hard = explainer(images, mode="region", hard=True)
contrastive = explainer(images, contrastive=True)
completeness = {  # amortised: the default rule; soft, hard: the region rule; contrastive: default
    "amortised": float(e.completeness_error().max()),
    "soft": float(region.completeness_error().max()),
    "hard": float(hard.completeness_error().max()),
    "contrastive": float(contrastive.completeness_error().max()),
}
pd.Series(completeness, name="max relative error").to_frame()

# %% [markdown]
# ## Gallery: correctly classified images
#
# Each row: the image, the PDM's parts, and the contributions of the parts to the predicted
# class's logit (bars coloured like the parts; percentages are shares of Σ|c|).

# %%
# NBVAL_IGNORE_OUTPUT
ok = torch.nonzero(correct).flatten()
picks = [int(ok[(labels[ok] == k).nonzero()[0]]) for k in range(len(test.class_names))
         if (labels[ok] == k).any()][:n_gallery]
fig = viz.plot_gallery(e, images, picks, test.class_names, labels)
viz.save_figure(fig, out_dir / "gallery_correct.png");

# %% [markdown]
# ## Gallery: misclassified images
#
# What the model relied on when it was wrong; the contrastive explanation says why it chose the
# wrong class over the runner-up.

# %%
# NBVAL_IGNORE_OUTPUT
wrong = torch.nonzero(~correct).flatten()[:n_gallery].tolist()
if wrong:
    fig = viz.plot_gallery(contrastive, images, wrong, test.class_names, labels,
                           suptitle="misclassified: predicted class vs runner-up")
    viz.save_figure(fig, out_dir / "gallery_misclassified.png")
else:
    print("no misclassified image among the explained ones")

# %% [markdown]
# ## Which parts does each class rest on?
#
# Mean contribution of each part to the logit of the predicted class, over correctly classified
# images, by class. The decisive parts of each class's signature should stand out.

# %%
from partslib.explain import part_class_table

df, part_class = part_class_table(e, test.class_names, correct)
write_csv(df, out_dir / "contributions.csv", index=False)
write_csv(part_class, out_dir / "part_class.csv")
part_class.round(2)

# %%
# NBVAL_IGNORE_OUTPUT
fig = viz.plot_part_class_heatmap(part_class)
viz.save_figure(fig, out_dir / "part_class.png");

# %% [markdown]
# ## Explorer
#
# Choose an image, the class to explain and the mode; see the parts, one part's probability
# map and the contributions. It uses core ipywidgets only, so it works in JupyterLab 4 without
# an extension. The figure below is the explorer's first view, rendered by the same function
# (`partslib.explorer.render`), for readers of the static notebook.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display

from partslib import explorer as xp

fig = xp.render(explainer, images, xp.ExplorerState(index=int(ok[0])), test.class_names, labels)
viz.save_figure(fig, out_dir / "explorer_first_view.png")
if interactive:
    display(xp.build_explorer(explainer, images[:200], test.class_names, labels[:200],
                              state=xp.ExplorerState(index=int(ok[0]))))

# %%
from partslib.metrics.validity import decisive_hits

decisive = test.decisive[:n_explain]
hits = {name: decisive_hits(x.contributions, decisive, x.present)[correct]
        for name, x in (("amortised", e), ("region", region))}
metrics = {
    "n_explained": len(e),
    "completeness_max_rel_error": max(completeness.values()),
    **{f"completeness_{k}": v for k, v in completeness.items()},
    "top_part_is_decisive": float(hits["amortised"].mean()),
    "mean_background_share": float(e.shares[:, 0][correct].mean()),
    "region_top_part_is_decisive": float(hits["region"].mean()),
    "region_mean_background_share": float(region.shares[:, 0][correct].mean()),
}
pipeline.write_metrics(out_dir, metrics);

# %%
# NBVAL_CHECK_OUTPUT
print(f"completeness max relative error <= 1e-4: {metrics['completeness_max_rel_error'] <= 1e-4}")
print(f"top part is a decisive part (correct images): {metrics['top_part_is_decisive']:.2f}")
print(f"mean background share: {metrics['mean_background_share']:.2f}")
print(f"region rule: top part decisive {metrics['region_top_part_is_decisive']:.2f}, "
      f"background share {metrics['region_mean_background_share']:.2f}")
