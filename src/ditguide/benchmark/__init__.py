"""Benchmarks: captions with stable ids, reference data and scorers, one interface (`base.Benchmark`).

    digits   the digit toy: toy FD / toy CLIP / accuracy by the toy's digit judge (8x8 toy profiles)
    scenes   the glyph-scene testbed: FD, per-attribute alignment, precision/recall by the scene judge
    clips    the moving-shapes T2V testbed: VBench-shaped Total, Quality, Semantic and each dimension by
             exact judges (`metrics.clips`); clips stored losslessly as PNG frame strips
    coco     MS-COCO 2017: FID (clean-fid) and CLIP-SIM (open_clip) against a prepared reference
    vbench   VBench: per-dimension scores; Quality, Semantic and Total with all 16 dimensions

`ditguide.evaluation.evaluate(profile, benchmark, methods)` runs any of them on any profile it fits.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..profiles import ConfigError, Profile
from .base import Benchmark, Caption
from .clips import Clips
from .coco2017 import Coco
from .digits import Digits
from .scenes import Scenes
from .vbench import VBench

# In the order a profile's default benchmark is looked for (the first that fits it).
BENCHMARKS: dict[str, type[Benchmark]] = {
    "digits": Digits,
    "scenes": Scenes,
    "clips": Clips,
    "coco": Coco,
    "vbench": VBench,
}

__all__ = ["BENCHMARKS", "Benchmark", "Caption", "Clips", "Coco", "Digits", "Scenes", "VBench", "get_benchmark"]


def get_benchmark(benchmark: str | Benchmark | None, profile: Profile, options: Mapping | None = None) -> Benchmark:
    """The benchmark to run on `profile`: a name of BENCHMARKS with `options` (its keywords), a
    Benchmark instance (no options), or None for the first benchmark that fits the profile.
    ConfigError naming what is allowed when the name, an option or the profile does not fit."""
    if isinstance(benchmark, Benchmark):
        if options:
            raise ConfigError("benchmark_options apply to a benchmark given by name, not to a Benchmark instance")
        _check_fits(type(benchmark), profile)
        return benchmark
    if benchmark is None:
        benchmark = _default_name(profile)
    if not isinstance(benchmark, str) or benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark={benchmark!r} is not allowed; allowed: {', '.join(BENCHMARKS)} or None")
    cls = BENCHMARKS[benchmark]
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise ConfigError(f"benchmark_options={options!r} is not allowed; allowed: a mapping of {benchmark}'s options")
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        raise ConfigError(
            f"benchmark_options: {', '.join(map(repr, unknown))} is not an option of benchmark {benchmark!r}; "
            f"allowed: {', '.join(cls.options())}"
        )
    _check_fits(cls, profile)
    return cls(**options)


def _check_fits(cls: type[Benchmark], profile: Profile) -> None:
    why = cls.unfit(profile)
    if why is not None:
        raise ConfigError(f"benchmark {cls.name!r} cannot evaluate profile {profile.name!r}: {why}")


def _default_name(profile: Profile) -> str:
    reasons = {}
    for name, cls in BENCHMARKS.items():
        reasons[name] = cls.unfit(profile)
        if reasons[name] is None:
            return name
    raise ConfigError(
        f"profile {profile.name!r} has no benchmark: " + "; ".join(f"{n}: {why}" for n, why in reasons.items())
    )
