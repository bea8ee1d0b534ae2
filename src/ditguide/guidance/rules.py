"""Guidance rules: pure functions over two predictions, in one registry with one signature.

Every rule is `rule(plus, minus, scale, ctx) -> Tensor` (k-diffusion's one-signature samplers, for
guidance). A *primary* rule replaces the prediction (CFG and its variants, from a positive `plus` and
a negative `minus` branch); the others are added to it (`delta`: SLG, STG, PAG, autoguidance, ours).
`ctx` carries what some rules need beyond the two predictions: validated params, the momentum state
kept between steps, the step's sigma and the noisy sample. Adding a rule is one function and one
line in `RULES`; the spec validates a rule's params with the rule's own `check`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checks import check_number as _check_number


class GuidanceSpecError(ValueError):
    """A bad guidance spec; the message names the parameter and the allowed values."""


# The one number check (ditguide.checks), raising this package's error.
check_number = functools.partial(_check_number, error=GuidanceSpecError)


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
        with_params = sorted(k for k, r in RULES.items() if r.check is not _no_params)
        raise GuidanceSpecError(
            f"{where}.params = {dict(params)!r}: rule {rule!r} takes no params (rules with params: "
            f"{', '.join(with_params)})"
        )
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
    out, ctx.state[ctx.key] = apg(
        cond, uncond, scale, p["eta"], p["norm_threshold"], p["momentum"], ctx.state.get(ctx.key)
    )
    if to_x0:
        out = (sample - out) / sigma
    return out


# --------------------------------------------------------------------------------------------------
# The CFG variants diffusers ships as guiders (diffusers.guiders), in diffusers' operand order so that
# the rule reproduces the guider's prediction (checked in tests/test_diffusers_baselines.py).


def tcfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Tangential CFG (Kwon et al. 2025): the negative keeps only its component along the first right
    singular vector of the per-sample 2 x D matrix [cond; uncond] (SVD in float32), then CFG.
    diffusers' `TangentialClassifierFreeGuidance` (normalized_guidance), operation for operation."""
    dtype = cond.dtype
    preds = torch.stack([cond, uncond], dim=1).float().flatten(2)
    _, _, vh = torch.linalg.svd(preds, full_matrices=False)
    vh_first = vh.clone()
    vh_first[:, 1] = 0
    flat = uncond.reshape(uncond.size(0), 1, -1).float()
    uncond = torch.matmul(torch.matmul(flat, vh.transpose(-2, -1)), vh_first).reshape(uncond.shape).to(dtype)
    return uncond + scale * (cond - uncond)


def magnitude_aware(cond: torch.Tensor, uncond: torch.Tensor, scale: float, alpha: float = 8.0) -> torch.Tensor:
    """Magnitude-aware guidance (MAMBO-G, Zhang et al. 2025): CFG whose scale shrinks where the update is
    large, `s' = 1 + (s - 1) exp(-alpha |cond - uncond| / |uncond|)` per sample, `uncond + s' (cond - uncond)`.
    diffusers' `MagnitudeAwareGuidance` (mambo_guidance), operation for operation, on any number of dims."""
    dims = list(range(1, cond.ndim))
    diff = cond - uncond
    # The Frobenius norm over all non-batch dims as a vector norm: what torch.norm computes for diffusers'
    # 3-D predictions; torch.norm itself refuses more than 2 dims (diffusers' guider fails on 4-D/5-D).
    ratio = torch.linalg.vector_norm(diff, 2, dims, keepdim=True) / torch.linalg.vector_norm(
        uncond, 2, dims, keepdim=True
    )
    return uncond + (1.0 + (scale - 1.0) * torch.exp(-alpha * ratio)) * diff


_PYRAMID_KERNEL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _blur(x: torch.Tensor) -> torch.Tensor:
    # The 5x5 binomial kernel / 256 with reflect padding, per channel (kornia's filter2d in pyrdown/pyrup).
    k = torch.outer(_PYRAMID_KERNEL, _PYRAMID_KERNEL).div(256.0).to(x)
    channels = x.shape[1]
    return torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(channels, 1, 5, 5), groups=channels
    )


def _pyrdown(x: torch.Tensor) -> torch.Tensor:
    size = [int(float(x.shape[2]) / 2), int(float(x.shape[3]) / 2)]
    return torch.nn.functional.interpolate(_blur(x), size=size, mode="bilinear", align_corners=False)


