"""Guidance rules: pure functions over two predictions, in one registry with one signature.

Every rule is `rule(plus, minus, scale, ctx) -> Tensor` (k-diffusion's one-signature samplers, for
guidance). A *primary* rule replaces the prediction (CFG and its variants, from a positive `plus` and
a negative `minus` branch); the others are added to it (`delta`: SLG, STG, PAG, autoguidance, ours).
`ctx` carries what some rules need beyond the two predictions: validated params, the momentum state
kept between steps, the step's sigma and the noisy sample. Adding a rule is one function and one
line in `RULES`; the spec validates a rule's params with the rule's own `check`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


class GuidanceSpecError(ValueError):
    """A bad guidance spec; the message names the parameter and the allowed values."""


def check_number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None, allowed: str) -> float:
    """A finite number in [lo, hi], as float; GuidanceSpecError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GuidanceSpecError(f"{where} = {value!r}: must be a number, {allowed}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise GuidanceSpecError(f"{where} = {value!r}: must be {allowed}")
    return value


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
# The registry: one signature for every rule.


@dataclass
class RuleContext:
    """What a rule may read besides its two predictions. `state` is one dict per sampling run (the
    caller makes a new one per run); a rule keeps its own entry under `key` (the term's index)."""

    params: Mapping[str, Any] = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    key: Any = None
    sigma: float | None = None
    sample: torch.Tensor | None = None


APG_SPACES = ("pred", "x0")
APG_DEFAULTS = {"eta": 0.0, "norm_threshold": 0.0, "momentum": 0.0, "space": "pred"}


def _no_params(params: Mapping[str, Any], where: str, rule: str) -> dict:
    if params:
        raise GuidanceSpecError(f"{where}.params = {dict(params)!r}: rule {rule!r} takes no params (only apg does)")
    return {}


def _apg_params(params: Mapping[str, Any], where: str, rule: str = "apg") -> dict:
    unknown = set(params) - set(APG_DEFAULTS)
    if unknown:
        raise GuidanceSpecError(f"{where}.params: unknown keys {sorted(unknown)}; apg allows {sorted(APG_DEFAULTS)}")
    params = {**APG_DEFAULTS, **params}
    check_number(params["eta"], f"{where}.params.eta", lo=0.0, hi=1.0, allowed="in [0, 1]")
    check_number(params["norm_threshold"], f"{where}.params.norm_threshold", lo=0.0, allowed=">= 0 (0: off)")
    m = check_number(params["momentum"], f"{where}.params.momentum", lo=-1.0, hi=1.0, allowed="in (-1, 1)")
    if abs(m) >= 1.0:
        raise GuidanceSpecError(f"{where}.params.momentum = {m}: must be in (-1, 1)")
    if params["space"] not in APG_SPACES:
        raise GuidanceSpecError(f"{where}.params.space = {params['space']!r}: must be one of {APG_SPACES}")
    return params


def _apg_rule(cond: torch.Tensor, uncond: torch.Tensor, scale: float, ctx: RuleContext) -> torch.Tensor:
    p = ctx.params
    to_x0 = p["space"] == "x0"
    sample, sigma = ctx.sample, ctx.sigma
    if to_x0:
        # Flow matching: x = (1 - sigma) x0 + sigma noise, v = noise - x0, so x0 = x - sigma v. The
        # map is affine and the same for both branches, so CFG is unchanged by it; APG's norms and
        # projections are not, and the paper defines them on the clean-image estimate.
        if sample is None or sigma is None or sigma <= 0:
            raise GuidanceSpecError(f"terms[{ctx.key}].params.space = 'x0' needs the sample and a sigma > 0")
        cond, uncond = sample - sigma * cond, sample - sigma * uncond
    out, ctx.state[ctx.key] = apg(cond, uncond, scale, p["eta"], p["norm_threshold"], p["momentum"], ctx.state.get(ctx.key))
    if to_x0:
        out = (sample - out) / sigma
    return out


@dataclass(frozen=True)
class Rule:
    fn: Callable[[torch.Tensor, torch.Tensor, float, RuleContext], torch.Tensor]
    primary: bool  # replaces the prediction (True) or is added to it (False)
    check: Callable[[Mapping[str, Any], str, str], dict] = _no_params  # validates the term's params


RULES: dict[str, Rule] = {
    "cfg": Rule(lambda plus, minus, s, ctx: cfg(plus, minus, s), primary=True),
    "cfg_zero_star": Rule(lambda plus, minus, s, ctx: cfg_zero_star(plus, minus, s), primary=True),
    "apg": Rule(_apg_rule, primary=True, check=_apg_params),
    "delta": Rule(lambda plus, minus, s, ctx: delta(plus, minus, s), primary=False),
}
PRIMARY_RULES = tuple(k for k, r in RULES.items() if r.primary)
