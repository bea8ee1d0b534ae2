"""One figure style for every notebook, byte-deterministic saving, and booktabs LaTeX tables."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path, write_text_atomic  # noqa: E402

# Column widths of a two-column paper (inches).
COLUMN = 3.3
FULL = 6.9

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType: editable text in the PDF
    "svg.hashsalt": "ditguide",
}

# Fixed colours per method family, so a method looks the same in every figure.
METHOD_COLORS = {
    "none": "#7f7f7f",
    "cfg": "#1f77b4",
    "ag": "#2ca02c",
    "slg": "#ff7f0e",
    "weak_negative": "#9467bd",
    "stg": "#8c564b",
    "pag": "#e377c2",
    "apg": "#17becf",
    "cfg_zero_star": "#bcbd22",
    "strong_weak": "#d62728",
}


def use() -> None:
    """Apply the project style (call at the top of every notebook)."""
    plt.rcParams.update(RC)


def color(method: str) -> str:
    """Colour of a method's family: "cfg@2" and "cfg" share cfg's colour."""
    return METHOD_COLORS.get(re.split(r"[:@]", method)[0], "#333333")


def save_figure(fig, path: str | os.PathLike, also_png: bool = True) -> Path:
    """Save `fig` as PDF without timestamps (byte-identical across reruns), plus a PNG preview."""
    path = Path(path).with_suffix(".pdf")
    with atomic_path(path) as tmp:
        fig.savefig(
            tmp,
            format="pdf",
            bbox_inches="tight",
            pad_inches=0.02,
            metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
        )
    if also_png:
        with atomic_path(path.with_suffix(".png")) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.02, metadata={"Software": None})
    return path


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def latex_table(
    rows: Sequence[Sequence[object]],
    columns: Sequence[str],
    caption: str,
    label: str,
    align: str | None = None,
    bold_best: dict[int, str] | None = None,
) -> str:
    """A booktabs table. Column headers are LaTeX as given; cell text is escaped.

    `bold_best` maps a column index to "min" or "max" to bold the best value."""
    align = align or "l" + "r" * (len(columns) - 1)
    best = {}
    for col, how in (bold_best or {}).items():
        values = [r[col] for r in rows if isinstance(r[col], (int, float))]
        if values:
            best[col] = min(values) if how == "min" else max(values)

    def cell(value: object, col: int) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else _tex_escape(str(value))
        return rf"\textbf{{{text}}}" if col in best and value == best[col] else text

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(columns) + r" \\",  # headers are LaTeX (e.g. "FID $\downarrow$"); cells are escaped
        r"\midrule",
        *(" & ".join(cell(v, i) for i, v in enumerate(r)) + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write (`ditguide.io.write_text_atomic`): never a half-written table or JSON."""
    return write_text_atomic(path, text)
