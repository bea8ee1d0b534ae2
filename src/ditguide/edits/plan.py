"""Compile an EditSpec against a model: one validated BlockPlan per edited block.

All model-dependent validation happens here, before any hook is installed or any forward runs.

Several edits on the same block (in one spec) combine into one plan:
- residual scales multiply per stream ("skip" on a stream is scale 0 there);
- repeat counts multiply;
- zeroed attention / feed-forward streams and identity-attention streams are united;
- temperatures multiply per stream.
Inside one plan the order is fixed: sub-module edits act inside each block application, the block
is applied `times` times, and the residual scale acts on the total update of the repeated block.
Separate `apply_edits` contexts compose by nesting: the later (outer) context wraps the earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..families import get_family
from ..families.base import AttentionSite, BlockInfo, Family, FamilyError, FeedForwardSite
from .spec import BlockEdit, EditError, EditSpec

# Backends of `dispatch_attention_fn` that end in torch's F.scaled_dot_product_attention, which is
# where the identity-attention ops and temperature intercept the attention (see ditguide.edits.sdpa).
SDPA_BACKENDS = ("native", "_native_math", "_native_efficient", "_native_flash", "_native_cudnn")

# Ops that rewrite the attention matrix at the SDPA call; they act on the named streams' queries.
_SDPA_OPS = ("identity_attn_in_stream", "identity_attn_all_tokens", "temperature")


@dataclass
class BlockPlan:
    """The combined edit of one block."""

    info: BlockInfo
    alphas: dict[str, float] = field(default_factory=dict)  # stream -> residual scale (absent: 1)
    times: int = 1
    skip_attn: set[str] = field(default_factory=set)
    skip_cross_attn: set[str] = field(default_factory=set)
    skip_ff: set[str] = field(default_factory=set)
    identity_attn_in_stream: set[str] = field(default_factory=set)
    identity_attn_all_tokens: set[str] = field(default_factory=set)
    temperature: dict[str, float] = field(default_factory=dict)  # stream -> tau

    @property
    def skips_block(self) -> bool:
        """Every stream of the block has scale 0: the block need not run at all."""
        return all(self.alphas.get(s, 1.0) == 0.0 for s in self.info.streams)

    @property
    def scales_residual(self) -> bool:
        return any(a != 1.0 for a in self.alphas.values())

    @property
    def edits_inside(self) -> bool:
        return bool(
            self.skip_attn
            or self.skip_cross_attn
            or self.skip_ff
            or self.identity_attn_in_stream
            or self.identity_attn_all_tokens
            or self.temperature
        )

    def attention_edits(self, site: AttentionSite) -> dict:
        """What this plan does at one attention site (empty dict: nothing)."""
        out_streams = {s for s in site.output.streams if s is not None}
        if site.role == "cross":
            skip = self.skip_cross_attn & out_streams
            return {"skip": skip} if skip else {}
        edits = {
            "skip": self.skip_attn & out_streams,
            "identity": self.identity_attn_all_tokens & set(site.query_streams),
            "identity_in_stream": self.identity_attn_in_stream & set(site.query_streams),
            "temperature": {s: t for s, t in self.temperature.items() if s in site.query_streams},
        }
        return {k: v for k, v in edits.items() if v}

    def feedforward_edits(self, site: FeedForwardSite) -> set[str]:
        return self.skip_ff & set(site.output.streams)


def _effective_backend(processor) -> str:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    backend = getattr(processor, "_attention_backend", None)
    if backend is None:
        backend = _AttentionBackendRegistry._active_backend
    return AttentionBackendName(backend).value


def _check_processor(edit: BlockEdit, block: torch.nn.Module, info: BlockInfo, site: AttentionSite) -> None:
    module = block.get_submodule(site.path)
    processor = getattr(module, "processor", None)
    if type(processor) not in site.processors:
        covered = [p.__name__ for p in site.processors]
        raise EditError(
            f"{edit.op} on block {info.address}: attention '{site.path}' uses processor "
            f"{type(processor).__name__}, which this adapter does not cover (covered: {covered}); "
            "restore the default processor or extend the family adapter"
        )
    if edit.op in _SDPA_OPS and site.dispatch_backend:
        backend = _effective_backend(processor)
        if backend not in SDPA_BACKENDS:
            raise EditError(
                f"{edit.op} on block {info.address}: attention backend {backend!r} of '{site.path}' does not call "
                f"torch's scaled_dot_product_attention, where this op acts; supported backends: {list(SDPA_BACKENDS)}"
            )


def _sites_for(edit: BlockEdit, info: BlockInfo, stream: str) -> list:
    """Sub-module sites of `info` that `edit` would change for `stream`."""
    if edit.op == "skip_ff":
        return [s for s in info.feedforward if stream in s.output.streams]
    if edit.op == "skip_cross_attn":
        return [s for s in info.attention if s.role == "cross" and stream in s.output.streams]
    if edit.op == "skip_attn":
        return [s for s in info.attention if s.role != "cross" and stream in s.output.streams]
    if edit.op in _SDPA_OPS:
        return [s for s in info.attention if s.role != "cross" and stream in s.query_streams]
    return []


def _streams_of(edit: BlockEdit, family: Family, info: BlockInfo) -> tuple[str, ...]:
    if edit.streams is None:
        return info.streams
    for s in edit.streams:
        if s not in family.streams:
            raise EditError(
                f"{edit.op} on block {info.address}: parameter 'streams' names {s!r}, but family "
                f"'{family.name}' has streams {family.streams}" + (f" ({info.note})" if info.note else "")
            )
        if s not in info.streams:
            raise EditError(
                f"{edit.op} on block {info.address}: parameter 'streams' names {s!r}, but this block returns "
                f"only {info.streams}" + (f" ({info.note})" if info.note else "")
            )
    if info.discarded and set(edit.streams) <= set(info.discarded):
        raise EditError(
            f"{edit.op} on block {info.address}: parameter 'streams' is {edit.streams}, but the model discards "
            f"the {'/'.join(info.discarded)} output of its last block, so this edit could not change the output"
        )
    return edit.streams


def _add_to_plan(plan: BlockPlan, edit: BlockEdit, streams: tuple[str, ...], block: torch.nn.Module) -> None:
    info = plan.info
    if edit.op == "repeat":
        if set(streams) != set(info.streams):
            raise EditError(
                f"repeat on block {info.address}: parameter 'streams' is {edit.streams}; repeat feeds every "
                f"stream back into the block, so it must cover all of {info.streams} (or be None)"
            )
        plan.times *= edit.times
        return
    if edit.op in ("skip", "scale"):
        alpha = 0.0 if edit.op == "skip" else edit.alpha
        for s in streams:
            plan.alphas[s] = plan.alphas.get(s, 1.0) * alpha
        return
    for s in streams:
        sites = _sites_for(edit, info, s)
        if not sites:
            what = {"skip_ff": "feed-forward", "skip_cross_attn": "cross-attention"}.get(
                edit.op, "self/joint attention"
            )
            available = sorted({t for site in _all_sites(edit, info) for t in _site_streams(edit, site)})
            raise EditError(
                f"{edit.op} on block {info.address}: no {what} acts on stream {s!r} in this block "
                f"(streams with one: {available or 'none'}; ops this family allows: see ditguide.edits.OPS)"
            )
        for site in sites:
            if isinstance(site, AttentionSite):
                _check_processor(edit, block, info, site)
        if edit.op == "skip_ff":
            plan.skip_ff.add(s)
        elif edit.op == "skip_cross_attn":
            plan.skip_cross_attn.add(s)
        elif edit.op == "skip_attn":
            plan.skip_attn.add(s)
        elif edit.op == "identity_attn_in_stream":
            plan.identity_attn_in_stream.add(s)
        elif edit.op == "identity_attn_all_tokens":
            plan.identity_attn_all_tokens.add(s)
        elif edit.op == "temperature":
            plan.temperature[s] = plan.temperature.get(s, 1.0) * edit.tau
        else:  # pragma: no cover - OPS and this function are kept in sync
            raise AssertionError(edit.op)


def _all_sites(edit: BlockEdit, info: BlockInfo) -> list:
    if edit.op == "skip_ff":
        return list(info.feedforward)
    if edit.op == "skip_cross_attn":
        return [s for s in info.attention if s.role == "cross"]
    return [s for s in info.attention if s.role != "cross"]


def _site_streams(edit: BlockEdit, site) -> list[str]:
    if edit.op in _SDPA_OPS:
        return [s for s in site.query_streams if s in _returned(site)]
    return [s for s in site.output.streams if s is not None]


def _returned(site) -> set[str]:
    return {s for s in site.output.streams if s is not None}


def validate_edits(spec: EditSpec, model: torch.nn.Module) -> None:
    """Raise EditError if any edit of `spec` cannot be applied to `model` exactly as written."""
    compile_plans(spec, model)


def compile_plans(spec: EditSpec, model: torch.nn.Module) -> tuple[Family, dict[int, BlockPlan]]:
    """Validate `spec` against `model`; return its family and {global block index: BlockPlan}."""
    spec = EditSpec.parse(spec)
    try:
        family = get_family(model)
    except FamilyError as err:
        raise EditError(f"cannot edit this model: {err}") from None
    blocks = family.blocks(model)
    plans: dict[int, BlockPlan] = {}
    for edit in spec:
        seen: set[int] = set()
        for ref in edit.blocks:
            try:
                index = family.resolve(model, ref)
            except FamilyError as err:
                raise EditError(f"{edit.op}: parameter 'blocks': {err}") from None
            if index in seen:
                raise EditError(
                    f"{edit.op}: parameter 'blocks' names block {family.address(model, index)} twice ({list(edit.blocks)})"
                )
            seen.add(index)
            if index not in plans:
                plans[index] = BlockPlan(family.block_info(model, index))
            plan = plans[index]
            _add_to_plan(plan, edit, _streams_of(edit, family, plan.info), blocks[index])
    return family, plans
