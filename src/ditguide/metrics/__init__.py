"""Metrics judge outputs, never models: one evaluation API for FID, CLIP-SIM, VBench and the toy metrics.

A metric is any object with

    name: str                  e.g. "fid", "clip_sim", "vbench_total", "toy_fd"
    higher_is_better: bool
    __call__(samples: Samples) -> MetricResult

`Samples` is what every metric reads: the outputs of one run and the prompts they were made from,
in sample-index order, either as files in a generation folder (`Samples.from_dir`, which checks
that every expected file exists and decodes) or as in-memory arrays (`Samples.from_arrays`, what
the toy pipeline produces). A metric states its protocol in `MetricResult.details` (library,
judge model, resolution, reference set), so a stored number says how it was measured.

The heavy metrics live in submodules and are imported explicitly (importing this package loads
only NumPy): `metrics.fid.FID`, `metrics.clip_sim.ClipSim`, `metrics.vbench_score.VBench`, and the
toy metrics in `metrics.toy`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .folder import KINDS, SAMPLES_DIRNAME, load_manifest, verify


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float
    higher_is_better: bool
    n: int  # how many samples were judged
    details: dict = field(default_factory=dict)  # protocol and secondary numbers (std, CI, KID, sub-scores)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "n": self.n,
            "details": self.details,
        }


@dataclass(frozen=True)
class Samples:
    """Outputs of one run and their prompts, in sample-index order (files or arrays, not both)."""

    kind: str
    prompts: tuple[str, ...]
    paths: tuple[Path, ...] | None = None
    arrays: tuple[np.ndarray, ...] | None = None
    root: Path | None = None  # the folder holding `paths` (VBench evaluates a folder)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not allowed; allowed: {', '.join(KINDS)}")
        if (self.paths is None) == (self.arrays is None):
            raise ValueError("Samples needs exactly one of paths or arrays")
        n = len(self.paths if self.paths is not None else self.arrays)
        if n != len(self.prompts):
            raise ValueError(f"Samples has {n} outputs but {len(self.prompts)} prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_dir(cls, out_dir: str | os.PathLike, n: int | None = None) -> Samples:
        """The first n samples (default all) of a `ditguide.generate` folder, after `verify`."""
        paths = verify(out_dir, n)
        manifest = load_manifest(out_dir)
        prompts = tuple(s["prompt"] for s in manifest["samples"][: len(paths)])
        return cls(kind=manifest["kind"], prompts=prompts, paths=tuple(paths), root=Path(out_dir) / SAMPLES_DIRNAME)

    @classmethod
    def from_arrays(cls, arrays: Iterable[np.ndarray], prompts: Sequence[str], kind: str = "image") -> Samples:
        return cls(kind=kind, prompts=tuple(prompts), arrays=tuple(np.asarray(a) for a in arrays))

    def image(self, i: int) -> np.ndarray:
        """Sample i as an HxWx3 uint8 array (images only)."""
        if self.kind != "image":
            raise ValueError("Samples.image() is for image samples; these are videos")
        if self.arrays is not None:
            return self.arrays[i]
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))


@runtime_checkable
class Metric(Protocol):
    name: str
    higher_is_better: bool

    def __call__(self, samples: Samples) -> MetricResult: ...


def evaluate(samples: Samples, metrics: Sequence[Metric]) -> dict[str, MetricResult]:
    """Run each metric on the same samples; names must be distinct."""
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be distinct, got {names}")
    return {m.name: m(samples) for m in metrics}


def mean_with_ci(values: Sequence[float], z: float = 1.959964) -> dict:
    """Mean, sample std and a normal-approximation 95% confidence interval of per-sample scores."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values")
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = z * std / np.sqrt(x.size)
    return {"mean": float(x.mean()), "std": std, "ci95": [float(x.mean() - half), float(x.mean() + half)]}
