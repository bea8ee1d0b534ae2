"""The diffusers `ModelHook`s that carry out a BlockPlan, and their exact installation/removal.

One edit layer (one `attach_edits` call) installs, under one hook name:
- a `BlockEditHook` on every edited block: it picks the rows the layer applies to, runs the
  block on them with the plan (skip / repeat / residual scale around the block call; sub-module
  edits switched on for the call), runs the other rows plain, and scatters the rows back;
- an `AttentionEditHook` / `FeedForwardEditHook` on each sub-module the plan changes. They act
  only while their block hook has an active `_Frame` (i.e. only for the edited rows of this
  layer) and pass through otherwise.

Installation goes through diffusers' `HookRegistry`. Removal does not use
`HookRegistry.remove_hook`, which, when the removed hook is not the outermost one, overwrites the
next hook's `forward` and thereby silently drops that hook's `new_forward` (diffusers 0.42.1);
`remove` relinks the chain correctly, then deletes the registry and the instance `forward`
attribute if this module had none before, so the model is left exactly as it was.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..families.base import (
    BlockInfo,
    Family,
    StreamLayout,
    active_rows,
    batch_size_of,
    bind_block_arguments,
    block_forward_signature,
    run_block_on_rows,
)
from .plan import BlockPlan
from .sdpa import AttentionMatrixEdit
from .spec import EditError

# ---------------------------------------------------------------------------------------------
# Registration bookkeeping
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ownership:
    created_registry: bool  # the registry did not exist before our first hook on this module
    had_forward_attribute: bool  # `forward` was already an instance attribute then
    hooks: int = 0  # our hooks now on this module


# module -> what was there before our first hook, kept outside the model so that nothing of ours
# is left on it after the last hook is removed.
_OWNERSHIP: weakref.WeakKeyDictionary[torch.nn.Module, _Ownership] = weakref.WeakKeyDictionary()


def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    ownership = _OWNERSHIP.get(module)
    if ownership is None:
        ownership = _Ownership(
            created_registry=not hasattr(module, "_diffusers_hook"),
            had_forward_attribute="forward" in module.__dict__,
        )
        _OWNERSHIP[module] = ownership
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    ownership.hooks += 1


def remove(module: torch.nn.Module, name: str) -> None:
    registry: HookRegistry = module._diffusers_hook
    index = registry._hook_order.index(name)
    hook = registry.hooks[name]
    fn_ref = registry._fn_refs[index]
    inner = fn_ref.original_forward if fn_ref.original_forward is not None else fn_ref.forward
    if index == len(registry._hook_order) - 1:
        module.forward = inner
    else:
        outer = registry._fn_refs[index + 1]
        # A hook with new_forward calls original_forward; a pre/post-only hook calls forward.
        if outer.original_forward is not None:
            outer.original_forward = inner
        else:
            outer.forward = inner
    registry._module_ref = hook.deinitalize_hook(registry._module_ref)
    del registry.hooks[name]
    registry._hook_order.pop(index)
    registry._fn_refs.pop(index)

    ownership = _OWNERSHIP[module]
    ownership.hooks -= 1
    if ownership.hooks == 0:
        del _OWNERSHIP[module]
        if not registry.hooks:
            if ownership.created_registry:
                del module._diffusers_hook
            if not ownership.had_forward_attribute:
                module.__dict__.pop("forward", None)


# ---------------------------------------------------------------------------------------------
# Helpers on stream layouts
# ---------------------------------------------------------------------------------------------


def _segments(layout: StreamLayout, lengths: dict[str, int]) -> list[tuple[str | None, int]]:
    return [(s, lengths[s]) for s in layout.streams]


def _zero_streams(output: Any, layout: StreamLayout, streams: set[str], lengths: dict[str, int], call: int) -> Any:
    """`output` with the parts belonging to `streams` replaced by zeros."""
    if layout.kind == "tuple":
        return tuple(torch.zeros_like(o) if s in streams else o for s, o in zip(layout.streams, output))
    if layout.kind == "calls":
        stream = layout.streams[call % len(layout.streams)]
        return torch.zeros_like(output) if stream in streams else output
    if set(layout.streams) <= streams:
        return torch.zeros_like(output)
    segments = _segments(layout, lengths)
    if sum(n for _, n in segments) != output.shape[1]:
        raise EditError(f"expected {segments} tokens along dim 1, got output of shape {tuple(output.shape)}")
    pieces = output.split([n for _, n in segments], dim=1)
    return torch.cat([torch.zeros_like(p) if s in streams else p for (s, _), p in zip(segments, pieces)], dim=1)


def _blend(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """x + alpha * (y - x); exact at alpha 0 (x) and 1 (y), in float32 for half-precision inputs."""
    if alpha == 0.0:
        return x
    if alpha == 1.0:
        return y
    if y.dtype in (torch.float16, torch.bfloat16):
        return (x.float() + alpha * (y.float() - x.float())).to(y.dtype)
    return x + alpha * (y - x)


# ---------------------------------------------------------------------------------------------
# The block hook
# ---------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """State of one edited block application, read by the sub-module hooks of the same layer."""

    lengths: dict[str, int]  # tokens per stream in this call
    hits: Counter = field(default_factory=Counter)  # site path -> module calls
    sdpa_calls: Counter = field(default_factory=Counter)  # site path -> SDPA calls rewritten


class BlockEditHook(ModelHook):
    """Runs one block with a BlockPlan on the layer's rows and plainly on the others."""

    def __init__(self, plan: BlockPlan, rows: torch.Tensor | None, family: Family, block: torch.nn.Module):
        super().__init__()
        self.plan = plan
        self.info: BlockInfo = plan.info
        self.rows = rows
        self.batched = family.batched_block_kwargs
        self.signature = block_forward_signature(block)
        self.frames: list[_Frame] = []
        self.sites_with_sdpa_edits: list[str] = []  # filled by attach: paths that must see SDPA calls
        self.sites_with_edits: list[str] = []

    @property
    def frame(self) -> _Frame | None:
        return self.frames[-1] if self.frames else None

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        rows = self.rows
        if rows is not None and rows.numel() == 0:
            return self.fn_ref.original_forward(*args, **kwargs)
        arguments = bind_block_arguments(self.signature, args, kwargs)
        if rows is None:
            return self._edited(arguments)
        batch = batch_size_of(arguments, self.batched)
        ids = active_rows()
        if ids is None:
            if int(rows.max()) >= batch:
                raise EditError(
                    f"edit rows {rows.tolist()} reach beyond the batch of {batch} rows at block {self.info.address}"
                )
            ids = torch.arange(batch)
        selected = torch.isin(ids, rows)
        n_selected = int(selected.sum())
        if n_selected == 0:
            return self.fn_ref.original_forward(**arguments)
        if n_selected == batch:
            return self._edited(arguments)
        groups = [(selected.nonzero().flatten(), self._edited), ((~selected).nonzero().flatten(), self._plain)]
        return run_block_on_rows(arguments, self.batched, groups, row_ids=ids)

    def _plain(self, arguments: dict[str, Any]):
        return self.fn_ref.original_forward(**arguments)

    def _identity(self, arguments: dict[str, Any]):
        layout, names = self.info.output, self.info.input_names
        if layout.kind == "tuple":
            return tuple(arguments[names[s]] if s is not None else None for s in layout.streams)
        return arguments[names[layout.streams[0]]]

    def _edited(self, arguments: dict[str, Any]):
        plan = self.plan
        if plan.skips_block:
            return self._identity(arguments)
        current = arguments
        output = self._apply_once(current)
        for _ in range(plan.times - 1):
            current = self._fed_back(current, output)
            output = self._apply_once(current)
        if not plan.scales_residual:
            return output
        return self._scaled(arguments, output)

    def _apply_once(self, arguments: dict[str, Any]):
        if not self.plan.edits_inside:
            return self.fn_ref.original_forward(**arguments)
        lengths = {s: arguments[name].shape[1] for s, name in self.info.input_names.items()}
        frame = _Frame(lengths)
        self.frames.append(frame)
        try:
            output = self.fn_ref.original_forward(**arguments)
        finally:
            self.frames.pop()
        self._check_reached(frame)
        return output

    def _check_reached(self, frame: _Frame) -> None:
        # An edit that silently does nothing is the failure this engine exists to prevent.
        for path in self.sites_with_edits:
            if frame.hits[path] == 0:
                raise EditError(
                    f"block {self.info.address}: '{path}' was never called during the block's forward, so its edit "
                    "had no effect (the block's code path differs from what the family adapter describes)"
                )
        for path in self.sites_with_sdpa_edits:
            if frame.sdpa_calls[path] < frame.hits[path]:
                raise EditError(
                    f"block {self.info.address}: attention '{path}' did not call torch's scaled_dot_product_attention "
                    "(non-native attention backend or custom processor), so identity attention/temperature could not act"
                )

    def _fed_back(self, arguments: dict[str, Any], output) -> dict[str, Any]:
        fed = dict(arguments)
        layout, names = self.info.output, self.info.input_names
        outputs = output if layout.kind == "tuple" else (output,)
        for stream, value in zip(layout.streams, outputs):
            if stream is not None:
                fed[names[stream]] = value
        return fed

    def _scaled(self, arguments: dict[str, Any], output):
        layout, names, alphas = self.info.output, self.info.input_names, self.plan.alphas
        if layout.kind != "tuple":
            stream = layout.streams[0]
            return _blend(arguments[names[stream]], output, alphas.get(stream, 1.0))
        return tuple(
            _blend(arguments[names[s]], o, alphas.get(s, 1.0)) if s is not None else o
            for s, o in zip(layout.streams, output)
        )

    def __repr__(self) -> str:
        rows = "all" if self.rows is None else self.rows.tolist()
        return f"BlockEditHook(block={self.info.address}, rows={rows})"


