"""The sample plan of a generation run: prompts and file names from files, which sample is which, and
the protocol of what renders them.

Sample `index` of a run is seed `index % samples_per_prompt` of prompt `index // samples_per_prompt`,
with the noise of `sample_seed(index, base_seed)`; its file name is `{index:05d}.png` for images and
VBench's `{prompt}-{i}.mp4` for videos, or a name the user gives (`--names FILE`). Part of
`ditguide.generate`, which re-exports these names.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .metrics.folder import KINDS
from .metrics.vbench_score import VIDEOS_PER_PROMPT as VBENCH_VIDEOS_PER_PROMPT
from .seeding import sample_seed

# Most filesystems (ext4, xfs, NFS) cap one file name at 255 bytes.
MAX_FILE_NAME_BYTES = 255


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
    files = _sample_files(prompts, kind, samples_per_prompt, names)
    return [
        Sample(index=k, prompt=prompts[k // samples_per_prompt], file=files[k], seed=sample_seed(k, base_seed))
        for k in range(n)
    ]


def _sample_files(prompts: list[str], kind: str, samples_per_prompt: int, names: Sequence[str] | None) -> list[str]:
    """Every sample's file name, in index order; an error if two samples would share one."""
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
    return files
