"""The testbeds' denoiser scan (cheap and exact, no sampling): at a grid of noise levels t, on x_t made
from training renders of dev captions, the residual update of every block and the error alignment
cos(D_edit - D, D - D*) of every block x edit (and of the trained twins) against the ideal denoiser D*."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..edits import apply_edits
from .configs import EDITS, T_GRID, edit_string, resolve_bed
from .probe import ResidualProbe, block_addresses, check_blocks
from .stats import mean_se, per_sample_cos


def noisy_training_renders(
    captions: Sequence[str], t_grid: Sequence[float], seed: int = 0, bed=None
) -> dict[float, np.ndarray]:
    """x_t per t from training renders of `captions` (the data the model was fit to), seeded."""
    bed = resolve_bed(bed)
    rng = np.random.default_rng(seed)
    x0 = bed.clean(captions, rng)
    return {t: (1 - t) * x0 + t * rng.standard_normal(x0.shape) for t in t_grid}


def denoiser_scan(
    pipe,
    captions: Sequence[str],
    *,
    edits: Sequence[str] = tuple(EDITS),
    t_grid=T_GRID,
    twins: dict | None = None,
    seed: int = 0,
    blocks: Sequence[str] | None = None,
    progress: bool = True,
    bed=None,
) -> dict:
    """Residual norms per block and error alignment per block x edit (and per twin), at each t."""
    bed = resolve_bed(bed)
    for e in edits:
        edit_string(e, "x")  # validate names before any work
    den = bed.denoiser(pipe, captions)
    model = pipe.transformer
    blocks = check_blocks(model, blocks)
    xs = noisy_training_renders(captions, t_grid, seed, bed)
    out = {
        "t_grid": list(t_grid),
        "samples": len(captions),
        "ideal": bed.ideal_note,
        "model_error": [],
        "residuals": [],
        "alignment": [],
    }
    if hasattr(bed, "ideal_agreement"):  # a sampled D*: how close two independent estimates are, per t
        out["ideal_agreement"] = [bed.ideal_agreement(xs[t], t, captions) for t in t_grid]
    bar = tqdm(
        total=len(t_grid) * (1 + len(blocks) * len(edits) + len(twins or {})),
        desc="denoiser scan",
        disable=not progress,
        mininterval=5,
    )
    for t in t_grid:
        _scan_noise_level(out, bed, den, model, xs[t], t, captions, edits, blocks, twins, bar)
    bar.close()
    return out


def _scan_noise_level(out: dict, bed, den, model, x, t, captions, edits, blocks, twins, bar) -> None:
    """One t of the scan, appended to `out`: the model's error, every block's residual record, and the
    alignment of every block x edit and every twin."""
    ideal = bed.ideal(x, t, captions)
    with ResidualProbe(model) as probe:
        d = den(x, t)
    bar.update()
    err = d - ideal
    out["model_error"].append(float(np.linalg.norm(err) / np.linalg.norm(ideal)))
    for b, rec in zip(block_addresses(model), probe.records):
        r = torch.cat(rec).numpy()
        (rel, rel_se), (cos, cos_se) = mean_se(r[:, 0]), mean_se(r[:, 1])
        out["residuals"].append(
            {
                "block": b,
                "t": t,
                "rel_update": rel,
                "rel_update_se": rel_se,
                "cos_in_out": cos,
                "cos_in_out_se": cos_se,
            }
        )
    for e in edits:
        for b in blocks:
            with apply_edits(model, edit_string(e, b)):
                out["alignment"].append(_alignment(e, b, t, den(x, t), d, err))
            bar.update()
    for name, twin in (twins or {}).items():
        out["alignment"].append(_alignment(f"twin:{name}", None, t, den(x, t, twin), d, err))
        bar.update()


def _alignment(name: str, block: str | None, t: float, d_edit, d, err) -> dict:
    """cos(D_edit - D, D - D*) per sample (mean, SE) and |D_edit - D| / |D - D*|."""
    change = d_edit - d
    cos, se = mean_se(per_sample_cos(change, err))
    rel = float(np.linalg.norm(change) / max(np.linalg.norm(err), 1e-12))
    return {"edit": name, "block": block, "t": t, "cos": cos, "cos_se": se, "rel_change": rel}
