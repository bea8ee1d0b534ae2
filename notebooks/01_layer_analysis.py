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
# # Layer analysis: what each block contributes, when, and which weakenings err the way the model errs
# Two scans over every block x edit (`ditguide.analysis`), on either testbed (`ditguide.testbeds.beds`):
# a denoiser-level scan (residual norms and the error alignment cos(D_edit - D, D - D*) against the
# ideal denoiser D*: exact on the glyph scenes, a posterior mean over sampled renders on the clips) and a
# generation-level scan (the change in FD, alignment and perceptual distance against the unedited
# model on the same seeds, dev captions, small N). Every number carries its standard error.
# On a real profile (FLUX.1-dev, CogView4, Wan 2.1; `ditguide.analysis_real.RealBed`) the same cells run
# with small-N FID and CLIP-SIM on a dev set and DINOv2 feature distances; there is no D*, so the
# denoiser scan records residuals along the model's own trajectories and no error alignment.

# %% tags=["parameters"]
profile = "scenes"
split = "dev"
denoiser_samples = 128  # or {profile: count}
t_grid = [0.95, 0.8, 0.6, 0.4, 0.2, 0.05]
per_set = 32  # generation scan: dev captions per seed set; an integer or {profile: integer}
seed_sets = 3
edits = ["skip", "skip_attn", "skip_ff", "scale0.5", "scale1.5", "identity_attn", "temperature2"]
window_edits = ["skip", "scale1.5"]
scan_blocks = None  # None: every block; a list of addresses restricts both scans (tests)
twins = None  # None: the trained twins next to the profile's model (twin_* folders); {name: folder} otherwise
params_file = "params.yaml"
judge_path = "data/scenes/judge.safetensors"  # the scene judge (image testbed only; the clip judges are exact)
runs_dir = "runs"
output_root = "."
real = {}  # real profiles only: dev set, per-profile sizes, batch size, device (ditguide.analysis_real.RealBed)

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ditguide import analysis, analysis_real, style
from ditguide.metrics.scenes import load_judge
from ditguide.profiles import load_pipeline, load_profile

style.use()
root = Path(output_root)
prof = load_profile(profile, params_file)
bed = analysis_real.bed_for(prof, **real)  # a testbed's D*, sampler and scores, or a real profile's RealBed
is_real = analysis_real.is_real(bed)
if bed.name == "scenes":
    bed.judge = load_judge(judge_path)
# A real profile checks its weights, dev set and judges first: one clear error if any is missing.
pipe = bed.load_pipeline(split) if is_real else load_pipeline(prof)
if twins is None:
    twins = {
        p.name: str(p) for p in sorted(Path(prof.model).parent.glob("twin_*")) if (p / "model_index.json").is_file()
    }
twin_models = {name: type(pipe).from_pretrained(folder).transformer.eval() for name, folder in twins.items()}
blocks = scan_blocks or analysis.block_addresses(pipe.transformer)
A, Q = bed.alignment, bed.quality  # the CLIP-SIM and FID analogues of this testbed
print(f"{profile}: {len(blocks)} blocks ({', '.join(blocks)}); edits: {', '.join(edits)}")
n_denoiser = analysis_real.per_profile(denoiser_samples, profile, "denoiser_samples")
n_gen = analysis_real.per_profile(per_set, profile, "per_set")

# %% [markdown]
# ## Cost (real profiles): the GPU time of the configured scan, from timed forwards, before it starts

# %%
if is_real:
    plan = dict(denoiser_samples=n_denoiser, per_set=n_gen, seed_sets=seed_sets, edits=edits)
    cost = analysis_real.estimate_gpu_time(pipe, bed, **plan, window_edits=window_edits, blocks=blocks)
    print(cost.summary())

# %% [markdown]
# ## Denoiser-level scan (exact, no sampling; real profiles: along the model's own trajectories, no D*)

