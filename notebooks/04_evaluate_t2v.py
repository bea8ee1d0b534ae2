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
# # Text-to-video evaluation (VBench, or the T2V testbed's VBench-shaped judges)
# Renders every method on the benchmark's prompts (same prompts and per-index seeds for every
# method) and scores the videos with the profile's benchmark: VBench, in its own environment, with
# Quality, Semantic and Total (all 16 dimensions) or the chosen dimensions; or, on the T2V testbed
# (profile `clips`, stage evaluate_t2v_testbed), the `clips` benchmark: its test captions judged
# exactly per VBench dimension, with the VBench-shaped Quality, Semantic and Total and standard errors
# over seed sets. Methods as in notebook 03.

# %% tags=["parameters"]
profile = "wan2.1-t2v-1.3b"
benchmark = None  # None: the profile's own (clips on the T2V testbed, else vbench); see ditguide.benchmark.BENCHMARKS
benchmark_options = {}  # the benchmark's keywords, e.g. {"dimensions": ["temporal_flickering"], "limit": 2}
cfg_scales = []  # a CFG sweep beside "none" and "cfg" (the profile's default scale)
specs = None  # guidance specs of the profile to evaluate (None: every spec in params.yaml)
selected = True  # also the selected preset, where data/guidance/<profile>/selected.json exists
batch_size = 1
workers = 1  # forked single-threaded rendering processes per process (CPU only; the files are the same)
base_seed = 0
output_root = "."
params_file = "params.yaml"
runs_dir = "runs"
output_name = None  # file-name stem of the figures, tables and metrics (None: t2v_<profile>)

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from ditguide import style
from ditguide.evaluation import default_methods, evaluate

style.use()
root = Path(output_root)
name = output_name or f"t2v_{profile}"
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
    workers=workers,
)

# %% [markdown]
# ## The first videos of every method (the same prompts and seeds in every row)

# %%
fig = result.sample_grid()
style.save_figure(fig, root / f"figures/{name}_frames.pdf")
plt.show()

# %% [markdown]
# ## Every evaluated dimension (higher is better; on the testbed also Quality against Semantic)

# %%
fig = result.tradeoff_figure()
style.save_figure(fig, root / f"figures/{name}_dimensions.pdf")
plt.show()

# %% [markdown]
# ## Metrics file and LaTeX tables

# %%
style.write_text(root / f"metrics/{name}.json", result.to_json())
for suffix, tex in result.tables().items():
    style.write_text(root / f"paper/tables/{name}{suffix}.tex", tex)
print(result.table())
