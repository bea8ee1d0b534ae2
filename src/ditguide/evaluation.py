"""One evaluation path for every model and benchmark: `evaluate(profile, benchmark, methods)`.

Every method of every profile takes the same path:

    method -> PipelineRenderer -> `generate` writes files into runs/<profile>/<task>/<method>-<key>/samples/
           -> `metrics.Samples.from_dir` (every file present and decodable) -> the benchmark's scorers

The key hashes the renderer's description (model, weights fingerprint, spec, steps, size, seed) and
the prompt list, so a changed spec, model or prompt set never reuses old files, and an interrupted
run resumes where it stopped. Everything that can fail on a user's input (benchmark and method
names, guidance specs against the model's config, the benchmark's data, judges and environment,
the prompts against the model's vocabulary) fails before the first sample is rendered.

Methods, the same names on every model:
    "none"            no guidance (the pipeline's own CFG off)
    "cfg"             the pipeline's own sampling at the profile's default CFG scale (formerly
                      "baseline" in the real-model evaluation; that name is refused with a pointer)
    "cfg@<s>"         the pipeline's own CFG at scale s
    <spec>            a guidance spec of the profile (`profiles.<p>.guidance.<spec>` in params.yaml)
    <preset>          a preset of `ditguide.guidance.PRESETS` with its defaults (a profile spec of the
                      same name wins), or "selected:<profile>", the preset notebook 02 selected

Cost: NFE per step = transformer forwards per sampling step; the pipeline's own CFG counts 2 when
on, else 1; guided methods report the block evaluations their denoiser counted (divided by the
blocks of one forward), so a skipped block is not charged.

Multi-GPU (`accelerate launch -m ditguide.evaluation_real ...`): every process renders its shard of
every method; the main process then scores (the others return None).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .benchmark import Benchmark, get_benchmark
from .generate_pool import check_workers
from .profiles import ConfigError, Profile, load_params, load_pipeline, load_profile
from .render import PipelineRenderer, check_against_config, guidance_spec

NONE, CFG = "none", "cfg"
RENAMED = {"baseline": CFG}  # old method names, refused with their new name


# ----------------------------------------------------------------------------------------------
# methods


@dataclass(frozen=True)
class Method:
    """How one method samples: the pipeline's own CFG (`cfg_scale`; None: the profile's default) or a
    guidance spec (`guidance`, a GuidanceSpec)."""

    name: str
    cfg_scale: float | None = None
    guidance: object = None

    def renderer(self, profile: Profile, pipe, base_seed: int) -> PipelineRenderer:
        if self.guidance is not None:
            return PipelineRenderer(profile, pipe, guidance=self.guidance, base_seed=base_seed)
        return PipelineRenderer(profile, pipe, cfg_scale=self.cfg_scale, base_seed=base_seed)


def _allowed(profile: Profile) -> str:
    from .guidance import PRESETS, SELECTED_PREFIX

    specs = list(profile.extra.get("guidance") or {})
    return (
        f"{NONE}, {CFG}, cfg@<scale>, a guidance spec of profile {profile.name!r} ({', '.join(specs) or 'none defined'}), "
        f"a preset ({', '.join(sorted(PRESETS))}) or '{SELECTED_PREFIX}<profile>'"
    )


def _cfg_scale(name: str, text: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not np.isfinite(scale) or scale < 0:
        raise ConfigError(f"method {name!r}: the CFG scale after '@' must be a finite number >= 0, got {text!r}")
    return scale


def method(profile: Profile, name: str) -> Method:
    """The method `name` of `profile` (see the module docstring), validated without loading weights."""
    from .guidance import PRESETS, SELECTED_PREFIX, GuidanceSpec, GuidanceSpecError, preset

    if not isinstance(name, str):
        raise ConfigError(f"methods: {name!r} is not allowed; allowed: {_allowed(profile)}")
    if name in RENAMED:
        raise ConfigError(
            f"method {name!r} is now called {RENAMED[name]!r} (the pipeline's own sampling at the profile's "
            f"default CFG scale, {profile.cfg_scale:g}), the same name on every model; use {RENAMED[name]!r}"
        )
    if name == NONE:
        return Method(name, cfg_scale=1.0)
    if name == CFG:
        return Method(name)
    if name.startswith(f"{CFG}@"):
        return Method(name, cfg_scale=_cfg_scale(name, name[len(CFG) + 1 :]))
    if name in (profile.extra.get("guidance") or {}):
        return Method(name, guidance=guidance_spec(profile, name))
    if name in PRESETS or name.startswith(SELECTED_PREFIX):
        try:
            return Method(name, guidance=GuidanceSpec.from_dict(preset(name)))
        except GuidanceSpecError as err:  # e.g. no selected.json for that profile
            raise ConfigError(f"method {name!r}: {err}") from None
    raise ConfigError(f"method {name!r} is not allowed; allowed: {_allowed(profile)}")


def resolve_methods(profile: Profile, names: Sequence[str]) -> list[Method]:
    """Every method of `names`, validated (ConfigError naming what is allowed), in order."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ConfigError(f"methods={names!r} is not allowed; allowed: a non-empty list of names ({_allowed(profile)})")
    plan = [method(profile, name) for name in names]  # names are strings from here on
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(f"methods lists {', '.join(map(repr, repeated))} more than once")
    return plan


