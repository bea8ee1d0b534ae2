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
# # Guidance design: a strengthened and a weakened copy of the model, against every baseline
# From the layer map (notebook 01) we build candidate weak edits (blocks whose removal hurts and whose
# error aligns with the model's) and strong edits (edits that strengthen a block and improved a metric),
# combine them with CFG, and tune them, and every baseline family, with the same budget on dev captions
# and seeds. The declared rule (params.yaml, `guidance_design.select`) picks the preset; the disjoint
# test split reports it beside every baseline, at matched compute, with 95 % intervals over seed sets.

# %% tags=["parameters"]
profile = "scenes"
params_file = "params.yaml"
layer_scores = "data/analysis/scenes/layer_scores.json"
twins = None  # None: the trained twins next to the profile's model (twin_* folders); {name: folder} otherwise
judge_path = None  # None: the judge next to an image testbed's model (the clips need none)
runs_dir = "runs"
output_root = "."
timing = True  # measure wall-clock seconds per sample of every test method
steps = None  # None: the profile's sampling steps (tests use fewer)
# The guidance_design section of params.yaml (see there): splits, budget, rule, candidates, grid;
# per_set and select may be given per testbed.
dev = {"split": "dev", "per_set": {"scenes": 72, "clips": 48}, "seed_sets": 3, "base_seed": 1000}
test = {"split": "test", "per_set": {"scenes": 96, "clips": 64}, "seed_sets": 3, "base_seed": 0}
budget = {"configs": 5, "keep": 2, "seed": 0}
select = {
    "scenes": {"objective": "fd", "alignment": "all", "max_nfe_per_step": 2.0},
    "clips": {"objective": "total", "alignment": "semantic", "max_nfe_per_step": 2.0},
}
weak_candidates = 3
strong_candidates = 2
grid = {}
workers = 1  # forked single-threaded rendering processes (an int, or {testbed: int}; the files are the same)

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from ditguide import style
from ditguide.profiles import load_params, load_profile
from ditguide.testbeds import design_figures as figs
from ditguide.testbeds.design import design_params, run_dev, run_test, write_json
from ditguide.testbeds.design_scoring import scoring_for, testbed_judge, trained_twins

style.use()
root = Path(output_root)
params = load_params(params_file)
if steps is not None:
    params["profiles"][profile]["steps"] = steps
p = design_params(
    {
        "dev": dev,
        "test": test,
        "budget": budget,
        "select": select,
        "weak_candidates": weak_candidates,
        "strong_candidates": strong_candidates,
        "grid": grid,
        "workers": workers,
    },
    profile,
)
prof = load_profile(profile, params)
twins = trained_twins(prof) if twins is None else twins
judge_path = testbed_judge(prof) if judge_path is None else judge_path
scoring = scoring_for(prof, judge_path)
print("twins:", twins, "| rule:", p["select"])
scores = json.loads(Path(layer_scores).read_text())

# %% [markdown]
# ## Dev: the same budget for every family, successive halving

# %%
search, families, selected = run_dev(
    profile, p, params, layer_scores=scores, twins=twins, judge_path=judge_path, runs_dir=runs_dir
)
write_json(root / f"data/guidance/{profile}/search.json", search)
write_json(
    root / f"data/guidance/{profile}/selected.json",
    {
        "profile": profile,
        "name": f"selected_{profile}",
        "label": selected.label,
        "spec": selected.spec,
        "rule": p["select"],
        "dev": next(c["rung1"] for c in search["families"][selected.family]["configs"] if c["name"] == selected.name),
    },
)
print("selected:", selected.label)

# %% [markdown]
# ## Test: every family's dev choice, the selected preset, ablations, CFG with more steps

# %%
result, images = run_test(
    profile, p, params, search, families, selected, twins=twins, judge_path=judge_path, runs_dir=runs_dir, timing=timing
)
write_json(
    root / f"metrics/guidance_{profile}.json",
    {
        "profile": profile,
        "selected": result["selected"],
        "comparison": result["comparison"],
        "rule": p["select"],
        "test": {k: v for k, v in result.items() if k != "comparison"},
    },
)
style.write_text(root / f"paper/tables/guidance_{profile}.tex", figs.table(result, profile))
display(Markdown(figs.markdown_table(result)))

# %% [markdown]
# ## Quality against alignment

# %%
fig = figs.pareto_figure(search, result)
style.save_figure(fig, root / f"figures/guidance_{profile}_pareto.pdf")
plt.show()

# %% [markdown]
# ## Quality against compute

# %%
fig = figs.compute_figure(result)
style.save_figure(fig, root / f"figures/guidance_{profile}_compute.pdf")
plt.show()

# %% [markdown]
# ## The same captions and seeds across methods

# %%
view = figs.view_for(result)
order = sorted(images, key=lambda k: result["methods"][k][view.objective] * (1 if view.lower_is_better else -1))
labels = {k: result["methods"][k]["label"] for k in order}
captions = scoring.captions(p["test"]["split"], 8)
fig = scoring.sample_figure({labels[k]: images[k] for k in order}, [labels[k] for k in order], captions)
style.save_figure(fig, root / f"figures/guidance_{profile}_samples.pdf")
plt.show()

# %% [markdown]
# ## Reading (generated from the numbers)

# %%
display(Markdown(figs.reading(search, result)))
