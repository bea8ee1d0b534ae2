"""Real-model evaluation: MS-COCO 2017 (FID, CLIP-SIM) and VBench, and the multi-GPU command line.

Both go through the one evaluation path, `ditguide.evaluation.evaluate`, with the benchmarks
`ditguide.benchmark.Coco` and `ditguide.benchmark.VBench`; the functions here keep the keyword
arguments the real-model stages and scripts have used. Methods are the same names as on the toy:
"cfg" is the pipeline's own sampling at the profile's default CFG scale (formerly "baseline").

Multi-GPU: under `accelerate launch -m ditguide.evaluation_real ...` every process renders its
shard of every method; the main process then scores (the others return None).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .benchmark import Coco, VBench
from .evaluation import EvalResult, default_methods, evaluate, run_dir  # run_dir: the testbeds' run folders
from .profiles import load_params, load_profile
from .style import write_text

__all__ = ["evaluate_t2i_real", "evaluate_t2v", "main", "run_dir"]


def _methods(profile: str, params, specs: Sequence[str] | None, methods: Sequence[str] | None) -> list[str]:
    if methods is not None:
        return list(methods)
    return default_methods(load_profile(profile, params), specs=specs)


def evaluate_t2i_real(
    profile: str,
    *,
    split: str = "test",
    resolution: int = 512,
    limit: int | None = None,
    specs: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    batch_size: int = 4,
    base_seed: int = 0,
    params="params.yaml",
    data_dir: str | os.PathLike = "data/coco2017",
    runs_dir: str | os.PathLike = "runs",
    device: str | None = None,
    fid_extractor=None,
    fid_extractor_id: str | None = None,
    clip=None,
    num_workers: int | None = None,
    state=None,
) -> EvalResult | None:
    """FID and CLIP-SIM on COCO 2017 captions (`benchmark.Coco` says what each option means).

    methods: None is `default_methods(profile, specs=specs)`: none (where the default CFG is on), cfg,
    the profile's guidance specs (`specs`; None: all) and its selected preset where one exists."""
    params = load_params(params) if not isinstance(params, dict) else params
    bench = Coco(
        split=split,
        resolution=resolution,
        limit=limit,
        data_dir=data_dir,
        fid_extractor=fid_extractor,
        fid_extractor_id=fid_extractor_id,
        clip=clip,
        num_workers=num_workers,
    )
    return evaluate(
        profile,
        bench,
        _methods(profile, params, specs, methods),
        params=params,
        batch_size=batch_size,
        base_seed=base_seed,
        runs_dir=runs_dir,
        device=device,
        state=state,
    )


def evaluate_t2v(
    profile: str,
    *,
    prompts: str | os.PathLike = "standard",
    samples_per_prompt: int = 5,
    limit: int | None = None,
    dimensions: Sequence[str] | None = None,
    specs: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    batch_size: int = 1,
    base_seed: int = 0,
    params="params.yaml",
    runs_dir: str | os.PathLike = "runs",
    device: str | None = None,
    vbench_python: str | os.PathLike | None = None,
    vbench_device: str | None = None,
    vbench_nproc: int = 1,
    timeout: float | None = None,
    state=None,
) -> EvalResult | None:
    """VBench scores (`benchmark.VBench` says what each option means); methods as in evaluate_t2i_real."""
    params = load_params(params) if not isinstance(params, dict) else params
    bench = VBench(
        prompts=prompts,
        samples_per_prompt=samples_per_prompt,
        limit=limit,
        dimensions=dimensions,
        vbench_python=vbench_python,
        vbench_device=vbench_device,
        vbench_nproc=vbench_nproc,
        timeout=timeout,
    )
    return evaluate(
        profile,
        bench,
        _methods(profile, params, specs, methods),
        params=params,
        batch_size=batch_size,
        base_seed=base_seed,
        runs_dir=runs_dir,
        device=device,
        state=state,
    )


# ----------------------------------------------------------------------------------------------
# command line (multi-GPU rendering: `accelerate launch -m ditguide.evaluation_real ...`)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ditguide.evaluation_real", description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=("t2i", "t2v"))
    ap.add_argument("--profile", required=True)
    ap.add_argument("--specs", nargs="*", default=None, help="default: every guidance spec of the profile")
    ap.add_argument(
        "--methods", nargs="+", default=None, help="method names (none, cfg, cfg@<s>, specs, presets); replaces --specs"
    )
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--split", default="test", help="t2i: COCO split")
    ap.add_argument("--resolution", type=int, default=512, help="t2i: reference resolution")
    ap.add_argument("--data-dir", default="data/coco2017", help="t2i")
    ap.add_argument("--prompts", default="standard", help="t2v: 'standard' or a VBench-format suite JSON")
    ap.add_argument("--samples-per-prompt", type=int, default=5, help="t2v")
    ap.add_argument("--dimensions", nargs="+", default=None, help="t2v: default all 16")
    ap.add_argument("--out", default=None, help="write the metrics JSON here (main process)")
    from .cli import add_debug_flag, run_reporting_user_errors

    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_reporting_user_errors(lambda: _run_cli(args), debug=args.debug)


def _run_cli(args) -> int:
    from .generate import default_state

    common = dict(
        specs=args.specs,
        methods=args.methods,
        limit=args.limit,
        base_seed=args.base_seed,
        params=args.params,
        runs_dir=args.runs_dir,
        state=default_state(),  # the launcher's process group: each process renders its shard
    )
    if args.batch_size is not None:
        common["batch_size"] = args.batch_size
    if args.task == "t2i":
        result = evaluate_t2i_real(
            args.profile, split=args.split, resolution=args.resolution, data_dir=args.data_dir, **common
        )
    else:
        result = evaluate_t2v(
            args.profile,
            prompts=args.prompts,
            samples_per_prompt=args.samples_per_prompt,
            dimensions=args.dimensions,
            **common,
        )
    if result is not None:
        text = json.dumps(result.metrics, indent=2, sort_keys=True) + "\n"
        if args.out:
            write_text(args.out, text)
        print(text)
        folders = ", ".join(f"{m}: {d}" for m, d in result.run_dirs.items())
        print(f"samples in {folders}" + (f"; metrics written to {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
