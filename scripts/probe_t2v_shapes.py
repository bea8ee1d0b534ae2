"""Probe: does a shape set with coarser silhouettes let the T2V testbed's model draw shapes right?

Why: at CFG 5 the committed T2V model shows the captioned colour in every frame and moves it as
captioned (motion 0.80), but reads back as the captioned shape far less often (object class 0.59).
The judge's confusion on the test clips says why: the model draws blobs. A 5-6 px circle is read
as a square half of the time, a cross as a circle half of the time; only the square is right
(1.00 on single-object clips). Shapes that differ in their coarse silhouette (aspect ratio, where
the mass sits) rather than in 1-px detail might survive that blur.

This probe trains the stage's recipe (params.yaml `train_toy_t2v`: 2x2x2 patches, width 96) for the
same number of steps on two shape sets and judges each at CFG 5 on the test captions, with the
per-shape confusion of single-object and two-object clips:

- `current`: square, circle, triangle, cross (the testbed today);
- `coarse`: square, bar (full width, 0.4 high), pillar (0.4 wide, full height), triangle.

The shape set is swapped by patching `testbeds.clips` (shape names, masks, held-out pairs) and the
judge's template centroids for the length of the run; nothing else changes (colours, motions,
sizes, speeds, layout, caption seeds). One training seed per set, a short budget: a probe for
choosing the next retraining, not a result.

    python scripts/probe_t2v_shapes.py --steps 900 --out benchmarks/results/probe_t2v_shapes
    python scripts/probe_t2v_shapes.py --stored runs/clips/t2v_toy/cfg@5   # the committed model's confusion
    python scripts/probe_t2v_shapes.py current --steps 6600 --batch-size 32 --eval-clips 1000 --out DIR
    python scripts/probe_t2v_shapes.py --judge-model data/clips/model --eval-clips 1000 --out DIR

    python scripts/probe_t2v_shapes.py current --steps 6600 --batch-size 32 --single-fraction 0.75 --eval-clips 1000

The last three are the training-budget probe (README, "What was tried"; benchmarks/results/probe_t2v_budget/);
--single-fraction changes only the training captions' mix, never the test list.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from probe_t2v_training import render_clips  # the sibling probe (scripts/ is on sys.path when run)

from ditguide.metrics import clips as M
from ditguide.testbeds import clips as C
from ditguide.testbeds.train import save_pipeline
from ditguide.testbeds.train_t2v import ClipsTrainConfig, build_prompt_encoder, pipeline, train_clips_model
from ditguide.toy.video_pipeline import ToyVideoPipeline

# params.yaml train_toy_t2v, the committed recipe (steps set by --steps)
RECIPE = ClipsTrainConfig(
    steps=3700,
    batch_size=64,
    lr=1e-3,
    patch_t=2,
    patch_hw=2,
    num_attention_heads=3,
    attention_head_dim=32,
    ffn_dim=192,
)
SETS = {
    "current": ("square", "circle", "triangle", "cross"),
    "coarse": ("square", "bar", "pillar", "triangle"),
}
_ORIGINAL_MASK = C.shape_mask
_ORIGINAL_SHAPES, _ORIGINAL_HELDOUT = C.SHAPES, C.HELDOUT_PAIRS
_ORIGINAL_SAMPLE = C.sample_clips


def _mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = (u >= 0.0) & (u < 1.0) & (v >= 0.0) & (v < 1.0)
    if shape == "bar":
        return inside & (np.abs(v - 0.5) < 0.2)
    if shape == "pillar":
        return inside & (np.abs(u - 0.5) < 0.2)
    return _ORIGINAL_MASK(shape, u, v)


def use_shapes(shapes: tuple[str, ...]) -> None:
    """Swap the generator's and the judge's shape set (module globals read at call time), always from
    the testbed's own set, so that sets can be swapped in any order."""
    C.SHAPES = shapes
    C.shape_mask = _mask
    # the held-out (shape, motion) pairs follow the shapes by position
    C.HELDOUT_PAIRS = frozenset((shapes[_ORIGINAL_SHAPES.index(s)], m) for s, m in _ORIGINAL_HELDOUT)
    M._CENTROID_V.update({"bar": 0.5, "pillar": 0.5})


def judge(pipe, count: int, scale: float) -> dict:
    captions = [c.caption() for c in C.caption_set("test", count)]
    videos = render_clips(pipe, captions, scale)
    per_clip = M.score_clips(videos, captions)
    n_obj = np.array([len(C.parse_caption(c).objects) for c in captions])
    out = {k: round(float(v), 4) for k, v in M.aggregate(per_clip).items()}
    for n in (1, 2):
        sel = n_obj == n
        out[f"shown_and_moving_{n}obj"] = round(float(per_clip["shown_and_moving"][sel].mean()), 4)
        out[f"object_class_{n}obj"] = round(float(np.nanmean(per_clip["object_class"][sel])), 4)
    out["confusion"] = confusion(videos, captions)
    return out


