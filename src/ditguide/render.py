"""Renderers: turn (prompts, sample indices) into uint8 images or videos with a profile's pipeline.

This is the one place where a profile's sampling defaults meet a pipeline call; generation
(`ditguide.generate`) and the notebooks both render through it. The noise of sample i depends
only on (base_seed, i), so an image is the same whatever batch it is rendered in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .profiles import Profile
from .seeding import sample_generators


def to_uint8(images01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images01, 0.0, 1.0) * 255.0).astype(np.uint8)


class PipelineRenderer:
    """Renders with `pipe` at the profile's defaults; `cfg_scale` overrides the profile's CFG."""

    def __init__(self, profile: Profile, pipe, *, cfg_scale: float | None = None, base_seed: int = 0, steps: int | None = None):
        self.profile = profile
        self.pipe = pipe
        self.cfg_scale = profile.cfg_scale if cfg_scale is None else float(cfg_scale)
        if not np.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
        self.base_seed = int(base_seed)
        self.steps = profile.steps if steps is None else int(steps)
        self.kind = profile.kind
        self.fps = profile.fps or 16

    def describe(self) -> dict:
        return {
            "profile": self.profile.name,
            "family": self.profile.family,
            "model": self.profile.model,
            "dtype": self.profile.dtype,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "base_seed": self.base_seed,
            "height": self.profile.height,
            "width": self.profile.width,
            "num_frames": self.profile.num_frames,
        }

    def _call_kwargs(self, indices: Sequence[int]) -> dict:
        p = self.profile
        if p.family == "toy":
            return {"indices": list(indices), "base_seed": self.base_seed, "guidance_scale": self.cfg_scale}
        kwargs = {"generator": sample_generators(indices, self.base_seed), "height": p.height, "width": p.width, "output_type": "np"}
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

    @torch.no_grad()
    def render(self, prompts: list[str], indices: list[int]) -> list[np.ndarray]:
        if len(prompts) != len(indices):
            raise ValueError(f"render got {len(prompts)} prompts and {len(indices)} indices")
        out = self.pipe(prompt=list(prompts), num_inference_steps=self.steps, **self._call_kwargs(indices))
        frames = out.frames if hasattr(out, "frames") else out.images
        frames = np.asarray(frames)
        if self.profile.family == "toy":  # (B, 8, 8) grey -> (B, 8, 8, 3)
            frames = np.repeat(frames[..., None], 3, axis=-1)
        return [to_uint8(f) for f in frames]
