"""What every family adapter describes, and the row gather/scatter primitive built on it.

A family adapter is declarative: it names the model's block lists, and for each block says which
argument carries which stream, in which order the block returns its streams, and where inside the
block the attention and feed-forward sub-modules sit and how their outputs map to streams. Code
that edits blocks (``ditguide.edits``) or shares computation between batch rows (the guidance
wrapper) reads these descriptions and never hard-codes a family.

Streams are named "image" (the latent/video tokens) and "text" (the prompt tokens of joint
MMDiT blocks). A block's *streams* are the streams it returns; a block's *residual update* of
stream s is ``output[s] - input[s]``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

STREAM_NAMES = ("image", "text")


class FamilyError(ValueError):
    """A model, family name or block address that no adapter can handle."""


# ---------------------------------------------------------------------------------------------
# Declarative descriptions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamLayout:
    """How one tensor-valued output maps to streams.

    kind:
      "tuple"  - the output is a tuple; element i belongs to ``streams[i]`` (None: no stream, the
                 element is ignored by the model or is None itself).
      "concat" - the output is one tensor whose dim 1 (tokens) concatenates the streams in this
                 order; segment lengths are the token counts of the block's stream inputs.
      "calls"  - the module is called once per stream, in this order, within one block forward
                 (CogView4 runs its one `ff` on image tokens, then on text tokens).
    """

    kind: Literal["tuple", "concat", "calls"]
    streams: tuple[str | None, ...]


@dataclass(frozen=True)
class AttentionSite:
    """An attention sub-module of a block.

    role: "joint" (queries of several streams attend to all tokens), "self" (one stream attends to
    itself) or "cross" (queries attend to another sequence: Wan's text cross-attention).
    query_streams: order of the stream segments along the sequence axis of the query passed to
    ``F.scaled_dot_product_attention`` (joint/self only).
    processors: attention processor classes whose behaviour this description matches.
    dispatch_backend: True when the processor calls ``dispatch_attention_fn`` (then the backend
    matters for edits that intercept SDPA), False when it calls ``F.scaled_dot_product_attention``.
    """

    path: str
    role: Literal["joint", "self", "cross"]
    query_streams: tuple[str, ...]
    output: StreamLayout
    processors: tuple[type, ...]
    dispatch_backend: bool


@dataclass(frozen=True)
class FeedForwardSite:
    """A feed-forward sub-module (or the activation of a fused MLP branch) of a block."""

    path: str
    output: StreamLayout


@dataclass(frozen=True)
class BlockInfo:
    """Everything edits need to know about one block of a model."""

    index: int  # global position in execution order
    list_name: str  # short name of its block list ("double", "single", "blocks", ...)
    local_index: int  # position inside its block list
    attribute: str  # model attribute of its block list
    input_names: dict[str, str]  # stream -> forward argument carrying it
    output: StreamLayout  # how the block's return value maps to streams ("tuple" or "concat"=bare)
    attention: tuple[AttentionSite, ...]
    feedforward: tuple[FeedForwardSite, ...]
    note: str = ""  # family-specific remark shown in error messages
    # Streams this block returns that the model then discards (the text after the last block):
    # an edit confined to them cannot change the model's output.
    discarded: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.list_name}:{self.local_index}"

    @property
    def streams(self) -> tuple[str, ...]:
        """Streams this block returns (its residual updates exist only for these)."""
        return tuple(s for s in self.output.streams if s is not None)

    @property
    def returns_tuple(self) -> bool:
        return self.output.kind == "tuple"


# ---------------------------------------------------------------------------------------------
# The adapter base class
# ---------------------------------------------------------------------------------------------

# "list:index" or "attribute.index"; anchored so that "blocks.1" never matches "blocks.10".
ADDRESS_RE = re.compile(r"^(?P<list>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>[:.])(?P<index>0|[1-9][0-9]*)$")


class Family:
    """Base class of the family adapters. Subclasses set the class attributes and `describe_block`."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    # Ordered [(short_name, model attribute)], in execution order.
    block_lists: tuple[tuple[str, str], ...] = ()
    # Streams the family's blocks can carry.
    streams: tuple[str, ...] = ()
    # Block forward arguments that carry the batch dimension (row slicing gathers exactly these).
    batched_block_kwargs: tuple[str, ...] = ()
    # Streams the model discards after its last block (it decodes only the image tokens).
    discarded_after_last_block: tuple[str, ...] = ()

    # -- model classes ----------------------------------------------------------------------------

    def model_classes(self) -> tuple[type, ...]:
        """The diffusers model classes this adapter handles (imported lazily)."""
        raise NotImplementedError

    def handles(self, model: torch.nn.Module) -> bool:
        return isinstance(model, self.model_classes())

    # -- blocks -----------------------------------------------------------------------------------

    def block_list(self, model: torch.nn.Module, short: str) -> torch.nn.ModuleList:
        attribute = dict(self.block_lists)[short]
        return getattr(model, attribute)

    def locations(self, model: torch.nn.Module) -> list[tuple[str, int]]:
        """(short list name, local index) of every block, in execution order."""
        return [(short, i) for short, attr in self.block_lists for i in range(len(getattr(model, attr)))]

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """Flat list of block modules in execution order; a block's global index is its position."""
        return [block for _, attr in self.block_lists for block in getattr(model, attr)]

    def ranges(self, model: torch.nn.Module) -> str:
        """Human-readable valid addresses, for error messages."""
        parts, start = [], 0
        for short, attr in self.block_lists:
            n = len(getattr(model, attr))
            local = f"{short}:0..{n - 1}" if n else f"{short}: (empty)"
            parts.append(f"{local} (global {start}..{start + n - 1}, attribute '{attr}')")
            start += n
        return "; ".join(parts)

    def resolve(self, model: torch.nn.Module, ref: int | str) -> int:
        """Global index of a block given as a global int, "short:i" or "attribute.i".

        Parsing is strict: the whole string must match, indices have no sign or leading zeros,
        and out-of-range indices raise FamilyError naming the valid ranges.
        """
        total = sum(len(getattr(model, attr)) for _, attr in self.block_lists)
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise FamilyError(
                f"block reference {ref!r} must be a global int or a string 'list:index'; "
                f"valid for this {self.name} model: {self.ranges(model)}"
            )
        if isinstance(ref, int):
            if not 0 <= ref < total:
                raise FamilyError(
                    f"block index {ref} out of range: this {self.name} model has {total} blocks ({self.ranges(model)})"
                )
            return ref
        m = ADDRESS_RE.match(ref.strip())
        if m is None:
            raise FamilyError(
                f"cannot parse block reference {ref!r}: expected 'list:index' or 'attribute.index' "
                f"with list in {[s for s, _ in self.block_lists]}; valid: {self.ranges(model)}"
            )
        name, sep, local = m["list"], m["sep"], int(m["index"])
        start = 0
        for short, attr in self.block_lists:
            n = len(getattr(model, attr))
            if (sep == ":" and name == short) or (sep == "." and name == attr):
                if local >= n:
                    raise FamilyError(
                        f"block reference {ref!r} out of range: '{short}' has {n} blocks (valid: {self.ranges(model)})"
                    )
                return start + local
            start += n
        expected = [s for s, _ in self.block_lists] if sep == ":" else [a for _, a in self.block_lists]
        raise FamilyError(
            f"block reference {ref!r}: unknown block list {name!r} for family '{self.name}'; "
            f"expected one of {expected} (valid: {self.ranges(model)})"
        )

    def address(self, model: torch.nn.Module, index: int) -> str:
        short, local = self.locations(model)[index]
        return f"{short}:{local}"

    def block_info(self, model: torch.nn.Module, index: int) -> BlockInfo:
        locations = self.locations(model)
        short, local = locations[index]
        attribute = dict(self.block_lists)[short]
        block = getattr(model, attribute)[local]
        info = self.describe_block(block, index=index, list_name=short, local_index=local, attribute=attribute)
        if index == len(locations) - 1:
            discarded = tuple(s for s in self.discarded_after_last_block if s in info.streams)
            if discarded:
                info = dataclasses.replace(info, discarded=discarded)
        return info

    def describe_block(
        self, block: torch.nn.Module, *, index: int, list_name: str, local_index: int, attribute: str
    ) -> BlockInfo:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}' lists={list(self.block_lists)} streams={self.streams}>"


