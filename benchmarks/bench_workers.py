"""Worker processes against threads: rendering a testbed on a small CPU machine.

    python benchmarks/bench_workers.py [--profile scenes] [--samples 400] [--batch-size 100]
                                       [--repeats 2] [--json out.json]

Renders the same samples (CFG at the profile default, the profile's steps) through `generate` into
fresh folders, with one process of all the machine's threads (`workers=1`) and with `workers=N`
single-threaded processes, timed interleaved (each repeat runs both, in alternating order) so that
load from other processes hits both alike. Prints seconds per 2,000 samples for each, the median
ratio, and checks that both folders hold the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ditguide.generate import SAMPLES_DIRNAME, generate
from ditguide.profiles import load_params, load_pipeline, load_profile
from ditguide.render import PipelineRenderer
from ditguide.testbeds.beds import bed_for


def folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / SAMPLES_DIRNAME).iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="scenes")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    prof = load_profile(args.profile, load_params("params.yaml"))
    pipe = load_pipeline(prof)
    renderer = PipelineRenderer(prof, pipe)
    captions = bed_for(prof).captions("test", args.samples)
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {"threads": [], "workers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ["threads", "workers"] if r % 2 == 0 else ["workers", "threads"]
            for variant in order:
                out = Path(tmp) / f"{variant}-{r}"
                workers = 1 if variant == "threads" else args.workers
                t0 = time.perf_counter()
                generate(
                    renderer,
                    captions,
                    out,
                    batch_size=args.batch_size,
                    samples_per_prompt=1,
                    workers=workers,
                    progress=False,
                )
                times[variant].append((time.perf_counter() - t0) / args.samples * 2000)
                torch.set_num_threads(threads)
        same = folder(Path(tmp) / "threads-0") == folder(Path(tmp) / "workers-0")
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "profile": args.profile,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "threads": threads,
        "workers": args.workers,
        "seconds_per_2000": times,
        "median_seconds_per_2000": med,
        "speedup_workers_over_threads": med["threads"] / med["workers"],
        "identical_files": same,
    }
    print(f"{args.profile}, CFG {prof.cfg_scale:g}, {prof.steps} steps, batches of {args.batch_size}:")
    print(f"  1 process x {threads} threads:   {med['threads']:.0f} s per 2,000 samples  {times['threads']}")
    print(f"  {args.workers} processes x 1 thread:  {med['workers']:.0f} s per 2,000 samples  {times['workers']}")
    print(f"  speed-up {result['speedup_workers_over_threads']:.2f}x; identical files: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        raise SystemExit("the two variants wrote different files")


if __name__ == "__main__":
    main()
