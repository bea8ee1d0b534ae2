"""Model profiles: which model a run uses and how it samples by default, read from params.yaml.

A profile names a family (toy, flux, cogview4, wan, sd3), where its weights come from (a local
folder or a model-hub id), and its default sampling (steps, CFG scale, resolution). Everything is
validated here, before any weights load, so a typo fails in a second with the allowed values.

A profile may instead name a `builder`, `package.module:function` or `path/to/file.py:function` (a
relative path from the working directory): `load_pipeline` then calls it with the Profile and uses
the pipeline it returns, built in code rather than loaded (the tests' random-weight pipelines,
tests/params_tiny.yaml).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .metrics.folder import KINDS  # the one definition of what a run outputs (image, video)

FAMILIES = ("toy", "flux", "cogview4", "wan", "sd3")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_PARAMS = "params.yaml"
# Method names the evaluations give the built-in samplings (the pipeline's default, no guidance, CFG
# and its sweep `cfg@<scale>`): a guidance spec of the same name would silently replace their row.
RESERVED_SPEC_NAMES = ("baseline", "none", "cfg")
# Old method names, refused with their new name (as `ditguide.evaluation.method` refuses them).
RENAMED_METHODS = {"baseline": "cfg"}
# A spec name becomes a folder name under runs/ and a key in the metrics.
SPEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# A profile's `builder`: "package.module:function" or "path/to/file.py:function".
BUILDER = re.compile(r"[^:\s][^\s]*:[A-Za-z_][A-Za-z0-9_]*")
# Profile keys besides the Profile fields: the profile's guidance specs {name: spec}.
EXTRA_KEYS = ("guidance",)


class ConfigError(ValueError):
    """A bad value in params.yaml or on the command line; the message names the parameter."""


@dataclass(frozen=True)
class Profile:
    name: str
    family: str
    kind: str
    model: str
    dtype: str = "float32"
    steps: int = 20
    cfg_scale: float = 1.0
    height: int = 8
    width: int = 8
    num_frames: int | None = None
    fps: int | None = None
    distilled_guidance: float | None = None
    flow_shift: float | None = None
    prompt_extension: bool = False
    negative_prompt: str = ""
    builder: str | None = None  # "module:function" / "file.py:function" building the pipeline in code
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.family == "toy"


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path} (run from the repository root, or pass params_path)")
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        what = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML{at}: {what}") from None
    if not isinstance(params, dict) or not isinstance(params.get("profiles"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'profiles' section")
    return params


def refuse_renamed_method(name: Any, profile: Profile | None = None) -> None:
    """A ConfigError naming the new name if `name` is an old method name ("baseline" is now "cfg")."""
    if isinstance(name, str) and name in RENAMED_METHODS:
        new = RENAMED_METHODS[name]
        scale = f", {profile.cfg_scale:g}" if profile is not None else ""
        raise ConfigError(
            f"method {name!r} is now called {new!r} (the pipeline's own sampling at the profile's "
            f"default CFG scale{scale}), the same name on every model; use {new!r}"
        )


def _check(cond: bool, where: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{where}={value!r} is not allowed; allowed: {allowed}")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _finite_nonneg(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def load_profile(name: str | None = None, params: dict | str | os.PathLike = DEFAULT_PARAMS) -> Profile:
    """The validated profile `name` (default: params' `profile`)."""
    params = load_params(params) if not isinstance(params, dict) else params
    profiles = params["profiles"]
    name = name or params.get("profile")
    _check(name in profiles, "profile", name, ", ".join(sorted(profiles)))
    where = f"profiles.{name}"
    if not isinstance(profiles[name], dict):
        raise ConfigError(f"{where}: expected a mapping of settings (family, kind, model, ...), got {profiles[name]!r}")
    raw = dict(profiles[name])
    known = {f for f in Profile.__dataclass_fields__ if f not in ("name", "extra")}
    unknown = sorted(set(raw) - known - set(EXTRA_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(known | set(EXTRA_KEYS)))}")
    _check_guidance_names(raw.get("guidance"), f"{where}.guidance")
    for key in ("family", "kind", "model"):
        _check(key in raw, f"{where}.{key}", None, "a value is required")
    _check(raw["family"] in FAMILIES, f"{where}.family", raw["family"], ", ".join(FAMILIES))
    _check(raw["kind"] in KINDS, f"{where}.kind", raw["kind"], ", ".join(KINDS))
    _check(raw.get("dtype", "float32") in DTYPES, f"{where}.dtype", raw.get("dtype"), ", ".join(DTYPES))
    for key in ("steps", "height", "width"):
        if key in raw:
            _check(_positive_int(raw[key]), f"{where}.{key}", raw[key], "an integer >= 1")
    for key in ("num_frames", "fps"):
        if raw.get(key) is not None:
            _check(_positive_int(raw[key]), f"{where}.{key}", raw[key], "an integer >= 1")
    for key in ("cfg_scale", "distilled_guidance", "flow_shift"):
        if raw.get(key) is not None:
            _check(_finite_nonneg(raw[key]), f"{where}.{key}", raw[key], "a finite number >= 0")
    if raw["kind"] == "video":
        _check(raw.get("num_frames") is not None, f"{where}.num_frames", None, "an integer >= 1 (required for video)")
    if raw["family"] == "wan" and raw.get("num_frames") is not None:
        # WanPipeline rounds other counts (its VAE compresses 4 frames into one): the videos would not
        # have the frame count the manifest records.
        _check(raw["num_frames"] % 4 == 1, f"{where}.num_frames", raw["num_frames"], "4k + 1 frames (5, 9, ..., 81)")
    _check_text_fields(raw, where)
    extra = {k: raw.pop(k) for k in list(raw) if k not in known}
    return Profile(name=name, extra=extra, **raw)


def _check_text_fields(raw: dict, where: str) -> None:
    _check(
        isinstance(raw.get("prompt_extension", False), bool),
        f"{where}.prompt_extension",
        raw.get("prompt_extension"),
        "true or false",
    )
    _check(
        isinstance(raw.get("negative_prompt", ""), str),
        f"{where}.negative_prompt",
        raw.get("negative_prompt"),
        "a string",
    )
    _check(
        isinstance(raw["model"], str) and raw["model"].strip() != "",
        f"{where}.model",
        raw["model"],
        "a folder or a model-hub id",
    )
    builder = raw.get("builder")
    _check(
        builder is None or (isinstance(builder, str) and BUILDER.fullmatch(builder) is not None),
        f"{where}.builder",
        builder,
        "'package.module:function' or 'path/to/file.py:function'",
    )


def _check_guidance_names(specs: Any, where: str) -> None:
    """The shape of a profile's guidance section and its names; each spec itself is checked by
    `ditguide.render.guidance_spec` (it needs the guidance module)."""
    if specs is None:
        return
    if not isinstance(specs, dict):
        raise ConfigError(f"{where}: expected a mapping {{name: spec}}, got {specs!r}")
    for spec_name, entry in specs.items():
        if not isinstance(spec_name, str) or not SPEC_NAME.fullmatch(spec_name):
            raise ConfigError(
                f"{where}: spec name {spec_name!r} is not allowed; allowed: letters, digits, _ . + - "
                "(it names a folder under runs/)"
            )
        if spec_name in RESERVED_SPEC_NAMES or spec_name.startswith("cfg@"):
            raise ConfigError(
                f"{where}.{spec_name}: the name is reserved for a built-in method "
                f"({', '.join(RESERVED_SPEC_NAMES)}, cfg@<scale>); choose another name"
            )
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}.{spec_name}: expected a mapping, {{preset: NAME, ...overrides}} or a full "
                f"guidance spec, got {entry!r}"
            )


