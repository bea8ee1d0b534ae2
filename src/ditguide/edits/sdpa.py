"""Edits of the attention matrix itself (identity attention, temperature), at the SDPA call.

Every default attention processor of the four families ends in torch's
``F.scaled_dot_product_attention`` (directly: CogView4AttnProcessor, JointAttnProcessor2_0; through
diffusers' `dispatch_attention_fn` with a native backend: FluxAttnProcessor, WanAttnProcessor). A
TorchFunctionMode entered only around one attention module's forward intercepts that call - the
same mechanism diffusers uses for its own "skip attention scores" - so the processors themselves
are neither copied nor replaced. Tensors reaching SDPA are (batch, heads, tokens, head_dim); the
token axis holds the stream segments in the order the family adapter declares.

Two identity attentions, which differ on joint attention (several streams in one softmax):
- in-stream: within its own stream a query attends only to itself, and it still attends to every
  token of the other streams. This is diffusers' PAGJointAttnProcessor2_0 (PAG on SD3): an additive
  mask, -inf on the image x image block except its diagonal, 0 elsewhere, passed to the same SDPA.
- all tokens: the query's output is its own value vector; it no longer sees the other streams.
On one-stream self-attention (Wan) both are the identity attention.

Non-SDPA backends (flash-attn, sage, xformers, flex...) never reach this call: the mode counts the
calls it rewrote, and the caller raises if an edited attention made none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .spec import EditError

_ARGUMENTS = ("query", "key", "value", "attn_mask")  # F.scaled_dot_product_attention's first four


class AttentionMatrixEdit(TorchFunctionMode):
    """Rewrites SDPA calls: identity attention (in-stream or over all tokens) and softmax temperature, per stream.

    segments: [(stream, n_tokens)] in token order along the query axis.
    identity: streams whose queries get output V (their own value vectors): identity over all tokens.
    temperature: {stream: tau}; queries of that stream are divided by tau, which is
        softmax(q k^T / (tau sqrt d)) exactly as written (rotary embeddings are already applied).
    identity_in_stream: streams whose queries attend to themselves within their stream and to all
        tokens of the other streams (the all-token identity wins where both are asked).
    """

    def __init__(
        self,
        segments: list[tuple[str, int]],
        identity: set[str],
        temperature: dict[str, float],
        identity_in_stream: set[str] = frozenset(),
    ):
        super().__init__()
        self.segments = segments
        self.identity = identity
        self.temperature = temperature
        self.identity_in_stream = set(identity_in_stream) - set(identity)
        self.calls = 0

    def _by_segment(self, x: torch.Tensor, choose) -> torch.Tensor:
        """Rebuild x along the token axis, segment by segment: choose(stream, slice) -> tensor."""
        pieces, start = [], 0
        for stream, n in self.segments:
            pieces.append(choose(stream, x[..., start : start + n, :]))
            start += n
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        args = list(args)

        def get(i):
            return args[i] if i < len(args) else kwargs.get(_ARGUMENTS[i])

        def put(i, value):
            if i < len(args):
                args[i] = value
            else:
                kwargs[_ARGUMENTS[i]] = value

        query, key, value = get(0), get(1), get(2)
        total = sum(n for _, n in self.segments)
        if query.shape[-2] != total or key.shape[-2] != total:
            raise EditError(
                f"attention edit expected {total} query/key tokens {self.segments}, got query {tuple(query.shape)}, "
                f"key {tuple(key.shape)}: the family adapter's stream layout does not match this attention"
            )
        self.calls += 1
        streams = {s for s, _ in self.segments}
        if self.identity >= streams or (len(self.segments) == 1 and self.identity_in_stream >= streams):
            return value  # attention matrix = I for every query: no softmax to compute
        if self.temperature:
            taus = self.temperature
            if set(taus) >= streams and len(set(taus.values())) == 1:
                query = query / next(iter(taus.values()))
            else:
                query = self._by_segment(query, lambda s, q: q / taus[s] if s in taus else q)
            put(0, query)
        if self.identity_in_stream:
            put(3, self._in_stream_mask(query, get(3)))
        out = func(*args, **kwargs)
        if self.identity:
            out_segments = iter(self._split(out))
            value_segments = iter(self._split(value))
            out = torch.cat(
                [v if s in self.identity else o for (s, _), o, v in zip(self.segments, out_segments, value_segments)],
                dim=-2,
            )
        return out

    def _in_stream_mask(self, query: torch.Tensor, existing: torch.Tensor | None) -> torch.Tensor:
        """Additive mask: -inf on each in-stream block except its diagonal (as PAGJointAttnProcessor2_0
        builds it, in the query's dtype), added to the processor's own mask if it passed one."""
        n = query.shape[-2]
        mask = torch.zeros((n, n), device=query.device, dtype=query.dtype)
        start = 0
        for stream, length in self.segments:
            if stream in self.identity_in_stream:
                block = torch.full((length, length), float("-inf"), device=query.device, dtype=query.dtype)
                mask[start : start + length, start : start + length] = block.fill_diagonal_(0)
            start += length
        if existing is None:
            return mask
        if existing.dtype == torch.bool:  # True = attend
            existing = torch.zeros(existing.shape, device=query.device, dtype=query.dtype).masked_fill(
                ~existing, float("-inf")
            )
        return existing + mask

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split([n for _, n in self.segments], dim=-2))
