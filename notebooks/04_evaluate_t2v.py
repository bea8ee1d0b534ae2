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
# Renders the profile's baseline sampling and each of its guidance specs on VBench's prompt suite
# (same prompts and per-index seeds for every method), scores the videos with VBench in its own
# environment, and reports Quality, Semantic and Total (all 16 dimensions) or the chosen dimensions.

# %% tags=["parameters"]
profile = "wan2.1-t2v-1.3b"
prompts = "standard"  # VBench's standard suite, or a path to a suite in VBench_full_info.json's format
samples_per_prompt = 5
limit = None  # prompts per dimension (None: all)
dimensions = None  # None: all 16
specs = None  # guidance specs to evaluate besides the baseline (None: every spec of the profile)
batch_size = 1
base_seed = 0
output_root = "."
params_file = "params.yaml"
runs_dir = "runs"
vbench_device = None  # None: cuda if available

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt

from ditguide import style
from ditguide.evaluation_real import evaluate_t2v

style.use()
root = Path(output_root)

# %% [markdown]
# ## Render every method, then score it with VBench

# %%
result = evaluate_t2v(
    profile,
    prompts=prompts,
    samples_per_prompt=samples_per_prompt,
    limit=limit,
    dimensions=dimensions,
    specs=specs,
    batch_size=batch_size,
    base_seed=base_seed,
    params=params_file,
    runs_dir=runs_dir,
    vbench_device=vbench_device,
)
print(json.dumps(result.metrics["protocol"], indent=1))
for name, m in result.metrics["methods"].items():
    total = "-" if m["total"] is None else f"{m['total']:.2f}"
    print(
        f"{name:>12}: Total {total}  NFE/step {m['nfe_per_step']:g}  "
        + "  ".join(f"{d} {v:.2f}" for d, v in m["raw"].items())
    )

# %% [markdown]
# ## First video of every method (prompt 0, seed 0)

# %%
fig = result.frames_figure(frames=4)
style.save_figure(fig, root / f"figures/t2v_{profile}_frames.pdf")
plt.show()

# %% [markdown]
# ## Every evaluated dimension (raw VBench score, higher is better)

# %%
fig = result.dimensions_figure()
style.save_figure(fig, root / f"figures/t2v_{profile}_dimensions.pdf")
plt.show()

# %% [markdown]
# ## Metrics file and LaTeX tables

# %%
style.write_text(root / f"metrics/t2v_{profile}.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
style.write_text(root / f"paper/tables/t2v_{profile}.tex", result.table())
style.write_text(root / f"paper/tables/t2v_{profile}_dimensions.tex", result.dimensions_table())
print(result.table())
