"""The T2V testbed's store of rendered clips: every method's clips in chunks of `batch_size` under
one folder, with a manifest of the renderer, captions and seeds. A rerun reuses finished chunks of
the same run and refuses a folder of another run; missing chunks can render on forked workers.
(`generate` keeps image samples as PNG files; these clips are scored as arrays, so they stay `.npy`.)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..generate_pool import run_workers
from ..io import atomic_path
from ..profiles import ConfigError
from ..render import PipelineRenderer


def render_chunks(
    renderer: PipelineRenderer, prompts: list[str], out: Path, batch_size: int, label: str | None, workers: int = 1
) -> np.ndarray:
    """Render (or reuse) every clip of a method in chunks; returns (N, F, H, W, 3) uint8. Progress is
    printed per chunk under `label` (None: silent). `workers > 1` renders the missing chunks on that
    many forked single-threaded processes (`ditguide.generate_pool`); the chunks are the same."""
    _open_chunks(renderer, prompts, out, batch_size)
    starts = list(range(0, len(prompts), batch_size))
    missing = [k0 for k0 in starts if not _chunk_path(out, k0).is_file()]
    left = sum(min(batch_size, len(prompts) - k0) for k0 in missing)
    progress = _ChunkProgress(label, len(prompts) - left, len(prompts), batch_size)

    def render(chunk_starts: list[int], saved) -> None:
        for k0 in chunk_starts:
            idx = list(range(k0, min(k0 + batch_size, len(prompts))))
            frames = np.stack(renderer.render([prompts[i] for i in idx], idx))
            with atomic_path(_chunk_path(out, k0), suffix=".tmp.npy") as tmp:  # np.save keeps a ".npy" name
                np.save(tmp, frames)
            saved()

    if workers > 1 and len(missing) > 1:
        run_workers(render, missing, workers, 1, progress)
    else:
        render(missing, lambda: progress.update(1))
    return np.concatenate([np.load(_chunk_path(out, k0)) for k0 in starts])


def _chunk_path(out: Path, k0: int) -> Path:
    return out / f"chunk_{k0:06d}.npy"


def _open_chunks(renderer: PipelineRenderer, prompts: list[str], out: Path, batch_size: int) -> None:
    """Create `out` with the run's manifest, or check that it holds this run's chunks."""
    manifest = {
        "renderer": renderer.describe(),
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "count": len(prompts),
        "batch_size": batch_size,
    }
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise ConfigError(
                f"{out} holds clips of another run (differs in {', '.join(diff)}); remove it or pick another runs_dir"
            )
    else:
        mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True))


class _ChunkProgress:
    """A line per finished chunk (`update(chunks)`, tqdm's interface for generate_pool)."""

    def __init__(self, label: str | None, done: int, total: int, batch_size: int):
        self.label, self.done, self.total, self.batch_size, self.start = label, done, total, batch_size, time.time()

    def update(self, chunks: int) -> None:
        for _ in range(chunks):
            self.done = min(self.total, self.done + self.batch_size)
            if self.label is not None:
                print(f"  {self.label}: {self.done}/{self.total} clips ({time.time() - self.start:.0f} s)", flush=True)
