# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Are the quantitative explanations valid? (table T2)
#
# A claimed contribution `c_p` of part p to a class score is **valid** when removing the part
# changes the score by about that much, and the parts are ranked like their effects (SPEC §5).
# This notebook scores every explainer of the study against measured removal effects:
#
# * **V1 completeness**: `b_k + Σ_p c_p = logit_k` (rules with a completeness identity).
# * **V2 part-removal agreement**: per image, Spearman between claimed `c_p` and measured
#   `Δ_p = logit_k(x) − logit_k(x without p)`, top-part agreement, and the mean `|c_p − Δ_p|`
#   normalised by `|logit_k − b_k|`.
# * **V3 part deletion**: remove parts cumulatively in the claimed order; area under the
#   class-probability curve (lower is better) against a random order and the greedy order (by
#   single-removal Δ).
# * **V4 decisive-part accuracy**: how often the top-ranked part is a decisive part of the class,
#   beside the same number for the measured effects of the same operator (the ceiling set by
#   what the model relies on); a rule whose claim is itself a removal (occlusion by blur) is
#   compared with that operator's ceiling only.
# * **V5 sanity check**: cascading re-initialisation of the classifier from the head down; the
#   explanations of a randomised model must stop resembling the trained model's.
#
# "Without p" has four meanings here, and the answer depends on which: **rerender** (SynthParts
# draws the same scene without the part: the exact counterfactual), **mean** colour fill,
# Gaussian **blur** (kernel 11, σ 5, as RISE) and ROAD's noisy linear imputation (**road**).
# Removals use the **ground-truth part masks**; contrastive explanations are scored against the
# effect on the margin `logit_k − logit_j` with their own runner-up j. No method is tuned on any
# counterfactual that scores it.
#
# Outputs: `results_dir/validity/` (`t2.csv`, `metrics.json`, `sanity.csv`, `gap.csv`,
# `per_image.csv`, `settings.json`, figures `scatter.png`, `deletion.png`, `sanity.png`).

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
n_eval: int = 300  # correctly classified test images evaluated (V1, V2, V4)
n_deletion: int = 100  # of those, the images of the part-deletion games (V3)
n_sanity: int = 32  # of those, the images of the cascading randomisation (V5)
operators: list[str] = ["rerender", "mean", "blur", "road"]  # removal operators ("x without p")
methods: list[str] = []  # explainers scored, by name in partslib.REGISTRY (empty: all)
sanity_methods: list[str] = ["pdm-amortised", "pdm-region-soft", "gradcam-mass", "ibd"]  # V5
n_shapley: int = 200  # of the evaluated images, those of the exact part-Shapley checks
ibd_n_train: int = 2000  # training images for IBD's concept classifiers (as notebook 05)
ibd_epochs: int = 15  # IBD concept-classifier epochs (as notebook 05)
ibd_components: int = 7  # IBD basis size (as notebook 05)
funnybirds: bool = False  # run the FunnyBirds checks (ground-truth and PDM parts)
fb_n_images: int = 100  # test images of the FunnyBirds checks (the first ones of the split)

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

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
    n_eval=n_eval,
    n_deletion=n_deletion,
    n_sanity=n_sanity,
    operators=operators,
    methods=methods,
    sanity_methods=sanity_methods,
    n_shapley=n_shapley,
    ibd_n_train=ibd_n_train,
    ibd_epochs=ibd_epochs,
    ibd_components=ibd_components,
    funnybirds=funnybirds,
    fb_n_images=fb_n_images,
)
out_dir = pipeline.stage_dir(results_dir, "validity")
pipeline.write_params(out_dir, params);

# %%
train, _, test = pipeline.load_splits(
    data_dir, image_size=image_size, train_seed=train_seed, n_train=n_train,
    test_seed=test_seed, n_test=n_test, val_seed=val_seed, n_val=n_val,
    classes=classes, progress=progress)
print(f"train: {len(train)} images, test: {len(test)} images, {image_size}x{image_size}")

