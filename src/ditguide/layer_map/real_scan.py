"""The layer map's two scans on a real profile, where there is no ideal denoiser D*: the denoiser scan
records |dh| / |h| and cos(h_in, h_out) along the model's own sampling trajectories, and the error
alignment as absent with the reason; the generation scan is the testbeds' with the bed's scores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import analysis
from .real_bed import RealBed

ALIGNMENT_ABSENT = (
    "no ideal denoiser D* exists for a real model (its data distribution is unknown), so the error "
    "alignment cos(D_edit - D, D - D*) cannot be computed; it is left out rather than estimated"
)


def _trajectory(pipe, bed: RealBed, captions, indices, steps: int, base_seed: int):
    """(sigma per step, per step the (B, n_blocks, 2) [rel, cos] rows of its first transformer call).

    The first call of a step is the conditional prediction in every pipeline here (FLUX's true CFG, Wan
    and CogView4 run the negative branch second)."""
    ends, sigmas = [], []
    with analysis.ResidualProbe(pipe.transformer) as probe:

        def callback(p, i, t, kw):
            ends.append(len(probe.records[0]))
            sigmas.append(float(p.scheduler.sigmas[i]))  # the flow time t of step i's forward
            return kw

        bed.sample(pipe, captions, indices, steps=steps, base_seed=base_seed, callback=callback)
    starts = [0, *ends[:-1]]
    rows = [torch.stack([rec[s].cpu() for rec in probe.records], 1).numpy() for s in starts]
    return sigmas, rows


def denoiser_scan(
    pipe,
    captions: Sequence[str],
    *,
    bed: RealBed,
    t_grid=analysis.T_GRID,
    blocks: Sequence[str] | None = None,
    base_seed: int = 0,
    progress: bool = True,
    edits: Sequence[str] = (),
    twins: dict | None = None,
) -> dict:
    """|dh| / |h| and cos(h_in, h_out) per block at the sampling step nearest each t of `t_grid`, on the
    unedited model's trajectories of `captions`. `edits` are validated, `twins` must be empty: without
    D* neither has an error alignment, which is recorded as absent with the reason."""
    for e in edits:
        analysis.edit_string(e, "x")
    if twins:
        raise ValueError(f"twins={sorted(twins)}: a real profile has no trained twins (and no D* to align them to)")
    every = analysis.block_addresses(pipe.transformer)
    blocks = analysis.check_blocks(pipe.transformer, blocks)
    steps = bed.profile.steps
    chunks, sigmas = [], None
    batches = range(0, len(captions), bed.batch_size)
    for k0 in tqdm(batches, desc="denoiser scan (trajectories)", disable=not progress, mininterval=5):
        part = list(captions[k0 : k0 + bed.batch_size])
        sigmas, rows = _trajectory(pipe, bed, part, list(range(k0, k0 + len(part))), steps, base_seed)
        chunks.append(np.stack(rows))  # (steps, B, blocks, 2)
    rows = np.concatenate(chunks, axis=1)
    residuals = []
    for t in t_grid:
        step = int(np.argmin(np.abs(np.asarray(sigmas) - t)))
        for b in blocks:
            r = rows[step, :, every.index(b)]
            (rel, rel_se), (cos, cos_se) = analysis.mean_se(r[:, 0]), analysis.mean_se(r[:, 1])
            residuals.append(
                {"block": b, "t": t, "step": step, "sigma": sigmas[step], "rel_update": rel, "rel_update_se": rel_se}
                | {"cos_in_out": cos, "cos_in_out_se": cos_se}
            )
    return {
        "t_grid": list(t_grid),
        "samples": len(captions),
        "steps": steps,
        "trajectory": "x_t of the unedited model's own sampling (the profile's default), conditional forward",
        "ideal": None,
        "model_error": None,
        "residuals": residuals,
        "alignment": None,
        "alignment_absent": ALIGNMENT_ABSENT,
    }


# ---- generation-level scan ---------------------------------------------------------------------


def _load_partial(out_path, per_set, seed_sets, steps, weights, protocol) -> dict:
    """analysis.load_partial, and only if the dev set and judges are the same (they are part of the numbers)."""
    done = analysis.load_partial(out_path, per_set, seed_sets, steps, weights)
    if done and json.loads(Path(out_path).read_text()).get("protocol") != protocol:
        return {}
    return done


def _check_scan(bed: RealBed, edits: Sequence[str], seed_sets: int, per_set: int) -> None:
    """The generation scan's arguments, before any work: known edits, >= 3 seed sets, >= 2 images a set."""
    for e in edits:
        analysis.edit_string(e, "x")
    if isinstance(seed_sets, bool) or not isinstance(seed_sets, int) or seed_sets < 3:
        raise ValueError(f"seed_sets={seed_sets!r} is not allowed; allowed: an integer >= 3 (standard errors)")
    if not bed.video and per_set < 2:
        raise ValueError(f"per_set={per_set} is not allowed; allowed: an integer >= 2 (FID of a seed set needs 2)")


