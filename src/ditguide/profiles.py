"""Model profiles: which model a run uses and how it samples by default, read from params.yaml.

A profile names a family (toy, flux, cogview4, wan, sd3), where its weights come from (a local
folder or a model-hub id), and its default sampling (steps, CFG scale, resolution). Everything is
validated here, before any weights load, so a typo fails in a second with the allowed values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("toy", "flux", "cogview4", "wan", "sd3")
KINDS = ("image", "video")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_PARAMS = "params.yaml"


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.family == "toy"


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path} (run from the repository root, or pass params_path)")
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict) or not isinstance(params.get("profiles"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'profiles' section")
    return params


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
    raw = dict(profiles[name])
    where = f"profiles.{name}"
    known = {f for f in Profile.__dataclass_fields__ if f not in ("name", "extra")}
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
    extra = {k: raw.pop(k) for k in list(raw) if k not in known}
    return Profile(name=name, extra=extra, **raw)


def resolve_local_model(profile: Profile, root: str | os.PathLike = ".") -> Path:
    """The folder of a local (toy) model; a clear error if the checkpoint is missing."""
    path = Path(root) / profile.model
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"profiles.{profile.name}.model: no pipeline at {path} (model_index.json missing). "
            "Run `dvc repro train_toy` (or `dvc pull`) to create it."
        )
    return path


def load_pipeline(profile: Profile, device: str = "cpu", root: str | os.PathLike = "."):
    """Load the profile's diffusers pipeline. Real profiles need the weights in the hub cache."""
    import torch

    dtype = getattr(torch, profile.dtype)
    if profile.family == "toy":
        from .toy.pipeline import ToyPipeline

        pipe = ToyPipeline.from_pretrained(resolve_local_model(profile, root), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    if profile.model.startswith("tiny:"):
        # Test profiles (`model: tiny:<family>`, "random weights, for tests" in params.yaml): a tiny
        # random pipeline built in code, with text encoders, so that the real-model evaluation path
        # (text prompts -> pipeline -> files -> metrics) runs offline on a CPU.
        from .tiny_text import FAMILIES as TINY_TEXT_FAMILIES, tiny_text_pipeline

        tiny = profile.model.removeprefix("tiny:")
        _check(tiny == profile.family and tiny in TINY_TEXT_FAMILIES, f"profiles.{profile.name}.model", profile.model,
               f"tiny:<family> with the profile's family; tiny text pipelines exist for {', '.join(TINY_TEXT_FAMILIES)}")
        pipe = tiny_text_pipeline(tiny).to(device)  # built in float32
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)

    import diffusers

    cls = {"flux": "FluxPipeline", "cogview4": "CogView4Pipeline", "wan": "WanPipeline", "sd3": "StableDiffusion3Pipeline"}[profile.family]
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
            f"Download it on a machine with internet: `huggingface-cli download {profile.model}` "
            "(FLUX.1-dev needs its licence accepted and HF_TOKEN set), then copy the hub cache (~/.cache/huggingface) here."
        ) from err
    if profile.family == "wan" and profile.flow_shift is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=profile.flow_shift)
    return pipe.to(device)
