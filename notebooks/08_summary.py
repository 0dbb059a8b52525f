# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Summary report
#
# The headline numbers of this run against the study's targets, and the report. The runner
# merges every stage's metrics into `results_dir/metrics.json` and records the stage times in
# `results_dir/timings.json` after each stage; this notebook reads both (it merges nothing
# itself) and builds `results_dir/report.html` from the run folder with `partslib.report`: what
# was run, the headline, T2 as a method × operator matrix, T1 and T4, the figures beside them.
# The runner builds the report once more after this last stage, so that it shows the whole
# study's wall time. The README's headline table comes from the same `metrics.json`
# (`python -m partslib.report --profile default --readme`).

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

# %%
from partslib import pipeline, report, viz

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
)
out_dir = pipeline.stage_dir(results_dir, "summary")
pipeline.write_params(out_dir, params);

# %%
run = report.read_run(results_dir)  # metrics.json and timings.json, as the runner wrote them
metrics = run.metrics
for note in run.notes:
    print(note)
print(f"whole study wall time: {run.wall_note}")
targets = report.targets_table(metrics).drop(columns="key")
report.headline_table(metrics)[["what", "measured", "target", "met"]]

# %%
# NBVAL_IGNORE_OUTPUT
print(f"report: {report.write_report(results_dir)}")

# %%
# timing targets (cost ratios, wall time) depend on the machine and its load: counted apart
timing = report.targets_table(metrics).key.str.startswith(("benchmark/", "study/"))
quality = targets[~timing.to_numpy()]
pipeline.write_metrics(out_dir, {"targets_met": int((targets.met == "yes").sum()),
                                 "targets_measured": int((targets.met != "–").sum()),
                                 "quality_targets_met": int((quality.met == "yes").sum()),
                                 "quality_targets_measured": int((quality.met != "–").sum())});

# %%
# NBVAL_CHECK_OUTPUT
print(f"quality targets met: {int((quality.met == 'yes').sum())} "
      f"of {int((quality.met != '–').sum())} measured")
