"""Figures and tables of the T2V testbed (notebook 00_testbed_t2v): the CFG-scale curve in the layout
of the T2I testbed's U-curve (`testbeds.plots.ucurve_figure`), a sample strip, the tables."""

from __future__ import annotations

import numpy as np

from ..metrics import clips as M
from ..style import FULL, color, latex_table
from .plots import _cfg_curve

BASELINE_MARKERS = {"weak_negative": ("D", "#9467bd"), "stg": ("^", "#d62728")}


def ucurve_figure(metrics: dict):
    """Total, Semantic and Quality against the CFG scale (± 1.96 SE), real renders (ceiling) and chance,
    and the baselines (Wan weak negative, STG, trained-twin autoguidance) at the right."""
    import matplotlib.pyplot as plt

    methods = metrics["methods"]
    scales, entries = _cfg_curve(methods)
    others = {k: m for k, m in methods.items() if k != "none" and not k.startswith("cfg@")}
    fig, axes = plt.subplots(1, 3, figsize=(FULL, FULL / 3.4))
    x = np.arange(len(scales))
    panels = (
        ("total", "VBench-shaped Total $\\uparrow$"),
        ("semantic", "Semantic $\\uparrow$"),
        ("quality", "Quality $\\uparrow$"),
    )
    for ax, (key, label) in zip(axes, panels):
        ax.errorbar(
            x,
            [e[key] for e in entries],
            yerr=[1.96 * e[f"{key}_se"] for e in entries],
            color=color("cfg"),
            marker="o",
            ms=3,
            lw=1,
            capsize=2,
            label="CFG scale sweep",
        )
        ax.axhline(metrics["real"][key], color="#7f7f7f", ls="--", lw=0.8, label="real renders")
        ax.axhline(metrics["chance"][key], color="#7f7f7f", ls=":", lw=0.8, label="chance (wrong caption)")
        for j, (name, m) in enumerate(others.items()):
            marker, c = BASELINE_MARKERS.get(name, ("s", ["#2ca02c", "#98df8a"][j % 2]))
            ax.errorbar(
                [len(scales) + 0.2 + 0.3 * j],
                [m[key]],
                yerr=[1.96 * m[f"{key}_se"]],
                marker=marker,
                ms=3.5,
                lw=1,
                capsize=2,
                color=c,
                label=name.replace("ag_twin_early", "AG, early twin").replace("_", " "),
            )
        ax.set_xticks([*x, len(scales) + 0.2 + 0.15 * max(0, len(others) - 1)], [*(f"{s:g}" for s in scales), "other"])
        ax.set_xlabel("CFG scale")
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(
        handles, labels, frameon=False, loc="upper center", ncol=len(labels), fontsize=6, bbox_to_anchor=(0.5, 0.0)
    )
    return fig


def sample_strip(videos: dict[str, np.ndarray], methods: list[str], captions: list[str], clips_shown: int = 3):
    """Rows: methods; columns: every frame of the first `clips_shown` clips (same captions and seeds in
    every row), a gap between clips."""
    import matplotlib.pyplot as plt

    pad = 1
    rows = []
    for name in methods:
        tiles = []
        for v in videos[name][:clips_shown]:
            tiles += [np.pad(f, ((pad, pad), (pad, pad), (0, 0)), constant_values=255) for f in v]
            tiles.append(np.full_like(tiles[-1][:, :3], 255))
        rows.append(np.concatenate(tiles[:-1], axis=1))
    grid = np.concatenate(rows, axis=0)
    fig, ax = plt.subplots(figsize=(FULL, FULL * grid.shape[0] / grid.shape[1] + 0.5))
    ax.imshow(grid, interpolation="nearest")
    size = videos[methods[0]].shape[2] + 2 * pad
    frames = videos[methods[0]].shape[1]
    clip_w = frames * size + 3
    ax.set_yticks([size * (i + 0.5) for i in range(len(methods))], methods, fontsize=6)
    ax.set_xticks(
        [clip_w * (i + 0.5) for i in range(clips_shown)],
        [
            c.replace(" left of", "\nleft of")
            .replace(" right of", "\nright of")
            .replace(" above", "\nabove")
            .replace(" below", "\nbelow")
            for c in captions[:clips_shown]
        ],
        fontsize=5,
    )
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.tight_layout()
    return fig


COLUMNS = ("total", "quality", "semantic", "shown_and_moving", *M.SEMANTIC, *M.QUALITY)


# Short column labels of every per-clip number and aggregate of `metrics.clips` (this module's tables
# and the clips benchmark's).
LABELS = {
    "total": "Total",
    "quality": "Quality",
    "semantic": "Semantic",
    "shown_and_moving": "shown+moving",
    "all_correct": "all correct",
    "object_class": "object",
    "multiple_objects": "multiple",
    "color": "colour",
    "spatial_relationship": "spatial",
    "motion": "motion",
    "subject_consistency": "subject",
    "background_consistency": "backgr.",
    "temporal_flickering": "flicker",
    "motion_smoothness": "smooth",
    "dynamic_degree": "dynamic",
    "imaging_quality": "imaging",
}


def _rows(metrics: dict):
    rows = [(name, f"{m['nfe_per_step']:.2f}", m) for name, m in metrics["methods"].items()]
    rows += [("real renders", "-", metrics["real"]), ("chance (wrong caption)", "-", metrics["chance"])]
    return rows


def table(metrics: dict) -> str:
    # Cells are escaped text (style.latex_table), so the sign is the character, as in the scenes table;
    # LaTeX math in a cell would be escaped and printed as text.
    rows = [(name, cost, *(f"{m[k]:.3f} ± {m[k + '_se']:.3f}" for k in COLUMNS)) for name, cost, m in _rows(metrics)]
    return latex_table(
        rows,
        ["method", "NFE/step", *(LABELS[k] for k in COLUMNS)],
        caption=(
            f"T2V testbed (Wan-architecture toy), {metrics['split']} captions: {metrics['seed_sets']} seed sets of "
            f"{metrics['per_set']} clips (mean $\\pm$ standard error over seed sets), {metrics['steps']} Euler steps, "
            f"{metrics['frames']} frames. VBench-shaped Total with exact judges. AG: trained early twin, "
            f"$w={metrics['twin_scale']:g}$ (untuned)."
        ),
        label=f"tab:t2v_toy_{metrics['profile']}",
    )


def markdown_table(metrics: dict, columns=COLUMNS) -> str:
    """The README's table (mean ± standard error over seed sets), from the metrics."""
    head = "| method | NFE/step | " + " | ".join(LABELS[k] for k in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for name, cost, m in _rows(metrics):
        lines.append(f"| {name} | {cost} | " + " | ".join(f"{m[k]:.3f} ± {m[k + '_se']:.3f}" for k in columns) + " |")
    return "\n".join(lines) + "\n"
