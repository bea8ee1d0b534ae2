"""ToyPipeline: text-to-image sampling with a small Flux transformer, in pixel space.

It drives its transformer the way `FluxPipeline` does (same keyword arguments, `timestep / 1000`,
`cache_context`, one call per step, plus a second sequential call for the negative prompt when
`guidance_scale > 1`, i.e. Flux's "true CFG"), so the guidance wrapper treats both alike.
There is no VAE: an image is cut into 2x2 patches, one token each. The channel count follows from
the transformer (`in_channels = 4 * channels`): the digit toy is 8x8 grey (16 tokens of 4 values),
the glyph-scene testbed 16x16 RGB (64 tokens of 12 values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.utils import BaseOutput

from ..seeding import sample_noise
from .data import IMAGE_SIZE
from .prompt_encoder import ToyPromptEncoder

PATCH = 2


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, H, W, C) -> (B, H/2 * W/2, 4C): 2x2 patches in raster order, channels last."""
    grey = images.ndim == 3
    x = images[..., None] if grey else images
    b, h, w, c = x.shape
    x = x.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


def unpack(tokens: torch.Tensor, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> torch.Tensor:
    """Inverse of `pack`: (B, tokens, 4C) -> (B, H, W) for C = 1, else (B, H, W, C)."""
    b, _, d = tokens.shape
    c = d // (PATCH * PATCH)
    x = tokens.reshape(b, height // PATCH, width // PATCH, PATCH, PATCH, c).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, height, width, c)
    return x[..., 0] if c == 1 else x


def image_ids(device=None, dtype=torch.float32, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> torch.Tensor:
    """Flux position ids (token, 3): (0, row, col) of each patch."""
    rows, cols = torch.meshgrid(torch.arange(height // PATCH), torch.arange(width // PATCH), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


def flow_sigmas(num_inference_steps: int) -> np.ndarray:
    """The sigma schedule FluxPipeline uses (before shifting): linear from 1 to 1/N."""
    return np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)


@dataclass
class ToyPipelineOutput(BaseOutput):
    images: np.ndarray | torch.Tensor  # (B, H, W[, 3]) in [0, 1] ("np"/"pt") or model range ("latent")


class ToyPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "prompt_encoder->transformer"
    _optional_components = ["prompt_encoder"]

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        prompt_encoder: ToyPromptEncoder | None = None,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, prompt_encoder=prompt_encoder)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prompt_encoder is None:
            raise ValueError(
                "this pipeline has no prompt_encoder: pass prompt_embeds and pooled_prompt_embeds instead of prompt"
            )
        return self.prompt_encoder(prompts)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 20,
        height: int = IMAGE_SIZE,
        width: int = IMAGE_SIZE,
        indices: list[int] | None = None,
        base_seed: int = 0,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
    ):
        if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        for name, size in (("height", height), ("width", width)):
            if not (isinstance(size, int) and size >= PATCH and size % PATCH == 0):
                raise ValueError(f"{name} must be a positive multiple of {PATCH}, got {size!r}")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        device = self._execution_device
        dtype = self.transformer.dtype

        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, pooled_prompt_embeds = self.encode_prompt(prompts)
        elif pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds needs pooled_prompt_embeds too")
        batch = prompt_embeds.shape[0]

        do_cfg = guidance_scale > 1.0
        if do_cfg and negative_prompt_embeds is None:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * batch if isinstance(negatives, str) else list(negatives)
            negative_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(negatives)
        if do_cfg and negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds needs negative_pooled_prompt_embeds too")

        prompt_embeds, pooled_prompt_embeds = prompt_embeds.to(device, dtype), pooled_prompt_embeds.to(device, dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        if do_cfg:
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype)
            negative_pooled_prompt_embeds = negative_pooled_prompt_embeds.to(device, dtype)
            negative_text_ids = torch.zeros(negative_prompt_embeds.shape[1], 3, device=device, dtype=dtype)

        if latents is None:
            indices = list(range(batch)) if indices is None else list(indices)
            if len(indices) != batch:
                raise ValueError(f"indices has {len(indices)} entries for a batch of {batch} prompts")
            channels = self.transformer.config.in_channels // (PATCH * PATCH)
            shape = (height, width) if channels == 1 else (height, width, channels)
            latents = pack(sample_noise(shape, indices, base_seed)).to(device, dtype)
        latent_ids = image_ids(device, dtype, height, width)

        self.scheduler.set_timesteps(sigmas=flow_sigmas(num_inference_steps), device=device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                timestep = t.expand(batch).to(dtype)

                def predict(context: str, embeds, pooled, txt_ids):
                    # One transformer call, keyword for keyword as FluxPipeline makes it.
                    with self.transformer.cache_context(context):
                        return self.transformer(
                            hidden_states=latents,
                            timestep=timestep / 1000,
                            guidance=None,
                            pooled_projections=pooled,
                            encoder_hidden_states=embeds,
                            txt_ids=txt_ids,
                            img_ids=latent_ids,
                            return_dict=False,
                        )[0]

                noise_pred = predict("cond", prompt_embeds, pooled_prompt_embeds, text_ids)
                if do_cfg:
                    neg_noise_pred = predict(
                        "uncond", negative_prompt_embeds, negative_pooled_prompt_embeds, negative_text_ids
                    )
                    noise_pred = neg_noise_pred + guidance_scale * (noise_pred - neg_noise_pred)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = out.pop("latents", latents)
                progress_bar.update()

        images = unpack(latents, height, width)
        if output_type != "latent":
            images = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
            if output_type == "np":
                images = images.cpu().numpy()
        self.maybe_free_model_hooks()
        return ToyPipelineOutput(images=images) if return_dict else (images,)
