"""Figures and tables of the guidance design (notebook 02): the FD-alignment Pareto plot (each family's
dev sweep as a curve, the test points with 95 % intervals), quality against compute, the table."""

from __future__ import annotations

from ..style import FULL, latex_table
from .design import T_975

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


def pareto_figure(dev: dict, test: dict, alignment: str = "all"):
    """Left: every dev configuration (one seed set), a family's configs joined in knob order (the y
    axis is clipped to the bulk; far-off configs sit on the top edge). Right: the test methods, mean
    with one standard error over seed sets, the CFG sweep joined in scale order. Lower right is better."""
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(FULL, FULL / 2.3))
    fds = [c["rung0"]["fd"] for rec in dev["families"].values() for c in rec["configs"]]
    top = 1.6 * float(sorted(fds)[len(fds) // 2])
    for fam, rec in dev["families"].items():
        pts = sorted(
            (c["knob"] if c["knob"] is not None else 0.0, c["rung0"][alignment], min(c["rung0"]["fd"], top))
            for c in rec["configs"]
        )
        if not pts:
            continue
        _, x, y = zip(*pts)
        style = "-o" if fam in ("cfg", "cfg_zero_star", "apg", "guidance_interval") else "o"
        ax0.plot(x, y, style, ms=3, lw=0.8, color=FAMILY_COLORS.get(fam, "k"), label=fam)
    ax0.set_ylim(top=top * 1.02)
    ax0.set_title("dev search (1 seed set per config)")
    methods = test["methods"]
    sweep = sorted((m["method"]["cfg_scale"], m) for m in methods.values() if m["family"] in ("cfg", "none"))
    ax1.plot([m[alignment] for _, m in sweep], [m["fd"] for _, m in sweep], "-", lw=0.8, color=FAMILY_COLORS["cfg"])
    for name, m in methods.items():
        ax1.errorbar(
            m[alignment],
            m["fd"],
            xerr=m[f"{alignment}_se"],
            yerr=m["fd_se"],
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
            ax1.annotate(label, (m[alignment], m["fd"]), xytext=(3, 3), textcoords="offset points", fontsize=5)
    ax1.set_title("test (mean ± 1 SE over seed sets)")
    for ax in (ax0, ax1):
        ax.set_xlabel("all attributes correct $\\uparrow$")
        ax.set_ylabel("FD (judge features) $\\downarrow$")
    ax0.legend(frameon=False, fontsize=5, ncol=2)
    fig.tight_layout()
    return fig


def compute_figure(test: dict):
    """Test FD against cost: forwards of the full model per step (block evaluations) and wall-clock
    seconds per sample (this machine, one process)."""
    import matplotlib.pyplot as plt

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
        axes[0].errorbar(m["nfe_per_step"], m["fd"], yerr=_ci(m, "fd"), **kw)
        if timed:
            axes[1].errorbar(1e3 * m["seconds_per_sample"], m["fd"], yerr=_ci(m, "fd"), **kw)
    axes[0].set_xlabel("model forwards per step (block evaluations / blocks)")
    if timed:
        axes[1].set_xlabel("ms per sample (2-core CPU)")
    for ax in axes:
        ax.set_ylabel("FD $\\downarrow$")
        ax.axhline(test["floor"]["fd"], color="#7f7f7f", ls="--", lw=0.8)
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
    out = []
    for name, m in sorted(test["methods"].items(), key=lambda kv: kv[1]["fd"]):
        sec = f"{1e3 * m['seconds_per_sample']:.1f}" if "seconds_per_sample" in m else "-"
        label = m["label"] + (" (selected)" if name == test["selected"] else "")
        out.append(
            (
                label,
                m["family"],
                f"{m['nfe_per_step']:.2f}",
                sec,
                _fmt(m, "fd", 0),
                _fmt(m, "all", 3),
                _fmt(m, "digit", 3),
                _fmt(m, "precision", 3),
                _fmt(m, "recall", 3),
            )
        )
    return out


COLUMNS = [
    "method",
    "family",
    "NFE/step",
    "ms/sample",
    "FD $\\downarrow$",
    "all $\\uparrow$",
    "digit $\\uparrow$",
    "precision",
    "recall",
]


def table(test: dict, profile: str) -> str:
    t = test["split"]
    return latex_table(
        rows(test),
        COLUMNS,
        caption=(
            f"Guidance design on the {profile} testbed, test captions: {t['seed_sets']} seed sets of {t['per_set']} samples, mean "
            "± 95 % t-interval over seed sets. Every family was tuned with the same dev budget; NFE/step counts block "
            "evaluations of the full model; ms/sample measured on a 2-core CPU."
        ),
        label=f"tab:guidance_{profile}",
    )


def markdown_table(test: dict) -> str:
    head = ["method", "family", "NFE/step", "ms/sample", "FD ↓", "all correct ↑", "digit ↑", "precision", "recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(test)]
    return "\n".join(lines) + "\n"


def _effects(ch: dict) -> str:
    """Each key metric's paired change with its interval, and whether the interval says better or worse."""
    out = []
    for key, name, lower_better in (("fd", "FD", True), ("all", "all-correct", False)):
        c = ch[key]
        better = c["hi"] < 0 if lower_better else c["lo"] > 0
        worse = c["lo"] > 0 if lower_better else c["hi"] < 0
        verdict = "better" if better else "worse" if worse else "no measurable change"
        out.append(f"{name} {100 * c['rel']:+.1f} % [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}] ({verdict})")
    return ", ".join(out)


def reading(dev: dict, test: dict, target: float = 0.05) -> str:
    """The outcome, generated from the numbers."""
    sel = test["methods"][test["selected"]]
    lines = [f"Selected on dev by the declared rule: **{sel['label']}** ({sel['nfe_per_step']:.2f} forwards per step)."]
    for label, comp in test["comparison"].items():
        if label.startswith("without_"):
            continue
        ch = comp["changes"]
        fd, al = ch["fd"], ch["all"]
        verdict = []
        verdict.append(f"FD {100 * fd['rel']:+.1f} % [{100 * fd['lo']:+.1f}, {100 * fd['hi']:+.1f}]")
        verdict.append(f"all-correct {100 * al['rel']:+.1f} % [{100 * al['lo']:+.1f}, {100 * al['hi']:+.1f}]")
        fd_ok = fd["hi"] <= -target
        al_ok = al["lo"] >= target
        lines.append(
            f"- Against {comp['reference']} ({label.replace('_', ' ')}): " + ", ".join(verdict) + ". "
            f"The +{100 * target:.0f} % target {'holds' if fd_ok else 'does not hold'} on FD and "
            f"{'holds' if al_ok else 'does not hold'} on all-correct (95 % intervals over seed sets)."
        )
    for label, side in (("without_strong", "strong"), ("without_weak", "weak")):
        if label in test["comparison"]:
            ch = test["comparison"][label]["changes"]
            lines.append(f"- The {side} side, against the selected method without it: " + _effects(ch) + ".")
    ranked = sorted(test["methods"].values(), key=lambda m: m["fd"])
    lines.append(
        f"- Lowest test FD: {ranked[0]['label']} ({ranked[0]['fd']:.0f} at {ranked[0]['nfe_per_step']:.2f} forwards/step); "
        f"floor (real renders) {test['floor']['fd']:.0f}."
    )
    best_al = max(test["methods"].values(), key=lambda m: m["all"])
    lines.append(
        f"- Highest all-correct: {best_al['label']} ({best_al['all']:.3f} at {best_al['nfe_per_step']:.2f} forwards/step)."
    )
    t = test["split"]
    lines.append(
        f"- What this does not show: {t['seed_sets']} seed sets of {t['per_set']} test captions give intervals of several "
        "percent, so smaller effects are not resolved; FD is in the judge's features on 16x16 scenes, not Inception "
        "features of real images; the candidates come from a layer map of this one model; a real DiT may rank "
        "its blocks differently."
    )
    return "\n".join(lines)