def resolve_local_model(profile: Profile, root: str | os.PathLike = ".") -> Path:
    """The folder of a local (toy) model; a clear error if the checkpoint is missing."""
    path = Path(root) / profile.model
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"profiles.{profile.name}.model: no pipeline at {path} (model_index.json missing). "
            "Run `dvc repro train_toy` to create it."
        )
    return path


def check_trained_size(profile: Profile, model_dir: Path) -> None:
    """A toy model renders at any size but was trained at one (train_log.json's image_size, where
    recorded): another profile height/width would sample off its training distribution."""
    log = model_dir / "train_log.json"
    size = json.loads(log.read_text(encoding="utf-8")).get("image_size") if log.is_file() else None
    if size is not None and (profile.height, profile.width) != (size, size):
        raise ConfigError(
            f"profiles.{profile.name}.height/width = {profile.height}x{profile.width} is not allowed; "
            f"allowed: {size}x{size}, the size {model_dir} was trained at"
        )


def download_hint(profile: Profile) -> str:
    """How a user gets a hub model's files onto this machine."""
    return (
        f"Download it on a machine with internet: `hf download {profile.model}` "
        "(FLUX.1-dev needs its licence accepted and HF_TOKEN set), then copy the hub cache (~/.cache/huggingface) here."
    )