# %%
captions = bed.captions(split, n_denoiser)
scan = analysis_real.denoiser_scan if is_real else analysis.denoiser_scan
denoiser = scan(pipe, captions, edits=edits, t_grid=t_grid, twins=twin_models, blocks=scan_blocks, bed=bed)
if is_real:
    print(f"error alignment: not computed ({denoiser['alignment_absent']})")
else:
    print("model error |D - D*| / |D*| per t:", dict(zip(t_grid, np.round(denoiser["model_error"], 3))))
if "ideal_agreement" in denoiser:
    print(
        f"D* is {denoiser['ideal']}; two independent estimates differ by (per t):",
        dict(zip(t_grid, np.round(denoiser["ideal_agreement"], 3))),
    )

# %% [markdown]
# ## Generation-level scan (dev captions, same seeds as the unedited model; resumable)

# %%
gen_captions = bed.captions(split, n_gen)
partial = Path(runs_dir) / profile / "analysis" / "generation_scan.json"
generation = (analysis_real.generation_scan if is_real else analysis.generation_scan)(
    pipe,
    bed,
    gen_captions,
    steps=prof.steps,
    seed_sets=seed_sets,
    edits=edits,
    window_edits=window_edits,
    out_path=partial,
    blocks=scan_blocks,
)
sampling = "the profile's default sampling" if is_real else "no guidance"  # real models: their own CFG
print(f"unedited ({sampling}):", {k: round(v, 3) for k, v in generation["base"].items()})

# %%
scores = {
    "profile": profile,
    "model": prof.model,
    "blocks": blocks,
    "schema": analysis_real.SCHEMA if is_real else analysis.SCHEMA,
    "denoiser": denoiser,
    "generation": generation,
}
scores["candidates"] = (analysis_real.rank_candidates if is_real else analysis.rank_candidates)(scores, bed=bed)
if is_real:
    scores["cost_estimate"] = cost.to_dict()
style.write_text(root / f"data/analysis/{profile}/layer_scores.json", json.dumps(scores, indent=1) + "\n")

# %% [markdown]
# ## Blocks x edits (over all steps)

# %%
records = [r for r in generation["records"] if r["window"] == "all"]
fig, axes = plt.subplots(1, 3, figsize=(style.FULL, style.FULL / 2.2))
for ax, (key, title) in zip(
    axes, ((f"d_{A}", f"change in {A}"), (f"d_{Q}", f"change in {Q} (small N)"), ("perceptual", "perceptual change"))
):
    grid = analysis.table_of(records, "block", "edit", key, blocks, edits)
    analysis.heatmap(
        ax, grid, blocks, edits, title, cmap="RdBu_r" if key != "perceptual" else "viridis", center=key != "perceptual"
    )
fig.tight_layout()
style.save_figure(fig, root / f"figures/layer_map_{profile}_edits.pdf")
plt.show()

# %% [markdown]
# ## Blocks x trajectory windows

# %%
fig, axes = plt.subplots(1, len(window_edits), figsize=(style.FULL * 0.7, style.FULL / 2.2), squeeze=False)
for ax, edit in zip(axes[0], window_edits):
    recs = [r for r in generation["records"] if r["edit"] == edit and r["window"] != "all"]
    grid = analysis.table_of(recs, "block", "window", f"d_{A}", blocks, list(analysis.WINDOWS))
    analysis.heatmap(ax, grid, blocks, list(analysis.WINDOWS), f"{edit}: change in {A}")
fig.tight_layout()
style.save_figure(fig, root / f"figures/layer_map_{profile}_windows.pdf")
plt.show()

# %% [markdown]
# ## Error alignment and residual updates along the trajectory

# %%
tl = [f"{t:g}" for t in t_grid]
fig, axes = plt.subplots(1, 3, figsize=(style.FULL, style.FULL / 2.2))
if is_real:  # no D*: the residual updates and input/output cosines along the trajectory instead
    analysis_real.draw_trajectory(axes, denoiser, blocks, t_grid)