def default_methods(
    profile: str | Profile,
    params="params.yaml",
    *,
    cfg_scales: Sequence[float] = (),
    specs: Sequence[str] | None = None,
    selected: bool = True,
) -> list[str]:
    """none, cfg, cfg@<s> for each scale of the sweep other than the default, the profile's guidance
    specs (`specs`; None: all of them), and "selected:<profile>" when notebook 02 selected a preset for
    it (data/guidance/<profile>/selected.json) and `selected` is true. "none" is left out when the
    profile's default CFG scale is <= 1 (e.g. flux-dev): its pipeline's CFG is then off, so "none"
    would render exactly what "cfg" renders."""
    from .guidance import SELECTED_PREFIX
    from .guidance.presets import SELECTED_ROOT

    prof = profile if isinstance(profile, Profile) else load_profile(profile, params)
    if specs is not None and (isinstance(specs, str) or not isinstance(specs, Sequence)):
        raise ConfigError(
            f"specs={specs!r} is not allowed; allowed: None (every spec of the profile) or a list of names"
        )
    if isinstance(cfg_scales, str) or not isinstance(cfg_scales, Sequence):
        raise ConfigError(f"cfg_scales={cfg_scales!r} is not allowed; allowed: a list of finite numbers >= 0")
    names = [NONE] if prof.cfg_scale > 1 else []
    names.append(CFG)
    for s in cfg_scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not np.isfinite(s) or s < 0:
            raise ConfigError(f"cfg_scales: {s!r} is not allowed; allowed: finite numbers >= 0")
        if float(s) != prof.cfg_scale:
            names.append(f"{CFG}@{s:g}")
    names += list(prof.extra.get("guidance") or {}) if specs is None else list(specs)
    if selected and (Path(SELECTED_ROOT) / prof.name / "selected.json").is_file():
        names.append(f"{SELECTED_PREFIX}{prof.name}")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------
# run folders and cost


