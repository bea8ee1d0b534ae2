"""The digit toy's benchmark: class-balanced digit prompts, judged by the toy's digit classifier.

toy FD = Fréchet distance in the judge's penultimate features against the held-out digits; toy CLIP
= mean probability of the prompted digit; accuracy = share classified as the prompted digit
(`ditguide.metrics.toy`). The real-vs-real floor is in the metrics' header.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..profiles import Profile
from ..style import latex_table
from .base import Benchmark, Caption, check_option, is_int

SIZE = 8  # the judge reads 8x8 grey digits


class Digits(Benchmark):
    """samples_per_class: samples of each digit (sample i asks for digit i mod 10, so every prefix is
    balanced); judge_path: the toy judge's weights (the train_judge stage's output)."""

    name = "digits"
    task = "t2i"

    def __init__(self, samples_per_class: int = 100, judge_path: str = "data/toy/judge.safetensors"):
        check_option(is_int(samples_per_class, 1), "samples_per_class", samples_per_class, "an integer >= 1")
        self.samples_per_class = samples_per_class
        self.judge_path = str(judge_path)
        self._metric = None
        self._floor = None

    @classmethod
    def unfit(cls, profile: Profile) -> str | None:
        if profile.family != "toy" or profile.kind != "image" or (profile.height, profile.width) != (SIZE, SIZE):
            return f"it needs a toy-family {SIZE}x{SIZE} image profile (the digit toy; its judge reads {SIZE}x{SIZE} digits)"
        return None

    def captions(self) -> list[Caption]:
        from ..metrics.toy import balanced_labels
        from ..toy.data import prompt_for

        labels = balanced_labels(10 * self.samples_per_class)
        return [Caption(f"digit-{y}", prompt_for(y), {"label": int(y)}) for y in labels]

    def prepare(self, profile: Profile, *, device: str, main_process: bool = True) -> None:
        from ..metrics.toy import ToyJudgeMetric, heldout_reference, real_floor
        from ..toy.judge import load_judge

        judge = load_judge(self.judge_path)
        self._metric = ToyJudgeMetric(judge, heldout_reference(judge))
        self._floor = real_floor(judge)

    def score(self, samples) -> dict:
        judged = self._metric(samples)
        return {
            "fd": judged.value,
            "clip": judged.details["clip"],
            "accuracy": judged.details["accuracy"],
            "count": judged.n,
        }

    def header(self, profile: Profile, base_seed: int, methods: dict) -> dict:
        return {
            "count": 10 * self.samples_per_class,
            "steps": profile.steps,
            "base_seed": base_seed,
            "reference": "held-out split (judge features)",
            "floor": self._floor,
        }

    def summary(self, name: str, m: dict) -> str:
        return f"{name:>18}: FD {m['fd']:.3f}  CLIP {m['clip']:.4f}  acc {m['accuracy']:.3f}  NFE/step {m['nfe_per_step']:g}"

    def table(self, metrics: dict) -> str:
        rows = [
            (
                name,
                "-" if m["cfg_scale"] is None else m["cfg_scale"],
                m["nfe_per_step"],
                m["fd"],
                m["clip"],
                m["accuracy"],
            )
            for name, m in metrics["methods"].items()
        ]
        floor = metrics["floor"]["fd_real_halves"]
        return latex_table(
            rows,
            ["method", "CFG scale", "NFE/step", "toy FD $\\downarrow$", "toy CLIP $\\uparrow$", "accuracy $\\uparrow$"],
            caption=(
                f"Toy text-to-image evaluation ({metrics['count']} samples per method, "
                f"{metrics['steps']} Euler steps). Real-vs-real FD floor: {floor:.3f}."
            ),
            label=f"tab:t2i_{metrics['profile']}",
            bold_best={3: "min", 4: "max", 5: "max"},
        )

    def tradeoff_figure(self, metrics: dict):
        """toy FD (x, lower is better) against toy CLIP (y, higher is better), one point per method."""
        import matplotlib.pyplot as plt

        from .. import style

        fig, ax = plt.subplots(figsize=(style.COLUMN, 2.4))
        for name, m in metrics["methods"].items():
            ax.scatter(m["fd"], m["clip"], color=style.color(name), s=18)
            ax.annotate(name, (m["fd"], m["clip"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axvline(metrics["floor"]["fd_real_halves"], color="0.6", lw=0.8, ls="--", label="real vs real")
        ax.set_xlabel("toy FD (judge features) ↓")
        ax.set_ylabel("toy CLIP (p of prompted digit) ↑")
        ax.legend(frameon=False, loc="lower right")
        return fig

    def sample_grid(
        self, metrics: dict, run_dirs: dict[str, Path], methods: Sequence[str] | None = None, per_class: int = 8
    ):
        """One panel per method (default: none and cfg); rows are digits 0-9, columns the first
        `per_class` seeds of each digit."""
        import matplotlib.pyplot as plt

        from ..metrics import Samples
        from ..metrics.toy import label_of_prompt
        from ..style import FULL

        methods = list(methods or ["none", "cfg"])
        fig, axes = plt.subplots(1, len(methods), figsize=(FULL * len(methods) / 3, FULL / 3 * 1.15), squeeze=False)
        for ax, name in zip(axes[0], methods):
            samples = Samples.from_dir(run_dirs[name], metrics["count"])
            labels = np.array([label_of_prompt(p) for p in samples.prompts])
            imgs = np.stack([samples.image(i)[..., 0] for i in range(len(samples))]).astype(np.float32) / 255.0
            rows = []
            for digit in range(10):
                picked = imgs[np.flatnonzero(labels == digit)[:per_class]]
                rows.append(np.concatenate(list(np.pad(picked, ((0, 0), (1, 1), (1, 1)), constant_values=0.0)), axis=1))
            ax.imshow(np.concatenate(rows, axis=0), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name)
            ax.set_axis_off()
        fig.tight_layout()
        return fig
