"""FLUX.1 (FluxTransformer2DModel); also the repo's toy model, which is a small Flux.

Blocks (diffusers 0.42.1):
- "double" = `transformer_blocks` (FluxTransformerBlock): separate image/text weights, one joint
  attention. Returns ``(encoder_hidden_states, hidden_states)`` = (text, image) - text FIRST,
  which is what diffusers' own `apply_layer_skip` gets backwards.
- "single" = `single_transformer_blocks` (FluxSingleTransformerBlock): text and image tokens are
  concatenated [text, image] and share weights; attention and MLP run in parallel and are mixed by
  one `proj_out`. Same return order (text, image).

Inside the blocks:
- attention `attn` (FluxAttention + FluxAttnProcessor): queries are concatenated [text, image]
  before `dispatch_attention_fn`. Double blocks return (image, text) from `attn`; single blocks
  (`pre_only`) return one tensor over the concatenated tokens.
- feed-forward: double blocks have `ff` (image) and `ff_context` (text). In single blocks the MLP
  branch is `act_mlp(proj_mlp(x))`; "skip_ff" zeroes that branch (i.e. the `act_mlp` output) before
  the shared `proj_out`, whose bias stays, as it belongs to neither branch alone.

The model decodes only the image tokens: the text returned by the last block is discarded.
"""

from __future__ import annotations

import torch

from .base import AttentionSite, BlockInfo, Family, FeedForwardSite, StreamLayout


class FluxFamily(Family):
    name = "flux"
    aliases = ("toy",)
    block_lists = (("double", "transformer_blocks"), ("single", "single_transformer_blocks"))
    streams = ("image", "text")
    batched_block_kwargs = ("hidden_states", "encoder_hidden_states", "temb")
    discarded_after_last_block = ("text",)

    def model_classes(self) -> tuple[type, ...]:
        from diffusers import FluxTransformer2DModel

        return (FluxTransformer2DModel,)

    def describe_block(
        self, block: torch.nn.Module, *, index: int, list_name: str, local_index: int, attribute: str
    ) -> BlockInfo:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        inputs = {"image": "hidden_states", "text": "encoder_hidden_states"}
        output = StreamLayout("tuple", ("text", "image"))
        if list_name == "double":
            attention = AttentionSite(
                path="attn",
                role="joint",
                query_streams=("text", "image"),
                output=StreamLayout("tuple", ("image", "text")),
                processors=(FluxAttnProcessor,),
                dispatch_backend=True,
            )
            feedforward = (
                FeedForwardSite("ff", StreamLayout("concat", ("image",))),
                FeedForwardSite("ff_context", StreamLayout("concat", ("text",))),
            )
        else:
            attention = AttentionSite(
                path="attn",
                role="joint",
                query_streams=("text", "image"),
                output=StreamLayout("concat", ("text", "image")),
                processors=(FluxAttnProcessor,),
                dispatch_backend=True,
            )
            feedforward = (FeedForwardSite("act_mlp", StreamLayout("concat", ("text", "image"))),)
        return BlockInfo(
            index=index,
            list_name=list_name,
            local_index=local_index,
            attribute=attribute,
            input_names=inputs,
            output=output,
            attention=(attention,),
            feedforward=feedforward,
        )