# %% [markdown]
# ## The explainers
#
# The classifier and the PDM of the earlier stages; IBD is fitted as notebook 05 fits it (same
# parameters). `pdm-basis` and `ibd` use IBD's basis rule, which reads no map: their
# contributions are the same numbers (the 2×2 cells (PDM, basis) and (linear, basis) coincide),
# kept as two rows because their drawn maps differ. `gradcam-mass` is the share of the Grad-CAM
# map's positive mass inside each PDM part: a share, not logits, so it has no V1 and no
# normalised error.

# %%
from partslib.baselines import fit_ibd
from partslib.explain import METHODS
from partslib.explain.amortised_training import load_head
from partslib.studies import validity as t2_study
from partslib.studies import validity_plots as t2_plots
from partslib.studies import validity_text as t2_text

classifier = pipeline.load_classifier(results_dir)
pdm = pipeline.load_pdm(results_dir)
contribution_head = load_head(results_dir)  # the default rule's head (notebook 03)
ibd = fit_ibd(classifier, train.images[:ibd_n_train], train.masks[:ibd_n_train],
              len(train.part_names), n_components=ibd_components, epochs=ibd_epochs, seed=seed)

# %% [markdown]
# ## Which parts a class needs: the ground truth of V4
#
# A classifier trained on intact images is scored against the generator's **decisive** parts
# (each class's signature). One trained with in-domain removal (`removal_fraction > 0` in
# notebook 02, read from its checkpoint) learns to rule classes out by the parts that remain, so
# the signature no longer says which parts it needs; it is scored against the **sufficient**
# parts: those of the minimal part sets that leave only its class consistent
# (`partslib.data.removal_training.sufficient_sets`; on the 50-class table, FunnyBirds' minimal
# sufficient sets, the ground truth of CSDC).

# %%
from partslib.data.removal_training import (
    GROUND_TRUTHS,
    ground_truth,
    removal_option,
    sufficient_matrix,
)

removal = removal_option(Path(results_dir) / pipeline.CLASSIFIER_CHECKPOINT)
truth = ground_truth(removal)
decisive = test.decisive if truth == "decisive" else sufficient_matrix(test.cfg)[test.labels]
print(f"classifier trained with removal: {removal or 'no'}")
print(f"ground truth of the decisive-part columns: {truth} - {GROUND_TRUTHS[truth]}")

# %% [markdown]
# ## Table T2
#
# One row per method × operator. V2 scores logits (margins for the contrastive rows), V3 the
# class probability; every row records its operator, score and seed. `_lo`/`_hi`: 95% bootstrap
# intervals over the evaluated images (1000 resamples, seeded; the same resamples for every
# method, so differences between methods are paired).

# %%
images, masks, labels = test.tensors()
t2, extras = t2_study.run_validity(
    classifier, pdm, images, masks, labels, decisive=decisive,
    operators=t2_study.default_operators(test, seed=seed, names=operators),
    keys=range(len(test)),
    ibd=ibd, n_eval=n_eval, n_deletion=n_deletion, methods=methods or METHODS,
    sanity_methods=sanity_methods, n_sanity=n_sanity, seed=seed, head=contribution_head)
write_csv(t2, out_dir / "t2.csv", index=False)
print(f"{extras.settings['n_images']} correctly classified test images "
      f"(V3 on {extras.settings['n_images_v3']}, V5 on {extras.settings['sanity_images']})")
columns = ["spearman", "spearman_lo", "spearman_hi", "top_part", "norm_abs_error", "auc_claimed",
           "auc_random", "auc_greedy", "decisive", "decisive_lo", "decisive_hi",
           "decisive_ceiling", "completeness_error_max"]
t2.set_index(["operator", "method"])[columns].round(3)

# %% [markdown]
# ## The 2×2 ablation
#
# SPEC §4's {linear 1×1 concept maps, PDM maps} × {basis rule, region rule}, Spearman against
# re-rendering and decisive-part accuracy. The basis row does not depend on the maps.