def run_dir(
    runs_dir: str | os.PathLike,
    prof: Profile,
    task: str,
    method: str,
    renderer: PipelineRenderer,
    prompts: Sequence[str],
    samples_per_prompt: int,
) -> Path:
    """runs/<profile>/<task>/<method>-<key>. The prompts are in the key because a generation folder
    holds one plan (`generate` refuses to mix two): another split or prompt subset gets its own.
    A ':' in a method name ("selected:scenes") becomes '_' in the folder name (portable paths)."""
    what = {
        "renderer": renderer.describe(),
        "samples_per_prompt": samples_per_prompt,
        "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    return Path(runs_dir) / prof.name / task / f"{method.replace(':', '_')}-{key}"


def method_entry(renderer: PipelineRenderer, nfe_per_step: float) -> dict:
    """The per-method entries every benchmark's metrics share: cost and what sampled."""
    entry = {"nfe_per_step": nfe_per_step}
    if renderer.guidance is None:
        entry.update(cfg_scale=renderer.cfg_scale)
    else:
        entry.update(cfg_scale=None, spec=renderer.guidance.to_dict())
    return entry


# ----------------------------------------------------------------------------------------------
# the result


@dataclass
class EvalResult:
    """Metrics of every method on one benchmark, and where each method's samples are. Tables and
    figures are the benchmark's, drawn from the metrics (the sample grid reads the samples)."""

    metrics: dict
    benchmark: Benchmark
    run_dirs: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        return self.benchmark.table(self.metrics)

    def tables(self) -> dict[str, str]:
        """Every LaTeX table by file-name suffix ("" is `table()`; VBench adds "_dimensions")."""
        return self.benchmark.tables(self.metrics)

    def tradeoff_figure(self):
        return self.benchmark.tradeoff_figure(self.metrics)

    def sample_grid(self, methods: Sequence[str] | None = None, **kw):
        return self.benchmark.sample_grid(self.metrics, self.run_dirs, methods, **kw)

    def summary(self) -> str:
        return "\n".join(self.benchmark.summary(name, m) for name, m in self.metrics["methods"].items())

    def to_json(self) -> str:
        return json.dumps(self.metrics, indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------------------------------------
# evaluate


def _device(prof: Profile, device: str | None) -> str:
    if device is not None:
        return device
    if prof.family == "toy":
        return "cpu"  # the testbeds' committed numbers were rendered on the CPU; CUDA kernels change samples
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_run_settings(batch_size, base_seed) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("base_seed", base_seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} is not allowed; allowed: an integer >= {low}")


def _check_blocks(prof: Profile, plan: list[Method]) -> None:
    """Every spec's block addresses on the model's config (meta device), before any data or weights load."""
    specs = prof.extra.get("guidance") or {}
    for m in plan:
        if m.guidance is None:
            continue
        try:
            check_against_config(prof, {m.name: m.guidance})
        except ConfigError as err:
            if m.name in specs:
                raise
            # A preset is no spec of the profile: name it as the method it is, not as profiles.<p>.guidance.<name>.
            detail = str(err).removeprefix(f"profiles.{prof.name}.guidance.{m.name}: ")
            raise ConfigError(f"method {m.name!r} (a preset, not a spec of profile {prof.name!r}): {detail}") from None


def evaluate(
    profile: str,
    benchmark: str | Benchmark | None = None,
    methods: Sequence[str] | None = None,
    *,
    options: Mapping | None = None,
    params="params.yaml",
    batch_size: int = 4,
    base_seed: int = 0,
    runs_dir: str | os.PathLike = "runs",
    device: str | None = None,
    state=None,
    workers: int = 1,
) -> EvalResult | None:
    """Render every method on the benchmark's captions (same per-index seeds for every method) and score it.

    benchmark: a name of `ditguide.benchmark.BENCHMARKS` (with `options`, its keywords), a Benchmark
    instance, or None for the profile's own (digits, scenes, clips, coco, vbench: the first that fits).
    methods: names (module docstring); None: `default_methods(profile)`. device: None is the CPU for
    toy-family profiles, else CUDA when available. state: an accelerate PartialState (default: a new
    one). workers: forked single-threaded processes per process (CPU only; `ditguide.generate_pool`).
    Returns None on processes other than the main one.
    """
    from .generate import default_state
    from .metrics import Samples

    params = load_params(params) if not isinstance(params, dict) else params
    prof = load_profile(profile, params)
    bench = get_benchmark(benchmark, prof, options)
    _check_run_settings(batch_size, base_seed)
    check_workers(workers)
    plan = resolve_methods(prof, default_methods(prof) if methods is None else methods)
    _check_blocks(prof, plan)
    device = _device(prof, device)
    state = default_state() if state is None else state
    bench.prepare(prof, device=device, main_process=state.is_main_process)
    prompts = [c.text for c in bench.captions()]
    check_against_config(prof, None, list(dict.fromkeys(prompts)))  # the toy's vocabulary and prompt length
    pipe = load_pipeline(prof, device=device)
    rendered = _render(prof, pipe, plan, prompts, bench, runs_dir, batch_size, base_seed, state, workers)
    if not state.is_main_process:
        return None
    result = EvalResult(metrics={}, benchmark=bench)
    methods_out = {}
    for name, (renderer, folder) in rendered.items():
        entry = bench.score(Samples.from_dir(folder, bench.count()))
        entry.update(method_entry(renderer, renderer.nfe_per_step(prompts[0])))
        methods_out[name] = entry
        result.run_dirs[name] = folder
        print(bench.summary(name, entry), flush=True)
    result.metrics = {"profile": prof.name, **bench.header(prof, base_seed, methods_out), "methods": methods_out}
    return result


def _render(prof, pipe, plan, prompts, bench, runs_dir, batch_size, base_seed, state, workers=1) -> dict:
    """{method: (renderer, run folder)} after every process rendered its shard of every method."""
    from .generate import generate

    renderers = {m.name: bench.wrap_renderer(m.renderer(prof, pipe, base_seed)) for m in plan}
    for renderer in renderers.values():
        renderer.validate(list(dict.fromkeys(prompts)))  # every spec on the loaded model before the first render
    out = {}
    for name, renderer in renderers.items():
        folder = run_dir(runs_dir, prof, bench.task, name, renderer, prompts, bench.samples_per_prompt)
        generate(
            renderer,
            prompts,
            folder,
            batch_size=batch_size,
            base_seed=base_seed,
            samples_per_prompt=bench.samples_per_prompt,
            limit=bench.count(),
            state=state,
            workers=workers,
        )
        out[name] = (renderer, folder)
    state.wait_for_everyone()
    return out


def evaluate_t2i_toy(
    profile: str = "toy",
    *,
    samples_per_class: int = 100,
    batch_size: int = 250,
    base_seed: int = 0,
    cfg_scales: Sequence[float] = (),
    specs: Sequence[str] | None = None,
    params="params.yaml",
    judge_path: str = "data/toy/judge.safetensors",
    runs_dir: str = "runs",
) -> EvalResult:
    """The digit toy's evaluation (`evaluate` on the digits benchmark with `default_methods`)."""
    from .benchmark import Digits

    params = load_params(params) if not isinstance(params, dict) else params
    bench = Digits(samples_per_class=samples_per_class, judge_path=judge_path)
    methods = default_methods(load_profile(profile, params), cfg_scales=cfg_scales, specs=specs)
    return evaluate(
        profile, bench, methods, params=params, batch_size=batch_size, base_seed=base_seed, runs_dir=runs_dir
    )
