"""Stable Diffusion 3 / 3.5 (SD3Transformer2DModel).

Blocks (diffusers 0.42.1): "blocks" = `transformer_blocks` (JointTransformerBlock), which return
``(encoder_hidden_states, hidden_states)`` = (text, image).

The LAST block is `context_pre_only`: it reads the text but returns ``(None, hidden_states)``; the
model never uses text after it. Its only stream is therefore "image": an edit that names its "text"
stream would have no effect on the output and is rejected by validation. Skipping it returns
``(None, hidden_states)`` like the block itself.

Inside a block:
- `attn` (Attention + JointAttnProcessor2_0): joint attention; queries are concatenated
  [image, text] (image FIRST, unlike Flux/CogView4) and passed to ``F.scaled_dot_product_attention``
  directly; it returns (image, text).
- `attn2` (SD3.5 "dual attention" blocks only): image self-attention, same processor class.
- `ff` (image) and `ff_context` (text; absent in the last block).
"""

from __future__ import annotations

import torch

from .base import AttentionSite, BlockInfo, Family, FeedForwardSite, StreamLayout


class SD3Family(Family):
    name = "sd3"
    block_lists = (("blocks", "transformer_blocks"),)
    streams = ("image", "text")
    batched_block_kwargs = ("hidden_states", "encoder_hidden_states", "temb")

    def model_classes(self) -> tuple[type, ...]:
        from diffusers import SD3Transformer2DModel

        return (SD3Transformer2DModel,)

    def describe_block(
        self, block: torch.nn.Module, *, index: int, list_name: str, local_index: int, attribute: str
    ) -> BlockInfo:
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        last = bool(block.context_pre_only)
        text = None if last else "text"
        attention = [
            AttentionSite(
                path="attn",
                role="joint",
                query_streams=("image", "text"),
                output=StreamLayout("tuple", ("image", text)),
                processors=(JointAttnProcessor2_0,),
                dispatch_backend=False,
            )
        ]
        if block.attn2 is not None:
            attention.append(
                AttentionSite(
                    path="attn2",
                    role="self",
                    query_streams=("image",),
                    output=StreamLayout("concat", ("image",)),
                    processors=(JointAttnProcessor2_0,),
                    dispatch_backend=False,
                )
            )
        feedforward = [FeedForwardSite("ff", StreamLayout("concat", ("image",)))]
        if not last:
            feedforward.append(FeedForwardSite("ff_context", StreamLayout("concat", ("text",))))
        return BlockInfo(
            index=index,
            list_name=list_name,
            local_index=local_index,
            attribute=attribute,
            input_names={"image": "hidden_states", "text": "encoder_hidden_states"},
            output=StreamLayout("tuple", (text, "image")),
            attention=tuple(attention),
            feedforward=tuple(feedforward),
            note=(
                "this is SD3's last block (context_pre_only): it returns no text stream, so only 'image' can be edited"
                if last
                else ""
            ),
        )
