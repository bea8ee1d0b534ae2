"""The command line of `ditguide.generate`: `python -m ditguide.generate --profile P --prompts F --out DIR`.

Everything cheap is checked before any weights load: the options, the prompts file, the file names
of the plan, the spec and the prompts against the model's config. Part of `ditguide.generate`, whose
`main` this is.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .generate_folder import DEFAULT_VIDEO_CRF
from .generate_plan import plan_samples, read_names, read_prompts
from .generate_run import default_state, generate
from .metrics.folder import MANIFEST_NAME, SAMPLES_DIRNAME, verify


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ditguide.generate",
        description="Render a prompt list to out/samples/ (resumable; shard with `accelerate launch`).",
    )
    parser.add_argument("--profile", required=True, help="profile name in params.yaml")
    parser.add_argument(
        "--spec",
        default=None,
        help="a guidance spec of the profile, 'none' (no guidance) or 'cfg' (the default: the profile's default sampling)",
    )
    parser.add_argument("--prompts", required=True, help=".txt (one per line), .csv or .json prompt file")
    parser.add_argument("--out", required=True, help="output folder (manifest.json, samples/)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="render only the first N samples of the plan")
    parser.add_argument("--base-seed", type=int, default=None, help="default: the renderer's base seed")
    parser.add_argument(
        "--samples-per-prompt", type=int, default=None, help="default: 1 for images, 5 for videos (VBench)"
    )
    parser.add_argument(
        "--names",
        default=None,
        help="a .txt file of file names (without suffix), one per sample in plan order (default: "
        "00000.png, ... for images, VBench's {prompt}-{i}.mp4 for videos)",
    )
    parser.add_argument("--video-crf", type=int, default=DEFAULT_VIDEO_CRF)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--repair",
        action="store_true",
        help="decode the existing samples first and render the damaged ones (undecodable, wrong size) again",
    )
    parser.add_argument(
        "--max-batch-branches",
        type=_max_batch_branches,
        default=None,
        metavar="K",
        help="guided specs: batch the guidance branches of a step, at most K per transformer call (memory grows "
        "with K; 1 = one branch per call). Default: one branch per call",
    )
    parser.add_argument("--no-progress", action="store_true")
    from .cli import add_debug_flag, run_reporting_user_errors

    add_debug_flag(parser)
    args = parser.parse_args(argv)
    for name in ("batch_size", "limit", "samples_per_prompt", "base_seed"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("limit", "base_seed") else 1):
            parser.error(
                f"--{name.replace('_', '-')} must be >= {0 if name in ('limit', 'base_seed') else 1}, got {value}"
            )
    return run_reporting_user_errors(lambda: _run_cli(args), debug=args.debug)


def _max_batch_branches(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 1 (at most that many guidance branches per transformer call), got {text!r}"
        )
    return value


def _run_cli(args: argparse.Namespace) -> int:
    _check_options(args)  # cheap checks first: a bad option or prompt file fails before any weights load
    prompts = read_prompts(args.prompts)
    names = None if args.names is None else read_names(args.names)
    from .profiles import load_params, load_profile

    # The file names (VBench's `{prompt}-{i}.mp4` must be a valid name) before anything loads.
    plan_samples(
        prompts,
        load_profile(args.profile, load_params(args.params)).kind,
        samples_per_prompt=args.samples_per_prompt,
        base_seed=args.base_seed or 0,
        names=names,
    )
    state = default_state()
    renderer = _load_renderer(args, prompts)
    summary = generate(
        renderer,
        prompts,
        args.out,
        batch_size=args.batch_size,
        base_seed=args.base_seed,
        names=names,
        samples_per_prompt=args.samples_per_prompt,
        limit=args.limit,
        video_crf=args.video_crf,
        state=state,
        progress=not args.no_progress,
        repair=args.repair,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        paths = verify(args.out, summary.planned)
        repaired = f" ({summary.repaired} damaged files rendered again)" if summary.repaired else ""
        print(
            f"{len(paths)} samples complete and decodable in {Path(args.out) / SAMPLES_DIRNAME}: "
            f"{summary.rendered} rendered{repaired}, {summary.skipped} reused (this process); "
            f"manifest {Path(args.out) / MANIFEST_NAME}"
        )
    return 0


def _check_options(args: argparse.Namespace) -> None:
    from .profiles import refuse_renamed_method

    refuse_renamed_method(args.spec)  # --spec baseline: the method is called cfg now
    if args.max_batch_branches is not None and args.spec in (None, "cfg", "none"):
        raise ValueError(
            f"--max-batch-branches groups the branches of a guidance spec, but --spec {args.spec or 'cfg'} "
            "runs the pipeline's own sampling; pass --spec with a guidance spec of the profile, or drop the flag"
        )


def _load_renderer(args: argparse.Namespace, prompts: list[str]):
    """The renderer of --profile and --spec; the spec and the prompts are checked against the model's
    config before its weights load. --max-batch-branches sets its grouping of the spec's branches."""
    from .render import load_renderer  # lazy: pulls in diffusers and the model family

    renderer = load_renderer(
        args.profile,
        args.spec,
        params_path=args.params,
        base_seed=args.base_seed or 0,
        prompts=list(dict.fromkeys(prompts)),
    )
    if args.max_batch_branches is not None:
        from .denoiser import GuidedDenoiser

        # The same grouping GuidedDenoiser(mode="batched", max_batch_branches=K) makes, as the explicit
        # groups the renderer passes on as its mode (nothing is installed on the pipeline here).
        pipe = renderer.pipe
        renderer.mode = GuidedDenoiser(
            pipe.transformer,
            renderer.guidance,
            scheduler=pipe.scheduler,
            mode="batched",
            max_batch_branches=args.max_batch_branches,
        ).explicit_groups()
    return renderer
