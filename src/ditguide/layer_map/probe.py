"""Block addresses of a model (through its family adapter) and the residual probe: forward hooks that
record, per block, |dh| / |h| and cos(h_in, h_out) of the image stream."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..families import get_family
from ..families.base import bind_block_arguments, block_forward_signature


def block_addresses(transformer) -> list[str]:
    family = get_family(transformer)
    return [family.address(transformer, i) for i in range(len(family.blocks(transformer)))]


def check_blocks(transformer, blocks: Sequence[str] | None) -> list[str]:
    """All block addresses, or the given subset (validated: one clear error listing the valid ones)."""
    every = block_addresses(transformer)
    if blocks is None:
        return every
    bad = [b for b in blocks if b not in every]
    if bad:
        raise ValueError(f"blocks {bad} are not blocks of this model; valid: {', '.join(every)}")
    return list(blocks)


class ResidualProbe:
    """Forward hooks recording, per block, |h_out - h_in| / |h_in| and cos(h_in, h_out) of the image
    stream (per sample), read through the family adapter's stream layout."""

    def __init__(self, transformer):
        family = get_family(transformer)
        self.blocks = family.blocks(transformer)
        self.infos = [family.block_info(transformer, i) for i in range(len(self.blocks))]
        self.records: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        self._handles = []

    def __enter__(self):
        for i, (block, info) in enumerate(zip(self.blocks, self.infos)):
            self._handles.append(block.register_forward_hook(self._hook(i, block, info), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i, block, info):
        signature = block_forward_signature(block)

        def hook(module, args, kwargs, output):
            h_in = bind_block_arguments(signature, args, kwargs)[info.input_names["image"]]
            h_out = output[info.output.streams.index("image")] if info.returns_tuple else output
            if info.output.kind == "concat":  # one tensor over [streams]: the image tokens are last
                h_out = h_out[:, -h_in.shape[1] :]
            a, b = h_in.flatten(1).double(), h_out.flatten(1).double()
            rel = (b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
            cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
            self.records[i].append(torch.stack([rel, cos], 1))

        return hook
