"""Renderers: turn (prompts, sample indices) into uint8 images or videos with a profile's pipeline.

This is the one place where a profile's sampling defaults meet a pipeline call; generation
(`ditguide.generate`) and the notebooks both render through it. The noise of sample i depends
only on (base_seed, i), so an image is the same whatever batch it is rendered in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .profiles import ConfigError, Profile, load_params, load_pipeline, load_profile, refuse_renamed_method
from .seeding import sample_generators


def to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images01, 0.0, 1.0) * 255.0).astype(np.uint8)


class PipelineRenderer:
    """Renders with `pipe` at the profile's defaults.

    Without `guidance` the pipeline samples as its users run it: its own CFG at `cfg_scale` (the
    profile's default unless given). With `guidance` (a guidance spec or its dict) the pipeline's
    own CFG is off and `ditguide.pipelines.run_guided` evaluates the spec; `last_cost` then holds
    the block evaluations of the last batch.
    """

    def __init__(
        self,
        profile: Profile,
        pipe,
        *,
        cfg_scale: float | None = None,
        guidance=None,
        base_seed: int = 0,
        steps: int | None = None,
        mode: str = "sequential",
    ):
        self.profile = profile
        self.pipe = pipe
        self.cfg_scale = profile.cfg_scale if cfg_scale is None else float(cfg_scale)
        if not np.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
        if guidance is not None and cfg_scale is not None:
            raise ValueError("pass either cfg_scale (the pipeline's own CFG) or guidance (a spec), not both")
        self.guidance = None
        if guidance is not None:
            from .guidance import GuidanceSpec

            self.guidance = GuidanceSpec.from_dict(guidance) if not isinstance(guidance, GuidanceSpec) else guidance
        self.mode = mode
        self.base_seed = int(base_seed)
        self.steps = profile.steps if steps is None else int(steps)
        self.kind = profile.kind
        self.fps = profile.fps or 16
        self.last_cost = None
        self._fingerprint: str | None = None  # of the weights; computed once, on first describe()

    def describe(self) -> dict:
        return {
            "profile": self.profile.name,
            "family": self.profile.family,
            "model": self.profile.model,
            "dtype": self.profile.dtype,
            "steps": self.steps,
            "cfg_scale": None if self.guidance is not None else self.cfg_scale,
            "guidance": None if self.guidance is None else self.guidance.to_dict(),
            "weights": self._weights(),
            "base_seed": self.base_seed,
            "height": self.profile.height,
            "width": self.profile.width,
            "num_frames": self.profile.num_frames,
        }

    def validate(self, prompts: Sequence[str] = ()) -> None:
        """Raise now, before any file is written, if this renderer cannot render `prompts`: the spec's
        block edits against this transformer (addresses, streams, sub-modules), and the prompts'
        lengths and words where the pipeline's prompt encoder has limits (the toy's)."""
        if self.guidance is not None:
            from .denoiser import GuidedDenoiser

            # Compiles every branch's edits against the model; nothing is installed on the pipeline.
            GuidedDenoiser(self.pipe.transformer, self.guidance, scheduler=self.pipe.scheduler, mode=self.mode)
        tokenize = getattr(getattr(self.pipe, "prompt_encoder", None), "tokenize", None)
        if tokenize is not None and prompts:
            tokenize(list(prompts))

    def _call_kwargs(self, indices: Sequence[int]) -> dict:
        p = self.profile
        if p.family == "toy":
            return {
                "indices": list(indices),
                "base_seed": self.base_seed,
                "guidance_scale": self.cfg_scale,
                "height": p.height,
                "width": p.width,
            }
        kwargs = {
            "generator": sample_generators(indices, self.base_seed),
            "height": p.height,
            "width": p.width,
            "output_type": "np",
        }
        if p.family == "flux":
            kwargs["true_cfg_scale"] = self.cfg_scale
            kwargs["guidance_scale"] = p.distilled_guidance if p.distilled_guidance is not None else 3.5
            if self.cfg_scale > 1:
                kwargs["negative_prompt"] = [p.negative_prompt] * len(indices)
        else:
            kwargs["guidance_scale"] = self.cfg_scale
            kwargs["negative_prompt"] = [p.negative_prompt] * len(indices)
        if p.kind == "video":
            kwargs["num_frames"] = p.num_frames
        return kwargs

    def _weights(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.pipe)
        return self._fingerprint

    def nfe_per_step(self, prompt: str) -> float:
        """Transformer forwards per sampling step (NFE-equivalents for guided renders).

        The pipeline's own CFG costs 2 (1 when off). A guided render is counted by the denoiser: from
        the last batch if one was rendered, else (a resumed run rendered nothing) from one sample."""
        if self.guidance is None:
            return 2.0 if self.cfg_scale > 1 else 1.0
        if self.last_cost is None:
            self.render([prompt], [0])
        return float(self.last_cost.nfe / self.steps)

    @torch.no_grad()
    def render(self, prompts: list[str], indices: list[int]) -> list[np.ndarray]:
        if len(prompts) != len(indices):
            raise ValueError(f"render got {len(prompts)} prompts and {len(indices)} indices")
        kwargs = self._call_kwargs(indices)
        if self.guidance is None:
            out = self.pipe(prompt=list(prompts), num_inference_steps=self.steps, **kwargs)
        else:
            from .pipelines import driver_for, run_guided

            kwargs.pop(driver_for(self.pipe).cfg_arg, None)  # the spec holds the guidance
            out, self.last_cost = run_guided(
                self.pipe, self.guidance, mode=self.mode, prompt=list(prompts), num_inference_steps=self.steps, **kwargs
            )
        frames = out.frames if hasattr(out, "frames") else out.images
        frames = np.asarray(frames)
        if self.profile.family == "toy" and frames.ndim == 3:  # (B, H, W) grey digits -> (B, H, W, 3)
            frames = np.repeat(frames[..., None], 3, axis=-1)
        return [to_uint8(f) for f in frames]


def weights_fingerprint(pipe) -> str:
    """A cheap fingerprint of the transformer's weights, so a retrained model never reuses old samples.

    64 strided values per tensor, taken on the tensor's device before any cast: converting whole
    tensors (12 B parameters for FLUX) to float32 on the CPU would cost minutes and tens of GB."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(pipe.transformer.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


