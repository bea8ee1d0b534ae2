"""Figures and tables of the guidance design (notebook 02): the quality-alignment Pareto plot (each
family's dev sweep as a curve, the test points with 95 % intervals), quality against compute, the table.

What "quality" and "alignment" are depends on the testbed (`View`): FD (lower is better) and the
all-correct rate on the glyph scenes, the VBench-shaped Total and Semantic score on the clips. The
view is read off the results themselves (`view_for`), so a figure cannot be drawn with the wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..style import FULL, latex_table
from .design import T_975


@dataclass(frozen=True)
class View:
    objective: str  # the quality metric the rule optimises (y axis)
    alignment: str  # the alignment metric (x axis)
    objective_axis: str
    alignment_axis: str
    objective_name: str
    alignment_name: str
    lower_is_better: bool
    columns: tuple[tuple[str, str, str, int], ...]  # (metric, LaTeX header, Markdown header, digits)
    floor_name: str
    caveat: str  # what the comparison does not show, beyond the interval widths


SCENES = View(
    "fd",
    "all",
    "FD (judge features) $\\downarrow$",
    "all attributes correct $\\uparrow$",
    "FD",
    "all-correct",
    True,
    (
        ("fd", "FD $\\downarrow$", "FD ↓", 0),
        ("all", "all $\\uparrow$", "all correct ↑", 3),
        ("digit", "digit $\\uparrow$", "digit ↑", 3),
        ("precision", "precision", "precision", 3),
        ("recall", "recall", "recall", 3),
    ),
    "floor (real renders)",
    "FD is in the judge's features on 16x16 scenes, not Inception features of real images",
)

CLIPS = View(
    "total",
    "semantic",
    "VBench-shaped Total $\\uparrow$",
    "Semantic $\\uparrow$",
    "Total",
    "Semantic",
    False,
    (
        ("total", "Total $\\uparrow$", "Total ↑", 3),
        ("quality", "Quality $\\uparrow$", "Quality ↑", 3),
        ("semantic", "Semantic $\\uparrow$", "Semantic ↑", 3),
        ("shown_and_moving", "shown+moving $\\uparrow$", "shown+moving ↑", 3),
        ("motion", "motion $\\uparrow$", "motion ↑", 3),
    ),
    "real renders",
    "the Total is VBench-shaped over exact judges of 12x12 clips, not VBench's networks on real videos",
)


def view_for(test: dict) -> View:
    """The view of a result: clips results carry the VBench-shaped Total, scene results FD."""
    first = next(iter(test["methods"].values()))
    return CLIPS if "total" in first else SCENES


def _order(view: View, m: dict) -> float:
    return m[view.objective] if view.lower_is_better else -m[view.objective]


FAMILY_COLORS = {
    "none": "#7f7f7f",
    "cfg": "#1f77b4",
    "cfg_zero_star": "#aec7e8",
    "apg": "#ff7f0e",
    "guidance_interval": "#ffbb78",
    "ag_skip": "#98df8a",
    "ag_twin": "#2ca02c",
    "slg": "#9467bd",
    "stg": "#c5b0d5",
    "pag": "#8c564b",
    "weak_negative": "#e377c2",
    "ours": "#d62728",
    "ours_full": "#ff9896",
    "ablation": "#bcbd22",
    "cfg_more_steps": "#17becf",
}


def _ci(entry: dict, key: str) -> float:
    n = len(entry.get("per_set", [])) or 3
    return T_975.get(n - 1, 1.96) * entry[f"{key}_se"]


def pareto_figure(dev: dict, test: dict, alignment: str | None = None):
    """Left: every dev configuration (one seed set), a family's configs joined in knob order (with a
    lower-is-better objective the y axis is clipped to the bulk; far-off configs sit on the top edge).
    Right: the test methods, mean with one standard error over seed sets, the CFG sweep joined in scale
    order."""
    import matplotlib.pyplot as plt

    view = view_for(test)
    alignment = alignment or view.alignment
    obj = view.objective
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(FULL, FULL / 2.3))
    values = [c["rung0"][obj] for rec in dev["families"].values() for c in rec["configs"]]
    top = 1.6 * float(sorted(values)[len(values) // 2]) if view.lower_is_better else float("inf")
    for fam, rec in dev["families"].items():
        pts = sorted(
            (c["knob"] if c["knob"] is not None else 0.0, c["rung0"][alignment], min(c["rung0"][obj], top))
            for c in rec["configs"]
        )
        if not pts:
            continue
        _, x, y = zip(*pts)
        style = "-o" if fam in ("cfg", "cfg_zero_star", "apg", "guidance_interval") else "o"
        ax0.plot(x, y, style, ms=3, lw=0.8, color=FAMILY_COLORS.get(fam, "k"), label=fam)
    if view.lower_is_better:
        ax0.set_ylim(top=top * 1.02)
    ax0.set_title("dev search (1 seed set per config)")
    methods = test["methods"]
    sweep = sorted((m["method"]["cfg_scale"], m) for m in methods.values() if m["family"] in ("cfg", "none"))
    ax1.plot([m[alignment] for _, m in sweep], [m[obj] for _, m in sweep], "-", lw=0.8, color=FAMILY_COLORS["cfg"])
    for name, m in methods.items():
        ax1.errorbar(
            m[alignment],
            m[obj],
            xerr=m[f"{alignment}_se"],
            yerr=m[f"{obj}_se"],
            fmt="o",
            ms=3.5,
            lw=0.8,
            capsize=1.5,
            color=FAMILY_COLORS.get(m["family"], "k"),
            mec="k" if name == test["selected"] else "none",
        )
        if (
            name == test["selected"]
            or m["family"] in ("none", "ag_twin")
            or (m["family"] == "cfg" and name.startswith("cfg@"))
        ):
            label = "ours" if name == test["selected"] else m["label"].replace("AG shallow twin", "AG twin")
            ax1.annotate(label, (m[alignment], m[obj]), xytext=(3, 3), textcoords="offset points", fontsize=5)
    ax1.set_title("test (mean ± 1 SE over seed sets)")
    for ax in (ax0, ax1):
        ax.set_xlabel(view.alignment_axis)
        ax.set_ylabel(view.objective_axis)
    ax0.legend(frameon=False, fontsize=5, ncol=2)
    fig.tight_layout()
    return fig


def compute_figure(test: dict):
    """Test quality against cost: forwards of the full model per step (block evaluations) and
    wall-clock seconds per sample (this machine, one process)."""
    import matplotlib.pyplot as plt

    view = view_for(test)
    obj = view.objective
    timed = all("seconds_per_sample" in m for m in test["methods"].values())
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(FULL, FULL / 2.6), squeeze=False)
    axes = axes[0]
    for name, m in test["methods"].items():
        kw = dict(
            fmt="o",
            ms=3.5,
            lw=0.8,
            capsize=1.5,
            color=FAMILY_COLORS.get(m["family"], "k"),
            mec="k" if name == test["selected"] else "none",
        )
        axes[0].errorbar(m["nfe_per_step"], m[obj], yerr=_ci(m, obj), **kw)
        if timed:
            axes[1].errorbar(1e3 * m["seconds_per_sample"], m[obj], yerr=_ci(m, obj), **kw)
    axes[0].set_xlabel("model forwards per step (block evaluations / blocks)")
    if timed:
        axes[1].set_xlabel("ms per sample (2-core CPU)")
    for ax in axes:
        ax.set_ylabel(view.objective_axis if not view.lower_is_better else "FD $\\downarrow$")
        ax.axhline(test["floor"][obj], color="#7f7f7f", ls="--", lw=0.8)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=c, label=f)
        for f, c in FAMILY_COLORS.items()
        if any(m["family"] == f for m in test["methods"].values())
    ]
    axes[-1].legend(handles=handles, frameon=False, fontsize=5, ncol=2)
    fig.tight_layout()
    return fig


def _fmt(m: dict, key: str, digits: int) -> str:
    return f"{m[key]:.{digits}f} ± {_ci(m, key):.{digits}f}"


def rows(test: dict) -> list[tuple]:
    view = view_for(test)
    out = []
    for name, m in sorted(test["methods"].items(), key=lambda kv: _order(view, kv[1])):
        sec = f"{1e3 * m['seconds_per_sample']:.1f}" if "seconds_per_sample" in m else "-"
        label = m["label"] + (" (selected)" if name == test["selected"] else "")
        cells = tuple(_fmt(m, key, digits) for key, _, _, digits in view.columns)
        out.append((label, m["family"], f"{m['nfe_per_step']:.2f}", sec, *cells))
    return out


def columns(view: View, markdown: bool = False) -> list[str]:
    return ["method", "family", "NFE/step", "ms/sample", *(c[2] if markdown else c[1] for c in view.columns)]


def table(test: dict, profile: str) -> str:
    t = test["split"]
    return latex_table(
        rows(test),
        columns(view_for(test)),
        caption=(
            f"Guidance design on the {profile} testbed, test captions: {t['seed_sets']} seed sets of {t['per_set']} samples, mean "
            "± 95 % t-interval over seed sets. Every family was tuned with the same dev budget; NFE/step counts block "
            "evaluations of the full model; ms/sample measured on a 2-core CPU."
        ),
        label=f"tab:guidance_{profile}",
    )


def markdown_table(test: dict) -> str:
    head = columns(view_for(test), markdown=True)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(test)]
    return "\n".join(lines) + "\n"


def _effects(ch: dict, view: View = SCENES) -> str:
    """Each key metric's paired change with its interval, and whether the interval says better or worse."""
    out = []
    for key, name, lower_better in (
        (view.objective, view.objective_name, view.lower_is_better),
        (view.alignment, view.alignment_name, False),
    ):
        c = ch[key]
        better = c["hi"] < 0 if lower_better else c["lo"] > 0
        worse = c["lo"] > 0 if lower_better else c["hi"] < 0
        verdict = "better" if better else "worse" if worse else "no measurable change"
        out.append(f"{name} {100 * c['rel']:+.1f} % [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}] ({verdict})")
    return ", ".join(out)


