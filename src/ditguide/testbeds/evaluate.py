"""Characterise the glyph-scene testbed: is it in the regime of real text-to-image models?

Every method renders the same captions on the same per-index seeds through the shared path
(`PipelineRenderer` -> `generate` (resumable PNGs) -> `Samples`) and is judged by the scene judge.
Samples are split into `seed_sets` consecutive blocks of `per_set` samples; every block holds the
same captions with other noise, and each metric is reported as the mean over blocks with its
standard error. FD is computed per block, so the real-vs-real floor is computed at the same size:
renders of the same captions from the generator's own (train) glyph pool against the reference
(held-out glyph pool), which is what a perfect generator would score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..generate_pool import check_workers
from ..metrics.scenes import load_judge, read, scene_metrics
from ..profiles import ConfigError, load_params, load_pipeline, load_profile
from ..render import PipelineRenderer
from . import scenes

METRICS = ("fd", "all", "digit", "colour", "relation", "precision", "recall")
REFERENCE_DRAWS = 4  # reference renders per caption (held-out glyphs)


@dataclass
class TestbedResult:
    metrics: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, 16, 16, 3) uint8
    captions: list[str] = field(default_factory=list)


def _aggregate(per_set: list[dict]) -> dict:
    out = {}
    for key in (*METRICS, "all_unseen"):
        vals = np.array([m[key] for m in per_set if key in m], dtype=np.float64)
        if len(vals):
            out[key] = float(vals.mean())
            out[f"{key}_se"] = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
    out["count"] = int(sum(m["count"] for m in per_set))
    return out


def _check(cond: bool, name: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def reference_and_floor(judge, captions: list[str], seed_sets: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Reference features (held-out glyphs, REFERENCE_DRAWS per caption) and the floor: the metrics of
    train-pool renders of the same captions, one block per seed set."""
    parsed = [scenes.parse_caption(c) for c in captions]
    rng = np.random.default_rng(seed)
    held = scenes.glyph_pool("heldout")
    reference = read(judge, scenes.render(parsed * REFERENCE_DRAWS, *held, rng))["features"]
    train = scenes.glyph_pool("train")
    floor_sets = [
        scene_metrics(
            read(judge, scenes.render(parsed, *train, np.random.default_rng(seed + 1 + k))), captions, reference
        )
        for k in range(seed_sets)
    ]
    return reference, _aggregate(floor_sets)


def evaluate_scenes(
    profile: str = "scenes",
    *,
    split: str = "test",
    per_set: int = 500,
    seed_sets: int = 4,
    cfg_scales=(1.25, 1.5, 2.0, 3.0, 5.0),
    twins: dict | None = None,
    twin_scale: float = 2.0,
    batch_size: int = 250,
    base_seed: int = 0,
    params="params.yaml",
    judge_path: str = "data/scenes/judge.safetensors",
    runs_dir: str = "runs",
    workers: int = 1,
) -> TestbedResult:
    """No guidance, CFG at each scale, autoguidance with each trained twin ({name: folder}); `workers`."""
    from ..evaluation_real import run_dir
    from ..generate import generate

    params = load_params(params) if not isinstance(params, dict) else params
    prof = load_profile(profile, params)
    twins = dict(twins or {})
    _check_arguments(prof, profile, per_set, seed_sets, cfg_scales, twins)
    check_workers(workers)
    captions = [s.caption() for s in scenes.caption_set(split, per_set)]
    prompts = captions * seed_sets  # sample i: caption i % per_set, seed set i // per_set

    judge = load_judge(judge_path)
    pipe = load_pipeline(prof)
    renderers = _renderers(prof, pipe, cfg_scales, twins, twin_scale, base_seed)
    reference, floor = reference_and_floor(judge, captions, seed_sets)
    result = TestbedResult(
        metrics={
            "profile": profile,
            "split": split,
            "per_set": per_set,
            "seed_sets": seed_sets,
            "steps": prof.steps,
            "base_seed": base_seed,
            "default_cfg_scale": prof.cfg_scale,
            "twin_scale": twin_scale,
            "reference": f"held-out glyph renders of the same captions ({len(reference)})",
            "floor": floor,
            "methods": {},
        },
        captions=captions,
    )
    for name, (renderer, cost) in renderers.items():
        out = run_dir(runs_dir, prof, "testbed", name, renderer, prompts, samples_per_prompt=1)
        summary = generate(renderer, prompts, out, batch_size=batch_size, base_seed=base_seed, workers=workers)
        images = _read_images(out, len(prompts))
        entry = _score(judge, images, captions, reference, per_set)
        entry.update(nfe_per_step=cost, cfg_scale=renderer.cfg_scale if not name.startswith("ag_") else None)
        if name.startswith("ag_"):
            entry.update(twin=str(twins[name[3:]]), twin_scale=twin_scale)
        result.metrics["methods"][name] = entry
        result.images[name] = images
        _report(name, entry, summary, out)
    return result


