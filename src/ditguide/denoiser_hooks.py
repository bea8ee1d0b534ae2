"""The block hooks GuidedDenoiser installs for one forward (through the edit engine's exact register /
remove): counting block executions, running a block on representative rows only, and recording a donor
branch's block output and replaying it in a later forward (see ditguide.denoiser, "Prefix sharing")."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from diffusers.hooks import ModelHook

from .edits.hooks import register, remove
from .families.base import active_rows, batch_rows, bind_block_arguments, block_forward_signature, gather_rows

_HOOK_NAMES = (f"ditguide.guidance.{i}" for i in itertools.count())


def _rows_of_call(args: tuple, kwargs: dict) -> int:
    # Every family's block forward takes `hidden_states` (batch first) as its first argument.
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return hidden.shape[0]


class CountHook(ModelHook):
    """Innermost hook: counts the rows each real execution of the block body computes."""

    def __init__(self, counter: list[int]):
        super().__init__()
        self.counter = counter

    def new_forward(self, module, *args, **kwargs):
        self.counter[0] += _rows_of_call(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


def _identity_output(info, arguments: dict) -> Any:
    """What a block returns when it is the identity: its stream inputs, in its output layout."""
    layout, names = info.output, info.input_names
    if layout.kind == "tuple":
        return tuple(arguments[names[s]] if s is not None else None for s in layout.streams)
    return arguments[names[layout.streams[0]]]


def _select_rows(output: Any, index: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return tuple(_select_rows(o, index) for o in output)
    if output is None:
        return None
    return output.index_select(0, index.to(output.device))


class ShareRowsHook(ModelHook):
    """Runs a block only on representative rows and copies their output to the rows that share it.

    `rep` maps every absolute row of the model call to its representative row (itself if it does
    not share). Works on absolute row ids (`active_rows`), so it composes with row-masked edits.
    """

    def __init__(self, rep: torch.Tensor, batched: Sequence[str], block: torch.nn.Module):
        super().__init__()
        self.rep = rep
        self.batched = batched
        self.signature = block_forward_signature(block)

    def new_forward(self, module, *args, **kwargs):
        batch = _rows_of_call(args, kwargs)
        ids = active_rows()
        ids = torch.arange(batch) if ids is None else ids
        position = {int(a): p for p, a in enumerate(ids.tolist())}
        source = [position.get(int(r), p) for p, r in enumerate(self.rep[ids].tolist())]
        compute = sorted(set(source))
        if len(compute) == batch:
            return self.fn_ref.original_forward(*args, **kwargs)
        where = {p: i for i, p in enumerate(compute)}
        compute_t = torch.tensor(compute, dtype=torch.long)
        arguments = bind_block_arguments(self.signature, args, kwargs)
        sub = gather_rows(arguments, self.batched, compute_t, batch)
        with batch_rows(ids.index_select(0, compute_t)):
            out = self.fn_ref.original_forward(**sub)
        return _select_rows(out, torch.tensor([where[s] for s in source], dtype=torch.long))


class RecordHook(ModelHook):
    """Stores the block's output rows `rows` (a donor branch) for later replay."""

    def __init__(self, store: dict, key: Any, rows: torch.Tensor):
        super().__init__()
        self.store, self.key, self.rows = store, key, rows

    def new_forward(self, module, *args, **kwargs):
        out = self.fn_ref.original_forward(*args, **kwargs)
        # index_select copies, so later in-place changes of the donor's tensors cannot leak in.
        self.store[self.key] = _select_rows(out, self.rows)
        return out


class ReplayHook(ModelHook):
    """Returns the recorded output (on the last shared block) or the block's inputs (on earlier ones)."""

    def __init__(self, info, block: torch.nn.Module, store: dict | None = None, key: Any = None):
        super().__init__()
        self.info, self.store, self.key = info, store, key
        self.signature = block_forward_signature(block)

    def new_forward(self, module, *args, **kwargs):
        if self.store is not None:
            return self.store[self.key]
        return _identity_output(self.info, bind_block_arguments(self.signature, args, kwargs))


@contextlib.contextmanager
def installed(installs: Sequence[tuple[torch.nn.Module, ModelHook]]) -> Iterator[None]:
    done = []
    try:
        for module, hook in installs:
            name = next(_HOOK_NAMES)
            register(module, hook, name)
            done.append((module, name))
        yield
    finally:
        for module, name in reversed(done):
            remove(module, name)