def reading(dev: dict, test: dict, target: float = 0.05) -> str:
    """The outcome, generated from the numbers."""
    view = view_for(test)
    o, a = view.objective, view.alignment
    sel = test["methods"][test["selected"]]
    lines = [f"Selected on dev by the declared rule: **{sel['label']}** ({sel['nfe_per_step']:.2f} forwards per step)."]
    for label, comp in test["comparison"].items():
        if label.startswith("without_"):
            continue
        ch = comp["changes"]
        qo, al = ch[o], ch[a]
        verdict = []
        verdict.append(f"{view.objective_name} {100 * qo['rel']:+.1f} % [{100 * qo['lo']:+.1f}, {100 * qo['hi']:+.1f}]")
        verdict.append(f"{view.alignment_name} {100 * al['rel']:+.1f} % [{100 * al['lo']:+.1f}, {100 * al['hi']:+.1f}]")
        o_ok = qo["hi"] <= -target if view.lower_is_better else qo["lo"] >= target
        al_ok = al["lo"] >= target
        lines.append(
            f"- Against {comp['reference']} ({label.replace('_', ' ')}): " + ", ".join(verdict) + ". "
            f"The +{100 * target:.0f} % target {'holds' if o_ok else 'does not hold'} on {view.objective_name} and "
            f"{'holds' if al_ok else 'does not hold'} on {view.alignment_name} (95 % intervals over seed sets)."
        )
    for label, side in (("without_strong", "strong"), ("without_weak", "weak")):
        if label in test["comparison"]:
            ch = test["comparison"][label]["changes"]
            lines.append(f"- The {side} side, against the selected method without it: " + _effects(ch, view) + ".")
    ranked = sorted(test["methods"].values(), key=lambda m: _order(view, m))
    digits = 0 if view.lower_is_better else 3
    lines.append(
        f"- {'Lowest' if view.lower_is_better else 'Highest'} test {view.objective_name}: {ranked[0]['label']} "
        f"({ranked[0][o]:.{digits}f} at {ranked[0]['nfe_per_step']:.2f} forwards/step); "
        f"{view.floor_name} {test['floor'][o]:.{digits}f}."
    )
    best_al = max(test["methods"].values(), key=lambda m: m[a])
    lines.append(
        f"- Highest {view.alignment_name}: {best_al['label']} ({best_al[a]:.3f} at {best_al['nfe_per_step']:.2f} "
        "forwards/step)."
    )
    t = test["split"]
    lines.append(
        f"- What this does not show: {t['seed_sets']} seed sets of {t['per_set']} test captions give intervals of several "
        f"percent, so smaller effects are not resolved; {view.caveat}; the candidates come from a layer map of this one "
        "model; a real DiT may rank its blocks differently."
    )
    return "\n".join(lines)
