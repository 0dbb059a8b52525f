# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Cost of the explanations (table T4)
#
# One run, same model and batch for every method: a plain classifier forward pass, PDM-region
# (classifier forward + PDM maps + contributions), IBD, pytorch-grad-cam's `GradCAM`, Captum's
# `FeatureAblation` over the PDM's part masks (occlusion of parts) and PDM-occlusion (the same
# idea, batched). At 64×64 with this run's trained models and at 224×224 with a randomly
# initialised torchvision ResNet-18 (timing does not depend on the weights). Methods run
# round-robin and the minimum over the repeats is reported, so a busy machine inflates all
# methods alike less than it would a one-after-the-other measurement; ratios are what to read.
#
# Also records the time of each study stage and the peak memory. Outputs:
# `results_dir/bench.json`, `results_dir/benchmark/t4.csv`, `results_dir/benchmark/metrics.json`.

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
bench_sizes: list[int] = [64, 224]  # image sizes: SynthParts backbone, torchvision resnet18
bench_repeats: int = 10  # timed rounds (every method once per round; minimum reported)
bench_batch: list[int] = [64, 8]  # batch of every method: one per size, or one for all
bench_memory: bool = True  # per-method peak memory in subprocesses

# %%
import shutil

import pandas as pd

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
    bench_sizes=bench_sizes,
    bench_repeats=bench_repeats,
    bench_batch=bench_batch,
    bench_memory=bench_memory,
)
out_dir = pipeline.stage_dir(results_dir, "benchmark")
pipeline.write_params(out_dir, params);

# %%
from partslib import bench

cfg = bench.BenchConfig(results_dir=str(results_dir), sizes=tuple(bench_sizes),
                        repeats=bench_repeats, batch=tuple(bench_batch), threads=threads,
                        memory=bench_memory, progress=progress)
payload = bench.run_bench(cfg)
bench_json, t4_csv = bench.write_outputs(results_dir, payload)
shutil.copy2(t4_csv, out_dir / "t4.csv")
print(bench.format_table(payload))

# %%
t4 = pd.read_csv(out_dir / "t4.csv")
t4.round(3)

# %%
ratios = {k: v for k, v in payload.items() if "_vs_" in k and isinstance(v, (int, float))}
pipeline.write_metrics(out_dir, ratios);
pd.Series(ratios, name="ratio (min wall time)").round(2).to_frame()

# %%
# NBVAL_CHECK_OUTPUT
print(f"ratios measured: {len(ratios)} over sizes {list(bench_sizes)}")
