"""ToyVideoPipeline: text-to-video sampling with a small Wan transformer, in pixel space.

It is a `WanPipeline` (a subclass), so everything that dispatches on the pipeline class treats it
as Wan: the guidance engine's Wan driver (`ditguide.pipelines.DRIVERS["WanPipeline"]`) runs on it
unchanged, with `guidance_scale` as the CFG switch, `negative_prompt_embeds ->
encoder_hidden_states`, `num_videos_per_prompt`, the `do_classifier_free_guidance` property, and
WanPipeline's own `encode_prompt`. Its loop makes the transformer calls WanPipeline makes, keyword
for keyword (`hidden_states` (B, C, F, H, W), `timestep` = the scheduler's t in [0, 1000],
`encoder_hidden_states`, `attention_kwargs`, `cache_context("cond" / "uncond", step_index=...,
sigma=..., num_inference_steps=...)`), then CFG as `uncond + s (cond - uncond)`.

Differences from WanPipeline, because there is no VAE and no T5:
- pixels are the latents (3 channels, values in [-1, 1]); decoding is `(x + 1) / 2`, clipped;
- the text encoder is the testbeds' frozen `ToyPromptEncoder` (`text_encoder`, no tokenizer); as
  with T5 in WanPipeline, the embeddings past the caption's last word are zeros, so "" encodes to
  all zeros;
- the noise of sample i is drawn from `sample_generators([i], base_seed)` (WanPipeline's `generator`
  list, which it also accepts), so a clip never depends on its batch;
- `num_frames` is the number of frames (WanPipeline rounds to 4k + 1 for its VAE; there is none);
  it, `height` and `width` default to the clip size the pipeline was built for (its config).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from ..seeding import sample_generators
from .prompt_encoder import PAD, ToyPromptEncoder


def encode_text(encoder: ToyPromptEncoder, prompts: list[str]) -> torch.Tensor:
    """Per-token embeddings (B, L, D) with the positions past each caption zeroed (WanPipeline's T5
    convention): the empty prompt is all zeros. Training and sampling both encode through this."""
    tokens, _ = encoder(list(prompts))
    keep = (encoder.tokenize(list(prompts)) != PAD).to(tokens.device)
    return tokens * keep.unsqueeze(-1).to(tokens.dtype)


class ToyVideoPipeline(WanPipeline):
    model_cpu_offload_seq = "text_encoder->transformer"
    _optional_components = ["text_encoder"]

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: ToyPromptEncoder | None = None,
        num_frames: int = 6,
        height: int = 16,
        width: int = 16,
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
    ):
        # WanPipeline.__init__ wants a tokenizer and a VAE; this pipeline has neither.
        DiffusionPipeline.__init__(self)
        if boundary_ratio is not None or expand_timesteps:
            raise ValueError(
                "ToyVideoPipeline is one-transformer Wan 2.1: boundary_ratio must be None and expand_timesteps False"
            )
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder)
        # The clip size the transformer was trained at, so that a loaded pipeline samples it by default.
        self.register_to_config(
            num_frames=int(num_frames),
            height=int(height),
            width=int(width),
            boundary_ratio=None,
            expand_timesteps=False,
        )
        self.tokenizer = None
        self.vae = None
        self.transformer_2 = None
        self.vae_scale_factor_temporal = 1
        self.vae_scale_factor_spatial = 1

    def _get_t5_prompt_embeds(
        self, prompt=None, num_videos_per_prompt: int = 1, max_sequence_length: int = 226, device=None, dtype=None
    ):
        """WanPipeline's text path, with the toy encoder (max_sequence_length is the encoder's own)."""
        if self.text_encoder is None:
            raise ValueError(
                "this pipeline has no text_encoder: pass prompt_embeds (and negative_prompt_embeds) instead of prompt"
            )
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds = encode_text(self.text_encoder, prompt)
        embeds = embeds.to(device=device or self._execution_device, dtype=dtype or self.text_encoder.dtype)
        return embeds.repeat_interleave(int(num_videos_per_prompt), dim=0)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 16,
        guidance_scale: float = 1.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 226,
        indices: list[int] | None = None,
        base_seed: int = 0,
    ):
        num_frames = self.config.num_frames if num_frames is None else num_frames
        height = self.config.height if height is None else height
        width = self.config.width if width is None else width
        if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        _, ph, pw = self.transformer.config.patch_size
        pt = self.transformer.config.patch_size[0]
        for name, size, mult in (("height", height, ph), ("width", width, pw), ("num_frames", num_frames, pt)):
            if not (isinstance(size, int) and size >= mult and size % mult == 0):
                raise ValueError(
                    f"{name} must be a positive multiple of {mult} (the transformer's patch), got {size!r}"
                )
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if not (isinstance(num_videos_per_prompt, int) and num_videos_per_prompt >= 1):
            raise ValueError(f"num_videos_per_prompt must be an integer >= 1, got {num_videos_per_prompt!r}")

        self._guidance_scale = guidance_scale
        self._guidance_scale_2 = None
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)
        batch = prompt_embeds.shape[0]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if latents is None:
            channels = self.transformer.config.in_channels
            if generator is None:
                indices = list(range(batch)) if indices is None else list(indices)
                if len(indices) != batch:
                    raise ValueError(f"indices has {len(indices)} entries for a batch of {batch} videos")
                generator = sample_generators(indices, base_seed)
            elif not isinstance(generator, list):
                generator = [generator] * batch if batch == 1 else None
                if generator is None:
                    raise ValueError("pass one generator per video (a list), or indices")
            if len(generator) != batch:
                raise ValueError(f"{len(generator)} generators for a batch of {batch} videos")
            shape = (channels, num_frames, height, width)
            latents = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generator])
        latents = latents.to(device, torch.float32)

        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                self._current_timestep = t
                latent_model_input = latents.to(dtype)
                timestep = t.expand(latents.shape[0])
                cache_context_kwargs = {
                    "step_index": i,
                    "sigma": float(self.scheduler.sigmas[i]),
                    "num_inference_steps": self._num_timesteps,
                }
                with self.transformer.cache_context("cond", **cache_context_kwargs):
                    noise_pred = self.transformer(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=prompt_embeds,
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                if self.do_classifier_free_guidance:
                    with self.transformer.cache_context("uncond", **cache_context_kwargs):
                        noise_uncond = self.transformer(
                            hidden_states=latent_model_input,
                            timestep=timestep,
                            encoder_hidden_states=negative_prompt_embeds,
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = out.pop("latents", latents)
                progress_bar.update()
        self._current_timestep = None

        if output_type == "latent":
            video = latents
        else:
            video = ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1)  # (B, F, H, W, C)
            if output_type == "np":
                video = video.cpu().numpy()
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video) if return_dict else (video,)
