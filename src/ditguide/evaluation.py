"""Evaluation runs that the notebooks call: sample each method on shared seeds, score, tabulate."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .profiles import load_profile, load_pipeline
from .render import PipelineRenderer
from .style import latex_table


@dataclass
class T2IResult:
    metrics: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (N, H, W) in [0, 1]
    labels: np.ndarray | None = None

    def table(self) -> str:
        rows = [
            (name, m["cfg_scale"], m["nfe_per_step"], m["fd"], m["clip"], m["accuracy"])
            for name, m in self.metrics["methods"].items()
        ]
        floor = self.metrics["floor"]["fd_real_halves"]
        return latex_table(
            rows,
            ["method", "CFG scale", "NFE/step", "toy FD $\\downarrow$", "toy CLIP $\\uparrow$", "accuracy $\\uparrow$"],
            caption=(
                f"Toy text-to-image evaluation ({self.metrics['count']} samples per method, "
                f"{self.metrics['steps']} Euler steps). Real-vs-real FD floor: {floor:.3f}."
            ),
            label=f"tab:t2i_{self.metrics['profile']}",
            bold_best={3: "min", 4: "max", 5: "max"},
        )


def evaluate_t2i_toy(
    profile: str = "toy",
    *,
    samples_per_class: int = 100,
    batch_size: int = 250,
    base_seed: int = 0,
    cfg_scales: list[float] = (),
    params="params.yaml",
    judge_path: str = "data/toy/judge.safetensors",
) -> T2IResult:
    """No guidance, CFG at the profile's default scale, and a CFG sweep, on the toy profile."""
    from .metrics.toy import load_judge
    from .toy.evaluate import balanced_labels, evaluate_renderer, heldout_reference, real_floor

    prof = load_profile(profile, params)
    if prof.family != "toy":
        raise ValueError(f"evaluate_t2i_toy needs a toy profile; {profile!r} is family {prof.family!r}")
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
    for s in cfg_scales:
        if not np.isfinite(s) or s < 0:
            raise ValueError(f"cfg_scales must be finite numbers >= 0, got {s!r}")
    judge = load_judge(judge_path)
    pipe = load_pipeline(prof)
    reference = heldout_reference(judge)
    count = 10 * samples_per_class

    methods = {"none": 1.0, "cfg": prof.cfg_scale}
    methods.update({f"cfg@{s:g}": float(s) for s in cfg_scales if float(s) != prof.cfg_scale})
    result = T2IResult(
        metrics={"profile": profile, "count": count, "steps": prof.steps, "base_seed": base_seed,
                 "reference": "held-out split (judge features)", "floor": real_floor(judge), "methods": {}},
        labels=balanced_labels(count),
    )
    for name, scale in methods.items():
        renderer = PipelineRenderer(prof, pipe, cfg_scale=scale, base_seed=base_seed)
        metrics, images = evaluate_renderer(renderer, judge, reference, count, batch_size, desc=name)
        # The toy pipeline runs one transformer forward per step, two with CFG (scale > 1).
        metrics.update(cfg_scale=scale, nfe_per_step=2.0 if scale > 1 else 1.0)
        result.metrics["methods"][name] = metrics
        result.images[name] = images
    return result


def sample_grid(images: dict[str, np.ndarray], labels: np.ndarray, methods: list[str], per_class: int = 8):
    """One panel per method; rows are digits 0-9, columns the first `per_class` seeds of each digit."""
    import matplotlib.pyplot as plt

    from .style import FULL

    fig, axes = plt.subplots(1, len(methods), figsize=(FULL * len(methods) / 3, FULL / 3 * 1.15), squeeze=False)
    for ax, name in zip(axes[0], methods):
        imgs = images[name]
        rows = []
        for digit in range(10):
            picked = imgs[np.flatnonzero(labels == digit)[:per_class]]
            rows.append(np.concatenate(list(np.pad(picked, ((0, 0), (1, 1), (1, 1)), constant_values=0.0)), axis=1))
        ax.imshow(np.concatenate(rows, axis=0), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    fig.tight_layout()
    return fig
