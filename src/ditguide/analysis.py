"""The layer map (notebook 01): what each block contributes, when, and which weakenings err the way
the model errs.

Two scans, both over every block x every edit of a list (default `EDITS`):

- `denoiser_scan` (cheap and exact, no sampling): at a grid of noise levels t, on x_t made from
  training renders of dev captions, it records for every block the relative norm of its residual
  update |dh|/|h| and the cosine between its input and output (image stream), and for every edit
  the *error alignment* cos(D_edit - D, D - D*): D is the model's clean-image estimate, D* the ideal
  denoiser of the training data (`testbeds.scenes.ideal_x0`, exact). Autoguidance extrapolates
  D + (w - 1)(D - D_edit); it moves D towards D* exactly when this cosine is positive. The trained
  weak twins get the same number, as the reference.
- `generation_scan`: samples the dev captions with each edit active over all steps, and skip /
  alpha=1.5 in each third of the trajectory, and scores the change against the unedited model on
  the same seeds: alignment per attribute, FD (small N, labelled), and the perceptual change (judge-
  feature distance to the unedited sample of the same seed). Records are appended to the JSON as
  they finish, so an interrupted scan resumes where it stopped.

The family adapter (`ditguide.families`) gives block lists and streams, so the scans run unchanged on
any adapted model; the testbed-specific parts (D*, the judge) come from `ditguide.testbeds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The scans and their parts live in ditguide.layer_map, one job per module; this module is their
# public face (notebook 01, ditguide.analysis_real, tests), so every name stays importable from here.
from .layer_map.configs import (
    EDITS,
    T_GRID,
    WINDOW_EDITS,
    WINDOWS,
    edit_string,
    generation_configs,
    resolve_bed,
    window_steps,
)
from .layer_map.denoiser_scan import denoiser_scan, noisy_training_renders
from .layer_map.generation_scan import edit_record, generation_scan, load_partial, sample_with_edit, save_partial
from .layer_map.probe import ResidualProbe, block_addresses, check_blocks
from .layer_map.stats import mean_se, per_sample_cos

__all__ = [
    "EDITS",
    "SCHEMA",
    "T_GRID",
    "WINDOWS",
    "WINDOW_EDITS",
    "ResidualProbe",
    "block_addresses",
    "check_blocks",
    "denoiser_scan",
    "edit_record",
    "edit_string",
    "generation_configs",
    "generation_scan",
    "heatmap",
    "load_partial",
    "mean_se",
    "noisy_training_renders",
    "per_sample_cos",
    "rank_candidates",
    "resolve_bed",
    "sample_with_edit",
    "save_partial",
    "table_of",
    "window_steps",
]

SCHEMA = """layer_scores.json
  profile, model, blocks: [address, ...]
  denoiser: {t_grid, samples, ideal: "exact posterior mean over the train pool",
             model_error: [|D - D*| / |D*| per t],
             residuals: [{block, t, rel_update, rel_update_se, cos_in_out, cos_in_out_se}],
             alignment: [{edit, block, t, cos, cos_se, rel_change}]  (edit "twin:<name>": block null)}
  generation: {samples, seed_sets, base: {metric: value}, records: [{edit, block, window, d_fd, d_all,
             d_digit, d_colour, d_relation, perceptual, *_se}]}  (d_* = edited - unedited, same seeds)
  candidates: {weak: [...], strong: [...]}  (see rank_candidates)"""
# Real profiles write ditguide.analysis_real.SCHEMA: this text plus their own fields. It is kept apart
# because the testbeds' layer_scores.json embed SCHEMA, so extending it here would change them.


# ---- reading the map -------------------------------------------------------------------------------


def rank_candidates(scores: dict, top: int = 8, bed=None) -> dict:
    """Weak-edit candidates: edits that change the output (perceptual change) and whose error
    alignment, averaged over t, is positive: ranked by alignment. Strong-edit candidates: edits
    whose generation-level change improves the bed's quality metric (FD on scenes) or its alignment
    metric (all-correct on scenes) by more than two standard errors."""
    bed = resolve_bed(bed)
    a, q = bed.alignment, bed.quality
    sign = 1.0 if bed.quality_higher_better else -1.0  # +1: a rise in q is an improvement
    align: dict[tuple, list] = {}
    for r in scores["denoiser"]["alignment"]:
        align.setdefault((r["edit"], r["block"]), []).append(r["cos"])
    gen = {(r["edit"], r["block"]): r for r in scores["generation"]["records"] if r["window"] == "all"}
    weak = []
    for (edit, block), cos in align.items():
        if block is None:
            continue
        g = gen.get((edit, block), {})
        weak.append(
            {
                "edit": edit,
                "block": block,
                "spec": edit_string(edit, block),
                "alignment": float(np.mean(cos)),
                "perceptual": g.get("perceptual"),
                f"d_{q}": g.get(f"d_{q}"),
                f"d_{a}": g.get(f"d_{a}"),
            }
        )
    weak = [w for w in weak if w["alignment"] > 0]
    weak.sort(key=lambda w: -w["alignment"])
    strong = []
    for r in scores["generation"]["records"]:
        better_a = r[f"d_{a}"] > 2 * r[f"d_{a}_se"] and r[f"d_{a}"] > 0
        better_q = sign * r[f"d_{q}"] > 2 * r[f"d_{q}_se"] and sign * r[f"d_{q}"] > 0
        if better_a or better_q:
            strong.append(
                {k: r[k] for k in ("edit", "block", "window", f"d_{q}", f"d_{q}_se", f"d_{a}", f"d_{a}_se")}
                | {"spec": edit_string(r["edit"], r["block"])}
            )
    strong.sort(key=lambda r: (-r[f"d_{a}"], -sign * r[f"d_{q}"]))
    twins = {
        r["edit"]: float(np.mean([x["cos"] for x in scores["denoiser"]["alignment"] if x["edit"] == r["edit"]]))
        for r in scores["denoiser"]["alignment"]
        if r["block"] is None
    }
    return {"weak": weak[:top], "strong": strong[:top], "twin_alignment": twins}


def heatmap(ax, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, cmap="RdBu_r", center=True):
    lim = np.nanmax(np.abs(values)) if center else None
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-lim if center else None, vmax=lim, interpolation="nearest")
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=6)
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


def table_of(
    records: Sequence[dict], row_key: str, col_key: str, value: str, rows: Sequence, cols: Sequence
) -> np.ndarray:
    grid = np.full((len(rows), len(cols)), np.nan)
    for r in records:
        if r[row_key] in rows and r[col_key] in cols:
            grid[list(rows).index(r[row_key]), list(cols).index(r[col_key])] = r[value]
    return grid


# The private names the module had before the split (tests read some of them).
_check_blocks, _mean_se, _window_steps, _per_sample_cos = check_blocks, mean_se, window_steps, per_sample_cos
_load_partial, _save_partial, _bed = load_partial, save_partial, resolve_bed
