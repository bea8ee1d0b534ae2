"""Evaluate VBench dimensions on a folder of videos, one JSON per dimension. Runs INSIDE the VBench env.

    <vbench python> src/ditguide/metrics/vbench_run.py --videos DIR --out DIR [--dimensions ...] [--device cuda]
    <vbench python> -m torch.distributed.run --nproc_per_node=8 src/ditguide/metrics/vbench_run.py ...   (multi-GPU)
    <vbench python> src/ditguide/metrics/vbench_run.py --prefetch            (download all weights, then exit)

It is run by path, not imported as part of ditguide (the VBench env has no ditguide and older
transformers/numpy); at module level it imports only the standard library, so our environment can
import it for its constants. Each finished dimension is written to `<out>/<dimension>.json`
atomically and skipped on a rerun. Before any evaluation it checks, and reports at once:
the dimensions can be imported (four need detectron2), every video the prompt suite expects is
present (VBench itself only prints a warning and scores fewer videos), and the weights each
dimension needs are in $VBENCH_CACHE_DIR (downloaded there when online).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

# Kept equal to ditguide.metrics.vbench_score.DIMENSIONS (tests/test_vbench_score.py checks).
DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "aesthetic_quality",
    "imaging_quality",
    "object_class",
    "multiple_objects",
    "color",
    "spatial_relationship",
    "scene",
    "temporal_style",
    "overall_consistency",
    "human_action",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "appearance_style",
)
# GRiT-based dimensions import detectron2, which is not on PyPI.
NEEDS_DETECTRON2 = ("object_class", "multiple_objects", "color", "spatial_relationship")
DETECTRON2_INSTALL = "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
VIDEO_SUFFIXES = (".mp4", ".gif", ".png", ".jpg")
EXIT_SETUP = 2  # a precondition failed (nothing was evaluated)


def fail(message: str) -> None:
    print(f"vbench_run: {message}", file=sys.stderr)
    raise SystemExit(EXIT_SETUP)


def expected_videos(
    full_info: list[dict], dimensions, videos_dir: Path, videos_per_prompt: int, suffix: str
) -> list[Path]:
    """The files VBench's standard mode looks for: `{prompt}-{i}{suffix}` for each prompt of the dimensions."""
    wanted: dict[Path, None] = {}
    for entry in full_info:
        if set(entry["dimension"]) & set(dimensions):
            for i in range(videos_per_prompt):
                wanted[videos_dir / f"{entry['prompt_en']}-{i}{suffix}"] = None
    return list(wanted)


def check_videos_folder(videos_dir: Path) -> str:
    """The folder's single video suffix. VBench's standard mode takes the suffix of whichever file
    os.listdir returns first, so a stray non-video file there makes it find no videos at all."""
    if not videos_dir.is_dir():
        fail(f"videos folder {videos_dir} not found")
    names = os.listdir(videos_dir)
    if not names:
        fail(f"videos folder {videos_dir} is empty")
    suffixes = {Path(n).suffix.lower() for n in names}
    if len(suffixes) != 1 or not suffixes <= set(VIDEO_SUFFIXES):
        others = sorted(n for n in names if Path(n).suffix.lower() not in VIDEO_SUFFIXES)[:5]
        fail(
            f"{videos_dir} must hold only videos of one type (found suffixes {sorted(suffixes)}; e.g. {others}); "
            "VBench's standard mode misreads mixed folders. Point --videos at a generation folder's samples/."
        )
    return suffixes.pop()


def weights_in(submodules, cache_dir: str) -> list[str]:
    """Paths under the VBench cache that a dimension's submodule config refers to."""
    if isinstance(submodules, dict):
        return [p for v in submodules.values() for p in weights_in(v, cache_dir)]
    if isinstance(submodules, (list, tuple)):
        return [p for v in submodules for p in weights_in(v, cache_dir)]
    if isinstance(submodules, str) and submodules.startswith(cache_dir):
        return [submodules]
    return []


