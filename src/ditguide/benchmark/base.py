"""The benchmark interface: what `ditguide.evaluation.evaluate` asks of a benchmark.

A benchmark owns its captions (each with a stable id), its reference data and its scorers, and how
its numbers are shown. `evaluate` owns everything else: the methods, the pipeline, the sample
folders (`generate`), and the per-method cost. Every benchmark is therefore scored on files that
`generate` wrote, read back as `metrics.Samples`, whatever the model.

Lifecycle, in the order `evaluate` calls it (everything that can fail on a user's input fails
before the first sample is rendered):

    Benchmark(**options)      validates its options (no data read, no model)
    unfit(profile)            why it cannot evaluate a profile, or None (a classmethod)
    prepare(profile, ...)     reads its reference data and loads its scorers
    captions()                the prompt list in sample order, with stable ids
    wrap_renderer(renderer)   what `generate` renders with (default: the renderer as it is)
    score(samples)            one method's numbers (a dict)
    header(profile, ...)      the metrics' entries besides "profile" and "methods"
    table / tables / tradeoff_figure / sample_grid   drawn from the metrics (the grid reads samples)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..profiles import ConfigError, Profile


@dataclass(frozen=True)
class Caption:
    """One prompt of a benchmark. `id` is stable across runs and machines (a COCO caption id, a VBench
    prompt, a split position); a caption rendered with several seed sets repeats its id."""

    id: str
    text: str
    meta: Mapping = field(default_factory=dict)  # e.g. the digit label, VBench's dimensions


class Benchmark:
    """Base class of the benchmarks. Subclasses set the class attributes and override the methods."""

    name: str = ""  # the registry name (ditguide.benchmark.BENCHMARKS)
    kind: str = "image"  # what the scorers read: "image" or "video"
    task: str = "t2i"  # run folders: runs/<profile>/<task>/<method>-<key>
    samples_per_prompt: int = 1  # seeds per caption, consecutive sample indices (VBench: 5)

    @classmethod
    def unfit(cls, profile: Profile) -> str | None:
        """Why this benchmark cannot evaluate `profile` (a sentence), or None when it can."""
        raise NotImplementedError

    def prepare(self, profile: Profile, *, device: str, main_process: bool = True) -> None:
        """Read the reference data and load the scorers. Scorers load on the main process only: under
        `accelerate launch` the other processes only render."""
        raise NotImplementedError

    def captions(self) -> list[Caption]:
        """The prompts in sample order (after `prepare`: some benchmarks read them from disk)."""
        raise NotImplementedError

    def wrap_renderer(self, renderer):
        """What `generate` renders with for this benchmark: `renderer` itself, or a wrapper that stores
        its outputs another way (the clips benchmark: lossless PNG frame strips instead of mp4)."""
        return renderer

    def count(self) -> int:
        """How many samples of the plan are rendered and scored (a stated subset may be fewer)."""
        return len(self.captions()) * self.samples_per_prompt

    def score(self, samples) -> dict:
        raise NotImplementedError

    def header(self, profile: Profile, base_seed: int, methods: dict) -> dict:
        raise NotImplementedError

    def summary(self, name: str, entry: dict) -> str:
        """One printed line per method."""
        raise NotImplementedError

    def table(self, metrics: dict) -> str:
        raise NotImplementedError

    def tables(self, metrics: dict) -> dict[str, str]:
        """Every LaTeX table, by file-name suffix ("" is `table`)."""
        return {"": self.table(metrics)}

    def tradeoff_figure(self, metrics: dict):
        raise NotImplementedError

    def sample_grid(self, metrics: dict, run_dirs: dict[str, Path], methods: Sequence[str] | None = None, **kw):
        raise NotImplementedError

    @classmethod
    def options(cls) -> list[str]:
        """The keyword options of this benchmark (its constructor's parameters)."""
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


class SeedSetBenchmark(Benchmark):
    """A testbed benchmark: the fixed caption list of one split (`_texts`), rendered `seed_sets` times
    (sample i: caption i % per_set, seed set i // per_set), so every method sees the same per-index
    seeds and each metric gets a standard error over the seed sets."""

    splits: tuple[str, ...] = ("dev", "test", "unseen")

    def _seed_sets(self, split: str, per_set: int, seed_sets: int) -> None:
        """Check and keep the split, its captions per seed set, and the number of seed sets."""
        check_option(split in self.splits, "split", split, ", ".join(self.splits))
        check_option(is_int(per_set, 10), "per_set", per_set, "an integer >= 10")
        check_option(is_int(seed_sets, 3), "seed_sets", seed_sets, "an integer >= 3 (standard errors need them)")
        self.split, self.per_set, self.seed_sets = split, per_set, seed_sets

    def _texts(self) -> list[str]:
        """The split's `per_set` captions, in order."""
        raise NotImplementedError

    def captions(self) -> list[Caption]:
        texts = self._texts()
        return [
            Caption(f"{self.split}/{i}", text, {"seed_set": k})
            for k in range(self.seed_sets)
            for i, text in enumerate(texts)
        ]


def check_option(cond: bool, name: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def mean_se(sets: list[dict], keys: Sequence[str]) -> dict:
    """Mean and standard error over seed sets of each key present, and the total count."""
    out = {}
    for key in keys:
        vals = np.array([s[key] for s in sets if key in s], dtype=np.float64)
        if len(vals):
            out[key] = float(vals.mean())
            out[f"{key}_se"] = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
    out["count"] = int(sum(s["count"] for s in sets))
    return out


def tex(text) -> str:
    """Underscores of names (dimensions, model tags) escaped for a LaTeX caption."""
    return str(text).replace("_", "\\_")


def guidance_label(m: dict) -> str:
    """The guidance column of a table: the spec's name, or the pipeline's own CFG scale."""
    if m.get("spec") is not None:
        return m["spec"].get("name") or "spec"
    return f"CFG {m['cfg_scale']:g}" if m["cfg_scale"] > 1 else "CFG off"


def image_of(run_dir: Path, index: int) -> np.ndarray:
    """Sample `index` of a generation folder as an HxWx3 uint8 array."""
    from PIL import Image

    from ..metrics.folder import SAMPLES_DIRNAME, load_manifest

    plan = load_manifest(run_dir)["samples"]
    with Image.open(Path(run_dir) / SAMPLES_DIRNAME / plan[index]["file"]) as im:
        return np.asarray(im.convert("RGB"))