# ---------------------------------------------------------------------------------------------
# Block call arguments
# ---------------------------------------------------------------------------------------------


def block_forward_signature(block: torch.nn.Module) -> inspect.Signature:
    """Signature of the block class's own forward (hook chains replace `block.forward`)."""
    return inspect.signature(type(block).forward)


def bind_block_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Block call arguments as {name: value}, defaults filled, so that any of them can be replaced.

    The models call some blocks positionally (CogView4, Wan) and others by keyword; binding makes
    both look the same. Calling the block with the returned dict by keyword is equivalent.
    """
    bound = signature.bind(None, *args, **kwargs)  # None stands for `self`
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
        elif param.kind is inspect.Parameter.VAR_POSITIONAL and arguments.get(name):
            raise FamilyError(f"block forward got unexpected extra positional arguments {arguments[name]!r}")
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            arguments.pop(name, None)
    return arguments


# ---------------------------------------------------------------------------------------------
# Rows: which rows of the caller's batch a block call is computing
# ---------------------------------------------------------------------------------------------

# Absolute batch-row ids of the tensors a block currently sees, or None for "the whole batch in
# order". Row-masked edits compare their rows against this, so that nested row splits (an edit
# inside an edit, or the guidance wrapper running a block on a subset) still address rows of the
# model call, not positions inside a sub-batch.
_ACTIVE_ROWS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("ditguide_active_rows", default=None)


def active_rows() -> torch.Tensor | None:
    """Absolute row ids of the batch now flowing through blocks (None: rows 0..B-1 in order)."""
    return _ACTIVE_ROWS.get()


@contextlib.contextmanager
def batch_rows(ids: torch.Tensor | Sequence[int] | None) -> Iterator[None]:
    """Declare that block calls inside the context see the rows `ids` of the model call's batch."""
    if ids is not None and not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(list(ids), dtype=torch.long)
    token = _ACTIVE_ROWS.set(ids.to("cpu", torch.long) if ids is not None else None)
    try:
        yield
    finally:
        _ACTIVE_ROWS.reset(token)


