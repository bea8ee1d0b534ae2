"""The README's preset tables, generated from `ditguide.guidance.PRESETS` (issue 14, item 3).

    python -m ditguide.preset_table            # print the tables (markdown)
    python -m ditguide.preset_table --write    # replace the README section between the markers

One table per family (FLUX.1-dev, CogView4-6B, Wan2.1-1.3B, SD3.5-medium, and the testbeds `scenes`
and `toy`), one row per preset. Block addresses are resolved by the family adapter against a model
with the real block counts (a tiny-width transformer of the family's class; only the block lists
matter); cost is counted by the planner and cost accounting that `GuidedDenoiser` uses (sequential
forwards, prefix sharing on), over a 50-step trajectory at sigma = 1 - i/50. The measured effect is
read from committed metrics files only (metrics/t2i_toy.json); every other row says "not measured".
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .edits import EditSpec, compile_plans
from .families import get_family
from .families.tiny import tiny_transformer
from .guidance import PRESETS, GuidanceSpec, StepInfo, preset
from .guidance.cost import planned_evals
from .guidance.planner import CompiledBranch, forward_groups, plan_key, plan_step

# family key -> (adapter name, what it stands for, tiny-config overrides giving the real block counts)
FAMILY_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "flux": ("flux", "FLUX.1-dev (19 double + 38 single blocks)", dict(num_layers=19, num_single_layers=38)),
    "cogview4": ("cogview4", "CogView4-6B (28 blocks)", dict(num_layers=28)),
    "wan": ("wan", "Wan2.1-T2V-1.3B (30 blocks)", dict(num_layers=30)),
    "sd3": ("sd3", "SD3.5-medium (24 blocks)", dict(num_layers=24, dual_attention_layers=tuple(range(13)))),
    "scenes": (
        "flux",
        "the glyph-scene testbed (2 double + 10 single blocks)",
        dict(num_layers=2, num_single_layers=10),
    ),
    "toy": ("toy", "the digit toy (2 double + 4 single blocks)", dict(num_layers=2, num_single_layers=4)),
}
STEPS = 50
SPATIAL_PREDICTIONS = ("cogview4", "sd3")  # families whose transformer predicts (B, C, H, W) (fdg's input)
MEASURED = {"toy": "metrics/t2i_toy.json"}
START, END = (
    "<!-- preset-table:start (generated: python -m ditguide.preset_table --write) -->",
    "<!-- preset-table:end -->",
)


def family_model(key: str) -> torch.nn.Module:
    """A model with `key`'s real block lists (tiny widths, random weights: only for addressing and cost)."""
    if key not in FAMILY_MODELS:
        raise ValueError(f"family = {key!r}: must be one of {sorted(FAMILY_MODELS)}")
    name, _, overrides = FAMILY_MODELS[key]
    return tiny_transformer("toy" if name == "toy" else name, **overrides)


def _short_ranges(model: torch.nn.Module) -> str:
    family = get_family(model)
    return ", ".join(f"{short}:0..{len(getattr(model, attr)) - 1}" for short, attr in family.block_lists)


def _blocks(spec: GuidanceSpec) -> str:
    refs = []
    for name in spec.used_branches:
        edits = spec.branches[name].edits
        if edits:
            refs.append(f"{name}: {EditSpec.parse(edits).to_string()}")
    return "; ".join(refs) or "–"


def _compile(spec: GuidanceSpec, model: torch.nn.Module) -> tuple[dict[str, CompiledBranch], dict[str, str]]:
    """As GuidedDenoiser compiles its branches: equal (prompt, plans) are one branch."""
    branches: dict[str, CompiledBranch] = {}
    alias: dict[str, str] = {}
    seen: dict[str, str] = {}
    num_blocks = len(get_family(model).blocks(model))
    for name in spec.used_branches:
        b = spec.branches[name]
        edits = EditSpec.parse(b.edits)
        _, plans = compile_plans(edits, model)
        signature = json.dumps([b.prompt, [plan_key(i, p) for i, p in sorted(plans.items())]])
        if signature in seen:
            alias[name] = seen[signature]
            continue
        branches[name] = CompiledBranch(name, b.prompt, edits, min(plans) if plans else num_blocks, signature, plans)
        seen[signature] = alias[name] = name
    return branches, alias


def step_costs(spec: GuidanceSpec, model: torch.nn.Module, steps: int = STEPS) -> list[int]:
    """Block evaluations per step (one block on the batch = 1) under GuidedDenoiser's defaults."""
    num_blocks = len(get_family(model).blocks(model))
    branches, alias = _compile(spec, model)
    out = []
    for i in range(steps):
        names = spec.branches_needed(StepInfo(i, steps, 1.0 - i / steps))
        keys = list(dict.fromkeys(alias[n] for n in names))
        if not keys:
            out.append(0)  # CFG-Zero*'s zero-init (flow models: no forward)
            continue
        if keys == [alias[spec.base]] and not branches[keys[0]].edits and branches[keys[0]].prompt == "pos":
            out.append(num_blocks)
            continue
        forwards = forward_groups(keys, branches, "sequential", alias)
        plans = plan_step(forwards, branches, True)
        out.append(sum(planned_evals(g, plans[j], branches, num_blocks) for j, g in enumerate(forwards)))
    return out


