"""Characterise the T2V testbed (notebook 00_testbed_t2v): unguided, the CFG sweep, the Wan baselines.

Every method renders the same captions on the same per-index seeds through the shared path
(`PipelineRenderer` on the profile's `ToyVideoPipeline`; guidance specs through the guidance
engine's Wan driver) and is scored by the exact judges of `ditguide.metrics.clips`. Samples are
`seed_sets` consecutive blocks of `per_set` clips; every block holds the same captions with other
noise, and each metric is the mean over blocks with its standard error. Two reference rows are
scored the same way: real renders of the captions (the ceiling) and real renders judged against
another caption of the set (chance).

Rendered clips are kept under `runs/<profile>/t2v_toy/<method>/` in chunks of `batch_size`
(`clip_store.render_chunks`): a rerun reuses finished chunks of the same run and refuses a folder of
another run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..generate_pool import check_workers
from ..metrics import clips as M
from ..metrics import vbench_score as vb
from ..profiles import ConfigError, load_params, load_pipeline, load_profile
from ..render import PipelineRenderer, guidance_spec
from . import clips
from .clip_store import render_chunks
from .twins import TwinGuidedTransformer

KEYS = (*M.PER_CLIP, "quality", "semantic", "total")


@dataclass
class T2VResult:
    metrics: dict
    videos: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, F, 16, 16, 3) uint8
    captions: list[str] = field(default_factory=list)


class TwinGuidedWan(TwinGuidedTransformer):
    """Autoguidance with a trained weak twin, D_weak + w (D_main - D_weak), on a Wan transformer
    (WanPipeline's cache_context takes the step's keywords)."""

    def cache_context(self, name: str, **kwargs):
        return self.model.cache_context(name, **kwargs)

    def blocks_per_call(self) -> float:
        return 1.0 + len(self.twin.blocks) / len(self.model.blocks)


def twin_pipeline(pipe, twin_transformer: torch.nn.Module, scale: float):
    """A copy of `pipe` (same scheduler and text encoder) whose transformer is twin-guided."""
    out = type(pipe)(
        transformer=TwinGuidedWan(pipe.transformer, twin_transformer, scale),
        scheduler=pipe.scheduler,
        text_encoder=pipe.text_encoder,
        num_frames=pipe.config.num_frames,
        height=pipe.config.height,
        width=pipe.config.width,
    )
    out.set_progress_bar_config(disable=True)
    return out


def _check(cond: bool, name: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def _aggregate(sets: list[dict]) -> dict:
    out = {}
    for key in KEYS:
        vals = np.array([s[key] for s in sets], dtype=np.float64)
        out[key] = float(vals.mean())
        out[f"{key}_se"] = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
    out["count"] = int(sum(s["count"] for s in sets))
    return out


def score_sets(videos: np.ndarray, prompts: list[str], per_set: int) -> tuple[dict, dict]:
    """(mean ± SE over seed sets of every dimension and the VBench-shaped scores, per-clip scores)."""
    per_clip = M.score_clips(videos, prompts)
    sets = []
    for k0 in range(0, len(prompts), per_set):
        block = {k: v[k0 : k0 + per_set] for k, v in per_clip.items()}
        entry = M.aggregate(block)
        entry["count"] = len(block["motion"])
        sets.append(entry)
    return _aggregate(sets), per_clip


def references(
    captions: list[str], seed_sets: int, seed: int = 0, frames: int = clips.FRAMES
) -> tuple[dict, dict, np.ndarray]:
    """Real renders of the captions (one block per seed set) scored against their captions (the
    ceiling) and against a fixed derangement of the captions (chance); and the clips (uint8)."""
    parsed = [clips.parse_caption(c) for c in captions]
    blocks = [clips.render(parsed, np.random.default_rng(seed + 1 + k), frames=frames)[0] for k in range(seed_sets)]
    videos = np.concatenate(blocks)
    prompts = captions * seed_sets
    n = len(captions)
    shift = np.roll(np.arange(n), 1)  # caption i judged against caption i - 1: never its own
    wrong = [captions[j] for j in shift] * seed_sets
    real, _ = score_sets(videos, prompts, n)
    chance, _ = score_sets(videos, wrong, n)
    return real, chance, np.round(videos * 255).astype(np.uint8)


def vbench_flickering(videos: np.ndarray, per_set: int) -> dict | None:
    """VBench's own temporal_flickering (its `cal_score`, whole frames) on these clips, run in the VBench
    environment, beside ours (the same formula on the static region only) and ours on whole frames.
    None when the VBench environment is absent (the metrics then say so)."""
    import subprocess
    import tempfile

    python = vb.default_vbench_python()
    if not python.is_file():
        return None
    script = Path(M.__file__).with_name("vbench_flicker_run.py")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "clips.npy", Path(tmp) / "scores.json"
        np.save(src, videos)
        subprocess.run([str(python), str(script), str(src), str(out)], check=True, capture_output=True)
        theirs = np.array(json.loads(out.read_text())["temporal_flickering"])
    x = videos.astype(np.float64)
    whole = (255.0 - np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3, 4))) / 255.0
    ours = M.score_clips(videos, ["a red square staying still"] * len(videos))["temporal_flickering"]  # caption-free
    sets = lambda v: [float(v[k : k + per_set].mean()) for k in range(0, len(v), per_set)]  # noqa: E731

    def mean_se(v):
        s_ = np.array(sets(v))
        return float(s_.mean()), float(s_.std(ddof=1) / np.sqrt(len(s_))) if len(s_) > 1 else 0.0

    return {
        "vbench": mean_se(theirs),
        "ours_static_region": mean_se(ours),
        "ours_whole_frame": mean_se(whole),
        "max_abs_diff_vbench_vs_whole_frame_formula": float(np.abs(theirs - whole).max()),
        "pearson_vbench_vs_ours": float(np.corrcoef(theirs, ours)[0, 1])
        if theirs.std() > 0 and ours.std() > 0
        else None,
        "count": int(len(videos)),
    }


def evaluate_clips(
    profile: str = "clips",
    *,
    split: str = "test",
    per_set: int = 250,
    seed_sets: int = 4,
    cfg_scales=(1.5, 3.0, 5.0, 8.0),
    specs=("weak_negative", "stg"),
    twins: dict | None = None,
    twin_scale: float = 2.0,
    batch_size: int = 250,
    base_seed: int = 0,
    params="params.yaml",
    runs_dir: str = "runs",
    workers: int = 1,
) -> T2VResult:
    """No guidance, CFG at each scale, the profile's guidance specs, autoguidance with each twin;
    rendered by `workers` forked single-threaded processes (`ditguide.generate_pool`)."""
    params = load_params(params) if not isinstance(params, dict) else params
    prof = load_profile(profile, params)
    _check_arguments(prof, profile, per_set, seed_sets, batch_size, cfg_scales, twin_scale)
    check_workers(workers)
    guided = {name: guidance_spec(prof, name) for name in specs}  # refuses unknown names before any work
    twins = dict(twins or {})
    for name, folder in twins.items():
        _check((Path(folder) / "model_index.json").is_file(), f"twins.{name}", folder, "a trained twin pipeline folder")
    captions = [c.caption() for c in clips.caption_set(split, per_set)]
    prompts = captions * seed_sets  # sample i: caption i % per_set, seed set i // per_set

    pipe = load_pipeline(prof)
    frames = pipe.config.num_frames
    _check(
        prof.num_frames == frames,
        f"profiles.{profile}.num_frames",
        prof.num_frames,
        f"{frames}, the frames the model was trained on",
    )
    renderers = _renderers(prof, pipe, cfg_scales, guided, twins, twin_scale, base_seed, captions)

    result = _with_references(profile, prof, captions, split, per_set, seed_sets, frames, base_seed, twin_scale, guided)
    vbench_methods = ("none", f"cfg@{prof.cfg_scale:g}")  # VBench's own flickering as well (_with_references)
    for name, (renderer, cost) in renderers.items():
        t0 = time.time()
        videos = render_chunks(
            renderer, prompts, Path(runs_dir) / profile / "t2v_toy" / name, batch_size, name, workers
        )
        entry = _method_entry(name, renderer, cost, videos, prompts, per_set, t0)
        if name.startswith("ag_"):
            entry.update(twin=str(twins[name[3:]]), twin_scale=twin_scale)
        result.metrics["methods"][name] = entry
        result.videos[name] = videos
        if name in vbench_methods:
            result.metrics["vbench_temporal_flickering"][name] = vbench_flickering(videos, per_set)
        print(
            f"{name}: Total {entry['total']:.3f} ± {entry['total_se']:.3f}, semantic {entry['semantic']:.3f}, "
            f"quality {entry['quality']:.3f}, shown & moving {entry['shown_and_moving']:.3f} ({time.time() - t0:.0f} s)",
            flush=True,
        )
    return result


def _with_references(
    profile: str, prof, captions, split, per_set, seed_sets, frames, base_seed, twin_scale, guided
) -> T2VResult:
    """The result before any method: the settings and the two reference rows, real renders of the
    captions (the ceiling) and the same judged against another caption (chance), with VBench's own
    temporal_flickering of the real renders."""
    print(f"references: real renders of {per_set} {split} captions x {seed_sets} sets", flush=True)
    real, chance, real_clips = references(captions, seed_sets, frames=frames)
    result = T2VResult(
        metrics={
            "profile": profile,
            "split": split,
            "per_set": per_set,
            "seed_sets": seed_sets,
            "steps": prof.steps,
            "frames": frames,
            "base_seed": base_seed,
            "default_cfg_scale": prof.cfg_scale,
            "twin_scale": twin_scale,
            "specs": {name: spec.to_dict() for name, spec in guided.items()},
            "real": real,
            "chance": chance,
            "guess": guess_rates(captions),
            "methods": {},
            "vbench_temporal_flickering": {},
        },
        captions=captions,
    )
    # VBench's own implementation where it runs on our clips (temporal_flickering; motion_smoothness
    # needs the AMT weights, not available offline): the real renders, unguided and the default CFG.
    result.metrics["vbench_temporal_flickering"]["real"] = vbench_flickering(real_clips, per_set)
    result.videos["real"] = real_clips
    return result


def _method_entry(name: str, renderer, cost, videos, prompts, per_set, t0: float) -> dict:
    """A method's scores (mean and SE over seed sets), its cost in forwards per step and its seconds."""
    entry, per_clip = score_sets(videos, prompts, per_set)
    if cost is None:
        cost = renderer.nfe_per_step(prompts[0])
    entry.update(
        nfe_per_step=float(cost),
        seconds=round(time.time() - t0, 1),
        unseen_note="test captions hold no held-out pair; see the 'unseen' split",
    )
    if name.startswith("cfg@") or name == "none":
        entry["cfg_scale"] = renderer.cfg_scale
    return entry


