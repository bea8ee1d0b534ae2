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
# Samples every method on the same per-index seeds and scores it with the profile's metrics.
# On the toy profile: toy FD (judge features, vs the held-out digits), toy CLIP (mean probability of
# the prompted digit) and accuracy, 1,000 class-balanced samples per method.
# On a real profile (flux, cogview4, ...): FID and CLIP-SIM on a MS-COCO 2017 split (data/README.md),
# for the pipeline's baseline sampling and each guidance spec of the profile.

# %% tags=["parameters"]
profile = "toy"
samples_per_class = 100
batch_size = 250
base_seed = 0
cfg_scales = [1.5, 2.0, 3.0]
output_root = "."
params_file = "params.yaml"
judge_path = "data/toy/judge.safetensors"
specs = None  # guidance specs to evaluate (None: every spec of the profile in params.yaml)
runs_dir = "runs"
# Real profiles only (COCO 2017; the toy ignores these):
split = "test"  # dev to tune, test to report
resolution = 512  # reference resolution
limit = None  # None: the whole split
data_dir = "data/coco2017"

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt

from ditguide import style
from ditguide.evaluation import evaluate_t2i_toy, sample_grid
from ditguide.evaluation_real import evaluate_t2i_real
from ditguide.profiles import load_profile

style.use()
root = Path(output_root)
toy = load_profile(profile, params_file).family == "toy"

# %% [markdown]
# ## Sample every method

# %%
if toy:
    result = evaluate_t2i_toy(
        profile,
        samples_per_class=samples_per_class,
        batch_size=batch_size,
        base_seed=base_seed,
        cfg_scales=cfg_scales,
        params=params_file,
        judge_path=judge_path,
        specs=specs,
        runs_dir=runs_dir,
    )
    print(json.dumps({k: v for k, v in result.metrics.items() if k != "methods"}, indent=1))
    for name, m in result.metrics["methods"].items():
        print(
            f"{name:>18}: FD {m['fd']:.3f}  CLIP {m['clip']:.4f}  acc {m['accuracy']:.3f}  NFE/step {m['nfe_per_step']:g}"
        )
else:
    result = evaluate_t2i_real(
        profile,
        split=split,
        resolution=resolution,
        limit=limit,
        specs=specs,
        batch_size=batch_size,
        base_seed=base_seed,
        params=params_file,
        data_dir=data_dir,
        runs_dir=runs_dir,
    )
    print(json.dumps(result.metrics["protocol"], indent=1))
    for name, m in result.metrics["methods"].items():
        print(f"{name:>18}: FID {m['fid']:.3f}  CLIP-SIM {m['clip_sim']:.3f}  NFE/step {m['nfe_per_step']:g}")

# %% [markdown]
# ## Samples (toy: rows are digits 0-9; real: rows are methods, the first captions; same seeds in every panel)

# %%
fig = (
    sample_grid(result.images, result.labels, methods=["none", "cfg"], per_class=8)
    if toy
    else result.sample_grid(per_method=6)
)
style.save_figure(fig, root / f"figures/t2i_{profile}_samples.pdf")
plt.show()

# %% [markdown]
# ## Quality vs alignment (lower FD is better, higher CLIP is better)

# %%
if toy:
    fig, ax = plt.subplots(figsize=(style.COLUMN, 2.4))
    for name, m in result.metrics["methods"].items():
        ax.scatter(m["fd"], m["clip"], color=style.color(name), s=18)
        ax.annotate(name, (m["fd"], m["clip"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axvline(result.metrics["floor"]["fd_real_halves"], color="0.6", lw=0.8, ls="--", label="real vs real")
    ax.set_xlabel("toy FD (judge features) ↓")
    ax.set_ylabel("toy CLIP (p of prompted digit) ↑")
    ax.legend(frameon=False, loc="lower right")
else:
    fig = result.tradeoff_figure()
style.save_figure(fig, root / f"figures/t2i_{profile}_tradeoff.pdf")
plt.show()

# %% [markdown]
# ## Metrics file and LaTeX table

# %%
style.write_text(root / f"metrics/t2i_{profile}.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
style.write_text(root / f"paper/tables/t2i_{profile}.tex", result.table())
print(result.table())
