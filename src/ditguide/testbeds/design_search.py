"""The guidance design's dev search (notebook 02): a `Scorer` renders and judges methods on one split
(seed set k with base seed `base_seed + k`, so every method sees the same noise), the declared rule
chooses (`feasible`, `loss`, `choose`), and successive halving spends every family's budget (`search`);
`paired_change` compares two methods on the same seed sets."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..profiles import load_pipeline, load_profile
from ..render import PipelineRenderer
from .design_methods import Method, budgeted
from .design_params import KEYS
from .design_scoring import scoring_for

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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
    workers: int = 1  # forked single-threaded processes per render (ditguide.generate_pool)
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
