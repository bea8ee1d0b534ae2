"""The GPU time of the configured layer-map scan on a real profile, from timed forwards: measured
per-sample costs (a forward, each block, the rest of a sample, the judges) x the count of configs x
samples x steps x NFE, so the notebook prints the cost before the scan starts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import analysis
from ..families import get_family
from .real_bed import RealBed


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class CostEstimate:
    """Seconds per sample (measured) and the scan's totals. forward_s: one transformer forward; block_s:
    each block's share of it; other_s: the rest of a sample (text encoding, decoding, scheduler) over
    `steps` steps; judge_s: scoring one sample."""

    device: str
    batch_size: int
    steps: int
    nfe_per_step: float
    forward_s: float
    block_s: dict[str, float]
    other_s: float
    judge_s: float
    configs: int
    samples_per_config: int
    denoiser_samples: int
    generation_s: float = 0.0
    denoiser_s: float = 0.0
    timed_steps: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.generation_s + self.denoiser_s

    def to_dict(self) -> dict:
        return asdict(self) | {"total_s": self.total_s}

    def summary(self) -> str:
        h = lambda s: f"{s / 3600:.1f} h" if s >= 360 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"  # noqa: E731
        return (
            f"Estimated GPU time of the configured scan on {self.device}: {h(self.total_s)} "
            f"(generation {h(self.generation_s)}: {self.configs} configs incl. the unedited one x "
            f"{self.samples_per_config} samples x {self.steps} steps x {self.nfe_per_step:g} NFE at "
            f"{self.forward_s * 1e3:.1f} ms per forward per sample, plus {self.other_s:.2f} s decoding/encoding and "
            f"{self.judge_s:.2f} s judging per sample; denoiser scan {h(self.denoiser_s)}: {self.denoiser_samples} "
            f"trajectories). Measured from {self.timed_steps} timed steps at batch {self.batch_size}; "
            + "; ".join(self.notes)
        )


class _Timer:
    """Wall time of every forward of the transformer and of each block (synchronised on CUDA)."""

    def __init__(self, pipe, device: str):
        self.device, self.model = device, pipe.transformer
        self.blocks = get_family(self.model).blocks(self.model)
        self.times: dict[int, list[float]] = {}  # id(module) -> durations
        self._handles, self._start = [], {}

    def __enter__(self):
        for m in (self.model, *self.blocks):
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _pre(self, module, args):
        _sync(self.device)
        self._start[id(module)] = time.perf_counter()

    def _post(self, module, args, output):
        _sync(self.device)
        self.times.setdefault(id(module), []).append(time.perf_counter() - self._start[id(module)])

    def of(self, module) -> list[float]:
        return self.times.get(id(module), [])


def _time_sampling(pipe, bed: RealBed, captions: list[str], timed_steps: int) -> tuple[dict, np.ndarray]:
    """Per-sample seconds of a forward, of each block and of the rest of a sample, from one warm-up
    sampling (1 step: kernels, allocations) and one timed sampling of `timed_steps` steps."""
    indices = list(range(len(captions)))
    noop = lambda p, i, t, kw: kw  # noqa: E731
    with torch.no_grad():
        bed.sample(pipe, captions, indices, steps=1, base_seed=0, callback=noop)
        with _Timer(pipe, bed.device) as timer:
            _sync(bed.device)
            start = time.perf_counter()
            samples = bed.sample(pipe, captions, indices, steps=timed_steps, base_seed=0, callback=noop)
            _sync(bed.device)
            wall = time.perf_counter() - start
    n, calls = len(captions), timer.of(timer.model)
    every = analysis.block_addresses(pipe.transformer)
    return {
        "forward_s": float(np.mean(calls)) / n,
        "nfe_per_step": len(calls) / timed_steps,
        "block_s": {b: float(np.mean(timer.of(m))) / n for b, m in zip(every, timer.blocks)},
        "other_s": max(wall - float(np.sum(calls)), 0.0) / n,
    }, samples


def estimate_gpu_time(
    pipe,
    bed: RealBed,
    *,
    denoiser_samples: int,
    per_set: int,
    seed_sets: int,
    edits: Sequence[str] = tuple(analysis.EDITS),
    window_edits: Sequence[str] = analysis.WINDOW_EDITS,
    blocks: Sequence[str] | None = None,
    timed_steps: int = 2,
) -> CostEstimate:
    """The device time of the configured scan: measured per-sample costs (a forward, each block, the rest
    of a sample, the judges) x the count of configs x samples x steps x NFE. A skip saves its block's
    measured share of a forward at the steps it is active; the other edits are charged a full forward."""
    for e in (*edits, *window_edits):
        analysis.edit_string(e, "x")
    blocks = analysis.check_blocks(pipe.transformer, blocks)
    samples_per_config = per_set * seed_sets
    n = min(bed.batch_size, samples_per_config)
    captions = bed.captions(bed.split, min(n, per_set))
    captions = (captions * n)[:n]
    measured, samples = _time_sampling(pipe, bed, captions, timed_steps)
    bed.per_sample(samples, captions)  # warm-up of the judges
    _sync(bed.device)
    start = time.perf_counter()
    bed.per_sample(samples, captions)
    _sync(bed.device)
    judge_s = (time.perf_counter() - start) / n
    steps, nfe, forward = bed.profile.steps, measured["nfe_per_step"], measured["forward_s"]
    full = steps * nfe * forward + measured["other_s"]
    total = full + judge_s  # the unedited config
    for edit, block, window in analysis.generation_configs(blocks, edits, window_edits):
        active = steps if window == "all" else len(analysis.window_steps(analysis.WINDOWS[window], steps))
        saved = measured["block_s"][block] * nfe * active if edit == "skip" else 0.0
        total += full - saved + judge_s
    return CostEstimate(
        device=torch.cuda.get_device_name() if bed.device.startswith("cuda") else bed.device,
        batch_size=n,
        steps=steps,
        nfe_per_step=nfe,
        forward_s=forward,
        block_s=measured["block_s"],
        other_s=measured["other_s"],
        judge_s=judge_s,
        configs=1 + len(analysis.generation_configs(blocks, edits, window_edits)),
        samples_per_config=samples_per_config,
        denoiser_samples=denoiser_samples,
        generation_s=total * samples_per_config,
        denoiser_s=full * denoiser_samples,
        timed_steps=timed_steps,
        notes=[
            "a skip saves its block's share of a forward, other edits cost a full one",
            "from scratch (a resumed scan skips its finished configs)",
        ],
    )
