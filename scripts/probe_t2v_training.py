"""Probe: which change to the T2V testbed's training gets its model into the regime, at the CPU budget.

The committed T2V model (8 Wan blocks of width 64, 1x2x2 patches, 2,000 steps) learns colour but
not motion: unguided, motion direction is at chance. Each candidate here changes one lever and
trains for as many steps as fit the same CPU budget as the stage (`--budget-s` seconds of training
on 2 idle cores, at the seconds per step measured on this repository's CPU machine, `CPU_S_PER_STEP`),
so that whatever wins can be trained by `train_toy_t2v` within its 45 minutes. Training runs on
whatever device is given (a lent GPU runs all candidates in minutes); the data, noise and t are
drawn on the CPU exactly as the stage draws them.

Each candidate is then judged like `evaluate_t2v_toy` (exact judges, `ditguide.metrics.clips`) on
the test captions, unguided and with CFG 5: motion, object class, colour, shown+moving, Semantic,
Total. One JSON line per candidate is printed and written to `<out>/<name>.json`, and the trained
weights to `<out>/<name>.pt`, so that a candidate can be judged again elsewhere.

    python scripts/probe_t2v_training.py --device cuda --out /tmp/probe pt2 pt2_enc
    python scripts/probe_t2v_training.py --list

This is a probe for choosing the stage's parameters, not a result: one training seed per candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ditguide.metrics.clips import aggregate, score_clips
from ditguide.testbeds import clips
from ditguide.testbeds.train_t2v import ClipsTrainConfig, build_prompt_encoder, pipeline, train_clips_model

# The stage's configuration today (params.yaml, train_toy_t2v).
BASE = ClipsTrainConfig(steps=2000, batch_size=64, lr=1e-3, patch_t=1, patch_hw=2)
# Seconds per optimiser step on 2 idle CPU threads (median of 4 steps, drawing the batch included),
# measured on the 2-core machine for each architecture.
CPU_S_PER_STEP = {"w64": 0.70, "w64_pt2": 0.36, "w96_pt2": 0.58, "w128_pt2": 0.87, "w64_bs32": 0.39}
WIDE96 = dict(num_attention_heads=3, ffn_dim=192)
WIDE128 = dict(num_attention_heads=4, ffn_dim=256)
# name -> (architecture key for the budget, config changes, train the prompt encoder)
CANDIDATES = {
    "base2000": ("w64", {}, False),  # the committed recipe: the control
    "base": ("w64", {}, False),
    "enc": ("w64", {}, True),
    "pt2": ("w64_pt2", {"patch_t": 2}, False),
    "pt2_enc": ("w64_pt2", {"patch_t": 2}, True),
    "pt2_lr3e-3": ("w64_pt2", {"patch_t": 2, "lr": 3e-3}, False),
    "pt2_w96": ("w96_pt2", {"patch_t": 2, **WIDE96}, False),
    "pt2_w128": ("w128_pt2", {"patch_t": 2, **WIDE128}, False),
    "bs32": ("w64_bs32", {"batch_size": 32}, False),
}


def config_for(name: str, budget_s: float, steps_scale: float = 1.0) -> tuple[ClipsTrainConfig, bool]:
    arch, changes, train_encoder = CANDIDATES[name]
    steps = 2000 if name == "base2000" else int(budget_s / CPU_S_PER_STEP[arch])
    return replace(BASE, **changes, steps=max(8, int(steps * steps_scale))), train_encoder


@torch.no_grad()
def render_clips(pipe, captions: list[str], scale: float, batch: int = 250, steps: int = 16) -> np.ndarray:
    """(N, F, H, W, 3) clips of `captions` at CFG `scale`, `steps` steps, sample i seeded by (0, i)."""
    videos = []
    for k0 in range(0, len(captions), batch):
        idx = list(range(k0, min(k0 + batch, len(captions))))
        res = pipe(
            prompt=[captions[i] for i in idx],
            num_inference_steps=steps,
            guidance_scale=scale,
            indices=idx,
            base_seed=0,
            output_type="np",
        )
        videos.append(np.asarray(res.frames))
    return np.concatenate(videos)


def judge(pipe, device, count: int, scales=(1.0, 5.0), batch: int = 250) -> dict:
    captions = [c.caption() for c in clips.caption_set("test", count)]
    out = {}
    for scale in scales:
        scores = aggregate(score_clips(render_clips(pipe, captions, scale, batch), captions))
        keys = ("motion", "object_class", "color", "shown_and_moving", "all_correct", "semantic", "quality", "total")
        out[f"cfg{scale:g}"] = {k: round(float(scores[k]), 4) for k in keys if k in scores}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="candidates (default: all)")
    parser.add_argument("--list", action="store_true", help="print the candidates and their step counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("probe_t2v"))
    parser.add_argument("--budget-s", type=float, default=2160.0, help="CPU seconds of training (2 idle cores)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step count (smoke tests)")
    parser.add_argument("--eval-clips", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    names = args.names or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"unknown candidates {unknown}; allowed: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    if args.list:
        for n in names:
            cfg, enc = config_for(n, args.budget_s, args.steps_scale)
            print(f"{n:12s} steps {cfg.steps:6d}  {dict(CANDIDATES[n][1])}  train_encoder={enc}")
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        cfg, train_encoder = config_for(name, args.budget_s, args.steps_scale)
        encoder = build_prompt_encoder(cfg).to(args.device)
        start = time.time()
        model, losses, _ = train_clips_model(
            cfg,
            encoder,
            progress=False,
            log_every=max(1, cfg.steps // 4),
            device=args.device,
            train_encoder=train_encoder,
        )
        seconds = time.time() - start
        encoder.requires_grad_(False).eval()
        torch.save({"transformer": model.state_dict(), "encoder": encoder.state_dict()}, args.out / f"{name}.pt")
        pipe = pipeline(model, encoder, cfg.frames).to(args.device)
        row = {
            "name": name,
            "config": asdict(cfg),
            "train_encoder": train_encoder,
            "train_seconds_here": round(seconds, 1),
            "final_loss": round(float(np.mean(losses[-100:])), 5),
            "judged": judge(pipe, args.device, args.eval_clips),
        }
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=1))
        print("RESULT " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
