"""The glyph-scene testbed's benchmark: fixed compositional captions, judged exactly.

Captions are `testbeds.scenes.caption_set(split, per_set)`; the plan renders them `seed_sets` times
(sample i: caption i % per_set, seed set i // per_set), every method on the same per-index seeds.
Each metric of `metrics.scenes.scene_metrics` is computed per seed set (FD against held-out-glyph
renders of the same captions) and reported as the mean with its standard error. The floor is
train-pool renders of the same captions at the same size: what a perfect generator would score.

This is the scoring of `ditguide.testbeds.evaluate` (notebook 00), which a test holds it equal to.
The reference and the floor are built here, not imported from there: `testbeds.evaluate` imports
`evaluation_real`, which imports this package, so importing it back would make an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..profiles import Profile
from ..style import latex_table
from .base import SeedSetBenchmark, mean_se

METRICS = ("fd", "all", "digit", "colour", "relation", "precision", "recall")
REFERENCE_DRAWS = 4  # reference renders per caption (held-out glyphs), as notebook 00
SIZE = 16


class Scenes(SeedSetBenchmark):
    """split: caption list (dev to tune, test to report, unseen: held-out attribute pairs); per_set:
    captions per seed set; seed_sets: how many times each caption is rendered (>= 3, for standard
    errors); judge_path: the scene judge (the train_scenes_judge stage's output)."""

    name = "scenes"
    task = "t2i"

    def __init__(
        self,
        split: str = "test",
        per_set: int = 500,
        seed_sets: int = 4,
        judge_path: str = "data/scenes/judge.safetensors",
    ):
        self._seed_sets(split, per_set, seed_sets)
        self.judge_path = str(judge_path)
        self._judge = self._reference = self._floor = None

    @classmethod
    def unfit(cls, profile: Profile) -> str | None:
        if profile.family != "toy" or profile.kind != "image" or (profile.height, profile.width) != (SIZE, SIZE):
            return f"it needs a toy-family {SIZE}x{SIZE} image profile (the glyph-scene testbed)"
        return None

    def _texts(self) -> list[str]:
        from ..testbeds import scenes

        return [s.caption() for s in scenes.caption_set(self.split, self.per_set)]

    def prepare(self, profile: Profile, *, device: str, main_process: bool = True) -> None:
        from ..metrics.scenes import load_judge

        self._judge = load_judge(self.judge_path)
        self._reference, self._floor = self._reference_and_floor(self._texts())

    def _reference_and_floor(self, texts: list[str], seed: int = 0) -> tuple[np.ndarray, dict]:
        """Reference features (held-out glyphs, REFERENCE_DRAWS per caption) and the floor: train-pool
        renders of the same captions scored like a method, one block per seed set."""
        from ..metrics.scenes import read, scene_metrics
        from ..testbeds import scenes

        parsed = [scenes.parse_caption(c) for c in texts]
        rng = np.random.default_rng(seed)
        reference = read(self._judge, scenes.render(parsed * REFERENCE_DRAWS, *scenes.glyph_pool("heldout"), rng))
        train = scenes.glyph_pool("train")
        floor_sets = [
            scene_metrics(
                read(self._judge, scenes.render(parsed, *train, np.random.default_rng(seed + 1 + k))),
                texts,
                reference["features"],
            )
            for k in range(self.seed_sets)
        ]
        return reference["features"], mean_se(floor_sets, (*METRICS, "all_unseen"))

    def score(self, samples) -> dict:
        from ..metrics.scenes import read, scene_metrics

        texts = self._texts()
        judged = read(self._judge, np.stack([samples.image(i) for i in range(len(samples))]))
        sets = [
            scene_metrics({k: v[k0 : k0 + self.per_set] for k, v in judged.items()}, texts, self._reference)
            for k0 in range(0, len(samples), self.per_set)
        ]
        return mean_se(sets, (*METRICS, "all_unseen"))

    def header(self, profile: Profile, base_seed: int, methods: dict) -> dict:
        return {
            "split": self.split,
            "per_set": self.per_set,
            "seed_sets": self.seed_sets,
            "steps": profile.steps,
            "base_seed": base_seed,
            "default_cfg_scale": profile.cfg_scale,
            "reference": f"held-out glyph renders of the same captions ({self.per_set * REFERENCE_DRAWS})",
            "floor": self._floor,
        }

    def summary(self, name: str, m: dict) -> str:
        return (
            f"{name:>18}: FD {m['fd']:.1f} ± {m['fd_se']:.1f}  all-correct {m['all']:.3f} ± {m['all_se']:.3f}  "
            f"NFE/step {m['nfe_per_step']:g}"
        )

    def table(self, metrics: dict) -> str:
        keys = ("fd", "all", "digit", "precision", "recall")
        rows = [
            (name, f"{m['nfe_per_step']:.2f}", *(f"{m[k]:.3f} ± {m[k + '_se']:.3f}" for k in keys))
            for name, m in metrics["methods"].items()
        ]
        f = metrics["floor"]
        rows.append(("real renders (floor)", "-", *(f"{f[k]:.3f} ± {f[k + '_se']:.3f}" for k in keys)))
        return latex_table(
            rows,
            ["method", "NFE/step", "FD $\\downarrow$", "all $\\uparrow$", "digit $\\uparrow$", "precision", "recall"],
            caption=(
                f"Glyph-scene testbed, {metrics['split']} captions: {metrics['seed_sets']} seed sets of "
                f"{metrics['per_set']} samples (mean ± standard error over seed sets), {metrics['steps']} Euler steps. "
                "FD in the scene judge's features; all: every attribute of the caption right."
            ),
            label=f"tab:t2i_{metrics['profile']}",
        )

    def tradeoff_figure(self, metrics: dict):
        """FD (x, lower is better) against all-attributes-correct (y, higher is better), 95 % bars."""
        import matplotlib.pyplot as plt

        from .. import style

        fig, ax = plt.subplots(figsize=(style.COLUMN, 2.4))
        for name, m in metrics["methods"].items():
            ax.errorbar(
                m["fd"],
                m["all"],
                xerr=1.96 * m["fd_se"],
                yerr=1.96 * m["all_se"],
                color=style.color(name),
                fmt="o",
                ms=3,
            )
            ax.annotate(name, (m["fd"], m["all"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("FD (judge features) ↓")
        ax.set_ylabel("all attributes correct ↑")
        return fig

    def sample_grid(
        self, metrics: dict, run_dirs: dict[str, Path], methods: Sequence[str] | None = None, count: int = 8
    ):
        """Rows: methods (default all); columns: the first `count` captions (same seeds in every row)."""
        from ..metrics import Samples
        from ..testbeds.plots import sample_grid

        methods = list(methods or metrics["methods"])
        images = {}
        for name in methods:
            samples = Samples.from_dir(run_dirs[name], count)
            images[name] = np.stack([samples.image(i) for i in range(count)])
        return sample_grid(images, methods, self._texts(), count=count)