def _cost(costs: list[int], num_blocks: int) -> str:
    counts = Counter(costs)
    parts = [f"{c} ({c / num_blocks:.2f} NFE) on {n} steps" for c, n in sorted(counts.items(), key=lambda x: -x[1])]
    return parts[0].split(" on ")[0] if len(parts) == 1 else "; ".join(parts)


def _window(spec: GuidanceSpec) -> str:
    parts = []
    for t in spec.terms:
        iv = t.interval
        if iv.is_everywhere:
            where = "all steps"
        elif iv.unit == "step":
            where = f"steps ({iv.start:g}, {iv.end:g}) N" if iv.open else f"steps [{iv.start:g}, {iv.end:g}) N"
        else:
            where = f"sigma ({iv.start:.3f}, {iv.end:.3f}]"
        parts.append(f"{t.name or t.rule}: {where}")
    if spec.zero_init_fraction:
        parts.append(f"0 on steps < {spec.zero_init_fraction:g} N")
    return "; ".join(parts) or "–"


def _scale(spec: GuidanceSpec) -> str:
    return "; ".join(f"{t.name or t.rule} {t.scale:g}" for t in spec.terms) or "–"


def _measured(key: str, name: str, root: Path) -> str:
    path = MEASURED.get(key)
    if path is None or not (root / path).is_file():
        return "not measured"
    methods = json.loads((root / path).read_text())["methods"]
    m = methods.get(name)
    if m is None:
        return "not measured"
    if "spec" in m:
        scales = ", ".join(f"{t.get('name') or t['rule']} {t['scale']:g}" for t in m["spec"]["terms"])
        edits = _blocks(GuidanceSpec.from_dict(m["spec"]))
        scales += "" if edits == "–" else f"; {edits}"
    else:
        scales = f"cfg {m['cfg_scale']:g}"
    none = methods["none"]
    return (
        f"toy FD {m['fd']:.2f} (unguided {none['fd']:.2f}), accuracy {m['accuracy']:.3f} (unguided "
        f"{none['accuracy']:.3f}) at the toy's setting ({scales}; {m['count']} samples, one set: no interval)"
    )


def preset_rows(key: str, root: str | Path = ".") -> list[list[str]]:
    model = family_model(key)
    num_blocks = len(get_family(model).blocks(model))
    rows = []
    for name in PRESETS:
        spec = GuidanceSpec.from_dict(preset(name))
        try:
            cost = _cost(step_costs(spec, model), num_blocks)
            blocks = _blocks(spec)
        except ValueError as err:  # an address the family does not have: say so, with the valid ones
            first = str(err).split(" (valid")[0].split("; valid")[0]
            blocks, cost = f"{_blocks(spec)} — not in this model ({first}); pass blocks=", "–"
        if name == "fdg" and key not in SPATIAL_PREDICTIONS:
            cost = "– (fdg needs (batch, channels, height, width) predictions; this family's are not)"
        rows.append(
            [
                f"`{name}`",
                PRESETS[name]["formula"],
                blocks,
                _scale(spec),
                _window(spec),
                cost,
                _measured(key, name, Path(root)),
            ]
        )
    return rows


def preset_table(key: str, root: str | Path = ".") -> str:
    model = family_model(key)
    head = (
        f"**{key}**: {FAMILY_MODELS[key][1]}; valid blocks {_short_ranges(model)}; "
        f"{len(get_family(model).blocks(model))} block evaluations = 1 NFE\n\n"
    )
    cols = [
        "preset",
        "formula",
        "default blocks (branch: edits)",
        "scale",
        "window",
        "block evals / step",
        "measured effect",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in preset_rows(key, root)]
    return head + "\n".join(lines) + "\n"


def readme_tables(root: str | Path = ".") -> str:
    return "\n".join(preset_table(k, root) for k in FAMILY_MODELS)


def readme_section(readme: str) -> str:
    """The generated part of the README (between the markers); ValueError if the markers are missing."""
    if START not in readme or END not in readme:
        raise ValueError(f"README: markers {START!r} ... {END!r} not found")
    return readme.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the README section between the markers")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    text = readme_tables(Path(args.readme).resolve().parent)
    if not args.write:
        print(text, end="")
        return
    path = Path(args.readme)
    readme = path.read_text()
    readme_section(readme)  # markers present
    before, rest = readme.split(START, 1)
    path.write_text(before + START + "\n" + text + END + rest.split(END, 1)[1])
    print(f"wrote the preset tables into {path}")


if __name__ == "__main__":
    main()
