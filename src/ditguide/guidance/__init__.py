"""Guidance: rules (pure functions, one registry), the serializable spec, presets, and the planning and
cost accounting of guided steps. The denoiser that evaluates a spec in a pipeline is
`ditguide.denoiser.GuidedDenoiser`.

    rules.py    cfg, cfg_zero_star, apg, delta, tcfg, magnitude_aware, fdg; RULES: name -> Rule(fn, primary, check)
    spec.py     GuidanceSpec (branches, terms, intervals, combine), validation, to_dict / from_dict
    presets.py  PRESETS: one entry per method (formula, cost, note, spec); preset(); selected_preset()
    planner.py  which branches run together and which blocks they share (pure, no model)
    cost.py     block evaluations per step
"""

from .presets import (
    CFG_ZERO_STAR_ZERO_INIT,
    EDM2_GUIDANCE_INTERVAL,
    EDM2_SIGMA_DATA,
    PRESETS,
    SELECTED_PREFIX,
    edm_sigma_to_flow,
    preset,
    selected_preset,
)
from .rules import (
    APG_SPACES,
    PRIMARY_RULES,
    RULES,
    GuidanceSpecError,
    Rule,
    RuleContext,
    apg,
    cfg,
    cfg_zero_star,
    cfg_zero_star_alpha,
    check_number,
    delta,
    fdg,
    laplacian_pyramid,
    magnitude_aware,
    pyramid_up,
    tcfg,
)
from .spec import DEFAULT_BRANCHES, GUIDANCE_OFF, PROMPTS, UNITS, Branch, GuidanceSpec, Interval, StepInfo, Term

__all__ = [
    "APG_SPACES",
    "CFG_ZERO_STAR_ZERO_INIT",
    "DEFAULT_BRANCHES",
    "EDM2_GUIDANCE_INTERVAL",
    "EDM2_SIGMA_DATA",
    "GUIDANCE_OFF",
    "PRESETS",
    "PRIMARY_RULES",
    "PROMPTS",
    "RULES",
    "SELECTED_PREFIX",
    "UNITS",
    "Branch",
    "GuidanceSpec",
    "GuidanceSpecError",
    "Interval",
    "Rule",
    "RuleContext",
    "StepInfo",
    "Term",
    "apg",
    "cfg",
    "cfg_zero_star",
    "cfg_zero_star_alpha",
    "check_number",
    "delta",
    "edm_sigma_to_flow",
    "fdg",
    "laplacian_pyramid",
    "magnitude_aware",
    "preset",
    "pyramid_up",
    "selected_preset",
    "tcfg",
]
