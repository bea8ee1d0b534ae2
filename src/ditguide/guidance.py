"""Guidance rules and the serializable guidance spec.

A guided prediction is computed from *named predictions*: tensors keyed by branch name ("cond",
"uncond", "weak", "strong", ...). A branch is one evaluation of the model, described by which
conditioning it sees (the prompt, "pos", or the negative prompt, "neg") and which block edits it runs
with. The edits are opaque data here (a JSON-able edit spec): this module knows nothing of models,
and of edits only their op names and parameters, which `preset("strong_weak")` reads to refuse a
strong side that does not strengthen. The denoiser (denoiser.py) evaluates the branches and calls
`GuidanceSpec.combine`.

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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PRIMARY_RULES = ("cfg", "cfg_zero_star", "apg")
RULES = PRIMARY_RULES + ("delta",)
PROMPTS = ("pos", "neg")
UNITS = ("step", "sigma")
APG_SPACES = ("pred", "x0")
# Branches every spec has: the unmodified model on the prompt and on the negative prompt. They cannot
# be redefined, so that "cond" and "uncond" mean the same thing in every params file.
DEFAULT_BRANCHES = {"cond": ("pos", None), "uncond": ("neg", None)}
_EPS = 1e-9  # tolerance of interval boundaries: 0.3 * 10 must count as step 3


class GuidanceSpecError(ValueError):
    """A bad guidance spec; the message names the parameter and the allowed values."""


# --------------------------------------------------------------------------------------------------
# Rules: pure functions over predictions.


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, `uncond + s (cond - uncond)`, in the exact form diffusers pipelines use."""
    return uncond + scale * (cond - uncond)


def cfg_zero_star_alpha(cond: torch.Tensor, uncond: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """CFG-Zero*'s optimized scale per sample, `<cond, uncond> / ||uncond||^2`, shaped to broadcast.

    Computed in float32 (as in the reference code): in bf16 the dot products of large latents lose
    most of their digits.
    """
    c, u = cond.flatten(1).float(), uncond.flatten(1).float()
    alpha = (c * u).sum(1) / ((u * u).sum(1) + eps)
    return alpha.to(cond.dtype).view(-1, *([1] * (cond.ndim - 1)))


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025): CFG against the negative rescaled by its optimized scale,
    `alpha uncond + s (cond - alpha uncond)`. The zero-init of the first steps is the spec's
    `zero_init_fraction`, since it replaces the whole prediction."""
    uncond = uncond * cfg_zero_star_alpha(cond, uncond)
    return uncond + scale * (cond - uncond)


def apg(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    eta: float = 0.0,
    norm_threshold: float = 0.0,
    momentum: float = 0.0,
    running: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adaptive projected guidance (Sadat et al. 2025, Algorithm 1). Returns (prediction, running average).

    The guidance direction `cond - uncond` is accumulated with `momentum` (the paper uses a negative
    momentum), clipped to `norm_threshold` (0: no clipping), split into its components parallel and
    orthogonal to `cond`, and the parallel one (which causes over-saturation) is scaled by `eta`:
    `cond + (s - 1) (orth + eta par)`. Norms are per sample over all other dimensions; the projection
    runs in float64 as in the reference code. `running` is the momentum state of the previous step
    (None at the first one); the caller keeps it between steps.
    """
    diff = cond - uncond
    if momentum != 0.0:
        running = diff if running is None else diff + momentum * running
        diff = running
    dims = tuple(range(1, diff.ndim))
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / norm, max=1.0)
    v0, v1 = diff.double(), torch.nn.functional.normalize(cond.double().flatten(1), dim=1).view(cond.shape)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    orthogonal = v0 - parallel
    update = (orthogonal + eta * parallel).to(cond.dtype)
    return cond + (scale - 1.0) * update, running


def delta(plus: torch.Tensor, minus: torch.Tensor, scale: float) -> torch.Tensor:
    """The additive guidance term `(plus - minus) s`: SLG, STG, PAG, autoguidance and strong/weak guidance.

    Written in the operand order of StableDiffusion3Pipeline's SLG so that the spec reproduces it bit
    for bit."""
    return (plus - minus) * scale


# --------------------------------------------------------------------------------------------------
# The spec.


