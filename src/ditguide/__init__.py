"""ditguide: training-free strong/weak self-guidance for Diffusion Transformers.

The public API (imported on first use, so `import ditguide` loads neither torch nor diffusers):

    run_guided(pipe, spec, **call)    run a diffusers pipeline under a guidance spec -> (output, cost)
    preset(name, **overrides)         a named guidance spec (cfg, apg, autoguidance, slg, ...) as a dict
    GuidanceSpec                      a validated guidance spec (branches, terms, intervals)
    GuidedDenoiser                    the transformer wrapper that evaluates a spec at every call
    EditSpec                          block edits (skip, scale, attention edits) of any adapted family
    edit(model, spec, rows=None)      context manager applying an EditSpec (ditguide.edits.apply_edits)
    evaluate(profile, benchmark, methods)  generate -> samples -> the benchmark's metrics, one path for every
                                      model (ditguide.evaluation) -> EvalResult (table, figures, JSON)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute)
_API = {
    "run_guided": ("ditguide.pipelines", "run_guided"),
    "preset": ("ditguide.guidance", "preset"),
    "GuidanceSpec": ("ditguide.guidance", "GuidanceSpec"),
    "GuidedDenoiser": ("ditguide.denoiser", "GuidedDenoiser"),
    "EditSpec": ("ditguide.edits", "EditSpec"),
    "edit": ("ditguide.edits", "apply_edits"),
    "evaluate": ("ditguide.evaluation", "evaluate"),
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ditguide' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
