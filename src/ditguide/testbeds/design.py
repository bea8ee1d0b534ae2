"""Guidance design on a testbed (notebook 02): candidate methods from the layer map, the same dev budget
for every method family, one declared selection rule, and the comparison on the disjoint test split.

A *method* is one configuration: a guidance spec (`ditguide.guidance`), the pipeline's own CFG at a
scale, or autoguidance with a trained twin. A *family* is a method with its knobs (CFG: the scale;
SLG: CFG scale, scale, block; ours: strong edit, weak edit, scale). Every family gets the same dev
budget, spent by successive halving: at most `configs` configurations on one dev seed set, the best
`keep` of them on all dev seed sets, then the family's choice by the selection rule. Seed set k of a
split renders the split's captions with base seed `base_seed + k`, so sample i of set k has the same
noise in every method (paired comparisons) and a larger rung reuses the smaller rung's samples.

Ours, built from the layer map (`data/analysis/<profile>/layer_scores.json`):
- `ours` (the cost of CFG, 2 forwards a step): `D_uncond_weak + s (D_cond_strong - D_uncond_weak)`,
  CFG whose positive branch runs a strengthened model (an edit whose generation-level change improved
  a metric, restricted to edits that strengthen: alpha > 1, repeat, tau < 1) and whose negative branch
  runs a weakened model (an edit whose error aligns with the model's own error). Either side may be
  absent, which gives the two ablations (strong only; weak only = the Wan-style weak negative).
- `ours_full` (4 forwards a step): CFG plus `w (D_strong - D_weak)` on the positive prompt.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..guidance import GuidanceSpec, preset
from ..profiles import ConfigError, load_pipeline, load_profile
from ..render import PipelineRenderer
from .design_scoring import ScenesScoring, scoring_for

KEYS = ScenesScoring.keys  # the glyph-scene testbed's metrics (each testbed's scoring has its own)
STRENGTHENING = ("scale1.5",)  # layer-map edits that strengthen the model (alpha > 1)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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


# ---------------------------------------------------------------------------------------------------
# Candidates and families


def candidates(layer_scores: dict, n_weak: int, n_strong: int) -> dict:
    """Weak edits: the layer map's weak candidates (positive error alignment), best first. Strong
    edits: its strong candidates (a generation-level improvement > 2 SE) that strengthen the model,
    one per block, with the window of steps where the improvement was measured."""
    weak = [c["spec"] for c in layer_scores["candidates"]["weak"]][:n_weak]
    strong, seen = [], set()
    for c in layer_scores["candidates"]["strong"]:
        if c["edit"] in STRENGTHENING and c["block"] not in seen:
            seen.add(c["block"])
            strong.append({"spec": c["spec"], "window": c["window"]})
    if not weak or not strong[:n_strong]:
        raise ConfigError(
            f"the layer map has {len(weak)} weak and {len(strong)} strengthening strong candidates; "
            "guidance design needs at least one of each (rerun layer_analysis)"
        )
    return {"weak": weak, "strong": strong[:n_strong]}


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
    out["ag_skip"] = [
        Method(
            f"ag_skip[{w}]@{s:g}",
            "ag_skip",
            f"AG weak={_short(w)} w={1 + s:g}",
            spec=preset("autoguidance", scale=s, weak=w),
            knob=1 + s,
        )
        for w in weak
        for s in c["ag_scales"]
    ]
    out["ag_twin"] = [
        Method(f"ag_{t}@{w:g}", "ag_twin", f"AG {t.replace('twin_', '')} twin w={w:g}", twin=t, twin_scale=w, knob=w)
        for t in twins
        for w in c["twin_scales"]
    ]
    for fam, preset_name in (("slg", "slg"), ("stg", "stg"), ("pag", "pag")):
        out[fam] = [
            Method(
                f"{fam}[{b}]@{default_cfg:g}+{s:g}",
                fam,
                f"{fam.upper()} {b} s={s:g}",
                spec=preset(preset_name, cfg_scale=default_cfg, scale=s, blocks=[b]),
                knob=s,
            )
            for b in skip_blocks
            for s in c[f"{fam}_scales"]
        ]
    out["weak_negative"] = [
        Method(
            f"weak_negative[{w}]@{s:g}",
            "weak_negative",
            f"weak-neg {_short(w)} {s:g}",
            spec=ours_spec(s, None, w, "weak_negative"),
            knob=s,
        )
        for w in weak
        for s in c["weak_negative_scales"]
    ]
    out["ours"] = [
        Method(
            f"ours[{st['spec']}@{st['window']}|{w}]@{s:g}",
            "ours",
            f"ours +{_short(st['spec'])}({st['window']}) -{_short(w)} {s:g}",
            spec=ours_spec(s, st, w),
            knob=s,
        )
        for st in strong
        for w in weak
        for s in c["ours_scales"]
    ]
    out["ours_full"] = [
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
        for s in c["ours_full_scales"]
    ]
    return out


def budgeted(configs: list[Method], n: int, seed: int) -> list[Method]:
    """At most n configurations of a family: all if it has n or fewer, else a seeded random subset
    (kept in the family's order, so Pareto curves stay sorted)."""
    if len(configs) <= n:
        return list(configs)
    keep = sorted(np.random.default_rng(seed).choice(len(configs), size=n, replace=False).tolist())
    return [configs[i] for i in keep]


# ---------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scorer:
    """Renders and judges methods on one split; seed set k uses base seed `base_seed + k`."""

    profile: str
    split: str
    per_set: int
    base_seed: int
    params: dict
    judge_path: str | None
    runs_dir: str
    twins: dict[str, str]
    batch_size: int = 256
    max_sets: int = 3
    captions: list[str] = field(init=False)

    def __post_init__(self):
        self.prof = load_profile(self.profile, self.params)
        self.scoring = scoring_for(self.prof, self.judge_path)
        self.pipe = load_pipeline(self.prof)
        self.captions = self.scoring.captions(self.split, self.per_set)
        self.floor = self.scoring.prepare(self.captions, self.max_sets)
        self._twins: dict = {}
        self.images: dict[str, np.ndarray] = {}  # method name -> seed set 0 images

    def renderer(self, m: Method, seed_set: int) -> PipelineRenderer:
        base = self.base_seed + seed_set
        if m.twin is not None:
            if m.twin not in self._twins:
                self._twins[m.twin] = type(self.pipe).from_pretrained(self.twins[m.twin]).transformer.eval()
            pipe = self.scoring.twin_pipeline(self.pipe, self._twins[m.twin], m.twin_scale)
            pipe.set_progress_bar_config(disable=True)
            return PipelineRenderer(self.prof, pipe, cfg_scale=1.0, base_seed=base, steps=m.steps)
        if m.spec is not None:
            return PipelineRenderer(self.prof, self.pipe, guidance=m.spec, base_seed=base, steps=m.steps)
        return PipelineRenderer(self.prof, self.pipe, cfg_scale=m.cfg_scale, base_seed=base, steps=m.steps)

    def cost(self, m: Method, renderer: PipelineRenderer) -> float:
        """Forwards of the full model per sampling step, counted in block evaluations (a branch that
        skips a block or shares a prefix costs less than a forward); more steps count as more cost."""
        steps = m.steps or self.prof.steps
        scale = steps / self.prof.steps
        if m.twin is not None:
            return scale * renderer.pipe.transformer.blocks_per_call()
        return scale * renderer.nfe_per_step(self.captions[0])

    def score(self, m: Method, seed_sets: int) -> dict:
        """Metrics per seed set (rendering what is missing under runs/) and their mean and SE."""
        per_set, cost = [], None
        for k in range(seed_sets):
            r = self.renderer(m, k)
            images = self.scoring.render(self, m, r, k)
            if k == 0:
                self.images[m.name] = images[:16]
                cost = self.cost(m, r)
            per_set.append(self.scoring.score(images, self.captions))
        keys = (*self.scoring.keys, *self.scoring.extra)
        return {"per_set": per_set, **aggregate(per_set, keys), "nfe_per_step": cost}

    def seconds_per_sample(self, m: Method, count: int = 32, repeats: int = 2) -> float:
        """Wall-clock seconds per sample on one batch of `count` (best of `repeats`), this process."""
        r = self.renderer(m, 0)
        count = min(count, len(self.captions))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            r.render(self.captions[:count], list(range(count)))
            best = min(best, time.perf_counter() - t0)
        return best / count


def aggregate(per_set: list[dict], keys=(*KEYS, "all_unseen")) -> dict:
    out = {}
    for key in keys:
        vals = np.array([s[key] for s in per_set if key in s], dtype=np.float64)
        if len(vals):
            out[key] = float(vals.mean())
            out[f"{key}_se"] = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return out


def paired_change(method: dict, reference: dict, key: str) -> dict:
    """Relative change of `key` against `reference` on the same seed sets: mean of the per-set ratios
    minus 1, with a 95 % t-interval over seed sets. Undefined (None, with the reason) where the
    reference is 0 in a seed set (a rare event, such as shown+moving, can be absent from a small set)."""
    n = len(reference["per_set"])
    if any(b[key] == 0 for b in reference["per_set"]):
        return {"rel": None, "lo": None, "hi": None, "seed_sets": n, "undefined": "the reference is 0 in a seed set"}
    rel = np.array([a[key] / b[key] - 1.0 for a, b in zip(method["per_set"], reference["per_set"])], dtype=np.float64)
    n = len(rel)
    half = T_975.get(n - 1, 1.96) * rel.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return {"rel": float(rel.mean()), "lo": float(rel.mean() - half), "hi": float(rel.mean() + half), "seed_sets": n}


# ---------------------------------------------------------------------------------------------------
# The rule and the search


def feasible(entry: dict, rule: dict, floor_alignment: float) -> bool:
    return entry[rule["alignment"]] >= floor_alignment and (
        rule.get("max_nfe_per_step") is None or entry["nfe_per_step"] <= rule["max_nfe_per_step"] + 1e-9
    )


def loss(entry: dict, rule: dict) -> float:
    """The rule's objective as a number to minimise: FD as it is, a higher-is-better score negated
    (`rule["maximise"]`, set from the testbed's scoring)."""
    value = entry[rule["objective"]]
    return -value if rule.get("maximise") else value


def choose(entries: dict[str, dict], rule: dict, floor_alignment: float, *, cost_cap: bool) -> tuple[str, bool]:
    """The name of the best entry by the rule: the best `objective` among entries whose alignment is
    no worse than `floor_alignment` (and, with cost_cap, at most `max_nfe_per_step`). If none
    qualifies, the one with the best alignment (flagged False)."""
    r = dict(rule) if cost_cap else {**rule, "max_nfe_per_step": None}
    ok = {k: e for k, e in entries.items() if feasible(e, r, floor_alignment)}
    if ok:
        return min(ok, key=lambda k: loss(ok[k], rule)), True
    return max(entries, key=lambda k: entries[k][rule["alignment"]]), False


def _brief(entry: dict, rule: dict) -> str:
    o, a = rule["objective"], rule["alignment"]
    return f"{o} {entry[o]:.4g}, {a} {entry[a]:.3f}"


def search(
    scorer: Scorer, fams: dict[str, list[Method]], budget: dict, rule: dict, reference: Method, seed: int = 0, log=print
) -> dict:
    """Successive halving per family on dev: every config on 1 seed set, the best `keep` (by the rule)
    on `seed_sets`, then the family's choice. The reference (CFG at the profile default) is always
    scored on all seed sets: its alignment is the rule's floor."""
    sets = budget["seed_sets"]
    ref = scorer.score(reference, sets)
    out = {"reference": reference.name, "reference_metrics": dict(ref), "families": {}}
    floor_alignment = ref[rule["alignment"]]
    for fam, configs in fams.items():
        configs = budgeted(configs, budget["configs"], seed + len(fam))
        rung0 = {}
        for m in configs:
            rung0[m.name] = scorer.score(m, 1)
            log(f"[dev {fam}] {m.label}: {_brief(rung0[m.name], rule)}, NFE/step {rung0[m.name]['nfe_per_step']:.2f}")
        ranked = sorted(
            rung0,
            key=lambda k: (
                not feasible(rung0[k], {**rule, "max_nfe_per_step": None}, floor_alignment),
                loss(rung0[k], rule),
            ),
        )
        rung1 = {k: scorer.score(next(m for m in configs if m.name == k), sets) for k in ranked[: budget["keep"]]}
        best, ok = choose(rung1, rule, floor_alignment, cost_cap=False)
        out["families"][fam] = {
            "configs": [{**asdict(m), "rung0": rung0[m.name], "rung1": rung1.get(m.name)} for m in configs],
            "choice": best,
            "meets_alignment_floor": ok,
        }
        log(f"[dev {fam}] choice: {best} ({_brief(rung1[best], rule)})")
    return out


def selected_method(
    dev: dict, fams: dict[str, list[Method]], rule: dict, ours_families=("ours", "ours_full")
) -> Method:
    """The selected preset: the best of our families' choices by the rule, with the cost cap."""
    entries, floor_alignment = {}, dev["reference_metrics"][rule["alignment"]]
    for fam in ours_families:
        name = dev["families"][fam]["choice"]
        entries[name] = next(c["rung1"] for c in dev["families"][fam]["configs"] if c["name"] == name)
    best, _ = choose(entries, rule, floor_alignment, cost_cap=True)
    return next(m for fam in ours_families for m in fams[fam] if m.name == best)


def write_json(path: str | Path, obj) -> None:
    from ..style import write_text

    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def design_params(section: dict, profile: str) -> dict:
    """The guidance_design section resolved for one testbed, every parameter checked before anything
    renders. `dev.per_set`, `test.per_set`, `select` and each `grid` list may be given per testbed
    ({profile: value}); the result holds this testbed's values only."""
    p = dict(section)
    for key in ("dev", "test"):
        if isinstance(p.get(key), dict) and isinstance(p[key].get("per_set"), dict):
            per = p[key]["per_set"]
            if profile not in per:
                raise ConfigError(
                    f"guidance_design.{key}.per_set has no entry for profile {profile!r}; it has: {', '.join(per)}"
                )
            p[key] = {**p[key], "per_set": per[profile]}
    if isinstance(p.get("select"), dict) and "objective" not in p["select"]:
        if profile not in p["select"]:
            raise ConfigError(
                f"guidance_design.select has no rule for profile {profile!r}; it has: {', '.join(p['select'])}"
            )
        p["select"] = p["select"][profile]
    if isinstance(p.get("grid"), dict):
        grid = {}
        for key, values in p["grid"].items():
            if isinstance(values, dict):
                if profile not in values:
                    raise ConfigError(
                        f"guidance_design.grid.{key} has no entry for profile {profile!r}; it has: {', '.join(values)}"
                    )
                values = values[profile]
            grid[key] = values
        p["grid"] = grid
    check_design_params(p)
    return p


def check_design_params(p: dict, keys: tuple[str, ...] | None = None) -> None:
    """Every parameter of a resolved guidance_design section, before anything renders. keys: the
    metrics the testbed's scoring has (default: those of any testbed)."""
    from .design_scoring import ClipsScoring

    keys = keys or tuple(dict.fromkeys((*KEYS, *ClipsScoring.keys)))
    need = {
        "dev": dict,
        "test": dict,
        "budget": dict,
        "select": dict,
        "grid": dict,
        "weak_candidates": int,
        "strong_candidates": int,
    }
    for key, typ in need.items():
        if not isinstance(p.get(key), typ):
            raise ConfigError(f"guidance_design.{key}={p.get(key)!r} is not allowed; allowed: a {typ.__name__}")
    for split in ("dev", "test"):
        s = p[split]
        if not (
            isinstance(s.get("per_set"), int)
            and s["per_set"] >= 10
            and isinstance(s.get("seed_sets"), int)
            and s["seed_sets"] >= 3
        ):
            raise ConfigError(
                f"guidance_design.{split}: per_set must be an integer >= 10 and seed_sets >= 3, got {s!r}"
            )
    if {p["dev"]["split"], p["test"]["split"]} != {"dev", "test"}:
        raise ConfigError(
            "guidance_design: dev.split must be 'dev' and test.split 'test' (tune on dev, report on test)"
        )
    check_rule(p["select"], keys)
    b = p["budget"]
    if not (isinstance(b.get("configs"), int) and isinstance(b.get("keep"), int) and 1 <= b["keep"] <= b["configs"]):
        raise ConfigError(f"guidance_design.budget: needs integers 1 <= keep <= configs, got {b!r}")
    for key, values in p["grid"].items():
        if not (isinstance(values, list) and values and all(isinstance(v, (int, float)) and v >= 0 for v in values)):
            raise ConfigError(
                f"guidance_design.grid.{key}={values!r} is not allowed; allowed: a non-empty list of numbers >= 0"
            )


def check_rule(rule: dict, keys: tuple[str, ...]) -> None:
    if rule.get("objective") not in keys or rule.get("alignment") not in keys:
        raise ConfigError(
            f"guidance_design.select: objective and alignment must be metrics, one of {keys}; got {rule!r}"
        )


def _rule(select: dict, scoring) -> dict:
    """The declared rule, told whether its objective is better higher (the testbed's scoring knows),
    after checking that the testbed has the metrics it names."""
    check_rule(select, scoring.keys)
    return {**select, "maximise": True} if select["objective"] not in scoring.lower_is_better else dict(select)


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


def run_dev(
    profile: str,
    p: dict,
    params: dict,
    *,
    layer_scores: dict,
    twins: dict[str, str],
    judge_path: str | None,
    runs_dir: str = "runs",
    log=print,
) -> tuple[dict, dict[str, list[Method]], Method]:
    """The dev search and the selected preset: (search record, families, selected method)."""
    prof = load_profile(profile, params)
    cands = candidates(layer_scores, p["weak_candidates"], p["strong_candidates"])
    fams = families(cands, p["grid"], prof.cfg_scale, twins)
    d = p["dev"]
    scorer = Scorer(
        profile, d["split"], d["per_set"], d["base_seed"], params, judge_path, runs_dir, twins, max_sets=d["seed_sets"]
    )
    reference = Method(f"cfg@{prof.cfg_scale:g}", "cfg", f"CFG {prof.cfg_scale:g}", cfg_scale=prof.cfg_scale)
    budget = {**p["budget"], "seed_sets": d["seed_sets"]}
    rule = _rule(p["select"], scorer.scoring)
    dev = search(scorer, fams, budget, rule, reference, seed=p["budget"].get("seed", 0), log=log)
    dev.update(
        candidates=cands,
        budget=budget,
        rule=p["select"],
        split=d,
        floor=scorer.floor,
        samples_rendered=sum(len(v) for v in fams.values()),
    )
    selected = selected_method(dev, fams, rule)
    dev["selected"] = asdict(selected)
    return dev, fams, selected


def run_test(
    profile: str,
    p: dict,
    params: dict,
    dev: dict,
    fams: dict[str, list[Method]],
    selected: Method,
    *,
    twins: dict[str, str],
    judge_path: str | None,
    runs_dir: str = "runs",
    timing: bool = True,
    log=print,
) -> tuple[dict, dict]:
    """Every test method on the test split (>= 3 seed sets), cost in forwards and seconds, and the
    selected preset's paired relative change against CFG at the default and at its best dev scale."""
    prof = load_profile(profile, params)
    t = p["test"]
    scorer = Scorer(
        profile, t["split"], t["per_set"], t["base_seed"], params, judge_path, runs_dir, twins, max_sets=t["seed_sets"]
    )
    methods = test_methods(dev, fams, selected, prof.cfg_scale, prof.steps)
    results = {}
    for m in methods:
        e = scorer.score(m, t["seed_sets"])
        results[m.name] = {**e, "family": m.family, "label": m.label, "method": asdict(m)}
        o, a = p["select"]["objective"], p["select"]["alignment"]
        log(
            f"[test] {m.label}: {o} {e[o]:.4g} ± {e[o + '_se']:.2g}, {a} {e[a]:.3f} ± {e[a + '_se']:.3f}, "
            f"NFE/step {e['nfe_per_step']:.2f}"
        )
    if timing:
        for m in methods:
            results[m.name]["seconds_per_sample"] = scorer.seconds_per_sample(m)
    default = f"cfg@{prof.cfg_scale:g}"
    best = dev["families"]["cfg"]["choice"]
    comparison = {}
    for ref_name, label in ((default, "cfg_default"), (best, "cfg_best")):
        comparison[label] = {
            "reference": ref_name,
            "changes": {k: paired_change(results[selected.name], results[ref_name], k) for k in scorer.scoring.changes},
        }
    for m in methods:  # does each side of ours add anything? the selected method against its ablations
        if m.family == "ablation":
            label = "without_strong" if "weak_only" in m.name else "without_weak"
            comparison[label] = {
                "reference": m.name,
                "changes": {
                    k: paired_change(results[selected.name], results[m.name], k) for k in scorer.scoring.changes
                },
            }
    test = {"split": t, "floor": scorer.floor, "methods": results, "selected": selected.name, "comparison": comparison}
    return test, scorer.images
