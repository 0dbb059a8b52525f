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
# The headline numbers of this run against the study's targets, the tables T1–T4, the key
# figures, and the configuration and library versions that produced them. The runner exports
# this notebook to `results_dir/report.html`; the README's headline table is generated from
# the same `metrics.json` (`python -m partslib.report --profile default --readme`).

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
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, display
from partslib import pipeline, viz

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

# %% [markdown]
# ## T1 · Localisation of parts (notebook 05)

# %%
t1_path = run / "baselines" / "t1.csv"
pd.read_csv(t1_path, index_col=0).round(3) if t1_path.exists() else "T1 not computed in this run"

# %% [markdown]
# ## T2 · Validity of the quantitative explanations (notebook 06)

# %%
t2_path = run / "validity" / "t2.csv"
pd.read_csv(t2_path).round(3) if t2_path.exists() else "T2 not computed in this run"

# %% [markdown]
# ## T3 · Models

# %%
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

# %% [markdown]
# ## T4 · Cost (notebook 07)

# %%
t4_path = run / "benchmark" / "t4.csv"
pd.read_csv(t4_path).round(3) if t4_path.exists() else "T4 not computed in this run"

# %%
stages = pd.Series({k.split("/")[-1]: v for k, v in metrics.items()
                    if k.startswith("study/stage_seconds/")}, name="seconds", dtype=float)
stages.to_frame()

# %% [markdown]
# ## Key figures

# %%
# NBVAL_IGNORE_OUTPUT
for rel in ["explanations/gallery_correct.png", "pdm/segmentations.png",
            "baselines/localization.png", "explanations/part_class.png",
            "validity/scatter.png", "validity/deletion.png", "validity/sanity.png"]:
    if (run / rel).exists():
        print(rel)
        display(Image(filename=str(run / rel)))

# %% [markdown]
# ## Configuration and library versions

# %%
# NBVAL_IGNORE_OUTPUT
config = {p.parent.name: json.loads(p.read_text()) for p in sorted(run.glob("*/params.json"))}
print(json.dumps(config.get("summary", {}).get("versions", {}), indent=1))
pd.DataFrame({stage: pd.Series({k: str(v) for k, v in c["parameters"].items()})
              for stage, c in config.items()})

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
