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
# # Text-to-video evaluation (VBench)
# Renders every method on the benchmark's prompts (same prompts and per-index seeds for every
# method) and scores the videos with the profile's benchmark: VBench, in its own environment, with
# Quality, Semantic and Total (all 16 dimensions) or the chosen dimensions. Methods as in notebook 03.

# %% tags=["parameters"]
profile = "wan2.1-t2v-1.3b"
benchmark = None  # None: the profile's own (vbench for video profiles); see ditguide.benchmark.BENCHMARKS
benchmark_options = {}  # the benchmark's keywords, e.g. {"dimensions": ["temporal_flickering"], "limit": 2}
cfg_scales = []  # a CFG sweep beside "none" and "cfg" (the profile's default scale)
specs = None  # guidance specs of the profile to evaluate (None: every spec in params.yaml)
selected = True  # also the selected preset, where data/guidance/<profile>/selected.json exists
batch_size = 1
base_seed = 0
output_root = "."
params_file = "params.yaml"
runs_dir = "runs"

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from ditguide import style
from ditguide.evaluation import default_methods, evaluate

style.use()
root = Path(output_root)
methods = default_methods(profile, params_file, cfg_scales=cfg_scales, specs=specs, selected=selected)
print("methods:", ", ".join(methods))

# %% [markdown]
# ## Render every method, then score it

# %%
result = evaluate(
    profile,
    benchmark,
    methods,
    options=benchmark_options,
    params=params_file,
    batch_size=batch_size,
    base_seed=base_seed,
    runs_dir=runs_dir,
)

# %% [markdown]
# ## First video of every method (prompt 0, seed 0)

# %%
fig = result.sample_grid()
style.save_figure(fig, root / f"figures/t2v_{profile}_frames.pdf")
plt.show()

# %% [markdown]
# ## Every evaluated dimension (higher is better)

# %%
fig = result.tradeoff_figure()
style.save_figure(fig, root / f"figures/t2v_{profile}_dimensions.pdf")
plt.show()

# %% [markdown]
# ## Metrics file and LaTeX tables

# %%
style.write_text(root / f"metrics/t2v_{profile}.json", result.to_json())
for suffix, tex in result.tables().items():
    style.write_text(root / f"paper/tables/t2v_{profile}{suffix}.tex", tex)
print(result.table())