def generation_scan(
    pipe,
    bed: RealBed,
    captions: Sequence[str],
    *,
    steps: int,
    seed_sets: int = 3,
    edits: Sequence[str] = tuple(analysis.EDITS),
    window_edits: Sequence[str] = analysis.WINDOW_EDITS,
    base_seed: int = 0,
    out_path: str | Path | None = None,
    blocks: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """`analysis.generation_scan` on a real profile: the same configs, seeds, records and resumption, with
    the bed's batch size and scores; `protocol` and `labels` say what the numbers are (small N)."""
    from ..render import weights_fingerprint

    _check_scan(bed, (*edits, *window_edits), seed_sets, len(captions))
    per_set = len(captions)
    blocks = analysis.check_blocks(pipe.transformer, blocks)
    prompts, indices = list(captions) * seed_sets, list(range(per_set * seed_sets))
    reference = bed.reference(captions, seed_sets)
    protocol = bed.protocol(captions)
    weights = weights_fingerprint(pipe)  # a retrained model never reuses old records
    done = _load_partial(out_path, per_set, seed_sets, steps, weights, protocol)

    def scored(spec, active=None):
        images = analysis.sample_with_edit(
            pipe, prompts, indices, spec=spec, steps=steps, active=active, base_seed=base_seed,
            batch_size=bed.batch_size, bed=bed,
        )  # fmt: skip
        return bed.score_sets(images, prompts, reference, per_set)

    base = scored(None)
    result = {
        "samples": len(prompts),
        "seed_sets": seed_sets,
        "per_set": per_set,
        "steps": steps,
        "weights": weights,
        "protocol": protocol,
        "labels": bed.labels(per_set),
        "base": {k: analysis.mean_se([s[k] for s in base])[0] for k in bed.keys},
        "records": list(done.values()),
    }
    todo = [c for c in analysis.generation_configs(blocks, edits, window_edits) if c not in done]
    for edit, block, window in tqdm(todo, desc="generation scan", disable=not progress, mininterval=5):
        active = None if window == "all" else analysis.window_steps(analysis.WINDOWS[window], steps)
        sets = scored(analysis.edit_string(edit, block), active)
        result["records"].append(analysis.edit_record(bed, (edit, block, window), sets, base))
        if out_path is not None:
            analysis.save_partial(out_path, result)
    return result


def rank_candidates(scores: dict, top: int = 8, bed: RealBed | None = None) -> dict:
    """`analysis.rank_candidates` without error alignment: the strong list (edits that improve CLIP-SIM or
    the quality score by > 2 SE) as on the testbeds; the weak list empty, with the reason."""
    no_alignment = {**scores, "denoiser": {**scores["denoiser"], "alignment": []}}
    out = analysis.rank_candidates(no_alignment, top=top, bed=bed)
    out["weak_absent"] = "weak-edit candidates are ranked by error alignment, which needs D*: " + ALIGNMENT_ABSENT
    return out