def _check_arguments(prof, profile: str, per_set, seed_sets, batch_size, cfg_scales, twin_scale) -> None:
    """evaluate_clips' numeric arguments and its profile, before anything loads."""
    _check(
        prof.family == "toy" and prof.kind == "video" and (prof.height, prof.width) == (clips.SIZE, clips.SIZE),
        "profile",
        profile,
        f"a toy-family video profile of {clips.SIZE}x{clips.SIZE} clips",
    )
    _check(isinstance(per_set, int) and per_set >= 10, "per_set", per_set, "an integer >= 10")
    _check(
        isinstance(seed_sets, int) and seed_sets >= 3,
        "seed_sets",
        seed_sets,
        "an integer >= 3 (standard errors need them)",
    )
    _check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    for s in cfg_scales:
        _check(
            isinstance(s, (int, float)) and not isinstance(s, bool) and np.isfinite(s) and s >= 1,
            "cfg_scales",
            s,
            "finite numbers >= 1",
        )
    _check(
        isinstance(twin_scale, (int, float)) and np.isfinite(twin_scale), "twin_scale", twin_scale, "a finite number"
    )


def _renderers(prof, pipe, cfg_scales, guided: dict, twins: dict, twin_scale: float, base_seed: int, captions) -> dict:
    """{method: (renderer, forwards per step or None: counted from the renderer)}: no guidance, CFG at
    each scale, the guidance specs, each twin's autoguidance; every renderer validated on `captions`."""
    renderers: dict[str, tuple[PipelineRenderer, float | None]] = {
        "none": (PipelineRenderer(prof, pipe, cfg_scale=1.0, base_seed=base_seed), 1.0)
    }
    for s in sorted({float(s) for s in cfg_scales} - {1.0}):
        renderers[f"cfg@{s:g}"] = (PipelineRenderer(prof, pipe, cfg_scale=s, base_seed=base_seed), 2.0)
    for name, spec in guided.items():
        r = PipelineRenderer(prof, pipe, guidance=spec, base_seed=base_seed)
        r.validate(captions)
        renderers[name] = (r, None)
    for name, folder in twins.items():
        twin = type(pipe).from_pretrained(folder).transformer.eval()
        tp = twin_pipeline(pipe, twin, twin_scale)
        renderers[f"ag_{name}"] = (
            PipelineRenderer(prof, tp, cfg_scale=1.0, base_seed=base_seed),
            tp.transformer.blocks_per_call(),
        )
    for r, _ in renderers.values():
        r.validate(captions)
    return renderers


