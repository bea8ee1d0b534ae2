"""Writing a generation folder: its manifest, and each output file atomically (see `ditguide.generate`).

The manifest records what made the files (renderer description, seeds, encoding, package versions)
and is checked on every run, so that a resumed run never mixes the outputs of two runs. Every file
is written under `.partial/` and moved into `samples/` only when complete. Part of
`ditguide.generate`, which re-exports the public names.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .generate_plan import Renderer, Sample
from .io import atomic_path, write_bytes_atomic
from .metrics.folder import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SAMPLES_DIRNAME,
    ManifestMismatchError,
    decode_error,
    read_manifest,
    size_text,
)
from .versions import package_versions as _package_versions

PARTIAL_DIRNAME = ".partial"
# libx264 constant-rate factor for saved videos: 18 is visually lossless; VBench scores the
# decoded frames, so heavier compression (imageio's default quality 5 is CRF 25) would leak
# codec artifacts into imaging/aesthetic quality.
DEFAULT_VIDEO_CRF = 18
# Packages whose version can change the rendered pixels: a resumed run must use the same ones.
OUTPUT_AFFECTING_PACKAGES = ("ditguide", "torch", "diffusers", "transformers", "numpy", "pillow", "imageio-ffmpeg")


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


def check_output(arr, kind: str, index: int, expected: dict[str, int] | None = None) -> np.ndarray:
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


def write_mp4(path: Path, video: np.ndarray, fps: int, crf: int) -> None:
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


def save_sample(
    sample: Sample, output: np.ndarray, kind: str, samples_dir: Path, partial_dir: Path, fps: int, crf: int
) -> None:
    # Temporary names are short: a VBench file name may already be near the 255-byte limit.
    tmp = partial_dir / f"{sample.index:06d}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with atomic_path(samples_dir / sample.file, tmp=tmp, fsync=True):
        if kind == "image":
            tmp.write_bytes(_encode_png(output))
        else:
            write_mp4(tmp, output, fps, crf)


def delete_damaged(samples: Sequence[Sample], samples_dir: Path, kind: str, expected: dict | None) -> dict[int, str]:
    """Delete the files of `samples` that exist but do not decode (or have the wrong size); {index: why}."""
    damaged = {}
    for s in samples:
        path = samples_dir / s.file
        why = decode_error(path, kind, expected) if path.is_file() else None
        if why is not None:
            path.unlink()
            damaged[s.index] = why
    return damaged
