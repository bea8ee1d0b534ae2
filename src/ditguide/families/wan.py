"""Wan 2.1 / 2.2 (WanTransformer3DModel).

This adapter describes one WanTransformer3DModel, so block edits work on either transformer of a
Wan 2.2 pipeline. Guidance does not cover Wan 2.2's two-stage pipelines (A14B: `transformer` for the
high-noise steps, `transformer_2` below `boundary_ratio`): `ditguide.pipelines.guided` / `run_guided`
refuse a pipeline with a `transformer_2` with a GuidanceError, since only `pipe.transformer` would
be wrapped and the low-noise steps would run unguided. One-transformer Wan pipelines are supported
(Wan 2.1 is tested; Wan 2.2 TI2V-5B has one transformer but per-token timesteps, and is untested).

Blocks (diffusers 0.42.1): "blocks" = `blocks` (WanTransformerBlock), called positionally; a block
returns `hidden_states` only. The text never becomes a stream: it enters through cross-attention,
so Wan has the single stream "image" (the video tokens).

Inside a block:
- `attn1`: self-attention over video tokens (WanAttention + WanAttnProcessor, via
  `dispatch_attention_fn`). "skip_attn", the identity-attention ops and "temperature" act here; with
  one stream, identity_attn_in_stream and identity_attn_all_tokens are the same identity attention.
- `attn2`: cross-attention to the text (and, for I2V, image-context tokens). Only "skip_cross_attn"
  acts here (queries and keys differ in length, so identity attention is undefined).
- `ffn`: feed-forward.
"""

from __future__ import annotations

import torch

from .base import AttentionSite, BlockInfo, Family, FeedForwardSite, StreamLayout


class WanFamily(Family):
    name = "wan"
    block_lists = (("blocks", "blocks"),)
    streams = ("image",)
    # encoder_hidden_states is the text context of each row; rotary_emb is shared by all rows.
    batched_block_kwargs = ("hidden_states", "encoder_hidden_states", "temb")

    def model_classes(self) -> tuple[type, ...]:
        from diffusers import WanTransformer3DModel

        return (WanTransformer3DModel,)

    def describe_block(
        self, block: torch.nn.Module, *, index: int, list_name: str, local_index: int, attribute: str
    ) -> BlockInfo:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        image = StreamLayout("concat", ("image",))
        return BlockInfo(
            index=index,
            list_name=list_name,
            local_index=local_index,
            attribute=attribute,
            # the text is an input of every block, but not a stream the block updates
            input_names={"image": "hidden_states"},
            output=image,
            attention=(
                AttentionSite("attn1", "self", ("image",), image, (WanAttnProcessor,), dispatch_backend=True),
                AttentionSite("attn2", "cross", ("image",), image, (WanAttnProcessor,), dispatch_backend=True),
            ),
            feedforward=(FeedForwardSite("ffn", image),),
            note="Wan blocks update only the 'image' stream; text enters via cross-attention 'attn2'",
        )
