"""The methods the guidance design compares (notebook 02): a `Method` is one configuration, a family is
a method with its knobs. The candidate edits come from the layer map; `families` lists every family's
configurations, `budgeted` draws a family's dev budget from them, `test_methods` is what the test split
compares (with the ablations of the selected preset)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..guidance import GuidanceSpec, preset
from ..profiles import ConfigError

STRENGTHENING = ("scale1.5",)  # layer-map edits that strengthen the model (alpha > 1)


@dataclass(frozen=True)
class Method:
    """One configuration. Exactly one of: `spec` (a guidance spec dict), `twin` (trained-twin
    autoguidance at `twin_scale`), or neither (the pipeline's own CFG at `cfg_scale`, 1 = off)."""

    name: str
    family: str
    label: str
    spec: dict | None = None
    cfg_scale: float = 1.0
    twin: str | None = None
    twin_scale: float = 1.0
    steps: int | None = None
    knob: float | None = None  # the scale a family's Pareto curve is drawn along


def candidates(layer_scores: dict, n_weak: int, n_strong: int, bed=None) -> dict:
    """Weak edits: the layer map's weak candidates (positive error alignment), best first. Strong
    edits: its strong candidates (a generation-level improvement > 2 SE) that strengthen the model,
    one per block, with the window of steps where the improvement was measured.

    When no strengthening edit clears 2 SE, the strong edits are the strengthening records with the
    largest positive improvement in SE units (`strongest_estimates`, needs `bed`), and the result says
    so (`strong_basis`): the dev search, not the map, then decides whether they help."""
    weak = [c["spec"] for c in layer_scores["candidates"]["weak"]][:n_weak]
    strong = _one_per_block(c for c in layer_scores["candidates"]["strong"] if c["edit"] in STRENGTHENING)
    basis = None
    if not strong and bed is not None:
        strong, basis = _one_per_block(strongest_estimates(layer_scores, bed)), "best estimate, none > 2 SE"
    if not weak or not strong[:n_strong]:
        raise ConfigError(
            f"the layer map has {len(weak)} weak and {len(strong)} strengthening strong candidates; "
            "guidance design needs at least one of each (rerun layer_analysis)"
        )
    out = {"weak": weak, "strong": strong[:n_strong]}
    return out if basis is None else out | {"strong_basis": basis}


def _one_per_block(records) -> list[dict]:
    strong, seen = [], set()
    for c in records:
        if c["block"] not in seen:
            seen.add(c["block"])
            strong.append({"spec": c["spec"], "window": c["window"]})
    return strong


def strongest_estimates(layer_scores: dict, bed) -> list[dict]:
    """The layer map's strengthening generation records whose point estimate improves the bed's
    alignment or quality metric, best first by the larger improvement in standard errors."""
    from ..layer_map.configs import edit_string

    a, q = bed.alignment, bed.quality
    sign = 1.0 if bed.quality_higher_better else -1.0

    def z(d: float, se: float) -> float:
        return d / se if se > 0 else (np.inf if d > 0 else -np.inf)

    ranked = []
    for r in layer_scores["generation"]["records"]:
        if r["edit"] in STRENGTHENING:
            best = max(z(r[f"d_{a}"], r[f"d_{a}_se"]), z(sign * r[f"d_{q}"], r[f"d_{q}_se"]))
            if best > 0:
                ranked.append((best, r | {"spec": edit_string(r["edit"], r["block"])}))
    ranked.sort(key=lambda x: -x[0])
    return [r for _, r in ranked]


def _window(name: str) -> list[float]:
    from ..analysis import WINDOWS

    return [0.0, 1.0] if name == "all" else list(WINDOWS[name])


def _branch_terms(scale: float, plus: str, minus: str, window: list[float]) -> list[dict]:
    """CFG with the given positive branch inside `window` (fractions of steps) and `cond` outside it."""
    terms = []
    for (a, b), p in (((0.0, window[0]), "cond"), (tuple(window), plus), ((window[1], 1.0), "cond")):
        if b > a:
            terms.append({"rule": "cfg", "scale": scale, "plus": p, "minus": minus, "interval": [a, b]})
    return terms


def ours_spec(scale: float, strong: dict | None, weak: str | None, name: str = "ours") -> dict:
    """`D_uncond_weak + s (D_cond_strong - D_uncond_weak)` (2 forwards a step); `strong` is
    {spec, window}, either side may be None."""
    branches = {}
    if strong is not None:
        branches["cond_strong"] = {"prompt": "pos", "edits": strong["spec"]}
    if weak is not None:
        branches["uncond_weak"] = {"prompt": "neg", "edits": weak}
    plus = "cond_strong" if strong is not None else "cond"
    minus = "uncond_weak" if weak is not None else "uncond"
    window = _window(strong["window"]) if strong is not None else [0.0, 1.0]
    d = {"name": name, "branches": branches, "terms": _branch_terms(scale, plus, minus, window)}
    GuidanceSpec.from_dict(d)
    return d


def _short(edit: str | None) -> str:
    return "-" if edit is None else edit.replace("temperature", "tau").replace("identity_attn_in_stream", "idattn")


def families(cands: dict, grid: dict, default_cfg: float, twins: dict[str, str]) -> dict[str, list[Method]]:
    """Every family's candidate configurations (before the budget is applied)."""
    c = grid
    weak, strong = cands["weak"], cands["strong"]
    skip_blocks = list(dict.fromkeys(w.split(":", 1)[1] for w in weak))  # blocks of the weak candidates
    out: dict[str, list[Method]] = {"none": [Method("none", "none", "no guidance", cfg_scale=1.0, knob=1.0)]}
    out["cfg"] = [Method(f"cfg@{s:g}", "cfg", f"CFG {s:g}", cfg_scale=s, knob=s) for s in c["cfg_scales"]]
    for fam, scales in (
        ("cfg_zero_star", c["cfg_scales"]),
        ("apg", c["apg_scales"]),
        ("guidance_interval", c["interval_scales"]),
    ):
        out[fam] = [Method(f"{fam}@{s:g}", fam, f"{fam} {s:g}", spec=preset(fam, scale=s), knob=s) for s in scales]
    out["ag_skip"] = _ag_skip(weak, c["ag_scales"])
    out["ag_twin"] = [
        Method(f"ag_{t}@{w:g}", "ag_twin", f"AG {t.replace('twin_', '')} twin w={w:g}", twin=t, twin_scale=w, knob=w)
        for t in twins
        for w in c["twin_scales"]
    ]
    for fam, preset_name in (("slg", "slg"), ("stg", "stg"), ("pag", "pag")):
        out[fam] = _perturbed_branch(fam, preset_name, skip_blocks, c[f"{fam}_scales"], default_cfg)
    out["weak_negative"] = _weak_negative(weak, c["weak_negative_scales"])
    out["ours"] = _ours(strong, weak, c["ours_scales"])
    out["ours_full"] = _ours_full(strong, weak, c["ours_full_scales"], default_cfg)
    return out


def _ag_skip(weak: list[str], scales) -> list[Method]:
    """Autoguidance with a layer-skipped weak model, per weak edit and scale (w = 1 + scale)."""
    return [
        Method(
            f"ag_skip[{w}]@{s:g}",
            "ag_skip",
            f"AG weak={_short(w)} w={1 + s:g}",
            spec=preset("autoguidance", scale=s, weak=w),
            knob=1 + s,
        )
        for w in weak
        for s in scales
    ]


def _perturbed_branch(fam: str, preset_name: str, blocks: list[str], scales, default_cfg: float) -> list[Method]:
    """SLG, STG or PAG at the default CFG scale, per block (those of the weak candidates) and scale."""
    return [
        Method(
            f"{fam}[{b}]@{default_cfg:g}+{s:g}",
            fam,
            f"{fam.upper()} {b} s={s:g}",
            spec=preset(preset_name, cfg_scale=default_cfg, scale=s, blocks=[b]),
            knob=s,
        )
        for b in blocks
        for s in scales
    ]


def _weak_negative(weak: list[str], scales) -> list[Method]:
    """CFG whose negative branch runs a weakened model (the Wan-style weak negative)."""
    return [
        Method(
            f"weak_negative[{w}]@{s:g}",
            "weak_negative",
            f"weak-neg {_short(w)} {s:g}",
            spec=ours_spec(s, None, w, "weak_negative"),
            knob=s,
        )
        for w in weak
        for s in scales
    ]


def _ours(strong: list[dict], weak: list[str], scales) -> list[Method]:
    """`ours` (2 forwards a step) per strong {spec, window}, weak edit and scale."""
    return [
        Method(
            f"ours[{st['spec']}@{st['window']}|{w}]@{s:g}",
            "ours",
            f"ours +{_short(st['spec'])}({st['window']}) -{_short(w)} {s:g}",
            spec=ours_spec(s, st, w),
            knob=s,
        )
        for st in strong
        for w in weak
        for s in scales
    ]


def _ours_full(strong: list[dict], weak: list[str], scales, default_cfg: float) -> list[Method]:
    """`ours_full` (4 forwards a step): CFG at the default scale plus s (D_strong - D_weak)."""
    return [
        Method(
            f"ours_full[{st['spec']}|{w}]@{default_cfg:g}+{s:g}",
            "ours_full",
            f"CFG + {s:g}(+{_short(st['spec'])} -{_short(w)})",
            spec=preset(
                "strong_weak", cfg_scale=default_cfg, scale=s, strong=st["spec"], weak=w, interval=_window(st["window"])
            ),
            knob=s,
        )
        for st in strong
        for w in weak
        for s in scales
    ]


def budgeted(configs: list[Method], n: int, seed: int) -> list[Method]:
    """At most n configurations of a family: all if it has n or fewer, else a seeded random subset
    (kept in the family's order, so Pareto curves stay sorted)."""
    if len(configs) <= n:
        return list(configs)
    keep = sorted(np.random.default_rng(seed).choice(len(configs), size=n, replace=False).tolist())
    return [configs[i] for i in keep]


def test_methods(
    dev: dict, fams: dict[str, list[Method]], selected: Method, default_cfg: float, steps: int, matched_costs=(3.0, 4.0)
) -> list[Method]:
    """What the test split compares: no guidance, the CFG sweep, every family's dev
    choice (CFG's is its best scale), the selected preset, its two ablations (strong side only, weak
    side only), and CFG at its best scale given the compute of a 3- and a 4-forward method as more
    sampling steps."""
    by_name = {m.name: m for ms in fams.values() for m in ms}
    chosen = [by_name[dev["families"][f]["choice"]] for f in fams]
    default = next((m for m in fams["cfg"] if m.cfg_scale == default_cfg), None) or Method(
        f"cfg@{default_cfg:g}", "cfg", f"CFG {default_cfg:g}", cfg_scale=default_cfg, knob=default_cfg
    )
    methods = [fams["none"][0], default, *fams["cfg"], *chosen]  # the whole CFG sweep: its test curve
    if selected.family == "ours":
        st, w, s = _parts(selected)
        methods += [
            Method(
                f"ablation_strong_only[{st['spec']}]@{s:g}",
                "ablation",
                "ours, strong side only",
                spec=ours_spec(s, st, None, "strong_only"),
                knob=s,
            ),
            Method(
                f"ablation_weak_only[{w}]@{s:g}",
                "ablation",
                "ours, weak side only",
                spec=ours_spec(s, None, w, "weak_only"),
                knob=s,
            ),
        ]
    best_cfg = by_name[dev["families"]["cfg"]["choice"]]
    for cost in matched_costs:
        n = int(round(steps * cost / 2.0))
        methods.append(
            Method(
                f"{best_cfg.name}x{n}steps",
                "cfg_more_steps",
                f"CFG {best_cfg.cfg_scale:g}, {n} steps",
                cfg_scale=best_cfg.cfg_scale,
                steps=n,
                knob=best_cfg.cfg_scale,
            )
        )
    return list({m.name: m for m in methods}.values())


def _parts(m: Method) -> tuple[dict, str, float]:
    """The strong {spec, window}, weak edit and scale of an `ours` method (from its spec)."""
    br = m.spec["branches"]
    strong_terms = [t for t in m.spec["terms"] if t["plus"] == "cond_strong"]
    window = strong_terms[0]["interval"] if strong_terms else [0.0, 1.0]
    from ..analysis import WINDOWS

    name = next((k for k, v in WINDOWS.items() if list(v) == list(window)), "all")
    return {"spec": br["cond_strong"]["edits"], "window": name}, br["uncond_weak"]["edits"], m.spec["terms"][0]["scale"]
