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

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .edits import apply_edits, attach_edits
from .families import get_family
from .families.base import bind_block_arguments, block_forward_signature

# name -> edit op template ("{block}" is replaced by a block address).
EDITS = {
    "skip": "skip:{block}",
    "skip_attn": "skip_attn:{block}",
    "skip_ff": "skip_ff:{block}",
    "scale0.5": "scale(0.5):{block}",
    "scale1.5": "scale(1.5):{block}",
    "identity_attn": "identity_attn_in_stream:{block}",
    "temperature2": "temperature(2):{block}",
}
WINDOW_EDITS = ("skip", "scale1.5")
WINDOWS = {"early": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "late": (2 / 3, 1.0)}  # fractions of the steps
T_GRID = (0.95, 0.8, 0.6, 0.4, 0.2, 0.05)
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


def edit_string(edit: str, block: str) -> str:
    if edit not in EDITS:
        raise ValueError(f"edit {edit!r} is not known; allowed: {', '.join(EDITS)}")
    return EDITS[edit].format(block=block)


def block_addresses(transformer) -> list[str]:
    family = get_family(transformer)
    return [family.address(transformer, i) for i in range(len(family.blocks(transformer)))]


class ResidualProbe:
    """Forward hooks recording, per block, |h_out - h_in| / |h_in| and cos(h_in, h_out) of the image
    stream (per sample), read through the family adapter's stream layout."""

    def __init__(self, transformer):
        family = get_family(transformer)
        self.blocks = family.blocks(transformer)
        self.infos = [family.block_info(transformer, i) for i in range(len(self.blocks))]
        self.records: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        self._handles = []

    def __enter__(self):
        for i, (block, info) in enumerate(zip(self.blocks, self.infos)):
            self._handles.append(block.register_forward_hook(self._hook(i, block, info), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i, block, info):
        signature = block_forward_signature(block)

        def hook(module, args, kwargs, output):
            h_in = bind_block_arguments(signature, args, kwargs)[info.input_names["image"]]
            h_out = output[info.output.streams.index("image")] if info.returns_tuple else output
            if info.output.kind == "concat":  # one tensor over [streams]: the image tokens are last
                h_out = h_out[:, -h_in.shape[1] :]
            a, b = h_in.flatten(1).double(), h_out.flatten(1).double()
            rel = (b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
            cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
            self.records[i].append(torch.stack([rel, cos], 1))

        return hook


def _check_blocks(transformer, blocks: Sequence[str] | None) -> list[str]:
    """All block addresses, or the given subset (validated: one clear error listing the valid ones)."""
    every = block_addresses(transformer)
    if blocks is None:
        return every
    bad = [b for b in blocks if b not in every]
    if bad:
        raise ValueError(f"blocks {bad} are not blocks of this model; valid: {', '.join(every)}")
    return list(blocks)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def _per_sample_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


# ---- noisy training renders (the scans' x_t) -----------------------------------------------------


def noisy_training_renders(
    captions: Sequence[str], t_grid: Sequence[float], seed: int = 0, bed=None
) -> dict[float, np.ndarray]:
    """x_t per t from training renders of `captions` (the data the model was fit to), seeded."""
    bed = _bed(bed)
    rng = np.random.default_rng(seed)
    x0 = bed.clean(captions, rng)
    return {t: (1 - t) * x0 + t * rng.standard_normal(x0.shape) for t in t_grid}


def _bed(bed):
    """The testbed adapter (ditguide.testbeds.beds); None is the glyph-scene testbed."""
    from .testbeds.beds import ScenesBed

    return ScenesBed() if bed is None else bed


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
    bed = _bed(bed)
    for e in edits:
        edit_string(e, "x")  # validate names before any work
    den = bed.denoiser(pipe, captions)
    model = pipe.transformer
    blocks = _check_blocks(model, blocks)
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
        ideal = bed.ideal(xs[t], t, captions)
        with ResidualProbe(model) as probe:
            d = den(xs[t], t)
        bar.update()
        err = d - ideal
        out["model_error"].append(float(np.linalg.norm(err) / np.linalg.norm(ideal)))
        for b, rec in zip(block_addresses(model), probe.records):
            r = torch.cat(rec).numpy()
            (rel, rel_se), (cos, cos_se) = _mean_se(r[:, 0]), _mean_se(r[:, 1])
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

        def align(name, block, d_edit):
            change = d_edit - d
            cos, se = _mean_se(_per_sample_cos(change, err))
            rel = float(np.linalg.norm(change) / max(np.linalg.norm(err), 1e-12))
            out["alignment"].append({"edit": name, "block": block, "t": t, "cos": cos, "cos_se": se, "rel_change": rel})

        for e in edits:
            for b in blocks:
                with apply_edits(model, edit_string(e, b)):
                    align(e, b, den(xs[t], t))
                bar.update()
        for name, twin in (twins or {}).items():
            align(f"twin:{name}", None, den(xs[t], t, twin))
            bar.update()
    bar.close()
    return out


# ---- generation-level scan -----------------------------------------------------------------------


def _window_steps(window: tuple[float, float], steps: int) -> set[int]:
    """Steps i with start <= i / steps < end (half-open, so the thirds tile the trajectory)."""
    lo, hi = window
    return {i for i in range(steps) if lo <= i / steps < hi}


@torch.no_grad()
def sample_with_edit(
    pipe,
    captions: Sequence[str],
    indices: Sequence[int],
    *,
    spec: str | None,
    steps: int,
    active: set[int] | None = None,
    base_seed: int = 0,
    batch_size: int = 256,
    bed=None,
) -> np.ndarray:
    """uint8 samples (the bed's layout), no guidance, with `spec` attached at the steps in `active` (all if None).

    The edit is attached before a step and removed after it by the pipeline's step callback, so the
    sampler itself is untouched; per-index noise keeps every sample's seed independent of batching."""
    bed = _bed(bed)
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = slice(start, start + batch_size)
        handle = {"h": None}
        on = lambda i: spec is not None and (active is None or i in active)

        def toggle(i):
            if handle["h"] is not None:
                handle["h"].remove()
                handle["h"] = None
            if on(i):
                handle["h"] = attach_edits(pipe.transformer, spec)

        def callback(p, i, t, kw):
            toggle(i + 1)
            return kw

        toggle(0)
        try:
            images = bed.sample(
                pipe, captions[chunk], indices[chunk], steps=steps, base_seed=base_seed, callback=callback
            )
        finally:
            if handle["h"] is not None:
                handle["h"].remove()
        out.append(images)
    return np.concatenate(out)


def generation_configs(
    blocks: Sequence[str], edits: Sequence[str], window_edits: Sequence[str] = WINDOW_EDITS
) -> list[tuple[str, str, str]]:
    """(edit, block, window) of the scan: every edit over all steps, then the window edits per third."""
    configs = [(e, b, "all") for e in edits for b in blocks]
    configs += [(e, b, w) for e in window_edits for b in blocks for w in WINDOWS]
    return configs


def generation_scan(
    pipe,
    judge,
    captions: Sequence[str],
    *,
    steps: int,
    seed_sets: int = 3,
    edits: Sequence[str] = tuple(EDITS),
    window_edits: Sequence[str] = WINDOW_EDITS,
    base_seed: int = 0,
    out_path: str | Path | None = None,
    blocks: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """Every (edit, block, window) against the unedited model on the same seeds. `judge` is a testbed
    adapter (ditguide.testbeds.beds) or the scene judge. With `out_path`, finished records are saved
    after each config and a rerun skips them."""
    from .testbeds.beds import ClipsBed, ScenesBed

    bed = judge if isinstance(judge, (ScenesBed, ClipsBed)) else ScenesBed(judge)
    for e in (*edits, *window_edits):
        edit_string(e, "x")
    per_set = len(captions)
    prompts = list(captions) * seed_sets
    indices = list(range(len(prompts)))
    reference = bed.reference(captions, seed_sets)
    blocks = _check_blocks(pipe.transformer, blocks)
    from .render import _weights_fingerprint

    weights = _weights_fingerprint(pipe)  # a retrained model never reuses old records
    done = _load_partial(out_path, per_set, seed_sets, steps, weights)
    base_images = sample_with_edit(pipe, prompts, indices, spec=None, steps=steps, base_seed=base_seed, bed=bed)
    base = bed.score_sets(base_images, prompts, reference, per_set)
    result = {
        "samples": len(prompts),
        "seed_sets": seed_sets,
        "per_set": per_set,
        "steps": steps,
        "weights": weights,
        "base": {k: _mean_se([s[k] for s in base])[0] for k in bed.keys},
        "records": list(done.values()),
    }
    todo = [c for c in generation_configs(blocks, edits, window_edits) if c not in done]
    for edit, block, window in tqdm(todo, desc="generation scan", disable=not progress, mininterval=5):
        active = None if window == "all" else _window_steps(WINDOWS[window], steps)
        images = sample_with_edit(
            pipe,
            prompts,
            indices,
            spec=edit_string(edit, block),
            steps=steps,
            active=active,
            base_seed=base_seed,
            bed=bed,
        )
        sets = bed.score_sets(images, prompts, reference, per_set)
        record = {"edit": edit, "block": block, "window": window}
        for key in bed.keys:
            record[f"d_{key}"], record[f"d_{key}_se"] = _mean_se([s[key] - b[key] for s, b in zip(sets, base)])
        perceptual = [np.linalg.norm(s["features"] - b["features"], axis=1).mean() for s, b in zip(sets, base)]
        record["perceptual"], record["perceptual_se"] = _mean_se(perceptual)
        result["records"].append(record)
        if out_path is not None:
            _save_partial(out_path, result)
    return result


def _key(r: dict) -> tuple[str, str, str]:
    return r["edit"], r["block"], r["window"]


def _load_partial(path, per_set: int, seed_sets: int, steps: int, weights: str) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    old = json.loads(Path(path).read_text())
    if (old.get("per_set"), old.get("seed_sets"), old.get("steps"), old.get("weights")) != (
        per_set,
        seed_sets,
        steps,
        weights,
    ):
        return {}  # another sample plan: nothing to reuse
    return {_key(r): r for r in old.get("records", [])}


def _save_partial(path, result: dict) -> None:
    from .style import write_text

    write_text(path, json.dumps(result, indent=1) + "\n")


# ---- reading the map -------------------------------------------------------------------------------


def rank_candidates(scores: dict, top: int = 8, bed=None) -> dict:
    """Weak-edit candidates: edits that change the output (perceptual change) and whose error
    alignment, averaged over t, is positive: ranked by alignment. Strong-edit candidates: edits
    whose generation-level change improves the bed's quality metric (FD on scenes) or its alignment
    metric (all-correct on scenes) by more than two standard errors."""
    bed = _bed(bed)
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


# Public names of the helpers ditguide.analysis_real reuses for real profiles (the code above keeps
# calling the private ones, so the testbed scans are unchanged).
check_blocks, mean_se, window_steps = _check_blocks, _mean_se, _window_steps
load_partial, save_partial = _load_partial, _save_partial