def confusion(videos: np.ndarray, captions: list[str]) -> dict:
    """Per object count and captioned shape: the fraction of frames whose blob of the captioned colour
    reads as each shape (or is missing)."""
    table = {n: np.zeros((len(C.SHAPES), len(C.SHAPES) + 1)) for n in (1, 2)}
    for video, caption in zip(videos, captions):
        clip = C.parse_caption(caption)
        r = M.read_clip(video)
        for o in clip.objects:
            s, c = C.SHAPES.index(o.shape), C.COLOURS.index(o.colour)
            for f in range(len(r.blobs)):
                b = r.blob(f, c)
                table[len(clip.objects)][s, len(C.SHAPES) if b is None else b.shape] += 1
    cols = [*C.SHAPES, "missing"]
    return {
        f"{n}obj": {
            C.SHAPES[i]: dict(zip(cols, np.round(row / max(row.sum(), 1), 3).tolist())) for i, row in enumerate(t)
        }
        for n, t in table.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help=f"shape sets (default: all of {', '.join(SETS)})")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=RECIPE.batch_size, help="clips per optimiser step")
    parser.add_argument(
        "--single-fraction",
        type=float,
        default=C.SINGLE_FRACTION,
        help="share of single-object captions in training (the test captions stay half pairs)",
    )
    parser.add_argument("--eval-clips", type=int, default=500)
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("probe_t2v_shapes"))
    parser.add_argument(
        "--save-model", type=Path, help="also save each trained pipeline to DIR/<set> (not judged again)"
    )
    parser.add_argument(
        "--stored",
        type=Path,
        help="instead of training: print the confusion of a method's stored test clips from evaluate_t2v_toy "
        "(e.g. runs/clips/t2v_toy/cfg@5; its captions are the test list, per_set 250, repeated per seed set)",
    )
    parser.add_argument("--per-set", type=int, default=250, help="with --stored: test captions per seed set")
    parser.add_argument(
        "--judge-model",
        type=Path,
        help="instead of training: judge a saved pipeline (e.g. data/clips/model) as a trained set is judged, "
        "writing <out>/<folder name>.json",
    )
    args = parser.parse_args(argv)
    if args.judge_model is not None:
        torch.set_num_threads(args.threads)
        pipe = ToyVideoPipeline.from_pretrained(args.judge_model)
        pipe.set_progress_bar_config(disable=True)
        row = {"model": str(args.judge_model), "cfg_scale": args.cfg_scale}
        row["judged"] = judge(pipe, args.eval_clips, args.cfg_scale)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.judge_model.name}.json").write_text(json.dumps(row, indent=1) + "\n")
        print("RESULT " + json.dumps(row), flush=True)
        return 0
    if args.stored is not None:
        chunks = sorted(args.stored.glob("chunk_*.npy"))
        if not chunks:
            print(f"--stored {args.stored}: no chunk_*.npy files (render them with evaluate_t2v_toy)", file=sys.stderr)
            return 2
        videos = np.concatenate([np.load(c) for c in chunks])
        texts = [c.caption() for c in C.caption_set("test", args.per_set)]
        print(json.dumps(confusion(videos, texts * (len(videos) // len(texts))), indent=1))
        return 0
    names = args.sets or list(SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown or args.steps < 1 or not 0.0 <= args.single_fraction <= 1.0:
        print(
            f"sets must be among {', '.join(SETS)}, --steps >= 1 and --single-fraction in [0, 1], "
            f"got {unknown or (args.steps, args.single_fraction)}",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        use_shapes(SETS[name])
        cfg = replace(RECIPE, steps=args.steps, batch_size=args.batch_size)
        encoder = build_prompt_encoder(cfg)
        start = time.time()
        # only the training draws see the caption mix; judge() draws the fixed test list after the restore
        C.sample_clips = partial(_ORIGINAL_SAMPLE, single_fraction=args.single_fraction)
        try:
            model, losses, _ = train_clips_model(cfg, encoder, progress=False, log_every=max(1, cfg.steps // 4))
        finally:
            C.sample_clips = _ORIGINAL_SAMPLE
        seconds = time.time() - start
        pipe = pipeline(model, encoder, cfg.frames)
        if args.save_model:
            save_pipeline(pipe, args.save_model / name, {"config": asdict(cfg), "loss": losses})
        row = {
            "set": name,
            "shapes": list(SETS[name]),
            "config": asdict(cfg),
            "train_single_fraction": args.single_fraction,
            "train_seconds": round(seconds, 1),
            "final_loss": round(float(np.mean(losses[-100:])), 5),
            "cfg_scale": args.cfg_scale,
            "judged": judge(pipe, args.eval_clips, args.cfg_scale),
        }
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
        print("RESULT " + json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
