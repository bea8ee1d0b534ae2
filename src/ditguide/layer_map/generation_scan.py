"""The generation scan: sample the dev captions with each edit active over all steps (and the window
edits in each third of the trajectory), score the change against the unedited model on the same seeds.
Records are appended to the JSON as they finish, so an interrupted scan resumes where it stopped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..edits import attach_edits
from .configs import EDITS, WINDOW_EDITS, WINDOWS, edit_string, generation_configs, resolve_bed, window_steps
from .probe import check_blocks
from .stats import mean_se


class _StepEdit:
    """`spec` attached to the transformer at the steps in `active` (all if None): the step callback removes
    it after a step and attaches it again before the next step that needs it."""

    def __init__(self, pipe, spec: str | None, active: set[int] | None):
        self.pipe, self.spec, self.active, self.handle = pipe, spec, active, None

    def on(self, i: int) -> bool:
        return self.spec is not None and (self.active is None or i in self.active)

    def toggle(self, i: int) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.on(i):
            self.handle = attach_edits(self.pipe.transformer, self.spec)

    def callback(self, p, i, t, kw):
        self.toggle(i + 1)
        return kw


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
    bed = resolve_bed(bed)
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = slice(start, start + batch_size)
        edit = _StepEdit(pipe, spec, active)
        edit.toggle(0)
        try:
            images = bed.sample(
                pipe, captions[chunk], indices[chunk], steps=steps, base_seed=base_seed, callback=edit.callback
            )
        finally:
            if edit.handle is not None:
                edit.handle.remove()
        out.append(images)
    return np.concatenate(out)


def edit_record(bed, config: tuple[str, str, str], sets: list[dict], base: list[dict]) -> dict:
    """One config's record: per score key the change against the unedited sets (mean, SE over seed
    sets) and the perceptual change (feature distance to the unedited sample of the same seed)."""
    edit, block, window = config
    record = {"edit": edit, "block": block, "window": window}
    for key in bed.keys:
        record[f"d_{key}"], record[f"d_{key}_se"] = mean_se([s[key] - b[key] for s, b in zip(sets, base)])
    perceptual = [np.linalg.norm(s["features"] - b["features"], axis=1).mean() for s, b in zip(sets, base)]
    record["perceptual"], record["perceptual_se"] = mean_se(perceptual)
    return record


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
    from ..testbeds.beds import ClipsBed, ScenesBed

    bed = judge if isinstance(judge, (ScenesBed, ClipsBed)) else ScenesBed(judge)
    for e in (*edits, *window_edits):
        edit_string(e, "x")
    per_set = len(captions)
    prompts = list(captions) * seed_sets
    indices = list(range(len(prompts)))
    reference = bed.reference(captions, seed_sets)
    blocks = check_blocks(pipe.transformer, blocks)
    from ..render import weights_fingerprint

    weights = weights_fingerprint(pipe)  # a retrained model never reuses old records
    done = load_partial(out_path, per_set, seed_sets, steps, weights)
    base_images = sample_with_edit(pipe, prompts, indices, spec=None, steps=steps, base_seed=base_seed, bed=bed)
    base = bed.score_sets(base_images, prompts, reference, per_set)
    result = {
        "samples": len(prompts),
        "seed_sets": seed_sets,
        "per_set": per_set,
        "steps": steps,
        "weights": weights,
        "base": {k: mean_se([s[k] for s in base])[0] for k in bed.keys},
        "records": list(done.values()),
    }
    todo = [c for c in generation_configs(blocks, edits, window_edits) if c not in done]
    for edit, block, window in tqdm(todo, desc="generation scan", disable=not progress, mininterval=5):
        active = None if window == "all" else window_steps(WINDOWS[window], steps)
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
        result["records"].append(edit_record(bed, (edit, block, window), sets, base))
        if out_path is not None:
            save_partial(out_path, result)
    return result


def _key(r: dict) -> tuple[str, str, str]:
    return r["edit"], r["block"], r["window"]


def load_partial(path, per_set: int, seed_sets: int, steps: int, weights: str) -> dict:
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


def save_partial(path, result: dict) -> None:
    from ..style import write_text

    write_text(path, json.dumps(result, indent=1) + "\n")
