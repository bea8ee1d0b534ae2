"""The serializable guidance spec: branches, terms, intervals, and how they combine.

A guided prediction is computed from *named predictions*: tensors keyed by branch name ("cond",
"uncond", "weak", "strong", ...). A branch is one evaluation of the model, described by which
conditioning it sees (the prompt, "pos", or the negative prompt, "neg") and which block edits it runs
with. The edits are opaque data here (a JSON-able edit spec): this module knows nothing of models,
and of edits only their op names and parameters, which `preset("strong_weak")` reads to refuse a
strong side that does not strengthen. The denoiser (ditguide.denoiser) evaluates the branches and calls
`GuidanceSpec.combine`; the rules are `ditguide.guidance.rules`.

How a spec combines its predictions at one step (every term only while its interval is active):

    out = P[base]                                          # base: the conditional model, "cond"
    primary term (cfg | cfg_zero_star | apg):  out = rule(P[plus], P[minus], scale)
    each delta term, in order:                 out = out + (P[plus] - P[minus]) * scale
    steps i < zero_init_fraction * N:          out = 0     (CFG-Zero*'s zero-init)

The primary rules follow the published formulas in the diffusers convention (`uncond + s(cond -
uncond)`, so a CFG term reproduces a pipeline's own CFG bit for bit). Every other method is a delta
term and differs only in its branches: SLG, STG and PAG `s(cond - perturbed)`, autoguidance
`(w - 1)(D - D_weak)` (Karras et al.'s `D_weak + w(D - D_weak)` rewritten around `D`), ours
`w(D_strong - D_weak)`. Weak-negative guidance is a CFG term whose negative branch runs the weakened
model. Several primary terms may exist (e.g. CFG against a weak negative on 10%-90% of the steps and
plain CFG elsewhere) if no two are active at the same step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .rules import PRIMARY_RULES, RULES, GuidanceSpecError, RuleContext
from .rules import check_number as _check_number

PROMPTS = ("pos", "neg")
UNITS = ("step", "sigma")
# Branches every spec has: the unmodified model on the prompt and on the negative prompt. They cannot
# be redefined, so that "cond" and "uncond" mean the same thing in every params file.
DEFAULT_BRANCHES = {"cond": ("pos", None), "uncond": ("neg", None)}
_EPS = 1e-9  # tolerance of interval boundaries: 0.3 * 10 must count as step 3


@dataclass(frozen=True)
class Interval:
    """Where along the trajectory a term is active.

    unit "step": fractions of the sampling steps, half-open `[start, end)`: step i of N is active when
    `start <= i / N < end`, so [0, 1] is every step and [0, 0.5] the first half exactly.
    unit "sigma": noise levels (flow-matching sigma, 1 = pure noise), half-open `(start, end]`, as
    Kynkaanniemi et al.'s guidance interval (sigma_lo, sigma_hi].
    Both ways the edge the trajectory reaches first is in and the other is out, so two windows that
    share an edge never claim the same step. open=True leaves out both edges: StableDiffusion3Pipeline's
    skip-layer window `N * start < i < N * stop`, written as SD3 computes it so the steps agree.
    """

    start: float = 0.0
    end: float = 1.0
    unit: str = "step"
    open: bool = False

    def validate(self, where: str = "interval") -> None:
        if self.unit not in UNITS:
            raise GuidanceSpecError(f"{where}.unit = {self.unit!r}: must be one of {UNITS}")
        what = "fraction of steps" if self.unit == "step" else "sigma"
        start = _check_number(self.start, f"{where}.start", lo=0.0, hi=1.0, allowed=f"in [0, 1] ({what})")
        end = _check_number(self.end, f"{where}.end", lo=0.0, hi=1.0, allowed=f"in [0, 1] ({what})")
        if start > end:
            raise GuidanceSpecError(f"{where} = [{start}, {end}]: start must be <= end")
        if not isinstance(self.open, bool):
            raise GuidanceSpecError(f"{where}.open = {self.open!r}: must be true or false")

    def contains(self, step: int, num_steps: int, sigma: float | None = None) -> bool:
        if self.unit == "step":
            if self.open:
                return num_steps * self.start < step < num_steps * self.end
            return self.start * num_steps - _EPS <= step < self.end * num_steps - _EPS
        if sigma is None:
            raise GuidanceSpecError("an interval in sigma needs the step's sigma; the denoiser got none")
        if self.open:
            return self.start + _EPS < sigma < self.end - _EPS
        return self.start + _EPS < sigma <= self.end + _EPS

    @property
    def is_everywhere(self) -> bool:
        return self.unit == "step" and self.start == 0.0 and self.end == 1.0 and not self.open

    def to_dict(self) -> dict:
        d = {"start": self.start, "end": self.end, "unit": self.unit}
        if self.open:
            d["open"] = True
        return d

    @classmethod
    def from_value(cls, value: Any, where: str = "interval") -> Interval:
        """From `[start, end]` (fractions of steps), a dict with start/end/unit/open, or an Interval."""
        if isinstance(value, Interval):
            interval = value
        elif value is None:
            interval = cls()
        elif isinstance(value, Mapping):
            unknown = set(value) - {"start", "end", "unit", "open"}
            if unknown:
                raise GuidanceSpecError(f"{where}: unknown keys {sorted(unknown)}; allowed: start, end, unit, open")
            interval = cls(
                value.get("start", 0.0), value.get("end", 1.0), value.get("unit", "step"), value.get("open", False)
            )
        elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            interval = cls(value[0], value[1])
        else:
            raise GuidanceSpecError(
                f"{where} = {value!r}: must be [start, end] (fractions of steps) or {{start, end, unit, open}}"
            )
        interval.validate(where)
        return interval


@dataclass(frozen=True)
class Branch:
    """One evaluation of the model: the conditioning it sees and the block edits it runs with.

    `edits` is a JSON-able edit spec (see ditguide.edits.EditSpec.from_dict), or None for the
    unmodified model; this module never looks inside it."""

    prompt: str = "pos"
    edits: Any = None

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "edits": copy.deepcopy(self.edits)}


@dataclass(frozen=True)
class Term:
    """One guidance term: a rule over two named branches, with a scale and an active interval.

    rule: "cfg" | "cfg_zero_star" | "apg" (primary: they produce the guided prediction from `plus` =
    positive and `minus` = negative branch) or "delta" (adds `(P[plus] - P[minus]) * scale`).
    params: apg only: eta (0..1), norm_threshold (>= 0, 0 = off), momentum (-1..1), space ("pred":
    the model's output; "x0": the clean-image estimate x - sigma v of a flow-matching model).
    name: a free label ("slg", "stg", ...), kept in the dict form for readability.
    """

    rule: str
    scale: float
    plus: str = "cond"
    minus: str = "uncond"
    interval: Interval = field(default_factory=Interval)
    params: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    @property
    def is_primary(self) -> bool:
        return self.rule in PRIMARY_RULES

    def to_dict(self) -> dict:
        d = {"rule": self.rule, "scale": self.scale, "plus": self.plus, "minus": self.minus}
        d["interval"] = self.interval.to_dict()
        if self.params:
            d["params"] = dict(self.params)
        if self.name is not None:
            d["name"] = self.name
        return d


def _validate_params(term: Term, where: str) -> dict:
    return RULES[term.rule].check(dict(term.params), where, term.rule)


@dataclass(frozen=True)
class StepInfo:
    """Where the sampler is: step index, number of steps, sigma of the current step (None if unknown)."""

    step: int
    num_steps: int
    sigma: float | None = None


@dataclass(frozen=True)
class GuidanceSpec:
    """A guidance method: branches (named model evaluations), terms (rules over them), a base branch.

    Validated on construction, so a bad value fails before any sampling. An empty spec (no terms) is
    "guidance off": the base branch alone, one forward per step.
    """

    terms: tuple[Term, ...] = ()
    branches: Mapping[str, Branch] = field(default_factory=dict)
    base: str = "cond"
    zero_init_fraction: float = 0.0  # CFG-Zero*: steps i < fraction * N output 0 (any fraction > 0: step 0)
    name: str | None = None

    def __post_init__(self) -> None:
        branches = {k: Branch(*v) for k, v in DEFAULT_BRANCHES.items()}
        for key, branch in dict(self.branches).items():
            if key in DEFAULT_BRANCHES and (branch.prompt, branch.edits) != DEFAULT_BRANCHES[key]:
                raise GuidanceSpecError(
                    f"branches.{key}: {key!r} is reserved for the unmodified model on the "
                    f"{DEFAULT_BRANCHES[key][0]!r} prompt; give an edited branch another name"
                )
            branches[key] = branch
        object.__setattr__(self, "branches", branches)
        object.__setattr__(self, "terms", tuple(self.terms))
        self.validate()

    # ---- validation -------------------------------------------------------------------------------

    def validate(self) -> None:
        for key, branch in self.branches.items():
            if not isinstance(key, str) or not key:
                raise GuidanceSpecError(f"branches: names must be non-empty strings, got {key!r}")
            if branch.prompt not in PROMPTS:
                raise GuidanceSpecError(f"branches.{key}.prompt = {branch.prompt!r}: must be one of {PROMPTS}")
        if self.base not in self.branches:
            raise GuidanceSpecError(f"base = {self.base!r}: must name a branch, one of {sorted(self.branches)}")
        z = _check_number(
            self.zero_init_fraction, "zero_init_fraction", lo=0.0, hi=1.0, allowed="in [0, 1] (of the steps)"
        )
        object.__setattr__(self, "zero_init_fraction", z)
        for i, term in enumerate(self.terms):
            where = f"terms[{i}]"
            if term.rule not in RULES:
                raise GuidanceSpecError(f"{where}.rule = {term.rule!r}: must be one of {tuple(RULES)}")
            _check_number(term.scale, f"{where}.scale", lo=0.0, allowed="finite and >= 0")
            for role in ("plus", "minus"):
                if getattr(term, role) not in self.branches:
                    raise GuidanceSpecError(
                        f"{where}.{role} = {getattr(term, role)!r}: must name a branch, one of {sorted(self.branches)}"
                    )
            if not isinstance(term.interval, Interval):
                raise GuidanceSpecError(f"{where}.interval: must be an Interval, got {type(term.interval).__name__}")
            term.interval.validate(f"{where}.interval")
            _validate_params(term, where)
        # Primary terms replace the prediction, so two of them cannot be active at once. Step intervals
        # are checked here; sigma intervals only once the schedule is known (check_schedule).
        primaries = [(i, t) for i, t in enumerate(self.terms) if t.is_primary and t.interval.unit == "step"]
        for a, (i, s) in enumerate(primaries):
            for j, t in primaries[a + 1 :]:
                if s.interval.start < t.interval.end and t.interval.start < s.interval.end:
                    raise GuidanceSpecError(
                        f"terms[{i}] and terms[{j}]: two primary terms ({s.rule}, {t.rule}) overlap on steps "
                        f"[{max(s.interval.start, t.interval.start)}, {min(s.interval.end, t.interval.end)}); "
                        "primary terms replace the prediction, give them disjoint intervals"
                    )

    def check_schedule(self, num_steps: int, sigmas: Sequence[float] | None) -> None:
        """Check the whole trajectory before sampling (sigma intervals of primary terms may overlap)."""
        for i in range(num_steps):
            self.active_terms(StepInfo(i, num_steps, None if sigmas is None else float(sigmas[i])))

    # ---- planning ---------------------------------------------------------------------------------

    def zeroed(self, info: StepInfo) -> bool:
        """Whether CFG-Zero*'s zero-init replaces this step's prediction: step i of N with i < fraction * N,
        half-open like a step interval."""
        return info.step < self.zero_init_fraction * info.num_steps - _EPS

    def active_terms(self, info: StepInfo) -> list[Term]:
        if self.zeroed(info):
            return []
        active = [t for t in self.terms if t.interval.contains(info.step, info.num_steps, info.sigma)]
        primaries = [t for t in active if t.is_primary]
        if len(primaries) > 1:
            raise GuidanceSpecError(
                f"step {info.step} (sigma {info.sigma}): primary terms {[t.name or t.rule for t in primaries]} "
                "are active together; give them disjoint intervals"
            )
        return active

    def branches_needed(self, info: StepInfo) -> list[str]:
        """The branches this step needs, base first, each once, in order of first use. Empty during zero-init."""
        if self.zeroed(info):
            return []
        active = self.active_terms(info)
        names = [] if any(t.is_primary for t in active) else [self.base]
        for t in active:
            names += [t.plus, t.minus]
        return list(dict.fromkeys(names))

    @property
    def uses_negative(self) -> bool:
        """Whether some term reads a branch on the negative prompt (then negative embeddings are required)."""
        used = {self.base} | {b for t in self.terms for b in (t.plus, t.minus)}
        return any(self.branches[b].prompt == "neg" for b in used)

    @property
    def used_branches(self) -> list[str]:
        used = [self.base] + [b for t in self.terms for b in (t.plus, t.minus)]
        return list(dict.fromkeys(used))

    # ---- combining --------------------------------------------------------------------------------

    def combine(
        self,
        preds: Mapping[str, torch.Tensor],
        info: StepInfo,
        state: dict | None = None,
        sample: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The guided prediction of one step from the named predictions of `branches_needed(info)`.

        The active primary term (at most one) gives the prediction, else the base branch does; every
        active additive term is then added, in order. `state` carries rule state between steps (APG's
        momentum; the caller makes a new dict per sampling run). `sample` (the noisy input x) and
        `info.sigma` are read only by rules that need them (APG in space "x0"). Returns None during
        zero-init: the caller returns zeros shaped like the output.
        """
        if self.zeroed(info):
            return None
        state = {} if state is None else state
        active = self.active_terms(info)

        def apply(idx: int, term: Term) -> torch.Tensor:
            ctx = RuleContext(_validate_params(term, f"terms[{idx}]"), state, idx, info.sigma, sample)
            return RULES[term.rule].fn(preds[term.plus], preds[term.minus], term.scale, ctx)

        out = None
        for idx, term in enumerate(self.terms):
            if term in active and term.is_primary:
                out = apply(idx, term)
        if out is None:
            out = preds[self.base]
        for idx, term in enumerate(self.terms):
            if term in active and not term.is_primary:
                out = out + apply(idx, term)
        return out

    # ---- serialization ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        extra = {k: v.to_dict() for k, v in self.branches.items() if k not in DEFAULT_BRANCHES}
        d: dict[str, Any] = {}
        if self.name is not None:
            d["name"] = self.name
        d["base"] = self.base
        if self.zero_init_fraction:
            d["zero_init_fraction"] = self.zero_init_fraction
        d["branches"] = extra
        d["terms"] = [t.to_dict() for t in self.terms]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GuidanceSpec:
        """From the dict form (params.yaml / JSON). None or {} is guidance off."""
        if d is None:
            return cls()
        if isinstance(d, GuidanceSpec):
            return d
        if not isinstance(d, Mapping):
            raise GuidanceSpecError(f"guidance spec must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"name", "base", "zero_init_fraction", "branches", "terms"}
        if unknown:
            raise GuidanceSpecError(
                f"guidance spec: unknown keys {sorted(unknown)}; "
                "allowed: name, base, zero_init_fraction, branches, terms"
            )
        branches = {}
        for key, b in (d.get("branches") or {}).items():
            if not isinstance(b, Mapping) or set(b) - {"prompt", "edits"}:
                raise GuidanceSpecError(f"branches.{key} = {b!r}: must be a mapping with keys prompt, edits")
            branches[key] = Branch(b.get("prompt", "pos"), copy.deepcopy(b.get("edits")))
        terms = []
        for i, t in enumerate(d.get("terms") or []):
            where = f"terms[{i}]"
            if not isinstance(t, Mapping):
                raise GuidanceSpecError(f"{where} = {t!r}: must be a mapping")
            unknown = set(t) - {"rule", "scale", "plus", "minus", "interval", "params", "name"}
            if unknown:
                raise GuidanceSpecError(
                    f"{where}: unknown keys {sorted(unknown)}; "
                    "allowed: rule, scale, plus, minus, interval, params, name"
                )
            for key in ("rule", "scale"):
                if key not in t:
                    raise GuidanceSpecError(f"{where}: missing {key!r} (rule one of {tuple(RULES)}; scale >= 0)")
            terms.append(
                Term(
                    rule=t["rule"],
                    scale=t["scale"],
                    plus=t.get("plus", "cond"),
                    minus=t.get("minus", "uncond"),
                    interval=Interval.from_value(t.get("interval"), f"{where}.interval"),
                    params=dict(t.get("params") or {}),
                    name=t.get("name"),
                )
            )
        return cls(
            terms=tuple(terms),
            branches=branches,
            base=d.get("base", "cond"),
            zero_init_fraction=d.get("zero_init_fraction", 0.0),
            name=d.get("name"),
        )


GUIDANCE_OFF = GuidanceSpec()
