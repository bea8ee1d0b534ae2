"""Autoguidance with a trained weak twin (Karras et al. 2024): D = D_weak + w (D_main - D_weak).

`TwinGuidedTransformer` stands in for `pipe.transformer`: every call runs the main model and the
twin on the same inputs and returns the guided prediction, so the pipeline's own loop and sampler
are untouched (k-diffusion's "guidance wraps the model"). The twin sees the positive prompt, as in
Karras et al. It is the reference that training-free weakenings (block edits, `ditguide.guidance`)
should approach; the twin is loaded from a pipeline folder that shares the main model's frozen
prompt encoder (`ditguide.testbeds.train`).
"""

from __future__ import annotations

import math

import torch


class TwinGuidedTransformer(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, twin: torch.nn.Module, scale: float):
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        self.model, self.twin, self.scale = model, twin, float(scale)

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def cache_context(self, name: str):
        return self.model.cache_context(name)

    def forward(self, *args, return_dict: bool = True, **kwargs):
        main = self.model(*args, return_dict=False, **kwargs)[0]
        weak = self.twin(*args, return_dict=False, **kwargs)[0]
        out = weak + self.scale * (main - weak)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)

    def blocks_per_call(self) -> float:
        """Cost of one call in forwards of the main model, counted in transformer blocks."""

        def blocks(m):
            return len(m.transformer_blocks) + len(m.single_transformer_blocks)

        return 1.0 + blocks(self.twin) / blocks(self.model)


def twin_pipeline(pipe, twin_transformer: torch.nn.Module, scale: float):
    """A copy of `pipe` (same scheduler and prompt encoder) whose transformer is twin-guided."""
    return type(pipe)(
        transformer=TwinGuidedTransformer(pipe.transformer, twin_transformer, scale),
        scheduler=pipe.scheduler,
        prompt_encoder=pipe.prompt_encoder,
    )
