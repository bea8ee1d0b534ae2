"""The T2V testbed's benchmark (moving captioned shapes): fixed captions, judged exactly, VBench-shaped.

Captions are `testbeds.clips.caption_set(split, per_set)`; the plan renders them `seed_sets` times
(sample i: caption i % per_set, seed set i // per_set), every method on the same per-index seeds.
Every dimension of `metrics.clips` (VBench's Quality and Semantic dimensions read by the generator's
exact judges), the VBench-shaped Quality, Semantic and Total, and the acceptance flags are computed
per seed set and reported as the mean with its standard error over the seed sets. Two reference rows
are scored the same way: real renders of the captions (the ceiling) and the same renders judged
against another caption of the set (chance). This is the scoring of `testbeds.evaluate_t2v`
(notebook 00_testbed_t2v), built here rather than imported (that module loads the twins' code); the
real renders are rounded to uint8 first, as a model's frames are (notebook 00 judges them in float).

Storage: `generate` keeps videos as mp4 (yuv420p), which halves the colour resolution of these
12 px frames (real renders lose a third of their Semantic score through it). This benchmark therefore
has `evaluate` store each clip losslessly, as one PNG frame strip (its frames side by side,
`FrameStrips`), and reads the strips back into clips: the judges see exactly what the model rendered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..profiles import Profile
from ..style import latex_table
from ..testbeds.plots_t2v import LABELS
from .base import SeedSetBenchmark, guidance_label, mean_se, tex

# The per-clip dimensions and flags of metrics.clips, then the VBench-shaped aggregates.
AGGREGATES = ("total", "quality", "semantic")


def keys() -> tuple[str, ...]:
    """Every number of a method's entry (each with its `_se`): the per-clip dimensions and flags of
    `metrics.clips`, then Quality, Semantic and Total."""
    from ..metrics import clips as M

    return (*M.PER_CLIP, *AGGREGATES)


def to_strip(video: np.ndarray) -> np.ndarray:
    """A (T, H, W, 3) clip as one (H, T*W, 3) image: its frames side by side, left to right."""
    t, h, w, c = video.shape
    return np.ascontiguousarray(video.transpose(1, 0, 2, 3).reshape(h, t * w, c))


def from_strip(strip: np.ndarray, frames: int) -> np.ndarray:
    """The (T, H, W, 3) clip of a frame strip (the inverse of `to_strip`)."""
    h, tw, c = strip.shape
    if tw % frames:
        raise ValueError(f"a frame strip {tw} px wide does not hold {frames} frames of equal width")
    return np.ascontiguousarray(strip.reshape(h, frames, tw // frames, c).transpose(1, 0, 2, 3))


class FrameStrips:
    """A video renderer whose clips `generate` stores losslessly, as PNG frame strips: an image run of
    (H, T*W) strips. Everything else (guidance, cost, validation, seeds) is the wrapped renderer's."""

    kind = "image"

    def __init__(self, renderer):
        if getattr(renderer, "kind", None) != "video":
            raise ValueError(f"FrameStrips wraps a video renderer, got kind={getattr(renderer, 'kind', None)!r}")
        self.renderer = renderer

    def __getattr__(self, name):  # guidance, cfg_scale, base_seed, nfe_per_step, validate, last_cost, ...
        if name == "renderer":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.renderer, name)

    def describe(self) -> dict:
        d = dict(self.renderer.describe())
        frames, width = d.get("num_frames"), d.get("width")
        if isinstance(frames, int) and isinstance(width, int):
            d.update(width=frames * width, frame_width=width)
        d["storage"] = "frame strip: a clip's frames side by side in one PNG (lossless)"
        return d

    def render(self, prompts: list[str], indices: list[int]) -> list[np.ndarray]:
        return [to_strip(np.asarray(v)) for v in self.renderer.render(prompts, indices)]


def references(texts: list[str], seed_sets: int, seed: int = 0) -> tuple[dict, dict]:
    """Real renders of the captions (one block per seed set, the rng seeds of notebook 00_testbed_t2v)
    scored against their captions (the ceiling) and against caption i - 1 of the set (chance)."""
    from ..testbeds import clips

    parsed = [clips.parse_caption(c) for c in texts]
    videos = np.concatenate([clips.render(parsed, np.random.default_rng(seed + 1 + k))[0] for k in range(seed_sets)])
    videos = np.round(videos * 255).astype(np.uint8)  # what a renderer hands over (uint8 frames)
    wrong = [texts[j] for j in np.roll(np.arange(len(texts)), 1)]
    return score_sets(videos, texts * seed_sets, len(texts)), score_sets(videos, wrong * seed_sets, len(texts))