# %%
ablation = pd.concat({metric: t2_text.ablation_table(t2, "rerender", metric)
                      for metric in ("spearman", "decisive")}, axis=1)
ablation.round(3)

# %% [markdown]
# ## Claimed against measured
#
# Each point is one (image, part): the claimed contribution against the effect of re-rendering
# the image without that part. A valid explanation lies on the diagonal (dashed, logit units)
# or at least ranks like it.

# %%
# NBVAL_IGNORE_OUTPUT
fig = t2_plots.plot_claimed_vs_measured(extras, "rerender", test.part_names)
viz.save_figure(fig, out_dir / "scatter.png")
fig

# %% [markdown]
# ## Part deletion curves
#
# Mean class probability after removing 0, 1, 2, … parts, in each method's claimed order, a
# random order (dashed grey) and the greedy order by single-removal effect (dashed black), under
# each operator (greedy is not optimal when removals interact: a claimed order can beat it).

# %%
# NBVAL_IGNORE_OUTPUT
fig = t2_plots.plot_deletion_curves(extras)
viz.save_figure(fig, out_dir / "deletion.png")
fig

# %% [markdown]
# ## Sanity check (V5)
#
# Spearman rank correlation with the trained model's explanation (contributions and drawn maps)
# after re-initialising the head, then the stages from the deepest down, of the signed values
# and of their absolute values (`_abs`, as Adebayo et al.): an order that survives with its
# sign flipped shows as a signed Spearman near −1 and an absolute one near +1. An explanation that
# still resembles the trained one after its model has been randomised does not explain the model.

# %%
write_csv(extras.sanity, out_dir / "sanity.csv", index=False)
extras.sanity.pivot_table(index=["step", "module"], columns="method",
                          values=["spearman_contrib", "spearman_maps", "spearman_contrib_abs",
                                  "spearman_maps_abs"]).round(3)

# %%
# NBVAL_IGNORE_OUTPUT
fig = t2_plots.plot_sanity(extras.sanity)
viz.save_figure(fig, out_dir / "sanity.png")
fig

# %% [markdown]
# ## Why the region rule and the removal effects can differ
#
# With the part shares π fixed, completeness holds for the image without part p as well, which
# splits the effect exactly: `Δ_p = [c_p(x) − c_p(x')] + Σ_{q≠p} [c_q(x) − c_q(x')]`. The
# region claim `c_p(x)` therefore differs from `Δ_p` by `remaining_p = c_p(x')`, the CAM mass
# still found in p's cells after the removal (the rule measures against zero features, the
# counterfactual against the features of whatever replaces the part), minus `context_p`, the
# change the removal causes in the other parts' cells through receptive fields. The table uses
# the ground-truth masks, so segmentation errors play no part in it.

# %%
gap_parts, gap_stats = t2_text.gap_summary(extras, "rerender", test.part_names)
write_csv(extras.gap, out_dir / "gap.csv", index=False)
write_csv(extras.per_image, out_dir / "per_image.csv", index=False)
display(pd.Series(gap_stats).round(3).to_frame("rerender"))
gap_parts.round(3)

# %% [markdown]
# ## Reading T2
#
# Generated from the numbers above, so it stays true when they change: for each counterfactual,
# the contribution rule whose ranking agrees best with the measured effects, the decisive-part
# accuracies against their ceiling, the 2×2 ablation, and the decomposition of the region rule's
# disagreement. Two facts frame every line. The counterfactual is part of the question:
# re-rendering removes a part's shape and pattern, a fill or blur keeps its silhouette. And
# occlusion by blur on PDM masks is nearly its own yardstick under the blur operator (same fill,
# PDM instead of ground-truth masks), so its agreement there is expected; its agreement under
# the other operators is the informative number.

# %%
display(Markdown(t2_text.reading(t2, gap=(gap_parts, gap_stats))))

