"""Render one shard's pending samples on several local worker processes, one torch thread each.

Why: a small model on a few CPU cores is bound by per-operation overhead and cache traffic, not by
arithmetic, so processes scale better than threads. On the 2-core reference machine two
single-threaded workers render the glyph-scene testbed about 1.4x as fast as one process with two
threads (`benchmarks/bench_workers.py` prints the ratio). The files do not change: sample i's noise
depends only on i, the testbeds' outputs do not depend on the thread count, and each worker renders
whole batches of the ones a single process would make (tests/test_generate_pool.py compares bytes).

Workers are forked (Linux/macOS), so the renderer and its pipeline are shared copy-on-write and need
no pickling. Each worker renders a contiguous chunk of the pending samples and writes every file
atomically, as the single-process loop does; the parent only shows the progress. A worker that fails
stops the run with one error naming it (its traceback is printed above); the files finished by any
worker are kept, so a rerun resumes.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import sys
from collections.abc import Callable, Sequence

POLL_SECONDS = 0.5


class WorkerError(RuntimeError):
    """A generation worker process failed; finished files are kept and a rerun resumes."""


def check_workers(workers) -> int:
    """`workers` as an int >= 1; a worker pool needs fork and a process that has not started CUDA."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1 (1: render in this process), got {workers!r}")
    if workers > 1:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError(f"workers={workers} needs the 'fork' start method, which this platform lacks; use 1")
        import torch

        if torch.cuda.is_initialized():
            raise ValueError(f"workers={workers}: CUDA is initialised in this process and cannot be forked; use 1")
    return workers


def worker_batches(count: int, batch_size: int, workers: int) -> int:
    """The batch size with `workers` processes: `batch_size`, or less so that every worker gets one."""
    return max(1, min(batch_size, math.ceil(count / workers)))


def chunks(items: Sequence, parts: int, batch_size: int = 1) -> list[list]:
    """`items` cut into batches of `batch_size`, the batches dealt out as `parts` contiguous, nearly
    equal chunks (empty ones dropped). Each chunk is whole batches, so rendering a chunk in batches of
    `batch_size` makes exactly the batches one process would: a matrix product can take another kernel
    for a tiny batch, and whole batches keep even the last bit of every file the same."""
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    n = len(batches)
    out = [[x for b in batches[k * n // parts : (k + 1) * n // parts] for x in b] for k in range(parts)]
    return [c for c in out if c]


def _worker(render: Callable, chunk: list, done) -> None:
    import torch

    torch.set_num_threads(1)
    # A forked Jupyter kernel's sys.stdout talks to a thread the child does not have: use the fds.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__

    def saved() -> None:
        with done.get_lock():
            done.value += 1

    render(chunk, saved)


def run_workers(
    render: Callable[[list, Callable[[], None]], None], pending: list, workers: int, batch_size: int, progress
) -> None:
    """`render(chunk, saved)` on `workers` forked processes, each chunk whole batches of `batch_size`
    and `saved()` called after each written file; `progress` (a tqdm bar) follows all of them."""
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("q", 0)
    procs = [
        ctx.Process(target=_worker, args=(render, chunk, done), name=f"generate-worker-{k}", daemon=True)
        for k, chunk in enumerate(chunks(pending, workers, batch_size))
    ]
    shown = 0
    try:
        for p in procs:
            p.start()
        while True:
            alive = any(p.is_alive() for p in procs)
            now = done.value
            progress.update(now - shown)
            shown = now
            if not alive:
                break
            # Wake at once when a worker exits (a fixed sleep would add up to POLL_SECONDS to every call).
            multiprocessing.connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=POLL_SECONDS)
        failed = [p for p in procs if p.exitcode != 0]
        if failed:
            p = failed[0]
            raise WorkerError(
                f"generation worker {p.name} failed (exit code {p.exitcode}; its traceback is printed above); "
                f"{shown} of {len(pending)} pending samples were written and are kept, rerun to resume"
            )
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
