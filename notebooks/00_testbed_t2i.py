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
# # The glyph-scene testbed: is it in the regime of real text-to-image models?
# Real T2I models on MS-COCO have headroom on both axes (unguided samples far from the data, wrongly
# composed), a U-shaped FID against the CFG scale, and alignment that keeps rising with the scale.
# This notebook measures whether the compositional testbed (`ditguide.testbeds.scenes`) behaves the
# same way, and reports autoguidance with the two trained weak twins (Karras et al. 2024) as the bar
# that training-free weakenings must approach. All numbers: mean ± standard error over seed sets.

# %% tags=["parameters"]
profile = "scenes"
split = "test"
per_set = 500
seed_sets = 4
cfg_scales = [1.25, 1.5, 2.0, 3.0, 5.0]
twins = {"twin_early": "data/scenes/twin_early", "twin_shallow": "data/scenes/twin_shallow"}
twin_scale = 2.0
batch_size = 250
workers = 1  # forked single-threaded rendering processes (CPU; the files are the same)
base_seed = 0
params_file = "params.yaml"
judge_path = "data/scenes/judge.safetensors"
runs_dir = "runs"
output_root = "."

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt

from ditguide import style
from ditguide.testbeds import plots
from ditguide.testbeds.evaluate import evaluate_scenes, regime_checks

style.use()
root = Path(output_root)

# %%
result = evaluate_scenes(
    profile,
    split=split,
    per_set=per_set,
    seed_sets=seed_sets,
    cfg_scales=cfg_scales,
    twins=twins,
    twin_scale=twin_scale,
    batch_size=batch_size,
    base_seed=base_seed,
    params=params_file,
    judge_path=judge_path,
    runs_dir=runs_dir,
    workers=workers,
)
result.metrics["regime"] = regime_checks(result.metrics)
style.write_text(root / f"metrics/testbed_{profile}.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
style.write_text(root / f"paper/tables/testbed_{profile}.tex", plots.table(result.metrics))
print(json.dumps(result.metrics["regime"], indent=2))

# %% [markdown]
# ## FD and alignment against the CFG scale

# %%
fig = plots.ucurve_figure(result.metrics)
style.save_figure(fig, root / f"figures/testbed_{profile}_ucurve.pdf")
plt.show()

# %% [markdown]
# ## The same captions and seeds across scales

# %%
order = [
    "none",
    *sorted((k for k in result.images if k.startswith("cfg@")), key=lambda k: float(k[4:])),
    *(k for k in result.images if k.startswith("ag_")),
]
fig = plots.sample_grid(result.images, order, result.captions)
style.save_figure(fig, root / f"figures/testbed_{profile}_samples.pdf")
plt.show()

# %% [markdown]
# ## Reading (generated from the numbers)

# %%
m, floor, regime = result.metrics["methods"], result.metrics["floor"], result.metrics["regime"]
best = f"cfg@{regime['best_cfg_scale']:g}" if regime["best_cfg_scale"] != 1.0 else "none"
print(
    f"Unguided FD is {regime['unguided_fd_over_floor']:.1f}x the real-vs-real floor ({m['none']['fd']:.3f} vs {floor['fd']:.3f}); "
    f"unguided all-attributes accuracy {m['none']['all']:.3f} (real renders: {floor['all']:.3f})."
)
print(
    f"The best CFG scale for FD is {regime['best_cfg_scale']:g}: FD {m[best]['fd']:.3f}, "
    f"{100 * regime['best_fd_gain_over_unguided']:.0f}% below unguided; U-shaped: {regime['u_shape (best FD >= 10% below unguided, largest scale worse than best)']}."
)
for name in (k for k in m if k.startswith("ag_")):
    print(
        f"{name} (w={result.metrics['twin_scale']:g}, {m[name]['nfe_per_step']:.2f} NFE/step): FD {m[name]['fd']:.3f} ± {m[name]['fd_se']:.3f}, "
        f"all-correct {m[name]['all']:.3f} ± {m[name]['all_se']:.3f}, recall {m[name]['recall']:.3f}."
    )