def guess_rates(captions: list[str]) -> dict:
    """What a generator scores that draws the captioned objects but guesses a shape (object class,
    colour) or a motion (among those the caption's layout allows) uniformly: a second chance level,
    stricter than the wrong-caption one for the dimensions it covers."""
    parsed = [clips.parse_caption(c) for c in captions]
    motion = [
        np.mean(
            [
                1.0 / (len(clips.MOTIONS) if c.relation is None else len(clips.RELATION_MOTIONS[c.relation]))
                for _ in c.objects
            ]
        )
        for c in parsed
    ]
    return {
        "object_class": 1.0 / len(clips.SHAPES),
        "color": 1.0 / len(clips.COLOURS),
        "motion": float(np.mean(motion)),
    }


def acceptance(metrics: dict) -> dict:
    """The issue's acceptance properties, computed from the metrics (values and True/False). Chance of
    a dimension: the larger of the wrong-caption row and the uniform guess (`guess_rates`)."""
    m, chance = metrics["methods"], metrics["chance"]
    guess = metrics.get("guess", {})
    default = m.get(f"cfg@{metrics['default_cfg_scale']:g}")
    level = {d: max(chance[d], guess.get(d, 0.0)) for d in M.SEMANTIC}
    margin = {d: (m["none"][d] - level[d]) / max(m["none"][f"{d}_se"], 1e-3) for d in M.SEMANTIC}
    out = {
        "unguided_semantic": m["none"]["semantic"],
        "headroom (unguided semantic <= 0.85)": m["none"]["semantic"] <= 0.85,
        "chance_level": level,
        "unguided_minus_chance_in_SE": margin,
        "above_chance (every semantic dimension of unguided > chance + 3 SE)": all(v > 3 for v in margin.values()),
    }
    if default is not None:
        out["default_cfg_shown_and_moving"] = default["shown_and_moving"]
        out["cfg_default (>= 80% of clips show the captioned objects in most frames, moving as captioned)"] = (
            default["shown_and_moving"] >= 0.8
        )
    return out