def _check_arguments(prof, profile: str, per_set, seed_sets, cfg_scales, twins: dict) -> None:
    """evaluate_scenes' arguments, before anything loads."""
    _check(
        prof.family == "toy" and (prof.height, prof.width) == (scenes.SIZE, scenes.SIZE),
        "profile",
        profile,
        f"a toy-family profile of {scenes.SIZE}x{scenes.SIZE} scenes",
    )
    _check(isinstance(per_set, int) and per_set >= 10, "per_set", per_set, "an integer >= 10")
    _check(
        isinstance(seed_sets, int) and seed_sets >= 3,
        "seed_sets",
        seed_sets,
        "an integer >= 3 (standard errors need them)",
    )
    for s in cfg_scales:
        _check(isinstance(s, (int, float)) and np.isfinite(s) and s >= 1, "cfg_scales", s, "finite numbers >= 1")
    for name, folder in twins.items():
        _check((Path(folder) / "model_index.json").is_file(), f"twins.{name}", folder, "a trained twin pipeline folder")


def _renderers(prof, pipe, cfg_scales, twins: dict, twin_scale: float, base_seed: int) -> dict:
    """{method: (renderer, forwards per step)}: no guidance, CFG at each scale, each twin's autoguidance."""
    from .twins import twin_pipeline

    renderers: dict[str, tuple[PipelineRenderer, float]] = {
        "none": (PipelineRenderer(prof, pipe, cfg_scale=1.0, base_seed=base_seed), 1.0)
    }
    for s in sorted({float(s) for s in cfg_scales} - {1.0}):
        renderers[f"cfg@{s:g}"] = (PipelineRenderer(prof, pipe, cfg_scale=s, base_seed=base_seed), 2.0)
    for name, folder in twins.items():
        twin = type(pipe).from_pretrained(folder).transformer.eval()
        guided = twin_pipeline(pipe, twin, twin_scale)
        guided.set_progress_bar_config(disable=True)
        renderers[f"ag_{name}"] = (
            PipelineRenderer(prof, guided, cfg_scale=1.0, base_seed=base_seed),
            guided.transformer.blocks_per_call(),
        )
    return renderers


def _read_images(out: Path, count: int) -> np.ndarray:
    """The method's rendered samples, (N, H, W, 3) uint8, read back through the sample folder's reader."""
    from ..metrics import Samples

    samples = Samples.from_dir(out, count)
    return np.stack([samples.image(i) for i in range(count)])


def _score(judge, images: np.ndarray, captions: list[str], reference: np.ndarray, per_set: int) -> dict:
    """The scene metrics per seed set (consecutive blocks of `per_set`) and their mean and SE."""
    judged = read(judge, images)
    sets = [
        scene_metrics({k: v[k0 : k0 + per_set] for k, v in judged.items()}, captions, reference)
        for k0 in range(0, len(images), per_set)
    ]
    return _aggregate(sets)


def _report(name: str, entry: dict, summary, out: Path) -> None:
    print(
        f"{name}: FD {entry['fd']:.3f} ± {entry['fd_se']:.3f}, all-correct {entry['all']:.3f} ± {entry['all_se']:.3f} "
        f"({summary.rendered} rendered, {summary.skipped} reused, in {out})",
        flush=True,
    )


def regime_checks(metrics: dict) -> dict:
    """The testbed's acceptance properties, computed from the metrics (True/False with the numbers)."""
    m, floor = metrics["methods"], metrics["floor"]
    cfg = {1.0: m["none"], **{v["cfg_scale"]: v for k, v in m.items() if k.startswith("cfg@")}}
    scales = sorted(cfg)
    best = min(scales, key=lambda s: cfg[s]["fd"])
    alignment = [cfg[s]["all"] for s in scales]
    return {
        "unguided_fd_over_floor": m["none"]["fd"] / floor["fd"],
        "headroom_fd (unguided FD >= 2 x floor)": m["none"]["fd"] >= 2 * floor["fd"],
        "headroom_alignment (unguided all-correct <= 0.85)": m["none"]["all"] <= 0.85,
        "best_cfg_scale": best,
        "best_fd_gain_over_unguided": 1 - cfg[best]["fd"] / m["none"]["fd"],
        "u_shape (best FD >= 10% below unguided, largest scale worse than best)": cfg[best]["fd"]
        <= 0.9 * m["none"]["fd"]
        and cfg[scales[-1]]["fd"] > cfg[best]["fd"],
        "alignment_rises_with_scale": bool(all(b >= a - 0.01 for a, b in zip(alignment, alignment[1:]))),
    }
