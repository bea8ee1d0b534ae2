"""Sharded, resumable rendering of a prompt list to files, for FID/CLIP-SIM and VBench.

Layout of a generation folder `out_dir`:

    out_dir/manifest.json   what made these files: renderer description, seeds, package versions
    out_dir/samples/        the outputs and nothing else (VBench and clean-fid read this folder)
    out_dir/.partial/       files being written; moved into samples/ only when complete

Images are `{index:05d}.png`; videos follow VBench's naming, `{prompt}-{i}.mp4` with i = 0..4
(five seeds per prompt). Sample `index` always gets the noise of `sample_seed(index, base_seed)`
(the renderer draws it with `ditguide.seeding`), so a file does not depend on the batch size,
the number of processes, or on which run (first or resumed) produced it.

Runs on one process or many (`accelerate launch`): process r renders the indices with
`index % num_processes == r`; every file is written to `.partial/` and moved into place with
`os.replace`, so a killed run leaves no half-written output, and a rerun renders only what is
missing. The manifest is checked on every run: resuming with a different model, spec, seed or
software is an error, never a silent mix of two runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .io import atomic_path, write_bytes_atomic
from .metrics.folder import (  # the folder layout and its reader (the metrics own it); re-exported
    KINDS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SAMPLES_DIRNAME,
    IncompleteOutputError,
    ManifestMismatchError,
    decode_error,
    expected_size,
    load_manifest,
    prompt_map,
    read_manifest,
    size_text,
    verify,
)
from .metrics.vbench_score import VIDEOS_PER_PROMPT as VBENCH_VIDEOS_PER_PROMPT
from .seeding import sample_seed
from .versions import package_versions as _package_versions

__all__ = [
    "KINDS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SAMPLES_DIRNAME",
    "PARTIAL_DIRNAME",
    "VBENCH_VIDEOS_PER_PROMPT",
    "GenerationSummary",
    "IncompleteOutputError",
    "ManifestMismatchError",
    "Renderer",
    "Sample",
    "build_manifest",
    "default_state",
    "ensure_manifest",
    "generate",
    "load_manifest",
    "main",
    "package_versions",
    "plan_samples",
    "prompt_map",
    "read_names",
    "read_prompts",
    "verify",
    "video_file_name",
]

PARTIAL_DIRNAME = ".partial"
# libx264 constant-rate factor for saved videos: 18 is visually lossless; VBench scores the
# decoded frames, so heavier compression (imageio's default quality 5 is CRF 25) would leak
# codec artifacts into imaging/aesthetic quality.
DEFAULT_VIDEO_CRF = 18
# Most filesystems (ext4, xfs, NFS) cap one file name at 255 bytes.
MAX_FILE_NAME_BYTES = 255
# Packages whose version can change the rendered pixels: a resumed run must use the same ones.
OUTPUT_AFFECTING_PACKAGES = ("ditguide", "torch", "diffusers", "transformers", "numpy", "pillow", "imageio-ffmpeg")


class Renderer(Protocol):
    """What `generate` renders with (see `ditguide.render.PipelineRenderer`)."""

    kind: str  # "image" or "video"
    fps: int  # videos only

    def describe(self) -> dict:
        """Model, spec and sampling settings, recorded in the manifest."""
        ...

    def render(self, prompts: list[str], indices: list[int]) -> list[np.ndarray]:
        """HxWx3 uint8 images or TxHxWx3 uint8 videos; sample i's noise depends only on index i."""
        ...

    # Optional: `validate(prompts)` raises if the renderer cannot render these prompts (block
    # addresses of its spec, prompt lengths); `generate` calls it before writing anything.


@dataclass(frozen=True)
class Sample:
    index: int  # position in the run; its noise is sample_seed(index, base_seed)
    prompt: str
    file: str  # file name inside samples/
    seed: int


@dataclass(frozen=True)
class GenerationSummary:
    out_dir: Path
    planned: int  # samples this call was asked for (all processes)
    assigned: int  # of those, this process's shard
    rendered: int  # rendered by this process in this call
    skipped: int  # already present in this process's shard (reused)
    repaired: int = 0  # of the rendered, damaged files (undecodable, wrong size) deleted first (repair=True)