def batch_size_of(arguments: dict[str, Any], batched_names: Sequence[str]) -> int:
    for name in batched_names:
        value = arguments.get(name)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise FamilyError(f"no batched tensor among block arguments {list(batched_names)}")


def gather_rows(
    arguments: dict[str, Any], batched_names: Sequence[str], positions: torch.Tensor, batch_size: int
) -> dict[str, Any]:
    """Block arguments restricted to batch positions `positions` (other arguments shared as-is).

    A batched argument with a leading dim of 1 broadcasts over the batch and is shared unchanged.
    """
    out = dict(arguments)
    for name in batched_names:
        value = arguments.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise FamilyError(f"block argument '{name}' is batched but is a {type(value).__name__}, not a tensor")
        if value.shape[0] == batch_size:
            out[name] = value.index_select(0, positions.to(value.device))
        elif value.shape[0] != 1:
            raise FamilyError(
                f"block argument '{name}' has leading dim {value.shape[0]}, expected the batch size {batch_size} or 1"
            )
    return out


def scatter_rows(parts: Sequence[tuple[torch.Tensor, Any]], batch_size: int) -> Any:
    """Reassemble block outputs computed on row subsets: parts = [(positions, output), ...].

    Outputs are tensors or tuples of tensors/None with the same structure in every part.
    """
    first = parts[0][1]
    if isinstance(first, tuple):
        return tuple(scatter_rows([(pos, out[i]) for pos, out in parts], batch_size) for i in range(len(first)))
    if first is None:
        if any(out is not None for _, out in parts):
            raise FamilyError("row groups returned inconsistent outputs (None in one group, a tensor in another)")
        return None
    result = first.new_empty((batch_size, *first.shape[1:]))
    for pos, out in parts:
        result.index_copy_(0, pos.to(result.device), out)
    return result


def run_block_on_rows(
    arguments: dict[str, Any],
    batched_names: Sequence[str],
    groups: Sequence[tuple[torch.Tensor | Sequence[int], Callable[[dict[str, Any]], Any]]],
    row_ids: torch.Tensor | None = None,
) -> Any:
    """Run a block separately on row groups and scatter the results back into one batch.

    arguments: the block's bound call arguments (see `bind_block_arguments`) for the full batch.
    groups: [(positions, run)], positions into the current batch, disjoint and covering it;
            `run(arguments_of_those_rows)` computes the block for them (plain, edited, cached...).
    row_ids: absolute row ids of the current batch (default: `active_rows()`, else 0..B-1). Each
            group runs inside `batch_rows(row_ids[positions])`, so row-masked edits nested inside
            keep addressing rows of the model call.

    Because each group is computed as its own batch, "run on rows R" here equals running the
    block on a batch made of only rows R.
    """
    batch = batch_size_of(arguments, batched_names)
    if row_ids is None:
        row_ids = active_rows()
    if row_ids is None:
        row_ids = torch.arange(batch)
    groups = [(torch.as_tensor(pos, dtype=torch.long).reshape(-1), run) for pos, run in groups]
    groups = [(pos, run) for pos, run in groups if pos.numel() > 0]
    covered = torch.cat([pos for pos, _ in groups]) if groups else torch.empty(0, dtype=torch.long)
    if covered.numel() != batch or not torch.equal(covered.sort().values, torch.arange(batch)):
        raise FamilyError(f"row groups must partition the batch of {batch} rows; got positions {covered.tolist()}")
    parts = []
    for positions, run in groups:
        with batch_rows(row_ids.index_select(0, positions)):
            parts.append((positions, run(gather_rows(arguments, batched_names, positions, batch))))
    return scatter_rows(parts, batch)
