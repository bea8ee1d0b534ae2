"""The guidance_design section of params.yaml, resolved for one testbed and checked before anything
renders, and the declared selection rule (told whether its objective is better higher)."""

from __future__ import annotations

from ..profiles import ConfigError
from .design_scoring import ScenesScoring

KEYS = ScenesScoring.keys  # the glyph-scene testbed's metrics (each testbed's scoring has its own)


def design_params(section: dict, profile: str) -> dict:
    """The guidance_design section resolved for one testbed, every parameter checked before anything
    renders. `dev.per_set`, `test.per_set`, `select`, `workers` and each `grid` list may be given per
    testbed ({profile: value}); the result holds this testbed's values only (`workers` defaults to 1)."""
    p = dict(section)
    if isinstance(p.get("workers"), dict):
        p["workers"] = p["workers"].get(profile, 1)
    p.setdefault("workers", 1)
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
    w = p.get("workers", 1)
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise ConfigError(f"guidance_design.workers={w!r} is not allowed; allowed: an integer >= 1 (1: one process)")
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


def rule_of(select: dict, scoring) -> dict:
    """The declared rule, told whether its objective is better higher (the testbed's scoring knows),
    after checking that the testbed has the metrics it names."""
    check_rule(select, scoring.keys)
    return {**select, "maximise": True} if select["objective"] not in scoring.lower_is_better else dict(select)
