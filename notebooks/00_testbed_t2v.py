# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The T2V testbed: a Wan-architecture toy on moving captioned shapes
# The video counterpart of notebook 00 (T2I): a `WanTransformer3DModel` sampled through a
# `WanPipeline` subclass (`ditguide.toy.video_pipeline`), scored by a VBench-shaped Total whose
# dimensions are computed exactly from the generator's ground truth (`ditguide.metrics.clips`).
# It measures the regime (headroom, every semantic dimension above chance), the CFG-scale sweep,
# and the Wan-style baselines: CFG with a weakened negative branch, STG, and autoguidance with the
# trained early twin (Karras et al. 2024). All numbers: mean ± standard error over seed sets, the
# same captions and per-index seeds for every method.

# %% tags=["parameters"]
profile = "clips"
split = "test"
per_set = 250
seed_sets = 4
cfg_scales = [1.5, 3.0, 5.0, 8.0]
specs = ["weak_negative", "stg"]
twins = {"twin_early": "data/clips/twin_early"}
twin_scale = 2.0
batch_size = 250
base_seed = 0
threads = 0
workers = 1  # forked single-threaded rendering processes (CPU; the clips are the same)
params_file = "params.yaml"
runs_dir = "runs"
output_root = "."

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ditguide import style
from ditguide.testbeds import plots_t2v
from ditguide.testbeds.evaluate_t2v import acceptance, evaluate_clips

if threads:
    torch.set_num_threads(int(threads))
style.use()
root = Path(output_root)
start = time.time()

# %%
result = evaluate_clips(
    profile,
    split=split,
    per_set=per_set,
    seed_sets=seed_sets,
    cfg_scales=cfg_scales,
    specs=specs,
    twins=twins,
    twin_scale=twin_scale,
    batch_size=batch_size,
    base_seed=base_seed,
    params=params_file,
    runs_dir=runs_dir,
    workers=workers,
)
result.metrics["acceptance"] = acceptance(result.metrics)
print(json.dumps(result.metrics["acceptance"], indent=2))

# %% [markdown]
# ## Total, Semantic and Quality against the CFG scale

# %%
fig = plots_t2v.ucurve_figure(result.metrics)
style.save_figure(fig, root / "figures/t2v_toy_ucurve.pdf")
plt.show()

# %% [markdown]
# ## The same captions and seeds across methods (every frame of three clips)

# %%
order = [
    "real",
    "none",
    *sorted((k for k in result.videos if k.startswith("cfg@")), key=lambda k: float(k[4:])),
    *(k for k in result.videos if k not in ("real", "none") and not k.startswith("cfg@")),
]
fig = plots_t2v.sample_strip(result.videos, order, result.captions)
style.save_figure(fig, root / "figures/t2v_toy_samples.pdf")
plt.show()

# %% [markdown]
# ## Tables and metrics

# %%
result.metrics["seconds"] = round(time.time() - start)
style.write_text(root / "paper/tables/t2v_toy.tex", plots_t2v.table(result.metrics))
print(plots_t2v.markdown_table(result.metrics))
style.write_text(root / "metrics/t2v_toy.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