# ---------------------------------------------------------------------------------------------
# Sub-module hooks
# ---------------------------------------------------------------------------------------------


class AttentionEditHook(ModelHook):
    """Zeroes streams of an attention output and/or rewrites its attention matrix, while its block edits."""

    def __init__(self, owner: BlockEditHook, path: str, layout: StreamLayout, query_streams, edits: dict):
        super().__init__()
        self.owner = owner
        self.path = path
        self.layout = layout
        self.query_streams = query_streams
        self.skip: set[str] = edits.get("skip", set())
        self.identity: set[str] = edits.get("identity", set())
        self.identity_in_stream: set[str] = edits.get("identity_in_stream", set())
        self.temperature: dict[str, float] = edits.get("temperature", {})

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        frame = self.owner.frame
        if frame is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        call = frame.hits[self.path]
        frame.hits[self.path] += 1
        if self.identity or self.identity_in_stream or self.temperature:
            segments = [(s, frame.lengths[s]) for s in self.query_streams]
            mode = AttentionMatrixEdit(segments, self.identity, self.temperature, self.identity_in_stream)
            with mode:
                output = self.fn_ref.original_forward(*args, **kwargs)
            frame.sdpa_calls[self.path] += mode.calls
        else:
            output = self.fn_ref.original_forward(*args, **kwargs)
        if self.skip:
            output = _zero_streams(output, self.layout, self.skip, frame.lengths, call)
        return output


class FeedForwardEditHook(ModelHook):
    """Zeroes the feed-forward output of some streams while its block edits."""

    def __init__(self, owner: BlockEditHook, path: str, layout: StreamLayout, streams: set[str]):
        super().__init__()
        self.owner = owner
        self.path = path
        self.layout = layout
        self.streams = streams

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        frame = self.owner.frame
        output = self.fn_ref.original_forward(*args, **kwargs)
        if frame is None:
            return output
        call = frame.hits[self.path]
        frame.hits[self.path] += 1
        return _zero_streams(output, self.layout, self.streams, frame.lengths, call)