# The old private name, until ditguide.analysis (owned by another change) imports the public one.
_weights_fingerprint = weights_fingerprint


def guidance_spec(profile: Profile, name: str):
    """The guidance spec `name` of a profile (`profiles.<p>.guidance.<name>` in params.yaml).

    An entry is either a full spec dict or `{preset: NAME, **overrides}` (see guidance.PRESETS).
    """
    from .guidance import GuidanceSpec, preset

    specs = profile.extra.get("guidance") or {}
    refuse_renamed_method(name, profile)
    if name not in specs:
        raise ConfigError(
            f"spec={name!r} is not a guidance spec of profile {profile.name!r}; allowed: "
            f"{', '.join(['cfg', 'none', *sorted(specs)])}"
        )
    entry = specs[name]
    where = f"profiles.{profile.name}.guidance.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: expected a mapping, {{preset: NAME, ...overrides}} or a full guidance spec, got {entry!r}"
        )
    entry = dict(entry)
    try:
        d = preset(entry.pop("preset"), **entry) if "preset" in entry else entry
        d.setdefault("name", name)
        return GuidanceSpec.from_dict(d)
    except TypeError as err:  # an override preset() does not take
        raise ConfigError(f"{where}: {err}") from None
    except ValueError as err:  # GuidanceSpecError, EditError: say which spec of which profile
        raise ConfigError(f"{where}: {err}") from None


# The transformer class of each family's pipeline (its `transformer` component).
TRANSFORMER_CLASSES = {
    "toy": "FluxTransformer2DModel",
    "flux": "FluxTransformer2DModel",
    "cogview4": "CogView4Transformer2DModel",
    "wan": "WanTransformer3DModel",
    "sd3": "SD3Transformer2DModel",
}


