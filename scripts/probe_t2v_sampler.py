"""Probe: is the T2V testbed's sampler what keeps shown+moving low, or the model?

The committed T2V model (data/clips/model) samples with 16 Euler steps of a flow-match scheduler
with shift 1. Wan 2.1 itself samples with shift 3 (more of the steps at high noise, where the
layout forms) and 50 steps. If shapes came out as blobs because the sampler resolves them too
coarsely, more steps or a larger shift would raise object class and shown+moving with the same
weights. This probe renders the first `--clips` test captions at CFG 5 under each setting (sample
i seeded by (0, i), as everywhere) and judges them with the exact judges, split into single-object
and two-object captions.

    python scripts/probe_t2v_sampler.py --out benchmarks/results/probe_t2v_sampler

A probe for choosing the profile's sampler, not a result: one model, one caption list.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from probe_t2v_training import render_clips  # the sibling probe (scripts/ is on sys.path when run)

from ditguide.metrics.clips import aggregate, score_clips
from ditguide.testbeds import clips
from ditguide.toy.video_pipeline import ToyVideoPipeline

SETTINGS = ((1.0, 16), (3.0, 16), (1.0, 32), (0.5, 16))  # (scheduler shift, steps); the first is the profile's


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("data/clips/model"))
    parser.add_argument("--clips", type=int, default=400, help="test captions (one clip each)")
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("probe_t2v_sampler"))
    args = parser.parse_args(argv)
    if args.clips < 1:
        print(f"--clips must be >= 1, got {args.clips}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    pipe = ToyVideoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    test = clips.caption_set("test", args.clips)
    captions = [c.caption() for c in test]
    single = np.array([len(c.objects) == 1 for c in test])
    rows = []
    for shift, steps in SETTINGS:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        start = time.time()
        per_clip = score_clips(render_clips(pipe, captions, args.cfg_scale, batch=200, steps=steps), captions)
        scores = aggregate(per_clip)
        sm = np.asarray(per_clip["shown_and_moving"], dtype=np.float64)
        row = {"shift": shift, "steps": steps, "cfg_scale": args.cfg_scale, "clips": args.clips}
        row["seconds"] = round(time.time() - start, 1)
        row["shown_and_moving_1obj"] = round(float(sm[single].mean()), 4)
        row["shown_and_moving_2obj"] = round(float(sm[~single].mean()), 4)
        keys = ("shown_and_moving", "object_class", "motion", "color", "imaging_quality", "semantic", "total")
        row.update({k: round(float(scores[k]), 4) for k in keys})
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