def _check_number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GuidanceSpecError(f"{where} = {value!r}: must be a number, {allowed}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise GuidanceSpecError(f"{where} = {value!r}: must be {allowed}")
    return value


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


_APG_DEFAULTS = {"eta": 0.0, "norm_threshold": 0.0, "momentum": 0.0, "space": "pred"}


def _validate_params(term: Term, where: str) -> dict:
    params = dict(term.params)
    if term.rule != "apg":
        if params:
            raise GuidanceSpecError(f"{where}.params = {params!r}: rule {term.rule!r} takes no params (only apg does)")
        return params
    unknown = set(params) - set(_APG_DEFAULTS)
    if unknown:
        raise GuidanceSpecError(f"{where}.params: unknown keys {sorted(unknown)}; apg allows {sorted(_APG_DEFAULTS)}")
    params = {**_APG_DEFAULTS, **params}
    _check_number(params["eta"], f"{where}.params.eta", lo=0.0, hi=1.0, allowed="in [0, 1]")
    _check_number(params["norm_threshold"], f"{where}.params.norm_threshold", lo=0.0, allowed=">= 0 (0: off)")
    m = _check_number(params["momentum"], f"{where}.params.momentum", lo=-1.0, hi=1.0, allowed="in (-1, 1)")
    if abs(m) >= 1.0:
        raise GuidanceSpecError(f"{where}.params.momentum = {m}: must be in (-1, 1)")
    if params["space"] not in APG_SPACES:
        raise GuidanceSpecError(f"{where}.params.space = {params['space']!r}: must be one of {APG_SPACES}")
    return params


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
                raise GuidanceSpecError(f"{where}.rule = {term.rule!r}: must be one of {RULES}")
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

        `state` carries APG's momentum between steps (keyed by term index; the caller makes a new dict
        per sampling run). `sample` (the noisy input x) and `info.sigma` are needed only by APG in
        space "x0". Returns None during zero-init: the caller returns zeros shaped like the output.
        """
        if self.zeroed(info):
            return None
        state = {} if state is None else state
        active = self.active_terms(info)
        out = None
        for idx, term in enumerate(self.terms):
            if term not in active or not term.is_primary:
                continue
            cond, uncond = preds[term.plus], preds[term.minus]
            if term.rule == "cfg":
                out = cfg(cond, uncond, term.scale)
            elif term.rule == "cfg_zero_star":
                out = cfg_zero_star(cond, uncond, term.scale)
            else:
                out = self._apg(idx, term, cond, uncond, info, state, sample)
        if out is None:
            out = preds[self.base]
        for term in self.terms:
            if term in active and not term.is_primary:
                out = out + delta(preds[term.plus], preds[term.minus], term.scale)
        return out

    @staticmethod
    def _apg(idx, term, cond, uncond, info, state, sample):
        params = _validate_params(term, f"terms[{idx}]")
        to_x0 = params["space"] == "x0"
        if to_x0:
            # Flow matching: x = (1 - sigma) x0 + sigma noise, v = noise - x0, so x0 = x - sigma v. The
            # map is affine and the same for both branches, so CFG is unchanged by it; APG's norms and
            # projections are not, and the paper defines them on the clean-image estimate.
            if sample is None or info.sigma is None or info.sigma <= 0:
                raise GuidanceSpecError(f"terms[{idx}].params.space = 'x0' needs the sample and a sigma > 0")
            cond, uncond = sample - info.sigma * cond, sample - info.sigma * uncond
        out, state[idx] = apg(
            cond, uncond, term.scale, params["eta"], params["norm_threshold"], params["momentum"], state.get(idx)
        )
        if to_x0:
            out = (sample - out) / info.sigma
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
                    raise GuidanceSpecError(f"{where}: missing {key!r} (rule one of {RULES}; scale >= 0)")
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


# --------------------------------------------------------------------------------------------------
# Presets: one small dict per method, with the published defaults where they exist. Block addresses
# are those of the model the method was published for (given in PRESET_NOTES); pass `blocks=` for
# another model. `preset(name, **overrides)` returns a fresh, validated dict.


def _edits(op: str, blocks: Sequence[Any], streams: Sequence[str] | None = None) -> dict:
    edit = {"op": op, "blocks": list(blocks)}
    if streams is not None:
        edit["streams"] = list(streams)
    return {"edits": [edit]}


# PAG / STG-A: within the image tokens an image query attends only to itself; it still attends to the
# text, and text queries are untouched (diffusers' PAGJointAttnProcessor2_0). On Wan, whose
# self-attention holds only the video tokens, this is the identity attention.
def _perturbed_attention(blocks: Sequence[Any]) -> dict:
    return _edits("identity_attn_in_stream", blocks, ["image"])


# EDM2's guidance interval (Kynkaanniemi et al. 2024): CFG only for EDM noise levels in (0.28, 5.42].
EDM2_GUIDANCE_INTERVAL = (0.28, 5.42)
EDM2_SIGMA_DATA = 0.5  # EDM's data standard deviation
CFG_ZERO_STAR_ZERO_INIT = 0.04  # the CFG-Zero* authors' suggestion: zero-init about 4 % of the steps


def edm_sigma_to_flow(sigma: float, sigma_data: float = EDM2_SIGMA_DATA) -> float:
    """The flow-matching sigma t with the same signal-to-noise ratio as EDM's noise level `sigma`.

    EDM: x = y + sigma n with std(y) = sigma_data, so SNR = sigma_data^2 / sigma^2. Flow matching on
    unit-variance latents: x = (1 - t) y + t n with std(y) = 1, so SNR = (1 - t)^2 / t^2. Equal ratios
    give t = sigma / (sigma + sigma_data): 2 sigma / (1 + 2 sigma) at EDM's sigma_data = 0.5.
    """
    return sigma / (sigma + sigma_data)


def _guidance_interval_window(sigma_data: float) -> dict:
    lo, hi = (edm_sigma_to_flow(s, sigma_data) for s in EDM2_GUIDANCE_INTERVAL)
    return {"start": lo, "end": hi, "unit": "sigma"}


PRESETS: dict[str, dict] = {
    "off": {"name": "off"},
    "cfg": {"name": "cfg", "terms": [{"rule": "cfg", "scale": 5.0}]},
    "cfg_zero_star": {
        "name": "cfg_zero_star",
        "zero_init_fraction": CFG_ZERO_STAR_ZERO_INIT,
        "terms": [{"rule": "cfg_zero_star", "scale": 5.0}],
    },
    "apg": {
        "name": "apg",
        "terms": [
            {
                "rule": "apg",
                "scale": 5.0,
                "params": {"eta": 0.0, "norm_threshold": 0.0, "momentum": -0.5, "space": "x0"},
            }
        ],
    },
    "guidance_interval": {
        "name": "guidance_interval",
        "terms": [{"rule": "cfg", "scale": 5.0, "interval": _guidance_interval_window(EDM2_SIGMA_DATA)}],
    },
    "autoguidance": {
        "name": "autoguidance",
        "branches": {"weak": {"prompt": "pos", "edits": _edits("skip", ["single:0"])}},
        "terms": [{"rule": "delta", "scale": 0.5, "plus": "cond", "minus": "weak", "name": "autoguidance"}],
    },
    "slg": {
        "name": "slg",
        "branches": {"skip": {"prompt": "pos", "edits": _edits("skip", ["blocks:7", "blocks:8", "blocks:9"])}},
        "terms": [
            {"rule": "cfg", "scale": 4.5},
            {
                "rule": "delta",
                "scale": 2.8,
                "plus": "cond",
                "minus": "skip",
                "interval": {"start": 0.01, "end": 0.2, "unit": "step", "open": True},
                "name": "slg",
            },
        ],
    },
    "slg_weak_negative": {
        "name": "slg_weak_negative",
        "branches": {"uncond_weak": {"prompt": "neg", "edits": _edits("skip", ["blocks:9"])}},
        "terms": [
            {"rule": "cfg", "scale": 5.0, "interval": [0.0, 0.1]},
            {"rule": "cfg", "scale": 5.0, "minus": "uncond_weak", "interval": [0.1, 0.9], "name": "weak_negative"},
            {"rule": "cfg", "scale": 5.0, "interval": [0.9, 1.0]},
        ],
    },
    "stg": {
        "name": "stg",
        "branches": {"perturbed": {"prompt": "pos", "edits": _edits("skip", ["blocks:2"])}},
        "terms": [
            {"rule": "cfg", "scale": 5.0},
            {"rule": "delta", "scale": 2.0, "plus": "cond", "minus": "perturbed", "name": "stg"},
        ],
    },
    "stg_a": {
        "name": "stg_a",
        "branches": {"perturbed": {"prompt": "pos", "edits": _perturbed_attention(["blocks:2"])}},
        "terms": [
            {"rule": "cfg", "scale": 5.0},
            {"rule": "delta", "scale": 2.0, "plus": "cond", "minus": "perturbed", "name": "stg_a"},
        ],
    },
    "pag": {
        "name": "pag",
        "branches": {"perturbed": {"prompt": "pos", "edits": _perturbed_attention(["blocks:1"])}},
        "terms": [
            {"rule": "cfg", "scale": 5.0},
            {"rule": "delta", "scale": 3.0, "plus": "cond", "minus": "perturbed", "name": "pag"},
        ],
    },
    "strong_weak": {
        "name": "strong_weak",
        "branches": {
            "strong": {"prompt": "pos", "edits": {"edits": [{"op": "scale", "blocks": ["single:3"], "alpha": 1.5}]}},
            "weak": {"prompt": "pos", "edits": _edits("skip", ["single:0"])},
        },
        "terms": [
            {"rule": "cfg", "scale": 5.0},
            {"rule": "delta", "scale": 1.0, "plus": "strong", "minus": "weak", "name": "strong_weak"},
        ],
    },
}

PRESET_NOTES: dict[str, str] = {
    "off": "no guidance: the conditional model, one forward per step",
    "cfg": "classifier-free guidance, uncond + s (cond - uncond)",
    "cfg_zero_star": "CFG-Zero* (Fan et al. 2025): optimized scale; zero-init: the prediction is 0 on the first "
    "4 % of the steps, at least one (zero_init_fraction = 0.04, the authors' suggestion)",
    "apg": "APG (Sadat et al. 2025): eta 0, momentum -0.5, on the clean-image estimate; norm_threshold is "
    "model-dependent (0 = off)",
    "guidance_interval": "CFG only for flow sigma in (0.359, 0.916]: EDM2's interval (0.28, 5.42] (Kynkaanniemi "
    "et al. 2024) mapped by equal signal-to-noise ratio, t = s / (s + sigma_data), with EDM2's sigma_data = 0.5 "
    "and unit-variance latents (edm_sigma_to_flow); sigma_data= restates it, and the window is tuned per model anyway",
    "autoguidance": "Karras et al. 2024 with a layer-skipped weak model: D + (w-1)(D - D_weak), scale = w - 1 "
    "(w 1.5, weak = skip single:0: the toy's measured setting)",
    "slg": "SD3.5 skip-layer guidance: cond + (cfg-1)(cond - uncond) + 2.8 (cond - cond_skip[7,8,9]), third pass "
    "on steps 0.01 N < i < 0.2 N, open at both ends as StableDiffusion3Pipeline (SD3.5 Medium)",
    "slg_weak_negative": "Wan community 'SLG' (Wan2GP, kijai): CFG whose negative branch skips block 9 on "
    "10%-90% of the steps; no extra pass (Wan2.1)",
    "stg": "STG-R (Hyung et al. 2025): the weak model skips block 2, scale 2 (Wan2.1); stg_a is STG-A",
    "stg_a": "STG-A (Hyung et al. 2025): identity attention in block 2, scale 2 (Wan2.1), perturbed as pag",
    "pag": "PAG (Ahn et al. 2024), scale 3, block 1 (diffusers' SD3 PAG default layer): image queries attend to "
    "themselves among the image tokens and still to the text, text queries untouched (identity_attn_in_stream@image "
    "= diffusers' PAGJointAttnProcessor2_0; the same mask on Flux/CogView4 joint attention; identity attention on Wan)",
    "strong_weak": "ours: D + (cfg-1)(D - D_uncond) + w (D_strong - D_weak); strong and weak are edit specs "
    "(toy example: strong amplifies the residual update of single:3 by 1.5, weak removes single:0); a strong "
    "edit must strengthen (scale alpha > 1, repeat, temperature tau < 1)",
}


def preset(
    name: str,
    *,
    scale: float | None = None,
    cfg_scale: float | None = None,
    blocks: Sequence[Any] | None = None,
    interval: Any = None,
    strong: Any = None,
    weak: Any = None,
    **params: Any,
) -> dict:
    """The dict of preset `name` with overrides; validated (GuidanceSpecError on a bad value).

    scale: the method's own scale (the CFG scale for cfg-like presets; the extra term's otherwise).
    cfg_scale: the CFG scale of presets that combine with CFG (0 or 1 removes the CFG term).
    blocks: the edited blocks of the weak/perturbed branch. interval: the method term's interval.
    strong / weak: edit specs of strong_weak (and weak of autoguidance). params: apg's eta,
    norm_threshold, momentum, space; cfg_zero_star's zero_init_fraction; guidance_interval's
    sigma_data (the EDM data std its window is mapped with, see `edm_sigma_to_flow`).
    """
    if isinstance(name, str) and name.startswith(SELECTED_PREFIX):
        given = {k: v for k, v in (("scale", scale), ("cfg_scale", cfg_scale), ("blocks", blocks), ("interval", interval),
                                   ("strong", strong), ("weak", weak)) if v is not None} | params
        if given:
            raise GuidanceSpecError(f"preset {name!r}: a selected preset takes no overrides (got {sorted(given)}); "
                                    "it is used exactly as notebook 02 selected it")
        return selected_preset(name[len(SELECTED_PREFIX):])
    if name not in PRESETS:
        raise GuidanceSpecError(f"preset name = {name!r}: must be one of {sorted(PRESETS)} or "
                                f"'{SELECTED_PREFIX}<profile>' (the preset notebook 02 selected)")
    d = copy.deepcopy(PRESETS[name])
    terms = d.get("terms", [])
    cfg_like = name in ("cfg", "cfg_zero_star", "apg", "guidance_interval", "slg_weak_negative")
    method_terms = terms if cfg_like else [t for t in terms if t["rule"] == "delta"]
    if scale is not None:
        for t in method_terms:
            t["scale"] = scale
    if cfg_scale is not None:
        if cfg_like:
            raise GuidanceSpecError(f"preset {name!r}: cfg_scale does not apply (use scale=)")
        kept = [t for t in terms if t["rule"] != "cfg"]
        d["terms"] = ([{"rule": "cfg", "scale": cfg_scale}] if cfg_scale not in (0, 1) else []) + kept
    if interval is not None:
        _override_interval(name, d, method_terms, interval)
    perturbed = [k for k in ("weak", "skip", "uncond_weak", "perturbed") if k in d.get("branches", {})]
    if isinstance(blocks, (str, int)) and not isinstance(blocks, bool):
        blocks = [blocks]  # one block given bare ("single:1"), as BlockEdit takes it; never split into characters
    if blocks is not None:
        if isinstance(blocks, Mapping) or not isinstance(blocks, Sequence):
            raise GuidanceSpecError(f"preset {name!r}: blocks = {blocks!r}: must be a block or a list of blocks "
                                    "(global ints >= 0 or 'list:index', e.g. ['single:1'])")
        if not perturbed:
            raise GuidanceSpecError(f"preset {name!r}: blocks= does not apply (it has no edited branch)")
        branch = d["branches"][perturbed[0]]
        branch["edits"] = {"edits": [dict(e, blocks=list(blocks)) for e in branch["edits"]["edits"]]}
    for key, value in (("strong", strong), ("weak", weak)):
        if value is not None:
            if key not in d.get("branches", {}):
                raise GuidanceSpecError(f"preset {name!r}: {key}= does not apply (no {key!r} branch)")
            d["branches"][key]["edits"] = copy.deepcopy(value)
    _override_params(name, d, params, interval_given=interval is not None)
    if name == "strong_weak":
        _check_strengthening(d["branches"]["strong"]["edits"])
    GuidanceSpec.from_dict(d)
    return d


SELECTED_PREFIX = "selected:"
SELECTED_ROOT = "data/guidance"


def selected_preset(profile: str, root: str | None = None) -> dict:
    """The preset that the guidance design (notebook 02, stage guidance_design) selected on dev for
    `profile`: `<root>/<profile>/selected.json` (root: data/guidance). Also reachable as
    `preset("selected:<profile>")` and as `{preset: "selected:<profile>"}` in params.yaml."""
    import json
    from pathlib import Path

    path = Path(SELECTED_ROOT if root is None else root) / str(profile) / "selected.json"
    if not path.is_file():
        raise GuidanceSpecError(f"preset '{SELECTED_PREFIX}{profile}': {path} does not exist; run the guidance_design "
                                f"stage for profile {profile!r} (dvc repro guidance_design)")
    try:
        d = json.loads(path.read_text())["spec"]
    except (ValueError, KeyError) as err:
        raise GuidanceSpecError(f"preset '{SELECTED_PREFIX}{profile}': {path} is not a selected-preset file ({err})") from None
    d = {**d, "name": f"selected_{profile}"}
    GuidanceSpec.from_dict(d)
    return d


_PARAMETER_NAMES = {"scale": "alpha", "repeat": "times", "temperature": "tau"}


def _check_strengthening(edits: Any) -> None:
    """Refuse a strong branch whose edits weaken the model: guidance by the difference of two weakened
    models is another method than the one strong_weak names. Only the op names and parameters are
    read (the edit spec's own parsing, no model)."""
    from .edits.spec import EditError, EditSpec

    try:
        spec = EditSpec.parse(edits)
    except EditError as err:
        raise GuidanceSpecError(f"preset 'strong_weak': strong= {err}") from None
    strengthens = {"scale": lambda e: e.alpha > 1, "repeat": lambda e: e.times > 1, "temperature": lambda e: e.tau < 1}
    for e in spec:
        if not strengthens.get(e.op, lambda e: False)(e):
            what = f"{_PARAMETER_NAMES[e.op]} {e.parameter:g}" if e.op in _PARAMETER_NAMES else "removes computation"
            raise GuidanceSpecError(
                f"preset 'strong_weak': strong= edit {e.to_string()!r} ({e.op}, {what}) does not strengthen the "
                "model, so the 'strong' branch would be a second weakened (or plain) one; a strong edit must be "
                "scale with alpha > 1, repeat, or temperature with tau < 1 (write a full spec to guide by two "
                "weakened models)"
            )


def _override_interval(name: str, d: dict, method_terms: list[dict], interval: Any) -> None:
    terms = d.get("terms", [])
    targets = [t for t in method_terms if t.get("name")] or method_terms
    if name == "slg_weak_negative":
        # Plain CFG before and after the window, CFG against the weakened negative inside it.
        window = Interval.from_value(interval, "interval")
        bounds = [(0.0, window.start), (window.start, window.end), (window.end, 1.0)]
        for t, (a, b) in zip(terms, bounds):
            t["interval"] = {"start": a, "end": b, "unit": window.unit}
        d["terms"] = [t for t in terms if t["interval"]["start"] < t["interval"]["end"]]
    elif name == "slg":
        # SD3's skip_layer_guidance_start / _stop: an open window, unless a dict says otherwise.
        window = Interval.from_value(interval, "interval").to_dict()
        explicit = isinstance(interval, Mapping) and "open" in interval
        for t in targets:
            t["interval"] = window if explicit else {**window, "open": True}
    else:
        for t in targets:
            t["interval"] = interval


def _override_params(name: str, d: dict, params: dict, *, interval_given: bool) -> None:
    """The method-specific overrides: apg's params, zero_init_fraction, sigma_data."""
    params = dict(params)
    if "zero_init_fraction" in params:
        if name != "cfg_zero_star":
            raise GuidanceSpecError(f"preset {name!r}: zero_init_fraction= applies to cfg_zero_star only")
        d["zero_init_fraction"] = params.pop("zero_init_fraction")
    if "sigma_data" in params:
        sigma_data = params.pop("sigma_data")
        if name != "guidance_interval":
            raise GuidanceSpecError(f"preset {name!r}: sigma_data= applies to guidance_interval only")
        if interval_given:
            raise GuidanceSpecError("preset 'guidance_interval': give interval= or sigma_data=, not both")
        _check_number(sigma_data, "sigma_data", lo=1e-12, allowed="> 0 (EDM's data standard deviation)")
        d["terms"][0]["interval"] = _guidance_interval_window(float(sigma_data))
    if params:
        if name != "apg":
            raise GuidanceSpecError(f"preset {name!r}: unknown overrides {sorted(params)}")
        d["terms"][0]["params"].update(params)