# ----------------------------------------------------------------------------------------------
# prompts and the sample plan


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a .txt (one per line, blank lines ignored), .csv or .json file.

    CSV and JSON records take the first of the keys `prompt`, `caption`, `prompt_en`. VBench's
    `VBench_full_info.json` (records with `prompt_en`) lists two prompts twice (under two
    dimensions); VBench finds a prompt's videos by file name, so those duplicates share one set
    of files and are dropped here, keeping the first occurrence.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        prompts = _read_prompt_file(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"prompts file {path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"prompts file {path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts")
    return prompts


def read_names(path: str | os.PathLike) -> list[str]:
    """File names (without suffix) from a .txt file, one per line (blank lines ignored): `--names`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names file not found: {path}")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"names file {path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not names:
        raise ValueError(f"names file {path} has no names")
    return names


def _read_prompt_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    keys = ("prompt", "caption", "prompt_en")
    if suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            key = next((k for k in keys if k in (reader.fieldnames or [])), None)
            if key is None:
                raise ValueError(f"{path}: CSV needs a column named one of {keys}, has {reader.fieldnames}")
            return [row[key] for row in reader]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: JSON prompts must be a list of strings or of records")
        if all(isinstance(x, str) for x in data):
            return list(data)
        if all(isinstance(x, dict) for x in data):
            key = next((k for k in keys if all(k in x for x in data)), None)
            if key is None:
                raise ValueError(f"{path}: every JSON record needs one of the keys {keys}")
            prompts = [x[key] for x in data]
            if key == "prompt_en":
                prompts = list(dict.fromkeys(prompts))
            return prompts
        raise ValueError(f"{path}: JSON prompts must be a list of strings or of records")
    raise ValueError(f"prompts file {path}: suffix {suffix!r} not supported; allowed: .txt, .csv, .json")


_RENAME_HINT = (
    "edit the prompt in the prompts file, or give every sample a file name with --names FILE "
    "(python -m ditguide.generate; names= in Python) and evaluate in VBench's custom_input mode"
)


def video_file_name(prompt: str, i: int) -> str:
    """VBench's file name for video i of `prompt`: `{prompt}-{i}.mp4`.

    VBench (standard mode) looks each prompt's videos up by exactly this name, so the prompt
    cannot be altered: a prompt that cannot be a file name (a '/', a NUL, '.'/'..', or longer
    than the filesystem allows) is an error. VBench's standard suite has none (its longest
    name is 216 bytes); for custom prompts, give the samples other names (`--names FILE` on the
    command line, `names=` in Python) and evaluate in VBench's `custom_input` mode with `prompt_map`.
    """
    name = f"{prompt}-{i}.mp4"
    if "/" in prompt or "\x00" in prompt or prompt in ("", ".", ".."):
        raise ValueError(
            f"prompt {prompt!r} cannot be a VBench file name (it contains '/' or NUL, or is empty); {_RENAME_HINT}"
        )
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise ValueError(
            f"prompt {prompt[:60]!r}... gives a {len(name.encode())}-byte file name (max {MAX_FILE_NAME_BYTES}); "
            f"{_RENAME_HINT}"
        )
    return name


def plan_samples(
    prompts: Sequence[str],
    kind: str,
    *,
    samples_per_prompt: int | None = None,
    base_seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[Sample]:
    """The full list of samples of a run, in index order.

    Sample `p * samples_per_prompt + i` is seed i of prompt p. `samples_per_prompt` defaults to
    1 for images and 5 (VBench) for videos. `names` gives each sample's file name stem (one per
    sample; the suffix is added); by default images are `{index:05d}.png` and videos VBench's
    `{prompt}-{i}.mp4`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    if samples_per_prompt is None:
        samples_per_prompt = VBENCH_VIDEOS_PER_PROMPT if kind == "video" else 1
    if not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be an integer >= 1, got {samples_per_prompt!r}")
    if not isinstance(base_seed, int) or base_seed < 0:
        raise ValueError(f"base_seed must be an integer >= 0, got {base_seed!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"prompts must be non-empty strings; bad entries at positions {bad[:10]}")
    n = len(prompts) * samples_per_prompt
    suffix = ".png" if kind == "image" else ".mp4"
    if names is not None:
        names = list(names)
        if len(names) != n:
            raise ValueError(f"names (--names) has {len(names)} entries, expected one per sample ({n})")
        for stem in names:
            if not stem or "/" in stem or "\x00" in stem or stem in (".", ".."):
                raise ValueError(f"names entry {stem!r} cannot be a file name")
        files = [f"{stem}{suffix}" for stem in names]
    elif kind == "image":
        files = [f"{k:05d}.png" for k in range(n)]
    else:
        files = [video_file_name(p, i) for p in prompts for i in range(samples_per_prompt)]
    too_long = [f for f in files if len(f.encode("utf-8")) > MAX_FILE_NAME_BYTES]
    if too_long:
        raise ValueError(f"file name longer than {MAX_FILE_NAME_BYTES} bytes: {too_long[0][:80]!r}...")
    seen: dict[str, int] = {}
    for k, f in enumerate(files):
        if f in seen:
            raise ValueError(
                f"samples {seen[f]} and {k} would both be written to {f!r} "
                "(duplicate prompt? deduplicate the prompts file, or give distinct file names with --names FILE)"
            )
        seen[f] = k
    return [
        Sample(index=k, prompt=prompts[k // samples_per_prompt], file=files[k], seed=sample_seed(k, base_seed))
        for k in range(n)
    ]


# ----------------------------------------------------------------------------------------------
# manifest


def package_versions() -> dict[str, str | None]:
    """Python and the OUTPUT_AFFECTING_PACKAGES' versions, as the manifest records them."""
    return _package_versions(OUTPUT_AFFECTING_PACKAGES, python=True)


def _json_normal(value):
    """The value as it reads back from JSON (tuples become lists, ...), to compare manifests."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_manifest(
    renderer: Renderer, plan: Sequence[Sample], *, base_seed: int, samples_per_prompt: int, video_crf: int
) -> dict:
    kind = renderer.kind
    encoding = (
        {"format": "png", "writer": "Pillow"}
        if kind == "image"
        else {"format": "mp4", "codec": "libx264", "pix_fmt": "yuv420p", "crf": video_crf, "writer": "imageio-ffmpeg"}
    )
    return _json_normal(
        {
            "format": MANIFEST_FORMAT,
            "kind": kind,
            "fps": int(renderer.fps) if kind == "video" else None,
            "renderer": renderer.describe(),
            "base_seed": base_seed,
            "samples_per_prompt": samples_per_prompt,
            "encoding": encoding,
            "versions": package_versions(),
            "samples": [asdict(s) for s in plan],
            # Not compared on resume: where and when the run started.
            "provenance": {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": socket.gethostname(),
                "git_commit": _git_commit(),
            },
        }
    )


def _differences(old, new, where: str = "", limit: int = 8) -> list[str]:
    if type(old) is not type(new):
        return [f"{where or 'manifest'}: existing {old!r:.80} / this run {new!r:.80}"]
    if isinstance(old, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = f"{where}.{key}" if where else key
            if key not in old or key not in new:
                out.append(f"{sub}: present only in the {'existing manifest' if key in old else 'this run'}")
            else:
                out += _differences(old[key], new[key], sub, limit)
            if len(out) >= limit:
                break
        return out[:limit]
    if isinstance(old, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} entries existing / {len(new)} this run"]
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += _differences(a, b, f"{where}[{i}]", limit)
            if len(out) >= limit:
                break
        return out[:limit]
    return [] if old == new else [f"{where}: existing {old!r:.80} / this run {new!r:.80}"]


def _comparable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "provenance"}


def ensure_manifest(out_dir: Path, manifest: dict) -> None:
    """Write the manifest if the folder has none; otherwise require it to describe the same run."""
    path = out_dir / MANIFEST_NAME
    if path.is_file():
        existing = read_manifest(path)
        diffs = _differences(_comparable(existing), _comparable(manifest))
        if diffs:
            raise ManifestMismatchError(
                f"{out_dir} holds outputs of a different run; refusing to mix them. Differences:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new --out folder (or delete this one to start over)."
            )
        return
    samples_dir = out_dir / SAMPLES_DIRNAME
    if samples_dir.is_dir() and any(samples_dir.iterdir()):
        # Files without a manifest may come from any model or settings: adopting them would mix two runs.
        raise ManifestMismatchError(
            f"{out_dir} has files in {SAMPLES_DIRNAME}/ but no {MANIFEST_NAME}, so nothing says which run made them; "
            "refusing to adopt them. Use a new --out folder (or delete this one to start over)."
        )
    write_bytes_atomic(path, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"), fsync=True)


# ----------------------------------------------------------------------------------------------
# writing one output


def _check_output(arr, kind: str, index: int, expected: dict[str, int] | None = None) -> np.ndarray:
    arr = np.asarray(arr)
    want = "HxWx3" if kind == "image" else "TxHxWx3"
    ndim = 3 if kind == "image" else 4
    if arr.dtype != np.uint8 or arr.ndim != ndim or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(
            f"renderer output for sample {index}: expected a {want} uint8 array, got {arr.dtype} {arr.shape}"
        )
    if expected is not None:
        # The size the manifest records: a file of another size would be refused by verify afterwards.
        frames = arr.shape[0] if kind == "video" else None
        want_frames = expected.get("frames") if kind == "video" else None
        got = (frames if want_frames is not None else None, arr.shape[-2], arr.shape[-3])
        if got != (want_frames, expected["width"], expected["height"]):
            raise ValueError(
                f"renderer output for sample {index}: {size_text(frames, arr.shape[-2], arr.shape[-3])}, "
                f"but the run records {size_text(want_frames, expected['width'], expected['height'])} "
                "(the profile's num_frames/height/width)"
            )
    if kind == "video" and (arr.shape[1] % 2 or arr.shape[2] % 2):
        # yuv420p (what players and VBench's decoders expect) needs even sizes; refuse rather than resize.
        raise ValueError(
            f"renderer output for sample {index}: video height and width must be even, got {arr.shape[1:3]}"
        )
    return arr


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _write_mp4(path: Path, video: np.ndarray, fps: int, crf: int) -> None:
    import imageio_ffmpeg

    height, width = video.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        # -f: the temporary name has no .mp4 suffix; bitexact: no encoder-version strings, so the
        # same frames give the same bytes.
        output_params=[
            "-crf",
            str(crf),
            "-f",
            "mp4",
            "-fflags",
            "+bitexact",
            "-flags",
            "+bitexact",
            "-map_metadata",
            "-1",
        ],
    )
    writer.send(None)
    for frame in video:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _save(
    sample: Sample, output: np.ndarray, kind: str, samples_dir: Path, partial_dir: Path, fps: int, crf: int
) -> None:
    # Temporary names are short: a VBench file name may already be near the 255-byte limit.
    tmp = partial_dir / f"{sample.index:06d}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with atomic_path(samples_dir / sample.file, tmp=tmp, fsync=True):
        if kind == "image":
            tmp.write_bytes(_encode_png(output))
        else:
            _write_mp4(tmp, output, fps, crf)


# ----------------------------------------------------------------------------------------------
# generation


class _SingleProcess:
    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def default_state():
    """accelerate's PartialState: the launcher's (torchrun / accelerate launch) process group, or one process.

    On a machine without CUDA it is asked for CPU processes; otherwise a CPU-only launch would not
    form a process group and every process would render everything.
    """
    try:
        import torch
        from accelerate import PartialState
    except ImportError:  # accelerate is a dependency; this only keeps bare installs working on one process
        return _SingleProcess()
    return PartialState(cpu=not torch.cuda.is_available())


def generate(
    renderer: Renderer,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 1,
    base_seed: int | None = None,
    names: Sequence[str] | None = None,
    samples_per_prompt: int | None = None,
    limit: int | None = None,
    video_crf: int = DEFAULT_VIDEO_CRF,
    state=None,
    progress: bool = True,
    repair: bool = False,
) -> GenerationSummary:
    """Render `prompts` into `out_dir/samples/`, this process's shard only, skipping finished files.

    `base_seed` defaults to the renderer's `base_seed` attribute (or 0); if both are given they must
    agree, since the renderer draws the noise. `limit` renders only the first `limit` samples of the
    plan (the manifest still records the full plan, so a later run without `limit` continues it).
    `state` is an accelerate `PartialState` (default: a new one; anything with `num_processes`,
    `process_index`, `is_main_process` and `wait_for_everyone()` works). `repair=True` first decodes
    this shard's existing files and deletes the damaged ones (undecodable, or an image of the wrong
    size), so that they are rendered again; the summary counts them.
    """
    kind = getattr(renderer, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"renderer.kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an integer >= 0 or None, got {limit!r}")
    if not isinstance(video_crf, int) or not 0 <= video_crf <= 51:
        raise ValueError(f"video_crf must be an integer in 0..51, got {video_crf!r}")
    renderer_seed = getattr(renderer, "base_seed", None)
    if base_seed is None:
        base_seed = 0 if renderer_seed is None else int(renderer_seed)
    elif renderer_seed is not None and int(renderer_seed) != base_seed:
        raise ValueError(
            f"base_seed={base_seed} but the renderer draws noise with base_seed={renderer_seed}; make them agree"
        )
    fps = 0
    if kind == "video":
        fps = getattr(renderer, "fps", None)
        if not isinstance(fps, int) or fps < 1:
            raise ValueError(f"renderer.fps must be an integer >= 1 for videos, got {fps!r}")
    if samples_per_prompt is None:
        samples_per_prompt = VBENCH_VIDEOS_PER_PROMPT if kind == "video" else 1
    plan = plan_samples(prompts, kind, samples_per_prompt=samples_per_prompt, base_seed=base_seed, names=names)
    todo = plan if limit is None else plan[:limit]
    if hasattr(renderer, "validate"):
        renderer.validate(list(dict.fromkeys(s.prompt for s in plan)))  # before any file is written

    out_dir = Path(out_dir)
    samples_dir = out_dir / SAMPLES_DIRNAME
    partial_dir = out_dir / PARTIAL_DIRNAME
    state = default_state() if state is None else state
    rank, world = int(state.process_index), int(state.num_processes)

    manifest = build_manifest(
        renderer, plan, base_seed=base_seed, samples_per_prompt=samples_per_prompt, video_crf=video_crf
    )
    if (out_dir / MANIFEST_NAME).is_file():
        ensure_manifest(out_dir, manifest)  # resuming: every process refuses a different run, before any barrier
    if state.is_main_process:
        samples_dir.mkdir(parents=True, exist_ok=True)
        partial_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of a killed run (no process is writing yet: the others wait below).
        for stale in partial_dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        ensure_manifest(out_dir, manifest)
    state.wait_for_everyone()
    if not state.is_main_process:
        ensure_manifest(out_dir, manifest)  # a process whose software differs from the main one's fails here

    mine = [s for s in todo if s.index % world == rank]
    expected = expected_size(manifest)
    repaired = _delete_damaged(mine, samples_dir, kind, expected) if repair else {}
    pending = [s for s in mine if not (samples_dir / s.file).exists()]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(pending),
        desc=f"generate {out_dir.name} [{rank + 1}/{world}]",
        unit=kind,
        position=rank,
        disable=not progress,
    )
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            outputs = renderer.render([s.prompt for s in batch], [s.index for s in batch])
            if len(outputs) != len(batch):
                raise ValueError(f"renderer returned {len(outputs)} outputs for {len(batch)} prompts")
            for sample, output in zip(batch, outputs):
                output = _check_output(output, kind, sample.index, expected)
                _save(sample, output, kind, samples_dir, partial_dir, fps, video_crf)
                bar.update(1)
    finally:
        bar.close()
    return GenerationSummary(
        out_dir=out_dir,
        planned=len(todo),
        assigned=len(mine),
        rendered=len(pending),
        skipped=len(mine) - len(pending),
        repaired=len(repaired),
    )


def _delete_damaged(samples: Sequence[Sample], samples_dir: Path, kind: str, expected: dict | None) -> dict[int, str]:
    """Delete the files of `samples` that exist but do not decode (or have the wrong size); {index: why}."""
    damaged = {}
    for s in samples:
        path = samples_dir / s.file
        why = decode_error(path, kind, expected) if path.is_file() else None
        if why is not None:
            path.unlink()
            damaged[s.index] = why
    return damaged


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ditguide.generate",
        description="Render a prompt list to out/samples/ (resumable; shard with `accelerate launch`).",
    )
    parser.add_argument("--profile", required=True, help="profile name in params.yaml")
    parser.add_argument("--spec", default=None, help="guidance/edit spec (default: the profile's default sampling)")
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
    # Cheap checks first: a bad prompt file or option fails before any weights load.
    if args.max_batch_branches is not None and args.spec in (None, "baseline", "none"):
        raise ValueError(
            f"--max-batch-branches groups the branches of a guidance spec, but --spec {args.spec or 'baseline'} "
            "runs the pipeline's own sampling; pass --spec with a guidance spec of the profile, or drop the flag"
        )
    prompts = read_prompts(args.prompts)
    names = None if args.names is None else read_names(args.names)
    from .profiles import load_params, load_profile
    from .render import load_renderer  # lazy: pulls in diffusers and the model family

    # The file names (VBench's `{prompt}-{i}.mp4` must be a valid name) before anything loads.
    plan_samples(
        prompts,
        load_profile(args.profile, load_params(args.params)).kind,
        samples_per_prompt=args.samples_per_prompt,
        base_seed=args.base_seed or 0,
        names=names,
    )
    state = default_state()
    # The spec and the prompts are checked against the model's config before its weights load.
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


if __name__ == "__main__":
    # Run the package's module rather than this __main__ copy: its exception classes are the ones the
    # CLI error handler (ditguide.cli) recognises.
    from ditguide.generate import main as _main

    sys.exit(_main())
