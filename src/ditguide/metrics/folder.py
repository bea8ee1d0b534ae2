"""The generation folder, as the metrics read it: its layout, its manifest, and the check that every
sample is there, decodes and has the run's size.

`ditguide.generate` writes these folders (and imports the layout from here); the metrics read them
(`Samples.from_dir`) without depending on the writer:

    out_dir/manifest.json   what made these files: renderer description, seeds, package versions
    out_dir/samples/        the outputs and nothing else (VBench and clean-fid read this folder)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

# What a run outputs: images (PNG) or videos (MP4). The one definition (profiles and generate use it).
KINDS = ("image", "video")
MANIFEST_NAME = "manifest.json"
SAMPLES_DIRNAME = "samples"
MANIFEST_FORMAT = "ditguide.generate/1"


class ManifestMismatchError(UserError, RuntimeError):
    """The folder holds outputs of a different run (model, spec, seeds, prompts or software)."""


class IncompleteOutputError(UserError, RuntimeError):
    """Some expected outputs are missing or do not decode; `missing` and `corrupt` hold their indices."""

    def __init__(self, message: str, missing: list[int], corrupt: dict[int, str]):
        super().__init__(message)
        self.missing = missing
        self.corrupt = corrupt


def load_manifest(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no generation manifest at {path}: run `python -m ditguide.generate` for this folder first"
        )
    return read_manifest(path)


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestMismatchError(
            f"{path} is damaged ({type(err).__name__}: {err}); the folder's samples cannot be "
            "attributed to a run: use a new --out folder (or delete this one to start over)"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestMismatchError(f"{path} is not a generation manifest ({MANIFEST_FORMAT}); use a new --out folder")
    return manifest


def expected_size(manifest: dict) -> dict[str, int] | None:
    """{"width", "height"} every output of the run must have, and "frames" for videos where the renderer's
    description records num_frames; None where it records no size (a custom renderer)."""
    r = manifest.get("renderer") or {}
    w, h, t = r.get("width"), r.get("height"), r.get("num_frames")
    if not (isinstance(w, int) and isinstance(h, int)):
        return None
    size = {"width": w, "height": h}
    if manifest.get("kind") == "video" and isinstance(t, int):
        size["frames"] = t
    return size


def size_text(frames: int | None, width: int, height: int) -> str:
    """ "WxH", or "T frames of WxH" for a video."""
    return f"{frames} frames of {width}x{height}" if frames is not None else f"{width}x{height}"


def decode_error(path: Path, kind: str, expected: dict[str, int] | None = None) -> str | None:
    """None if the file decodes and has the `expected` size ({"width", "height"[, "frames"]}, when
    given), else why not."""
    try:
        if kind == "image":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                (width, height), frames = im.size, None
            if width == 0 or height == 0:
                return "empty image"
        else:
            import imageio_ffmpeg

            reader = imageio_ffmpeg.read_frames(str(path))
            try:
                width, height = next(reader)["size"]
            finally:
                reader.close()
            frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
            if frames < 1:
                return "no frames"
    except Exception as e:  # any decoder failure means the file is unusable
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:200]
    if expected is not None:
        want_frames = expected.get("frames") if frames is not None else None
        if (width, height, frames if want_frames is not None else None) != (
            expected["width"],
            expected["height"],
            want_frames,
        ):
            return (
                f"{size_text(frames, width, height)} {kind}, the run renders "
                f"{size_text(want_frames, expected['width'], expected['height'])}"
            )
    return None


def verify(out_dir: str | os.PathLike, n: int | None = None, *, delete_corrupt: bool = False) -> list[Path]:
    """Paths of samples 0..n-1 (default: the whole plan) in index order, after checking each decodes.

    Missing or undecodable files raise `IncompleteOutputError` listing their indices; nothing is
    skipped silently. `delete_corrupt=True` also deletes the undecodable ones so that a rerun of
    the same generate command renders them again.
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    plan = manifest["samples"]
    if n is None:
        n = len(plan)
    if not isinstance(n, int) or not 0 <= n <= len(plan):
        raise ValueError(f"n must be an integer in 0..{len(plan)} (the run's plan), got {n!r}")
    samples_dir = out_dir / SAMPLES_DIRNAME
    expected = expected_size(manifest)
    paths, missing, corrupt = [], [], {}
    for s in plan[:n]:
        path = samples_dir / s["file"]
        paths.append(path)
        if not path.is_file():
            missing.append(s["index"])
            continue
        why = decode_error(path, manifest["kind"], expected)
        if why is not None:
            corrupt[s["index"]] = why
            if delete_corrupt:
                path.unlink()
    if missing or corrupt:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (indices {_short(missing)})")
        if corrupt:
            first = next(iter(corrupt.items()))
            parts.append(f"{len(corrupt)} corrupt (indices {_short(list(corrupt))}; e.g. {first[0]}: {first[1]})")
        raise IncompleteOutputError(
            f"{out_dir}: of samples 0..{n - 1}, "
            + " and ".join(parts)
            + ". Rerun the same generate command to render them"
            + (
                ""
                if delete_corrupt or not corrupt
                else " with --repair (python -m ditguide.generate), which renders the corrupt "
                "files again; or delete them, and a rerun of the command that made them (dvc repro) renders them"
            )
            + ".",
            missing,
            corrupt,
        )
    return paths


def _short(indices: list[int], k: int = 20) -> str:
    return ", ".join(map(str, indices[:k])) + (f", ... ({len(indices) - k} more)" if len(indices) > k else "")


def prompt_map(out_dir: str | os.PathLike, n: int | None = None) -> dict[str, str]:
    """{file path: prompt} for samples 0..n-1: VBench's `custom_input` prompt file format."""
    out_dir = Path(out_dir)
    plan = load_manifest(out_dir)["samples"]
    return {str(out_dir / SAMPLES_DIRNAME / s["file"]): s["prompt"] for s in plan[: len(plan) if n is None else n]}
