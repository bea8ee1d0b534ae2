"""Presets: one small dict per method, with the published defaults where they exist, and the
preset that the guidance design selected for a profile (`preset("selected:<profile>")`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

# The catalogue itself (PRESETS and the constants of its defaults) is catalog.py; every name stays
# importable from here.
from .catalog import (
    CFG_ZERO_STAR_ZERO_INIT,
    EDM2_GUIDANCE_INTERVAL,
    EDM2_SIGMA_DATA,
    PRESETS,
    edm_sigma_to_flow,
    guidance_interval_window,
)
from .rules import GuidanceSpecError
from .rules import check_number as _check_number
from .spec import GuidanceSpec, Interval

__all__ = [
    "CFG_ZERO_STAR_ZERO_INIT",
    "EDM2_GUIDANCE_INTERVAL",
    "EDM2_SIGMA_DATA",
    "PARAM_PRESETS",
    "PRESETS",
    "SELECTED_PREFIX",
    "SELECTED_ROOT",
    "edm_sigma_to_flow",
    "guidance_interval_window",
    "preset",
    "selected_preset",
]


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
    norm_threshold, momentum, space; fdg's low_scales, parallel_weights; magnitude_aware's alpha;
    cfg_zero_star's zero_init_fraction; guidance_interval's
    sigma_data (the EDM data std its window is mapped with, see `edm_sigma_to_flow`).
    """
    if isinstance(name, str) and name.startswith(SELECTED_PREFIX):
        overrides = (
            ("scale", scale),
            ("cfg_scale", cfg_scale),
            ("blocks", blocks),
            ("interval", interval),
            ("strong", strong),
            ("weak", weak),
        )
        return _selected_without_overrides(name, overrides, params)
    if name not in PRESETS:
        raise GuidanceSpecError(
            f"preset name = {name!r}: must be one of {sorted(PRESETS)} or "
            f"'{SELECTED_PREFIX}<profile>' (the preset notebook 02 selected)"
        )
    d = copy.deepcopy(PRESETS[name]["spec"])
    terms = d.get("terms", [])
    cfg_like = name in ("cfg", "cfg_zero_star", "apg", "guidance_interval", "slg_weak_negative", "tcfg") + PARAM_PRESETS
    method_terms = terms if cfg_like else [t for t in terms if t["rule"] == "delta"]
    if scale is not None:
        for t in method_terms:
            t["scale"] = scale
    if cfg_scale is not None:
        _override_cfg_scale(name, d, terms, cfg_scale, cfg_like)
    if interval is not None:
        _override_interval(name, d, method_terms, interval)
    _override_blocks(name, d, blocks)
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


def _selected_without_overrides(name: str, overrides: tuple, params: dict) -> dict:
    """The selected preset `name` ('selected:<profile>'), which takes no overrides."""
    given = {k: v for k, v in overrides if v is not None} | params
    if given:
        raise GuidanceSpecError(
            f"preset {name!r}: a selected preset takes no overrides (got {sorted(given)}); "
            "it is used exactly as notebook 02 selected it"
        )
    return selected_preset(name[len(SELECTED_PREFIX) :])


def _override_cfg_scale(name: str, d: dict, terms: list[dict], cfg_scale: float, cfg_like: bool) -> None:
    """The CFG term of a preset that combines with CFG: replaced by one at `cfg_scale` (0 or 1: removed)."""
    if cfg_like:
        raise GuidanceSpecError(f"preset {name!r}: cfg_scale does not apply (use scale=)")
    kept = [t for t in terms if t["rule"] != "cfg"]
    d["terms"] = ([{"rule": "cfg", "scale": cfg_scale}] if cfg_scale not in (0, 1) else []) + kept


def _override_blocks(name: str, d: dict, blocks: Any) -> None:
    """The edited blocks of the weak / perturbed branch (None: as the preset has them)."""
    perturbed = [k for k in ("weak", "skip", "uncond_weak", "perturbed") if k in d.get("branches", {})]
    if isinstance(blocks, (str, int)) and not isinstance(blocks, bool):
        blocks = [blocks]  # one block given bare ("single:1"), as BlockEdit takes it; never split into characters
    if blocks is not None:
        if isinstance(blocks, Mapping) or not isinstance(blocks, Sequence):
            raise GuidanceSpecError(
                f"preset {name!r}: blocks = {blocks!r}: must be a block or a list of blocks "
                "(global ints >= 0 or 'list:index', e.g. ['single:1'])"
            )
        if not perturbed:
            raise GuidanceSpecError(f"preset {name!r}: blocks= does not apply (it has no edited branch)")
        branch = d["branches"][perturbed[0]]
        branch["edits"] = {"edits": [dict(e, blocks=list(blocks)) for e in branch["edits"]["edits"]]}


# Presets whose one primary term takes params, given to preset() as keywords (fdg: low_scales,
# parallel_weights; magnitude_aware: alpha); apg's are handled the same way.
PARAM_PRESETS = ("fdg", "magnitude_aware")

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
        raise GuidanceSpecError(
            f"preset '{SELECTED_PREFIX}{profile}': {path} does not exist; run the guidance_design "
            f"stage for profile {profile!r} (dvc repro guidance_design)"
        )
    try:
        d = json.loads(path.read_text())["spec"]
    except (ValueError, KeyError) as err:
        raise GuidanceSpecError(
            f"preset '{SELECTED_PREFIX}{profile}': {path} is not a selected-preset file ({err})"
        ) from None
    d = {**d, "name": f"selected_{profile}"}
    GuidanceSpec.from_dict(d)
    return d


_PARAMETER_NAMES = {"scale": "alpha", "repeat": "times", "temperature": "tau"}


def _check_strengthening(edits: Any) -> None:
    """Refuse a strong branch whose edits weaken the model: guidance by the difference of two weakened
    models is another method than the one strong_weak names. Only the op names and parameters are
    read (the edit spec's own parsing, no model)."""
    from ..edits.spec import EditError, EditSpec

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
        d["terms"][0]["interval"] = guidance_interval_window(float(sigma_data))
    if params:
        if name != "apg" and name not in PARAM_PRESETS:
            raise GuidanceSpecError(f"preset {name!r}: unknown overrides {sorted(params)}")
        d["terms"][0]["params"].update(params)
