"""CogView4 (CogView4Transformer2DModel).

Blocks (diffusers 0.42.1): "blocks" = `transformer_blocks` (CogView4TransformerBlock), called
positionally. Unlike Flux and SD3 a block returns ``(hidden_states, encoder_hidden_states)`` =
(image, text), image FIRST.

Inside a block:
- attention `attn1` (Attention + CogView4AttnProcessor): joint over [text, image] tokens, calls
  ``F.scaled_dot_product_attention`` directly; returns (image, text).
- feed-forward: ONE module `ff` shared by both streams, called first on the image tokens, then on
  the text tokens; per-stream ff edits therefore act by call order.

The model decodes only the image tokens: the text returned by the last block is discarded.
"""

from __future__ import annotations

import torch

from .base import AttentionSite, BlockInfo, Family, FeedForwardSite, StreamLayout


class CogView4Family(Family):
    name = "cogview4"
    block_lists = (("blocks", "transformer_blocks"),)
    streams = ("image", "text")
    # attention_mask is the per-row text padding mask (batch, text_len) when the pipeline passes one.
    batched_block_kwargs = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask")
    discarded_after_last_block = ("text",)

    def model_classes(self) -> tuple[type, ...]:
        from diffusers import CogView4Transformer2DModel

        return (CogView4Transformer2DModel,)

    def describe_block(
        self, block: torch.nn.Module, *, index: int, list_name: str, local_index: int, attribute: str
    ) -> BlockInfo:
        from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor

        return BlockInfo(
            index=index,
            list_name=list_name,
            local_index=local_index,
            attribute=attribute,
            input_names={"image": "hidden_states", "text": "encoder_hidden_states"},
            output=StreamLayout("tuple", ("image", "text")),
            attention=(
                AttentionSite(
                    path="attn1",
                    role="joint",
                    query_streams=("text", "image"),
                    output=StreamLayout("tuple", ("image", "text")),
                    processors=(CogView4AttnProcessor,),
                    dispatch_backend=False,
                ),
            ),
            feedforward=(FeedForwardSite("ff", StreamLayout("calls", ("image", "text"))),),
        )