def _module_from_file(path: Path):
    """The module of a .py file, imported once (a module already imported from that file is reused)."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    for name in (path.stem, f"ditguide_builder_{path.stem}"):
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
            return loaded
    name = f"ditguide_builder_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def pipeline_builder(profile: Profile) -> Callable:
    """The function the profile's `builder` names (see the module docstring), imported now."""
    where = f"profiles.{profile.name}.builder"
    target, _, function = (profile.builder or "").rpartition(":")
    try:
        module = _module_from_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    except (ImportError, FileNotFoundError) as err:
        raise ConfigError(
            f"{where}={profile.builder!r}: cannot import {target!r} ({type(err).__name__}: {err})"
        ) from None
    built = getattr(module, function, None)
    if not callable(built):
        raise ConfigError(f"{where}={profile.builder!r} is not allowed; allowed: a function of {target}")
    return built


def load_pipeline(profile: Profile, device: str = "cpu", root: str | os.PathLike = "."):
    """Load the profile's diffusers pipeline. Real profiles need the weights in the hub cache; a
    profile with a `builder` gets the pipeline it returns (built in float32, cast to the profile's dtype)."""
    import torch

    dtype = getattr(torch, profile.dtype)
    if profile.builder is not None:
        pipe = pipeline_builder(profile)(profile).to(device)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if profile.family == "toy":
        from .toy.pipeline import ToyPipeline

        model_dir = resolve_local_model(profile, root)
        check_trained_size(profile, model_dir)
        if profile.kind == "video":  # the T2V testbed: a small Wan transformer (a WanPipeline subclass)
            from .toy.video_pipeline import ToyVideoPipeline as ToyPipeline
        pipe = ToyPipeline.from_pretrained(model_dir, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    import diffusers

    cls = {
        "flux": "FluxPipeline",
        "cogview4": "CogView4Pipeline",
        "wan": "WanPipeline",
        "sd3": "StableDiffusion3Pipeline",
    }[profile.family]
    try:
        kwargs = {"dtype": dtype}
        if profile.family == "wan":
            # Wan needs its VAE in float32 (its reference code does the same).
            vae = diffusers.AutoencoderKLWan.from_pretrained(profile.model, subfolder="vae", dtype=torch.float32)
            kwargs["vae"] = vae
        pipe = getattr(diffusers, cls).from_pretrained(profile.model, **kwargs)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"profiles.{profile.name}.model: could not load {profile.model!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
            + download_hint(profile)
        ) from err
    if profile.family == "wan" and profile.flow_shift is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=profile.flow_shift)
    return pipe.to(device)
