"""Declarative, exactly reversible edits of transformer blocks, for every model family.

    from ditguide.edits import BlockEdit, EditSpec, apply_edits, attach_edits, validate_edits, EditError

    spec = EditSpec([BlockEdit(op="skip", blocks=["double:1", 5])])
    validate_edits(spec, model)                # EditError before any forward
    with apply_edits(model, spec, rows=[2, 3]):
        out = model(**batch)                   # rows 2 and 3 edited, the others plain

Coverage (diffusers 0.42.1). Block-level ops (skip, scale, repeat) work on any block of an
adapted family. Ops inside a block act on these sub-modules and default attention processors:

========  ==========================================  ========================  ==================
family    attention (processor)                       feed-forward              SDPA reached via
========  ==========================================  ========================  ==================
flux      double/single `attn` (FluxAttnProcessor)    `ff`, `ff_context`;       dispatch_attention_fn
                                                      single: `act_mlp` branch
cogview4  `attn1` (CogView4AttnProcessor)             `ff` (shared, by call)    F.sdpa directly
wan       `attn1` self, `attn2` cross                 `ffn`                     dispatch_attention_fn
          (WanAttnProcessor)
sd3       `attn` joint, `attn2` (SD3.5 dual blocks)   `ff`, `ff_context`        F.sdpa directly
          (JointAttnProcessor2_0)
========  ==========================================  ========================  ==================

skip_attn / skip_cross_attn / skip_ff zero the sub-module's output for the named streams and work
with any attention backend. identity_attn_in_stream / identity_attn_all_tokens / temperature rewrite
the call to torch's F.scaled_dot_product_attention, so they need, for processors that dispatch, one
of diffusers' native backends (native, _native_math, _native_efficient, _native_flash, _native_cudnn). Any
other processor class (IP-Adapter, PAG, training processors, user subclasses) or backend is
refused by validation with an EditError, and an attention edit that still reaches no SDPA call at
run time raises instead of silently doing nothing. Models carrying stateful diffusers hooks
(caches) are refused as well.

Modules: `spec` (what an edit is), `plan` (validation against a model, one plan per block),
`hooks` (the diffusers ModelHooks that carry a plan out), `sdpa` (attention-matrix edits),
`attach` (installing and removing them).
"""

from .attach import HOOK_PREFIX, EditHandle, apply_edits, attach_edits
from .plan import BlockPlan, compile_plans, validate_edits
from .spec import OPS, BlockEdit, EditError, EditSpec

__all__ = [
    "HOOK_PREFIX",
    "OPS",
    "BlockEdit",
    "BlockPlan",
    "EditError",
    "EditHandle",
    "EditSpec",
    "apply_edits",
    "attach_edits",
    "compile_plans",
    "validate_edits",
]