def score_sets(videos: np.ndarray, prompts: Sequence[str], per_set: int) -> dict:
    """Mean and standard error over seed sets (consecutive blocks of `per_set` clips) of every
    dimension, flag and VBench-shaped aggregate of `metrics.clips`, and each set's aggregates."""
    from ..metrics import clips as M

    per_clip = M.score_clips(videos, list(prompts))
    sets = []
    for k0 in range(0, len(prompts), per_set):
        block = {k: v[k0 : k0 + per_set] for k, v in per_clip.items()}
        sets.append({**M.aggregate(block), "count": len(block["motion"])})
    # Each seed set's aggregates too: two methods share the seeds of a set, so they compare paired.
    return {**mean_se(sets, keys()), "seed_set_scores": [{k: s[k] for k in AGGREGATES} for s in sets]}


class Clips(SeedSetBenchmark):
    """split: caption list (dev to tune, test to report, unseen: a held-out (shape, motion) pair in
    every caption); per_set: captions per seed set; seed_sets: how many times each caption is rendered
    (>= 3, for standard errors)."""

    name = "clips"
    kind = "video"
    task = "t2v"

    def __init__(self, split: str = "test", per_set: int = 250, seed_sets: int = 4):
        self._seed_sets(split, per_set, seed_sets)
        self._real = self._chance = None

    @classmethod
    def unfit(cls, profile: Profile) -> str | None:
        from ..testbeds import clips

        size = clips.SIZE
        if profile.family != "toy" or profile.kind != "video" or (profile.height, profile.width) != (size, size):
            return f"it needs a toy-family {size}x{size} video profile (the moving-shapes T2V testbed)"
        return None

    def _texts(self) -> list[str]:
        from ..testbeds import clips

        return [c.caption() for c in clips.caption_set(self.split, self.per_set)]

    def prepare(self, profile: Profile, *, device: str, main_process: bool = True) -> None:
        self._real, self._chance = references(self._texts(), self.seed_sets)

    def wrap_renderer(self, renderer):
        return FrameStrips(renderer)

    def videos(self, samples) -> np.ndarray:
        """(N, T, H, W, 3) uint8 clips of `samples`: frame strips (what `evaluate` stores for this
        benchmark) or clip arrays. mp4 files are refused: their yuv420p colour is not what was rendered."""
        if samples.kind == "image":
            strips = [samples.image(i) for i in range(len(samples))]
            return np.stack([from_strip(s, s.shape[1] // s.shape[0]) for s in strips])  # square frames
        if samples.arrays is None:
            raise ValueError(
                "the clips benchmark scores lossless clips (PNG frame strips or arrays); mp4 files halve the "
                "colour resolution of 12 px frames. Render them through ditguide.evaluation.evaluate"
            )
        return np.stack(samples.arrays)

    def score(self, samples) -> dict:
        if len(samples) % self.per_set:
            raise ValueError(f"{len(samples)} clips are not whole seed sets of per_set={self.per_set}")
        return score_sets(self.videos(samples), samples.prompts, self.per_set)

    def header(self, profile: Profile, base_seed: int, methods: dict) -> dict:
        return {
            "split": self.split,
            "per_set": self.per_set,
            "seed_sets": self.seed_sets,
            "steps": profile.steps,
            "frames": profile.num_frames,
            "base_seed": base_seed,
            "default_cfg_scale": profile.cfg_scale,
            "storage": "lossless: one PNG frame strip per clip (frames side by side)",
            "scoring": "ditguide.metrics.clips: exact judges per VBench dimension; Quality, Semantic and Total "
            "normalised and weighted as VBench over the dimensions present",
            "real": self._real,
            "chance": self._chance,
        }

    def summary(self, name: str, m: dict) -> str:
        return (
            f"{name:>18}: Total {m['total']:.3f} ± {m['total_se']:.3f}  Semantic {m['semantic']:.3f} ± "
            f"{m['semantic_se']:.3f}  Quality {m['quality']:.3f} ± {m['quality_se']:.3f}  "
            f"NFE/step {m['nfe_per_step']:g}"
        )

    @staticmethod
    def _caption(metrics: dict) -> str:
        return (
            f"T2V testbed ({tex(metrics['profile'])}), {metrics['split']} captions: {metrics['seed_sets']} seed sets "
            f"of {metrics['per_set']} clips (mean ± standard error over seed sets), {metrics['frames']} frames, "
            f"{metrics['steps']} Euler steps. VBench-shaped scores with exact judges (higher is better); "
            "NFE/step: transformer forwards per step."
        )

    def _rows(self, metrics: dict, columns: Sequence[str]) -> list[tuple]:
        def cells(m):
            return tuple(f"{m[k]:.3f} ± {m[k + '_se']:.3f}" for k in columns)

        rows = [
            (name, guidance_label(m), f"{m['nfe_per_step']:.2f}", *cells(m)) for name, m in metrics["methods"].items()
        ]
        rows.append(("real renders", "-", "-", *cells(metrics["real"])))
        rows.append(("chance (wrong caption)", "-", "-", *cells(metrics["chance"])))
        return rows

    def table(self, metrics: dict) -> str:
        """Methods (and the two reference rows) x (NFE/step, Total, Quality, Semantic, shown+moving)."""
        columns = (*AGGREGATES, "shown_and_moving")
        return latex_table(
            self._rows(metrics, columns),
            ["method", "guidance", "NFE/step", *(LABELS[k] for k in columns)],
            caption=self._caption(metrics),
            label=f"tab:t2v_{metrics['profile']}",
        )

    def dimensions_table(self, metrics: dict) -> str:
        """Methods x every dimension (Semantic ones first), mean ± standard error."""
        from ..metrics import clips as M

        columns = (*M.SEMANTIC, *M.QUALITY)
        return latex_table(
            self._rows(metrics, columns),
            ["method", "guidance", "NFE/step", *(LABELS[k] for k in columns)],
            caption=self._caption(metrics),
            label=f"tab:t2v_{metrics['profile']}_dimensions",
        )

    def tables(self, metrics: dict) -> dict[str, str]:
        return {"": self.table(metrics), "_dimensions": self.dimensions_table(metrics)}

    def tradeoff_figure(self, metrics: dict):
        """Left: Quality (x) against Semantic (y), 95 % bars, the real renders as a cross. Right: every
        dimension, one marker per method."""
        import matplotlib.pyplot as plt

        from .. import style
        from ..metrics import clips as M

        methods = metrics["methods"]
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(style.FULL, 2.4), gridspec_kw={"width_ratios": [1, 2]})
        for name, m in methods.items():
            ax.errorbar(
                m["quality"],
                m["semantic"],
                xerr=1.96 * m["quality_se"],
                yerr=1.96 * m["semantic_se"],
                color=style.color(name),
                fmt="o",
                ms=3,
            )
            ax.annotate(name, (m["quality"], m["semantic"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        real = metrics["real"]
        ax.plot(real["quality"], real["semantic"], "k+", ms=6)
        ax.annotate(
            "real renders",
            (real["quality"], real["semantic"]),
            fontsize=6,
            xytext=(-3, -8),
            textcoords="offset points",
            ha="right",
        )
        ax.set_xlabel("Quality ↑")
        ax.set_ylabel("Semantic ↑")

        dims = (*M.SEMANTIC, *M.QUALITY)
        offsets = np.linspace(-0.25, 0.25, len(methods)) if len(methods) > 1 else [0.0]
        for off, (name, m) in zip(offsets, methods.items()):
            bx.scatter(np.arange(len(dims)) + off, [m[d] for d in dims], s=10, label=name, color=style.color(name))
        bx.scatter(np.arange(len(dims)), [real[d] for d in dims], s=14, marker="+", color="k", label="real renders")
        bx.set_xticks(np.arange(len(dims)), [LABELS[d] for d in dims], rotation=30, ha="right")
        bx.set_ylabel("score ↑")
        bx.legend(frameon=False, fontsize=5, ncol=2)
        fig.tight_layout()
        return fig

    def sample_grid(
        self, metrics: dict, run_dirs: dict[str, Path], methods: Sequence[str] | None = None, count: int = 3
    ):
        """Rows: real renders, then the methods (default all); columns: every frame of the first `count`
        clips (the same captions and seeds in every row)."""
        from ..metrics import Samples
        from ..testbeds import clips
        from ..testbeds.plots_t2v import sample_strip

        methods = list(methods or metrics["methods"])
        texts = self._texts()[:count]
        real = clips.render([clips.parse_caption(t) for t in texts], np.random.default_rng(1))[0]
        videos = {"real renders": np.round(real * 255).astype(np.uint8)}
        for name in methods:
            videos[name] = self.videos(Samples.from_dir(run_dirs[name], count))
        return sample_strip(videos, list(videos), texts, clips_shown=count)