def model_skeleton(profile: Profile, root=".") -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(transformer, prompt encoder or None) of the profile, built on the meta device from their config.json.

    They have the blocks, sub-modules and prompt limits of the real model, and no weights: nothing is
    read but config files (for a model-hub id, `transformer/config.json` from the hub cache, or
    downloaded alone), and nothing is allocated. The transformer's class is the config's `_class_name`
    (else the family's usual one). Only local models have a prompt encoder with limits (the toy's
    vocabulary and length, found through model_index.json); real pipelines truncate long prompts.
    """
    import diffusers

    from .profiles import check_trained_size, download_hint, resolve_local_model

    class _AnyConfig(diffusers.ConfigMixin):  # reads a config.json whatever model class wrote it
        config_name = "config.json"

    if profile.is_local:
        model_dir = resolve_local_model(profile, root)
        check_trained_size(profile, model_dir)
        source = str(model_dir)
    else:
        source = profile.model
    try:
        config = _AnyConfig.load_config(source, subfolder="transformer")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"profiles.{profile.name}.model: no transformer config for {profile.model!r} "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}). "
            + download_hint(profile)
        ) from None
    name = config.get("_class_name")
    cls = getattr(
        diffusers, name if isinstance(name, str) and hasattr(diffusers, name) else TRANSFORMER_CLASSES[profile.family]
    )
    with torch.device("meta"):
        transformer = cls.from_config(config)
    return transformer, _toy_prompt_encoder(Path(source)) if profile.is_local else None


def _toy_prompt_encoder(model_dir: Path) -> torch.nn.Module | None:
    """The local pipeline's ToyPromptEncoder (whatever its component is called) on the meta device, or None."""
    import json

    from .toy.prompt_encoder import ToyPromptEncoder

    index = model_dir / "model_index.json"
    components = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    for component, entry in components.items():
        if isinstance(entry, list) and entry[-1:] == [ToyPromptEncoder.__name__] and (model_dir / component).is_dir():
            with torch.device("meta"):
                return ToyPromptEncoder.from_config(ToyPromptEncoder.load_config(str(model_dir), subfolder=component))
    return None


def check_against_config(profile: Profile, specs: dict | None = None, prompts: Sequence[str] = (), root=".") -> None:
    """Raise now, before any weights load or any file is written, if the profile's model cannot run
    `specs` ({name: GuidanceSpec}: block addresses, block lists, sub-modules of each edit) or render
    `prompts` (the toy's vocabulary and length). Checked on `model_skeleton`: only config files are read.

    Profiles built in code (`builder`) have no config files to read; `PipelineRenderer.validate`
    checks them on the built model, still before any file is written."""
    if profile.builder is not None or (not specs and not (prompts and profile.is_local)):
        return  # nothing to check: only the toy's prompt encoder limits prompts
    from .denoiser import GuidedDenoiser

    transformer, encoder = model_skeleton(profile, root)
    for name, spec in (specs or {}).items():
        try:
            # Compiles every branch's edits against the skeleton; the clock is never read at compile time.
            GuidedDenoiser(transformer, spec, clock=lambda: None)
        except ValueError as err:
            raise ConfigError(f"profiles.{profile.name}.guidance.{name}: {err}") from None
    if encoder is not None and prompts:
        encoder.tokenize(list(prompts))


def load_renderer(
    profile: str | None = None,
    spec: str | None = None,
    params_path="params.yaml",
    *,
    device: str | None = None,
    base_seed: int = 0,
    pipe=None,
    prompts: Sequence[str] = (),
) -> PipelineRenderer:
    """The renderer `python -m ditguide.generate` uses.

    spec: None or "cfg" = the profile's default sampling (its own CFG at cfg_scale); "none" = no
    guidance; any other name = a guidance spec of the profile ("baseline", cfg's old name, is refused
    naming it). The spec (block addresses) and `prompts` are checked against the model's config
    before its weights load (`check_against_config`).
    """
    params = load_params(params_path) if not isinstance(params_path, dict) else params_path
    prof = load_profile(profile, params)
    refuse_renamed_method(spec, prof)
    guidance, cfg_scale = None, None
    if spec == "none":
        cfg_scale = 1.0
    elif spec not in (None, "cfg"):
        guidance = guidance_spec(prof, spec)
    if pipe is None:
        check_against_config(prof, {spec: guidance} if guidance is not None else {}, prompts)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(prof, device=device)
    # The guided denoiser validates the spec's block edits against this model before sampling.
    return PipelineRenderer(prof, pipe, cfg_scale=cfg_scale, guidance=guidance, base_seed=base_seed)
