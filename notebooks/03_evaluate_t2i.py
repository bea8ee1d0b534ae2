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
# # Text-to-image evaluation
# Samples every method on the same per-index seeds and scores it with the profile's benchmark
# (`ditguide.benchmark`): the digit toy (toy FD, toy CLIP, accuracy), the glyph-scene testbed (FD,
# per-attribute alignment, precision/recall; test captions, stage evaluate_t2i_testbed) or MS-COCO
# 2017 (FID, CLIP-SIM; data/README.md).
# Methods: no guidance, the profile's default CFG, a CFG sweep, the profile's guidance specs, and the
# preset the guidance design (notebook 02) selected for this profile where it exists.

# %% tags=["parameters"]
profile = "toy"
benchmark = None  # None: the profile's own (digits, scenes or coco); see ditguide.benchmark.BENCHMARKS
benchmark_options = {}  # the benchmark's keywords, e.g. {"samples_per_class": 100} or {"split": "test"}
cfg_scales = []  # a CFG sweep beside "none" and "cfg" (the profile's default scale)
specs = None  # guidance specs of the profile to evaluate (None: every spec in params.yaml)
selected = True  # also the selected preset, where data/guidance/<profile>/selected.json exists
batch_size = 250
workers = 1  # forked single-threaded rendering processes per process (CPU only; the files are the same)
base_seed = 0
output_root = "."
params_file = "params.yaml"
runs_dir = "runs"
output_name = None  # file-name stem of the figures, table and metrics (None: t2i_<profile>)

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from ditguide import style
from ditguide.evaluation import default_methods, evaluate

style.use()
root = Path(output_root)
name = output_name or f"t2i_{profile}"
methods = default_methods(profile, params_file, cfg_scales=cfg_scales, specs=specs, selected=selected)
print("methods:", ", ".join(methods))

# %% [markdown]
# ## Sample and score every method

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
# ## Samples (the same captions and seeds in every panel)

# %%
fig = result.sample_grid()
style.save_figure(fig, root / f"figures/{name}_samples.pdf")
plt.show()

# %% [markdown]
# ## Quality against alignment

# %%
fig = result.tradeoff_figure()
style.save_figure(fig, root / f"figures/{name}_tradeoff.pdf")
plt.show()

# %% [markdown]
# ## Metrics file and LaTeX table

# %%
style.write_text(root / f"metrics/{name}.json", result.to_json())
for suffix, tex in result.tables().items():
    style.write_text(root / f"paper/tables/{name}{suffix}.tex", tex)
print(result.table())
