"""The generation loop: render this process's shard of a sample plan into a folder, skipping finished files.

Part of `ditguide.generate` (the folder layout, the plan and the manifest are described there), which
re-exports these names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .generate_folder import (
    DEFAULT_VIDEO_CRF,
    PARTIAL_DIRNAME,
    build_manifest,
    check_output,
    delete_damaged,
    ensure_manifest,
    save_sample,
)
from .generate_plan import Renderer, Sample, plan_samples
from .generate_pool import check_workers, run_workers, worker_batches
from .metrics.folder import KINDS, MANIFEST_NAME, SAMPLES_DIRNAME, expected_size
from .metrics.vbench_score import VIDEOS_PER_PROMPT as VBENCH_VIDEOS_PER_PROMPT


@dataclass(frozen=True)
class GenerationSummary:
    out_dir: Path
    planned: int  # samples this call was asked for (all processes)
    assigned: int  # of those, this process's shard
    rendered: int  # rendered by this process in this call
    skipped: int  # already present in this process's shard (reused)
    repaired: int = 0  # of the rendered, damaged files (undecodable, wrong size) deleted first (repair=True)


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
    workers: int = 1,
) -> GenerationSummary:
    """Render `prompts` into `out_dir/samples/`, this process's shard only, skipping finished files.

    `base_seed` defaults to the renderer's `base_seed` attribute (or 0); if both are given they must
    agree, since the renderer draws the noise. `limit` renders only the first `limit` samples of the
    plan (the manifest still records the full plan, so a later run without `limit` continues it).
    `state` is an accelerate `PartialState` (default: a new one; anything with `num_processes`,
    `process_index`, `is_main_process` and `wait_for_everyone()` works). `repair=True` first decodes
    this shard's existing files and deletes the damaged ones (undecodable, or an image of the wrong
    size), so that they are rendered again; the summary counts them. `workers > 1`: this shard on that
    many forked single-threaded processes (`ditguide.generate_pool`; CPU only), with the same files.
    """
    kind, fps, base_seed = _checked_settings(renderer, batch_size, limit, video_crf, base_seed, workers)
    plan, samples_per_prompt = _validated_plan(renderer, prompts, kind, samples_per_prompt, base_seed, names)
    todo = plan if limit is None else plan[:limit]
    out_dir = Path(out_dir)
    samples_dir = out_dir / SAMPLES_DIRNAME
    state = default_state() if state is None else state
    rank, world = int(state.process_index), int(state.num_processes)

    manifest = build_manifest(
        renderer, plan, base_seed=base_seed, samples_per_prompt=samples_per_prompt, video_crf=video_crf
    )
    _open_folder(out_dir, manifest, state)

    mine = [s for s in todo if s.index % world == rank]
    expected = expected_size(manifest)
    repaired = delete_damaged(mine, samples_dir, kind, expected) if repair else {}
    pending = [s for s in mine if not (samples_dir / s.file).exists()]
    bar = dict(
        total=len(mine),
        initial=len(mine) - len(pending),
        desc=f"generate {out_dir.name} [{rank + 1}/{world}]",
        position=rank,
        disable=not progress,
    )
    _render_pending(renderer, pending, _Writer(out_dir, kind, expected, fps, video_crf), batch_size, bar, workers)
    return GenerationSummary(
        out_dir=out_dir,
        planned=len(todo),
        assigned=len(mine),
        rendered=len(pending),
        skipped=len(mine) - len(pending),
        repaired=len(repaired),
    )


def _checked_settings(
    renderer: Renderer, batch_size: int, limit: int | None, video_crf: int, base_seed: int | None, workers: int = 1
) -> tuple[str, int, int]:
    """The renderer's kind and fps (0 for images) and the run's base seed, every argument checked."""
    check_workers(workers)
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
    return kind, fps, base_seed


def _validated_plan(
    renderer: Renderer,
    prompts: Sequence[str],
    kind: str,
    samples_per_prompt: int | None,
    base_seed: int,
    names: Sequence[str] | None,
) -> tuple[list[Sample], int]:
    """The run's full plan and its samples per prompt; the renderer has checked the prompts (before
    any file is written)."""
    if samples_per_prompt is None:
        samples_per_prompt = VBENCH_VIDEOS_PER_PROMPT if kind == "video" else 1
    plan = plan_samples(prompts, kind, samples_per_prompt=samples_per_prompt, base_seed=base_seed, names=names)
    if hasattr(renderer, "validate"):
        renderer.validate(list(dict.fromkeys(s.prompt for s in plan)))
    return plan, samples_per_prompt


def _open_folder(out_dir: Path, manifest: dict, state) -> None:
    """Create or resume `out_dir` for this run: every process checks the manifest, the main process
    writes it and clears the leftovers of a killed run, then all wait for each other."""
    samples_dir = out_dir / SAMPLES_DIRNAME
    partial_dir = out_dir / PARTIAL_DIRNAME
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


@dataclass(frozen=True)
class _Writer:
    """Checks one output and writes it atomically into the run folder."""

    out_dir: Path
    kind: str
    expected: dict | None
    fps: int
    video_crf: int

    def save(self, sample: Sample, output) -> None:
        output = check_output(output, self.kind, sample.index, self.expected)
        samples_dir, partial_dir = self.out_dir / SAMPLES_DIRNAME, self.out_dir / PARTIAL_DIRNAME
        save_sample(sample, output, self.kind, samples_dir, partial_dir, self.fps, self.video_crf)


def _render_pending(
    renderer: Renderer, pending: list[Sample], writer: _Writer, batch_size: int, bar: dict, workers: int = 1
) -> None:
    """Render `pending` in batches of `batch_size`, each output checked and written atomically, with a
    progress bar (tqdm's keywords `bar`); on `workers` forked processes if more than one."""
    from tqdm.auto import tqdm

    if workers > 1:
        batch_size = worker_batches(len(pending), batch_size, workers)

    def render(samples: list[Sample], saved) -> None:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            outputs = renderer.render([s.prompt for s in batch], [s.index for s in batch])
            if len(outputs) != len(batch):
                raise ValueError(f"renderer returned {len(outputs)} outputs for {len(batch)} prompts")
            for sample, output in zip(batch, outputs):
                writer.save(sample, output)
                saved()

    progress = tqdm(unit=writer.kind, **bar)
    try:
        if workers > 1 and len(pending) > 1:
            run_workers(render, pending, workers, batch_size, progress)
        else:
            render(pending, lambda: progress.update(1))
    finally:
        progress.close()
