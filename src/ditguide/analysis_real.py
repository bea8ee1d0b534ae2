"""The layer map (notebook 01) on real profiles: FLUX.1-dev, CogView4, Wan 2.1 (and the tiny test profiles).

`RealBed` gives `ditguide.analysis` what a testbed adapter (`ditguide.testbeds.beds`) gives it, for a
model whose data distribution is unknown:

- captions of a small dev set: COCO 2017 dev captions for T2I (`ditguide.coco`, the split notebook 03
  tunes on), VBench's standard prompts for T2V (VBench has no split: a seeded permutation of its
  distinct prompts, dev from the front and test from the back);
- sampling through the pipeline at the profile's default settings (its own CFG on both branches, or
  FLUX's distilled guidance), the edit attached to the transformer, so it acts on every branch;
- scores per seed set: T2I small-N FID against the whole COCO dev reference (clean-fid's protocol,
  features from arrays, `inception_features`) and CLIP-SIM (`metrics.clip_sim`); T2V CLIP-SIM over
  judged frames and VBench's temporal-flickering formula. Small N is in the key (`fid_small_n`) and in
  `labels`: FID of a few dozen samples is biased upward, so only its change on the same seeds is read;
- the perceptual change: the distance between L2-normalised DINOv2 image embeddings (CLS token) of
  the edited and the unedited sample with the same seed (CLIP image embeddings without transformers).

There is no ideal denoiser D*, so `denoiser_scan` records, for every block along the model's own
sampling trajectories, |dh| / |h| and cos(h_in, h_out), and the error alignment as absent (null)
with the reason. `estimate_gpu_time` times a few forwards (per block) and counts configs x samples
x steps x NFE, so the notebook prints the cost before the scan starts.

Tiny test profiles (`model: tiny:<family>`) get tiny random judges built in code, labelled as such.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import analysis

# The parts live in ditguide.layer_map, one job per module (real_judges, real_bed, real_scan, real_cost);
# this module is their public face (notebook 01, tests), so every name stays importable from here.
from .layer_map.real_bed import FRAMES_JUDGED, OPTIONS, RealBed, bed_for, check_options, model_problem, per_profile
from .layer_map.real_cost import CostEstimate, estimate_gpu_time
from .layer_map.real_judges import (
    DINOV2_ID,
    TINY_INCEPTION_ID,
    ClipImageFeatures,
    Dinov2Features,
    Judges,
    TinyInception,
    inception_features,
    load_judges,
    tiny_clip,
)
from .layer_map.real_scan import ALIGNMENT_ABSENT, denoiser_scan, generation_scan, rank_candidates

__all__ = [
    "ALIGNMENT_ABSENT",
    "DINOV2_ID",
    "FRAMES_JUDGED",
    "OPTIONS",
    "SCHEMA",
    "TINY_INCEPTION_ID",
    "ClipImageFeatures",
    "CostEstimate",
    "Dinov2Features",
    "Judges",
    "RealBed",
    "TinyInception",
    "bed_for",
    "check_options",
    "denoiser_scan",
    "draw_trajectory",
    "estimate_gpu_time",
    "generation_scan",
    "inception_features",
    "is_real",
    "load_judges",
    "model_problem",
    "per_profile",
    "rank_candidates",
    "tiny_clip",
]

SCHEMA = (
    analysis.SCHEMA
    + """
real profiles (ditguide.analysis_real.RealBed; no D*), the fields that differ:
  denoiser: {t_grid, samples, steps, trajectory: how x_t was made (the model's own unedited sampling),
             ideal: null, model_error: null, alignment: null, alignment_absent: the reason,
             residuals: [{block, t, step, sigma, rel_update, rel_update_se, cos_in_out, cos_in_out_se}]
             (t: the grid point; step, sigma: the sampling step nearest to it, conditional forward)}
  generation: {samples, seed_sets, per_set, steps, weights, base, protocol: {dev set, judges, sampling},
             labels: {metric: definition (small N stated)}, records: [{edit, block, window,
             d_fid_small_n, d_clip_sim (T2I) | d_clip_sim, d_temporal_flickering (T2V), perceptual, *_se}]}
             (perceptual: |f_edit - f_base| of L2-normalised DINOv2 CLS embeddings, same seed, in [0, 2])
  candidates: {weak: [], weak_absent: the reason, strong: [...], twin_alignment: {}}
  cost_estimate: {device, batch_size, steps, nfe_per_step, forward_s, block_s, other_s, judge_s,
             configs, samples_per_config, denoiser_samples, generation_s, denoiser_s, total_s, timed_steps,
             notes}  (seconds per sample, measured over timed_steps steps; the totals count configs x samples
             x steps x NFE; see CostEstimate)"""
)


def is_real(bed) -> bool:
    return isinstance(bed, RealBed)


# ---- figure ------------------------------------------------------------------------------------


def draw_trajectory(axes, denoiser: dict, blocks: Sequence[str], t_grid: Sequence[float]) -> None:
    """The alignment figure of a real profile: a note that the alignment is absent, then |dh| / |h| and
    cos(h_in, h_out) per block x t along the model's own trajectories."""
    tl = [f"{t:g}" for t in t_grid]
    axes[0].text(
        0.5, 0.5, "error alignment: absent\n(no ideal denoiser D*\nfor a real model)", ha="center", va="center"
    )
    axes[0].set_axis_off()
    for ax, key, title in (
        (axes[1], "rel_update", "|dh| / |h| (image stream)"),
        (axes[2], "cos_in_out", "cos(h_in, h_out)"),
    ):
        grid = analysis.table_of(denoiser["residuals"], "block", "t", key, blocks, list(t_grid))
        analysis.heatmap(ax, grid, blocks, tl, title, cmap="viridis", center=False)