# %% [markdown]
# ## Part Shapley values: the oracle, the imputers, the interactions
#
# The exact part Shapley values of the **re-render game on ground-truth masks** (all `2^n`
# coalitions of the present labels, background included) are the reference a user can never
# compute on a photo. First row: how well they rank the single-part re-render effects (what a
# perfect Shapley-based rule reaches on T2's yardstick). Next rows: the games a user *can* play
# on any photo -- the PDM's parts removed by an imputer -- and how well their exact Shapley
# values agree with the oracle's (target: Spearman >= 0.90). The same imputers on the
# ground-truth masks separate the two sources of disagreement: what remains there is the
# operator's (a fill cannot know what a removed part hid), not the PDM's. Last: for each class
# with two decisive parts, the pair's Shapley interaction index beside the two parts' values.

# %%
from partslib.removal import BackgroundFill, GaussianBlurFill
from partslib.studies.shapley_checks import shapley_checks

sel = extras.indices[:n_shapley]
shap_metrics, shap_games, shap_pairs = shapley_checks(
    classifier, pdm, images[sel], masks[sel], labels[sel], decisive[sel], test.rerender(),
    [int(i) for i in sel], {"blur": GaussianBlurFill(11, 5.0), "background_fill": BackgroundFill()},
    test.cfg.decisive_matrix())
write_csv(shap_games, out_dir / "shapley_games.csv", index=False)
shap_pairs.insert(1, "class_name", [test.class_names[int(c)] for c in shap_pairs["class"]])
write_csv(shap_pairs, out_dir / "shapley_interactions.csv", index=False)
display(shap_games.round(3))
shap_pairs.round(3)

# %% [markdown]
# ## The FunnyBirds checks, with ground-truth parts and with the PDM's parts
#
# FunnyBirds (Hesse et al., ICCV 2023) scores part importances with seven checks on images
# that are rendered again without parts or background objects: CSDC, PC, DC and D (combined
# into Com, at the threshold that maximises them), BI (a property of the model), SD (Cor: rank
# agreement with the single-part removal effects) and TS (Con: target sensitivity). It hands
# every explainer the ground-truth part map; here each method of the registry runs twice:
# `parts = gt` (its rule on the ground-truth parts) and `parts = pdm` (the method as the
# registry builds it, on its own parts: the PDM's, IBD's linear maps for `ibd-linear-region`;
# column `maps`). Removal is exact re-rendering. Each distractor gets its own label region,
# its ground-truth mask split off the background label, for both part sources, so a rule's
# contribution there is the distractor's importance; the background column is the background
# with its distractors (column `mapping`). The basis rule (`ibd`, `pdm-basis`) reads no map,
# so its distractors get 0 and its two rows coincide. `SD` counts the foreground parts as
# FunnyBirds does, `SD_bg` the background as a part as well. `random` draws from the image
# alone, the same numbers for every target class, so it never gives one class strictly more
# importance than the other: its TS is 0 by construction.
#
# On the default 6-class table no class has two classes at distance 3 with disjoint shared
# parts, so TS (Con) has no pairs and is NaN; the `funnybirds` profile (50 classes) runs the
# checks where it does. The section runs only with `funnybirds = True`.

# %%
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt

from partslib.studies import funnybirds as fb_study
from partslib.studies.funnybirds_plots import plot_spider, plot_threshold_curves

