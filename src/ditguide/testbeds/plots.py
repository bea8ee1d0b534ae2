"""Figures and the table of the testbed characterisation (notebook 00): the U-curve and a sample grid."""

from __future__ import annotations

import numpy as np

from ..style import FULL, color, latex_table


def _cfg_curve(methods: dict) -> tuple[list[float], list[dict]]:
    cfg = {1.0: methods["none"], **{m["cfg_scale"]: m for k, m in methods.items() if k.startswith("cfg@")}}
    scales = sorted(cfg)
    return scales, [cfg[s] for s in scales]


def ucurve_figure(metrics: dict):
    """FD and all-attributes-correct against the CFG scale (with standard errors), the real-vs-real
    floor, and the trained-twin autoguidance points at their cost-free position on the right."""
    import matplotlib.pyplot as plt

    methods, floor = metrics["methods"], metrics["floor"]
    scales, entries = _cfg_curve(methods)
    twins = {k: m for k, m in methods.items() if k.startswith("ag_")}
    fig, axes = plt.subplots(1, 3, figsize=(FULL, FULL / 3.4))
    x = np.arange(len(scales))
    panels = (
        ("fd", "FD (judge features) $\\downarrow$"),
        ("all", "all attributes correct $\\uparrow$"),
        ("recall", "recall $\\uparrow$"),
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
        ax.axhline(floor[key], color="#7f7f7f", ls="--", lw=0.8, label="real renders (floor)")
        for j, (name, m) in enumerate(twins.items()):
            ax.errorbar(
                [len(scales) + 0.3 + 0.4 * j],
                [m[key]],
                yerr=[1.96 * m[f"{key}_se"]],
                marker="s",
                ms=3.5,
                lw=1,
                capsize=2,
                color=["#2ca02c", "#98df8a"][j % 2],
                label=f"AG, {name[3:].replace('twin_', '')} twin",
            )
        ax.set_xticks([*x, len(scales) + 0.5], [*(f"{s:g}" for s in scales), "AG"])
        ax.set_xlabel("CFG scale")
        ax.set_ylabel(label)
    axes[0].legend(frameon=False, loc="upper center")
    fig.tight_layout()
    return fig


def sample_grid(images: dict[str, np.ndarray], methods: list[str], captions: list[str], count: int = 8):
    """Rows: methods; columns: the first `count` samples (same captions and seeds in every row)."""
    import matplotlib.pyplot as plt

    pad = 1
    rows = []
    for name in methods:
        tiles = [np.pad(im, ((pad, pad), (pad, pad), (0, 0)), constant_values=255) for im in images[name][:count]]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    fig, ax = plt.subplots(figsize=(FULL, FULL * grid.shape[0] / grid.shape[1] + 0.6))
    ax.imshow(grid, interpolation="nearest")
    size = images[methods[0]].shape[1] + 2 * pad
    ax.set_yticks([size * (i + 0.5) for i in range(len(methods))], methods)
    ax.set_xticks(
        [size * (i + 0.5) for i in range(count)],
        [
            c.replace(" of ", "\nof ").replace(" above", "\nabove").replace(" below", "\nbelow")
            for c in captions[:count]
        ],
        fontsize=5,
    )
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.tight_layout()
    return fig


def table(metrics: dict) -> str:
    rows = []
    for name, m in metrics["methods"].items():
        rows.append(
            (
                name,
                m["nfe_per_step"],
                *(
                    f"{m[k]:.3f} ± {m[k + '_se']:.3f}"
                    for k in ("fd", "all", "digit", "colour", "relation", "precision", "recall")
                ),
            )
        )
    f = metrics["floor"]
    rows.append(
        (
            "real renders (floor)",
            "-",
            *(
                f"{f[k]:.3f} ± {f[k + '_se']:.3f}"
                for k in ("fd", "all", "digit", "colour", "relation", "precision", "recall")
            ),
        )
    )
    return latex_table(
        rows,
        [
            "method",
            "NFE/step",
            "FD $\\downarrow$",
            "all $\\uparrow$",
            "digit",
            "colour",
            "relation",
            "precision",
            "recall",
        ],
        caption=(
            f"Glyph-scene testbed, {metrics['split']} captions: {metrics['seed_sets']} seed sets of {metrics['per_set']} samples "
            f"(mean ± standard error over seed sets), {metrics['steps']} Euler steps. AG: trained weak twin, "
            f"$w={metrics['twin_scale']:g}$ (untuned)."
        ),
        label=f"tab:testbed_{metrics['profile']}",
    )


def markdown_table(metrics: dict) -> str:
    """The README's table of the regime run (mean ± standard error over seed sets), from the metrics."""
    keys = ("fd", "all", "digit", "colour", "relation", "precision", "recall")
    lines = [
        "| method | NFE/step | FD ↓ | all correct ↑ | digit | colour | relation | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in [*metrics["methods"].items(), ("real renders (floor)", {**metrics["floor"], "nfe_per_step": None})]:
        cost = "–" if m["nfe_per_step"] is None else f"{m['nfe_per_step']:.2f}"
        fd = f"{m['fd']:.0f} ± {m['fd_se']:.0f}"
        rest = " | ".join(f"{m[k]:.3f} ± {m[k + '_se']:.3f}" for k in keys[1:])
        lines.append(f"| {name} | {cost} | {fd} | {rest} |")
    return "\n".join(lines) + "\n"
