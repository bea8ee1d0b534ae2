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
from dataclasses import asdict
from pathlib import Path

from ..profiles import load_profile
from .beds import bed_for

# The design's parts by job: the methods and families (design_methods), the scorer, rule and search
# (design_search), the parameters (design_params); this module runs dev and test and re-exports them
# (notebook 02, tests, design_figures).
from .design_methods import STRENGTHENING, Method, budgeted, candidates, families, ours_spec, test_methods
from .design_params import KEYS, check_design_params, check_rule, design_params, rule_of
from .design_search import T_975, Scorer, aggregate, choose, feasible, loss, paired_change, search, selected_method

__all__ = [
    "KEYS",
    "STRENGTHENING",
    "T_975",
    "Method",
    "Scorer",
    "aggregate",
    "budgeted",
    "candidates",
    "check_design_params",
    "check_rule",
    "choose",
    "design_params",
    "families",
    "feasible",
    "loss",
    "ours_spec",
    "paired_change",
    "rule_of",
    "run_dev",
    "run_test",
    "samples_rendered",
    "search",
    "selected_method",
    "test_methods",
    "write_json",
]

_rule = rule_of  # its name before the split (tests read it)


def write_json(path: str | Path, obj) -> None:
    from ..style import write_text

    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _scorer(profile: str, split: dict, params: dict, judge_path, runs_dir, twins, workers: int) -> Scorer:
    """The scorer of one split section ({split, per_set, base_seed, seed_sets}) of the design params."""
    s = split
    return Scorer(
        profile,
        s["split"],
        s["per_set"],
        s["base_seed"],
        params,
        judge_path,
        runs_dir,
        twins,
        max_sets=s["seed_sets"],
        workers=workers,
    )


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
    cands = candidates(layer_scores, p["weak_candidates"], p["strong_candidates"], bed_for(prof))
    if "strong_basis" in cands:
        log(f"strong candidates: {cands['strong_basis']} in the layer map: {cands['strong']}")
    fams = families(cands, p["grid"], prof.cfg_scale, twins)
    d = p["dev"]
    scorer = _scorer(profile, d, params, judge_path, runs_dir, twins, p.get("workers", 1))
    reference = Method(f"cfg@{prof.cfg_scale:g}", "cfg", f"CFG {prof.cfg_scale:g}", cfg_scale=prof.cfg_scale)
    budget = {**p["budget"], "seed_sets": d["seed_sets"]}
    rule = rule_of(p["select"], scorer.scoring)
    dev = search(scorer, fams, budget, rule, reference, seed=p["budget"].get("seed", 0), log=log)
    dev.update(
        candidates=cands,
        budget=budget,
        rule=p["select"],
        split=d,
        floor=scorer.floor,
        samples_rendered=samples_rendered(dev, d["per_set"], d["seed_sets"]),
    )
    selected = selected_method(dev, fams, rule)
    dev["selected"] = asdict(selected)
    return dev, fams, selected


def samples_rendered(dev: dict, per_set: int, seed_sets: int) -> int:
    """Samples the dev search rendered: every distinct (method, seed set) it scored, times `per_set`
    (the reference on every set; each family's configs on set 0, the kept ones on every set; a
    method scored twice, such as CFG at the default in the reference and the CFG family, counts once)."""
    scored = {(dev["reference"], k) for k in range(seed_sets)}
    for fam in dev["families"].values():
        for c in fam["configs"]:
            scored |= {(c["name"], k) for k in range(seed_sets if c["rung1"] is not None else 1)}
    return len(scored) * per_set


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
    scorer = _scorer(profile, t, params, judge_path, runs_dir, twins, p.get("workers", 1))
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