else:
    skip = [r for r in denoiser["alignment"] if r["edit"] == "skip"]
    analysis.heatmap(
        axes[0],
        analysis.table_of(skip, "block", "t", "cos", blocks, t_grid),
        blocks,
        tl,
        "skip: cos(D_edit - D, D - D*)",
    )
    analysis.heatmap(
        axes[1],
        analysis.table_of(denoiser["residuals"], "block", "t", "rel_update", blocks, t_grid),
        blocks,
        tl,
        "|dh| / |h| (image stream)",
        cmap="viridis",
        center=False,
    )
    for name in twins:
        rows = [r for r in denoiser["alignment"] if r["edit"] == f"twin:{name}"]
        axes[2].errorbar(
            range(len(t_grid)),
            [r["cos"] for r in rows],
            yerr=[1.96 * r["cos_se"] for r in rows],
            marker="o",
            ms=3,
            capsize=2,
            label=name.replace("twin_", "") + " twin",
        )
    best = scores["candidates"]["weak"][:3]
    for w in best:
        rows = [r for r in denoiser["alignment"] if r["edit"] == w["edit"] and r["block"] == w["block"]]
        axes[2].plot(range(len(t_grid)), [r["cos"] for r in rows], ls="--", lw=0.8, label=w["spec"])
    axes[2].axhline(0, color="#7f7f7f", lw=0.5)
    axes[2].set_xticks(range(len(t_grid)), tl)
    axes[2].set_xlabel("t (noise level)")
    axes[2].set_title("error alignment: twins vs best edits")
    axes[2].legend(frameon=False, fontsize=5)
fig.tight_layout()
style.save_figure(fig, root / f"figures/layer_map_{profile}_alignment.pdf")
plt.show()

# %% [markdown]
# ## Reading (generated from the numbers)

# %%
skip_all = {r["block"]: r for r in records if r["edit"] == "skip"}
by_harm = sorted(skip_all.values(), key=lambda r: -r["perceptual"])
vital = [r["block"] for r in by_harm[:3]]
redundant = [r["block"] for r in by_harm[-3:]]
print(
    f"Vital blocks (largest perceptual change when skipped): {', '.join(vital)}; "
    f"most redundant: {', '.join(redundant)}."
)
for w in window_edits:
    recs = [r for r in generation["records"] if r["edit"] == w and r["window"] != "all"]
    harm = {win: np.mean([abs(r[f"d_{A}"]) for r in recs if r["window"] == win]) for win in analysis.WINDOWS}
    print(f"{w}: mean |change in {A}| by window: " + ", ".join(f"{k} {v:.3f}" for k, v in harm.items()))
if is_real:  # no D*, no trained twins: nothing to say about error alignment
    print(f"Error alignment: not computed ({denoiser['alignment_absent']}).")
else:
    twin_align = scores["candidates"]["twin_alignment"]
    print(
        "Error alignment of the trained twins (mean over t): "
        + ", ".join(f"{k} {v:+.3f}" for k, v in twin_align.items())
    )
    cands = scores["candidates"]["weak"]
    print(
        "Best-aligned weak edits: " + "; ".join(f"{c['spec']} ({c['alignment']:+.3f})" for c in cands[:5])
        if cands
        else "No single-block edit errs in the direction the model errs (all mean alignments <= 0)."
    )
    mean_align = {
        b: np.mean([r["cos"] for r in denoiser["alignment"] if r["edit"] == "skip" and r["block"] == b]) for b in blocks
    }
    overlap = set(vital) & set(sorted(mean_align, key=lambda b: -mean_align[b])[:3])
    print(f"Do the blocks that hurt most when skipped also align best? Top-3 overlap: {sorted(overlap) or 'none'}.")
strong = scores["candidates"]["strong"]
print(
    "Edits that improve a metric by > 2 SE: "
    + (
        "; ".join(f"{s['spec']} [{s['window']}] d_{A} {s[f'd_{A}']:+.3f}, d_{Q} {s[f'd_{Q}']:+.3f}" for s in strong[:5])
        if strong
        else "none."
    )
)
