"""Declarative block edits: what to change in which blocks, independent of any model.

    BlockEdit(op="skip", blocks=["double:1", 5])
    BlockEdit(op="scale", blocks=["single:3"], streams=("image",), alpha=1.5)
    EditSpec([...]);  EditSpec.from_string("skip:double:1,single:3;temperature(2)@image:5")

Ops (the residual update of a block is ``output - input`` per stream):

======================== ==================================================================
skip                     the block is the identity on the named streams (all streams: not evaluated)
scale                    residual update times `alpha` on the named streams: in + alpha*(block(in) - in)
repeat                   the block applied `times` times in a row, all streams fed back
skip_attn                self/joint attention output zeroed for the named streams' tokens
skip_cross_attn          cross-attention output zeroed (Wan's text cross-attention)
skip_ff                  feed-forward output zeroed for the named streams' tokens
identity_attn_in_stream  a query of a named stream attends to itself among its own stream's tokens and
                         to every token of the other streams (PAG's perturbation on joint attention,
                         as diffusers' PAGJointAttnProcessor2_0 with streams=["image"]; STG-A; on
                         one-stream self-attention, e.g. Wan's, it is the identity attention)
identity_attn_all_tokens attention output = V for the named streams' queries: the identity over all
                         tokens, which also cuts their attention to the other streams
temperature              softmax(QK^T / (tau*sqrt d)) for the named streams' queries
======================== ==================================================================

`streams=None` means every stream the block returns. Checks that need no model (op names,
parameter types and ranges) run when an edit is built; checks against a model (block ranges,
streams, sub-modules, attention processors) run in `ditguide.edits.validate_edits(spec, model)`.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_number
from ..families.base import ADDRESS_RE as _BLOCK_ADDRESS_RE
from ..families.base import STREAM_NAMES, FamilyError

OPS: dict[str, str] = {
    "skip": "the block is the identity on the named streams",
    "scale": "residual update x alpha on the named streams",
    "repeat": "the block applied `times` times",
    "skip_attn": "self/joint attention output zeroed for the named streams",
    "skip_cross_attn": "cross-attention output zeroed (families with cross-attention: wan)",
    "skip_ff": "feed-forward output zeroed for the named streams",
    "identity_attn_in_stream": "within its own stream a named query attends only to itself; other streams are kept",
    "identity_attn_all_tokens": "attention output = V for the named streams' queries (identity over all tokens)",
    "temperature": "attention softmax temperature tau for the named streams' queries",
}

# op -> its one numeric parameter (None: takes none)
_PARAMETER_OF: dict[str, str | None] = {
    "skip": None,
    "scale": "alpha",
    "repeat": "times",
    "skip_attn": None,
    "skip_cross_attn": None,
    "skip_ff": None,
    "identity_attn_in_stream": None,
    "identity_attn_all_tokens": None,
    "temperature": "tau",
}
_PARAMETERS = ("alpha", "tau", "times")


class EditError(FamilyError):
    """An edit that cannot be applied as asked. Raised before any forward, naming the parameter."""


# Ops whose old name no longer says what they do: old name -> what to write instead.
_RENAMED = {
    "identity_attn": "identity_attn_all_tokens (its old behaviour: output = V, also cutting attention to the other "
    "streams) or identity_attn_in_stream (PAG's reference perturbation on joint attention)"
}


def _check_op(op: Any, where: str) -> None:
    if op in _RENAMED:
        raise EditError(f"{where}: op {op!r} was renamed: use {_RENAMED[op]}")
    if op not in OPS:
        raise EditError(f"{where}: parameter 'op' is {op!r}; allowed ops: {sorted(OPS)}")


BlockRef = int | str


def _edit_number(op: str, name: str, value: Any) -> float:
    return check_number(value, f"BlockEdit(op={op!r}): parameter {name!r}", allowed="finite", error=EditError)


@dataclass(frozen=True)
class BlockEdit:
    """One op applied to some blocks. See the module docstring for the ops."""

    op: str
    blocks: tuple[BlockRef, ...]
    streams: tuple[str, ...] | None = None
    alpha: float | None = None
    tau: float | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        op = self.op
        _check_op(op, "BlockEdit")
        blocks = self.blocks
        if isinstance(blocks, (int, str)):  # one block given bare
            blocks = (blocks,)
        blocks = tuple(blocks)
        if not blocks:
            raise EditError(f"BlockEdit(op={op!r}): parameter 'blocks' is empty; name at least one block")
        for ref in blocks:
            if isinstance(ref, bool) or not isinstance(ref, (int, str)) or (isinstance(ref, int) and ref < 0):
                raise EditError(
                    f"BlockEdit(op={op!r}): parameter 'blocks' has {ref!r}; a block is a global int >= 0 "
                    "or a string 'list:index' (e.g. 'single:3')"
                )
        object.__setattr__(self, "blocks", blocks)

        streams = self.streams
        if streams is not None:
            if isinstance(streams, str):
                streams = (streams,)
            streams = tuple(streams)
            unknown = [s for s in streams if s not in STREAM_NAMES]
            if not streams or unknown or len(set(streams)) != len(streams):
                raise EditError(
                    f"BlockEdit(op={op!r}): parameter 'streams' is {self.streams!r}; allowed: None (all streams "
                    f"of each block) or distinct names from {STREAM_NAMES}"
                )
            object.__setattr__(self, "streams", streams)

        wanted = _PARAMETER_OF[op]
        for name in _PARAMETERS:
            value = getattr(self, name)
            if name != wanted and value is not None:
                takes = f"takes only {wanted!r}" if wanted else "takes no parameter"
                raise EditError(f"BlockEdit(op={op!r}): parameter {name!r} is not allowed ({op} {takes})")
        if wanted is None:
            return
        value = getattr(self, wanted)
        if value is None:
            raise EditError(f"BlockEdit(op={op!r}): parameter {wanted!r} is required")
        if wanted == "alpha":
            object.__setattr__(self, "alpha", _edit_number(op, "alpha", value))
        elif wanted == "tau":
            tau = _edit_number(op, "tau", value)
            if tau <= 0:
                raise EditError(f"BlockEdit(op={op!r}): parameter 'tau' must be > 0, got {tau}")
            object.__setattr__(self, "tau", tau)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise EditError(
                    f"BlockEdit(op={op!r}): parameter 'times' must be an integer >= 1, got {value!r} "
                    "(times=1 is the plain block; use op='skip' for zero applications)"
                )
            object.__setattr__(self, "times", int(value))

    @property
    def parameter(self) -> float | int | None:
        name = _PARAMETER_OF[self.op]
        return getattr(self, name) if name else None

    # -- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "blocks": list(self.blocks)}
        if self.streams is not None:
            d["streams"] = list(self.streams)
        name = _PARAMETER_OF[self.op]
        if name:
            d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockEdit:
        if not isinstance(d, Mapping):
            raise EditError(f"an edit must be a mapping with keys op, blocks[, streams, alpha, tau, times]; got {d!r}")
        allowed = {"op", "blocks", "streams", *_PARAMETERS}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise EditError(f"edit {dict(d)!r}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        for key in ("op", "blocks"):
            if key not in d:
                raise EditError(f"edit {dict(d)!r}: parameter {key!r} is required")
        return cls(**dict(d))

    def to_string(self) -> str:
        head = self.op
        if self.parameter is not None:
            head += f"({self.parameter!r})"
        if self.streams is not None:
            head += "@" + "+".join(self.streams)
        return f"{head}:" + ",".join(str(b) for b in self.blocks)

    @classmethod
    def from_string(cls, text: str) -> BlockEdit:
        head, sep, blocks = text.strip().partition(":")
        m = _HEAD_RE.match(head.strip())
        if not sep or m is None or not blocks.strip():
            raise EditError(
                f"cannot parse edit {text!r}: expected 'op[(param)][@stream+stream]:block,block', "
                "e.g. 'skip:double:1,single:3' or 'scale(1.5)@image:5'"
            )
        op = m["op"]
        _check_op(op, f"edit {text!r}")
        kwargs: dict[str, Any] = {}
        if m["param"] is not None:
            name = _PARAMETER_OF[op]
            if name is None:
                raise EditError(f"edit {text!r}: {op} takes no parameter")
            try:
                value = float(m["param"]) if name != "times" else int(m["param"])
            except ValueError:
                raise EditError(f"edit {text!r}: parameter {name!r} is {m['param']!r}, not a number") from None
            kwargs[name] = value
        if m["streams"] is not None:
            kwargs["streams"] = tuple(m["streams"].split("+"))
        return cls(op=op, blocks=tuple(_parse_block_ref(b, text) for b in blocks.split(",")), **kwargs)


def _parse_block_ref(ref: str, text: str) -> BlockRef:
    """A global index ('5' -> 5) or a 'list:index' address; an empty or malformed entry is an error here,
    since the model check (`validate`) would report it only after the weights load."""
    ref = ref.strip()
    if _INT_RE.fullmatch(ref):
        value = int(ref)
        if value < 0:
            raise EditError(f"edit {text!r}: block {ref!r} is negative; a block is a global int >= 0 or 'list:index'")
        return value
    if not _BLOCK_ADDRESS_RE.fullmatch(ref):
        raise EditError(
            f"edit {text!r}: block {ref!r} is not a block; write a global int >= 0, 'list:index' "
            "(e.g. 'single:3') or 'attribute.index', separated by single commas"
        )
    return ref


_INT_RE = re.compile(r"[+-]?\d+")
_HEAD_RE = re.compile(r"^(?P<op>[a-z_]+)(?:\((?P<param>[^()]*)\))?(?:@(?P<streams>[a-z+]+))?$")


@dataclass(frozen=True)
class EditSpec:
    """An ordered set of block edits, applied together. Empty: the plain model."""

    edits: tuple[BlockEdit, ...] = field(default_factory=tuple)

    def __init__(self, edits: Iterable[BlockEdit] | BlockEdit = ()) -> None:
        if isinstance(edits, BlockEdit):
            edits = (edits,)
        edits = tuple(edits)
        for e in edits:
            if not isinstance(e, BlockEdit):
                raise EditError(f"EditSpec takes BlockEdit objects, got {e!r} (use EditSpec.parse for dicts/strings)")
        object.__setattr__(self, "edits", edits)

    def __len__(self) -> int:
        return len(self.edits)

    def __iter__(self):
        return iter(self.edits)

    def __bool__(self) -> bool:
        return bool(self.edits)

    def __add__(self, other: EditSpec) -> EditSpec:
        return EditSpec(self.edits + EditSpec.parse(other).edits)

    # -- conversions ------------------------------------------------------------------------------

    @classmethod
    def parse(cls, obj: Any) -> EditSpec:
        """EditSpec from an EditSpec, BlockEdit, dict ({"edits": [...]}), list of dicts/edits, string or None."""
        if obj is None:
            return cls()
        if isinstance(obj, EditSpec):
            return obj
        if isinstance(obj, BlockEdit):
            return cls((obj,))
        if isinstance(obj, str):
            return cls.from_string(obj)
        if isinstance(obj, Mapping):
            return cls.from_dict(obj)
        if isinstance(obj, (list, tuple)):
            return cls(e if isinstance(e, BlockEdit) else BlockEdit.from_dict(e) for e in obj)
        raise EditError(f"cannot make an EditSpec from {type(obj).__name__}: {obj!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"edits": [e.to_dict() for e in self.edits]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EditSpec:
        if not isinstance(d, Mapping) or set(d) - {"edits"}:
            raise EditError(f"an edit spec is a mapping {{'edits': [...]}}; got {d!r}")
        edits = d.get("edits") or []
        if not isinstance(edits, (list, tuple)):
            raise EditError(f"'edits' must be a list of edits, got {edits!r}")
        return cls(BlockEdit.from_dict(e) for e in edits)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> EditSpec:
        return cls.from_dict(json.loads(text))

    def to_string(self) -> str:
        """Compact form, e.g. "skip:double:1,single:3;scale(1.5)@image:5" ("" for no edit)."""
        return ";".join(e.to_string() for e in self.edits)

    @classmethod
    def from_string(cls, text: str) -> EditSpec:
        return cls(BlockEdit.from_string(part) for part in text.split(";") if part.strip())

    def __str__(self) -> str:
        return self.to_string() or "<no edit>"