fb_metrics: dict[str, float] = {}
if funnybirds:
    from partslib.bench import SLOW_METHODS

    # the Shapley methods (2^n passes over parts and distractors) only when listed
    fb = fb_study.run_funnybirds(test, classifier, pdm, ibd, seed=seed, head=contribution_head,
                                 methods=methods or [m for m in METHODS if m not in SLOW_METHODS],
                                 n_images=min(fb_n_images, len(test)))
    write_csv(fb.wide, out_dir / "funnybirds.csv", index=False)
    fb_metrics = {**fb_study.metrics_dict(fb.wide), "funnybirds/n_images": len(fb.setup.labels),
                  "funnybirds/ts_pairs": int(fb.setup.ts_pairs.rows.shape[0])}
    shown = ["method", "parts", "maps", "accuracy", "CSDC", "PC", "DC", "D", "BI", "SD",
             "SD_bg", "TS", "Com", "Cor", "Con", "threshold", "n"]
    display(fb.wide[shown].round(3))
    fig, axs = plt.subplots(1, 2, figsize=(14, 5.5), subplot_kw={"projection": "polar"})
    for ax, source in zip(axs, fb_study.PART_SOURCES, strict=True):
        plot_spider({m: fb.results[(m, source)].scores() for m in fb.wide.method.unique()},
                    title=f"{source} parts", ax=ax)
        ax.get_legend().remove()
    fig.legend(*axs[1].get_legend_handles_labels(), loc="center left",
               bbox_to_anchor=(0.92, 0.5), fontsize="small")
    viz.save_figure(fig, out_dir / "funnybirds_spider.png")
    display(fig)
    plt.close(fig)
    default_rule = {f"{m} ({s})": r for (m, s), r in fb.results.items() if m == "pdm-region-soft"}
    if default_rule:
        fig = plot_threshold_curves(default_rule)
        viz.save_figure(fig, out_dir / "funnybirds_thresholds.png")
        display(fig)
        plt.close(fig)
else:
    print("FunnyBirds checks off (funnybirds = False; the funnybirds profile turns them on)")

# %%
head = t2_text.headline(t2)
metrics = {**t2_text.metrics_dict(t2, extras.sanity), **head, **fb_metrics,
           **{f"shapley/{k}": v for k, v in shap_metrics.items()},
           **{f"gap/rerender/{k}": v for k, v in gap_stats.items()},
           "n_images_v3": extras.settings["n_images_v3"],
           "sanity_images": extras.settings["sanity_images"],
           "ground_truth_sufficient": float(truth == "sufficient"),
           "seconds": extras.timings["total"]}
pipeline.write_json(out_dir / "settings.json", {**extras.settings, "timings": extras.timings,
                                                "removals": extras.removals,
                                                "ground_truth": truth,
                                                "classifier_removal": removal})
pipeline.write_metrics(out_dir, metrics);

# %%
# NBVAL_CHECK_OUTPUT
nan = float("nan")
region = t2[t2.method.isin(["pdm-region-soft", "pdm-region-hard", "ibd-linear-region"])]
print(f"images: {metrics['n_images']}")
print(f"completeness of the region rules <= 1e-4: "
      f"{bool((region.completeness_error_max <= 1e-4).all())}")
print(f"decisive-part accuracy, default rule: {head.get('default_decisive', nan):.2f} "
      f"(ceiling, {head.get('default_operator')}: {head.get('default_ceiling', nan):.2f})")
print(f"best PDM mode by decisive-part accuracy: {head.get('best_pdm_mode')} "
      f"{head.get('best_pdm_decisive', nan):.2f} "
      f"(ceiling, {head.get('best_pdm_operator')}: {head.get('best_pdm_ceiling', nan):.2f})")
print(f"default rule {head.get('default_method')}: Spearman vs rerender "
      f"{head.get('default_spearman', nan):.2f}")
print(f"part Shapley: oracle Spearman vs single effects {shap_metrics['oracle_spearman']:.2f}, "
      f"PDM + background fill vs oracle {shap_metrics['agreement/background_fill']:.2f}, "
      f"PDM + blur vs oracle {shap_metrics['agreement/blur']:.2f}, "
      f"ground-truth masks + background fill vs oracle "
      f"{shap_metrics['agreement_gt/background_fill']:.2f}")
print(f"Spearman vs rerender: PDM region {head.get('pdm_region_spearman', nan):.2f}, "
      f"IBD {head.get('ibd_spearman', nan):.2f}, "
      f"Grad-CAM {head.get('gradcam_spearman', nan):.2f}, "
      f"random {head.get('random_spearman', nan):.2f}")