def ensure_weights(dimension: str, local: bool) -> None:
    """Download (when online) and check the weights of one dimension, before evaluating it."""
    import subprocess

    from vbench.utils import CACHE_DIR, init_submodules

    hint = (
        f"On a machine with internet run `{sys.executable} {Path(__file__).resolve()} --prefetch --dimensions {dimension}` "
        f"with VBENCH_CACHE_DIR={CACHE_DIR}, then copy that folder here."
    )
    try:
        submodules = init_submodules([dimension], local=local)
    except (subprocess.CalledProcessError, FileNotFoundError, OSError) as e:
        fail(f"weights for {dimension} are missing from {CACHE_DIR} and could not be downloaded ({e}). {hint}")
    missing = [p for p in weights_in(submodules[dimension], CACHE_DIR) if not os.path.exists(p)]
    if missing:
        fail(f"weights for {dimension} are missing: {', '.join(missing)}. {hint}")


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    unknown = sorted(set(args.dimensions) - set(DIMENSIONS))
    if unknown:
        fail(f"unknown dimensions {unknown}; allowed: {', '.join(DIMENSIONS)}")
    # Locate vbench without importing it (that takes seconds): the cheap checks come first.
    spec = importlib.util.find_spec("vbench")
    if spec is None or spec.origin is None:
        fail("cannot find vbench: run this with the VBench environment's python (scripts/setup_vbench_env.sh)")
    vbench_dir = Path(spec.origin).parent

    inputs = None
    if not args.prefetch:
        inputs = _check_inputs(args, vbench_dir)
        if inputs is None:
            return 0  # every dimension is finished already

    import vbench

    _check_importable(args.dimensions)
    local = not args.no_local
    if args.prefetch:
        for dim in args.dimensions:
            ensure_weights(dim, local)
        print("weights present for: " + ", ".join(args.dimensions))
        return 0
    _evaluate(args, vbench, local, *inputs)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", help="folder of videos (a generation folder's samples/)")
    parser.add_argument("--out", help="results folder: one <dimension>.json each")
    parser.add_argument("--dimensions", nargs="+", default=list(DIMENSIONS), help="default: all 16")
    parser.add_argument("--mode", choices=("vbench_standard", "custom_input"), default="vbench_standard")
    parser.add_argument("--full-info", default=None, help="prompt suite JSON (default: VBench's VBench_full_info.json)")
    parser.add_argument("--prompt-file", default=None, help="custom_input mode: JSON {video path: prompt}")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--videos-per-prompt", type=int, default=5)
    parser.add_argument(
        "--imaging-quality-preprocessing", default="longer", choices=("longer", "shorter", "shorter_centercrop", "None")
    )
    parser.add_argument(
        "--no-local", action="store_true", help="let VBench fetch some models at run time instead of from its cache"
    )
    parser.add_argument(
        "--prefetch", action="store_true", help="download the dimensions' weights into $VBENCH_CACHE_DIR and exit"
    )
    return parser


def _check_inputs(args, vbench_dir: Path) -> tuple[Path, Path, Path, list] | None:
    """(videos folder, results folder, prompt suite, prompt list) after checking them, or None (with a
    message) when every dimension is in the results folder already."""
    prompt_list = []
    if not args.videos or not args.out:
        fail("--videos and --out are required (unless --prefetch)")
    videos_dir = Path(args.videos).resolve()
    out_dir = Path(args.out).resolve()
    if all((out_dir / f"{d}.json").is_file() for d in args.dimensions):
        print(f"all {len(args.dimensions)} dimensions already in {out_dir}")
        return None
    suffix = check_videos_folder(videos_dir)
    full_info_path = (Path(args.full_info) if args.full_info else vbench_dir / "VBench_full_info.json").resolve()
    if not full_info_path.is_file():
        fail(f"prompt suite {full_info_path} not found")
    if args.mode == "vbench_standard":
        full_info = json.loads(full_info_path.read_text())
        wanted = expected_videos(full_info, args.dimensions, videos_dir, args.videos_per_prompt, suffix)
        missing = [p.name for p in wanted if not p.is_file()]
        if missing:
            fail(
                f"{len(missing)} of the {len(wanted)} videos the prompt suite expects are missing from {videos_dir}, "
                f"e.g. {missing[:3]}; generate them first (VBench would silently score fewer videos)"
            )
    else:
        if not args.prompt_file:
            fail(
                "--mode custom_input needs --prompt-file (JSON {video path: prompt}; ditguide.generate.prompt_map writes it)"
            )
        prompt_list = json.loads(Path(args.prompt_file).read_text())
    return videos_dir, out_dir, full_info_path, prompt_list


def _check_importable(dimensions) -> None:
    not_importable = {}
    for dim in dimensions:
        try:
            importlib.import_module(f"vbench.{dim}")
        except Exception as e:  # noqa: BLE001 - report every unusable dimension at once
            not_importable[dim] = f"{type(e).__name__}: {e}"
    if not_importable:
        lines = [
            f"  {d}: {why}" + (f"  (install detectron2: {DETECTRON2_INSTALL})" if d in NEEDS_DETECTRON2 else "")
            for d, why in not_importable.items()
        ]
        fail("these dimensions cannot be imported in this environment:\n" + "\n".join(lines))


def _evaluate(args, vbench, local: bool, videos_dir: Path, out_dir: Path, full_info_path: Path, prompt_list) -> None:
    """Every dimension not yet in `out_dir`, each written there (rank 0) when it is finished."""
    import torch
    from vbench import VBench
    from vbench.distributed import barrier, dist_init, get_rank, get_world_size

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist_init()  # torchrun: VBench splits each dimension's videos over the ranks
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / ".vbench"
    for dim in args.dimensions:
        result_path = out_dir / f"{dim}.json"
        if result_path.is_file():
            if get_rank() == 0:
                print(f"{dim}: already in {result_path}, skipped")
            continue
        # On every rank: VBench's init_submodules pairs its own barriers (rank 0 downloads, the others wait).
        ensure_weights(dim, local)
        VBench(torch.device(args.device), str(full_info_path), str(work_dir)).evaluate(
            videos_path=str(videos_dir),
            name=dim,
            prompt_list=prompt_list,
            dimension_list=[dim],
            local=local,
            mode=args.mode,
            imaging_quality_preprocessing_mode=args.imaging_quality_preprocessing,
        )
        if get_rank() == 0:
            _write_result(args, vbench, dim, work_dir, result_path, videos_dir, full_info_path, get_world_size)
        if get_world_size() > 1:
            barrier()


def _write_result(args, vbench, dim, work_dir, result_path, videos_dir, full_info_path, get_world_size) -> None:
    score, video_results = json.loads((work_dir / f"{dim}_eval_results.json").read_text())[dim]
    write_json_atomic(
        result_path,
        {
            "dimension": dim,
            "score": float(score),
            "n_videos": len(video_results),
            "mode": args.mode,
            "videos": str(videos_dir),
            "full_info": str(full_info_path),
            "device": args.device,
            "world_size": get_world_size(),
            "imaging_quality_preprocessing": args.imaging_quality_preprocessing,
            "vbench_version": getattr(vbench, "__version__", None) or _dist_version("vbench"),
            "video_results": video_results,
        },
    )
    print(f"{dim}: {float(score):.6f} over {len(video_results)} videos -> {result_path}")


def _dist_version(name: str):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