def pyramid_up(x: torch.Tensor) -> torch.Tensor:
    """Upsample by 2 (bilinear) and blur: kornia's pyrup, which rebuilds an image from its Laplacian pyramid."""
    up = torch.nn.functional.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2), mode="bilinear", align_corners=False)
    return _blur(up)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid of a (B, C, H, W) tensor, `levels` entries, highest frequency first: kornia's
    build_laplacian_pyramid (which diffusers' FDG calls), in torch. H and W must be divisible by
    2^(levels - 1) (kornia would pad; the guided prediction would then change shape)."""
    stride = 1 << (levels - 1)
    if x.ndim != 4 or x.shape[2] % stride or x.shape[3] % stride:
        raise GuidanceSpecError(
            f"fdg: the prediction has shape {tuple(x.shape)}; fdg needs (batch, channels, height, width) with height "
            f"and width divisible by 2^(levels - 1) = {stride} (SD3, CogView4 latents; Flux packs latents into "
            "tokens and Wan has frames, which fdg does not handle)"
        )
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(_pyrdown(gaussian[-1]))
    return [gaussian[i] - pyramid_up(gaussian[i + 1]) for i in range(levels - 1)] + [gaussian[-1]]


def fdg(
    cond: torch.Tensor, uncond: torch.Tensor, scales: list[float], parallel_weights: list[float] | None = None
) -> torch.Tensor:
    """Frequency-decoupled guidance (Sadat et al. 2025): CFG per level of a Laplacian pyramid with its own
    scale (`scales` from the highest frequency to the lowest), optionally with the parallel component of
    each level's update (projected on that level of cond, in float64) weighted by `parallel_weights`;
    the levels are summed back (pyrup). diffusers' `FrequencyDecoupledGuidance`, operation for operation."""
    levels = len(scales)
    if all(math.isclose(s, 1.0) for s in scales):
        return cond  # as diffusers: every level at scale 1 is no guidance
    weights = [1.0] * levels if parallel_weights is None else parallel_weights
    cond_pyr, uncond_pyr = laplacian_pyramid(cond, levels), laplacian_pyramid(uncond, levels)
    guided = []
    for c, u, s, w in zip(cond_pyr, uncond_pyr, scales, weights):
        shift = c - u
        if not math.isclose(w, 1.0):
            dims = list(range(1, shift.ndim))
            v0, v1 = shift.double(), torch.nn.functional.normalize(c.double(), dim=dims)
            parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
            shift = w * parallel.to(shift.dtype) + (v0 - parallel).to(shift.dtype)
        guided.append(u + s * shift if not math.isclose(s, 1.0) else c)
    out = guided[-1]
    for level in range(levels - 2, -1, -1):
        out = pyramid_up(out) + guided[level]
    return out


def _alpha_params(params: Mapping[str, Any], where: str, rule: str = "magnitude_aware") -> dict:
    unknown = set(params) - {"alpha"}
    if unknown:
        raise GuidanceSpecError(f"{where}.params: unknown keys {sorted(unknown)}; {rule} allows ['alpha']")
    alpha = check_number(params.get("alpha", 8.0), f"{where}.params.alpha", lo=0.0, allowed="finite and >= 0 (0: CFG)")
    return {"alpha": alpha}


def _fdg_params(params: Mapping[str, Any], where: str, rule: str = "fdg") -> dict:
    unknown = set(params) - {"low_scales", "parallel_weights"}
    if unknown:
        raise GuidanceSpecError(
            f"{where}.params: unknown keys {sorted(unknown)}; fdg allows ['low_scales', 'parallel_weights']"
        )
    low = params.get("low_scales", [])
    if isinstance(low, (str, bytes)) or not isinstance(low, (list, tuple)) or not low:
        raise GuidanceSpecError(
            f"{where}.params.low_scales = {low!r}: must be a non-empty list of scales, one per "
            "lower-frequency level (the term's scale is the highest level's)"
        )
    low = [
        check_number(v, f"{where}.params.low_scales[{i}]", lo=0.0, allowed="finite and >= 0") for i, v in enumerate(low)
    ]
    weights = params.get("parallel_weights")
    if weights is not None:
        if isinstance(weights, (int, float)) and not isinstance(weights, bool):
            weights = [weights] * (len(low) + 1)
        if not isinstance(weights, (list, tuple)) or len(weights) != len(low) + 1:
            raise GuidanceSpecError(
                f"{where}.params.parallel_weights = {weights!r}: must be null, a number, or a list "
                f"of {len(low) + 1} numbers (one per level)"
            )
        weights = [
            check_number(
                v, f"{where}.params.parallel_weights[{i}]", lo=0.0, allowed="finite and >= 0 (1: CFG's update)"
            )
            for i, v in enumerate(weights)
        ]
    return {"low_scales": low, "parallel_weights": weights}


def _fdg_rule(cond: torch.Tensor, uncond: torch.Tensor, scale: float, ctx: RuleContext) -> torch.Tensor:
    p = ctx.params
    return fdg(cond, uncond, [scale, *p["low_scales"]], p["parallel_weights"])


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
    "tcfg": Rule(lambda plus, minus, s, ctx: tcfg(plus, minus, s), primary=True),
    "magnitude_aware": Rule(lambda p, m, s, ctx: magnitude_aware(p, m, s, ctx.params["alpha"]), True, _alpha_params),
    "fdg": Rule(_fdg_rule, primary=True, check=_fdg_params),
}
PRIMARY_RULES = tuple(k for k, r in RULES.items() if r.primary)
