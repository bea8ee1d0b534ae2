"""Model-family adapters: where the blocks are, how they return their streams, what is inside.

from ditguide.families import get_family, FAMILIES
fam = get_family(model)            # dispatched by model class
fam = get_family("toy")            # by name; "toy" is an alias of the Flux adapter
fam.resolve(model, "single:3")     # -> global block index
"""

from __future__ import annotations

import torch

from .base import (
    AttentionSite,
    BlockInfo,
    Family,
    FamilyError,
    FeedForwardSite,
    StreamLayout,
    active_rows,
    batch_rows,
    bind_block_arguments,
    block_forward_signature,
    gather_rows,
    run_block_on_rows,
    scatter_rows,
)
from .cogview4 import CogView4Family
from .flux import FluxFamily
from .sd3 import SD3Family
from .wan import WanFamily

_ADAPTERS: tuple[Family, ...] = (FluxFamily(), CogView4Family(), WanFamily(), SD3Family())

# name (and alias) -> adapter; "toy" maps to the same Flux adapter object.
FAMILIES: dict[str, Family] = {}
for _adapter in _ADAPTERS:
    FAMILIES[_adapter.name] = _adapter
    for _alias in _adapter.aliases:
        FAMILIES[_alias] = _adapter


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile wraps the module; the adapter describes the wrapped one.
    return getattr(model, "_orig_mod", model)


def get_family(model_or_name: torch.nn.Module | str | Family) -> Family:
    """The adapter of a model (by class) or of a family name ("flux", "toy", "cogview4", "wan", "sd3")."""
    if isinstance(model_or_name, Family):
        return model_or_name
    if isinstance(model_or_name, str):
        try:
            return FAMILIES[model_or_name.lower()]
        except KeyError:
            raise FamilyError(f"unknown family {model_or_name!r}; known: {sorted(FAMILIES)}") from None
    model = _unwrap(model_or_name)
    for adapter in _ADAPTERS:
        if adapter.handles(model):
            return adapter
    supported = [cls.__name__ for adapter in _ADAPTERS for cls in adapter.model_classes()]
    raise FamilyError(f"no family adapter for model class {type(model).__name__}; supported: {supported}")


__all__ = [
    "FAMILIES",
    "AttentionSite",
    "BlockInfo",
    "CogView4Family",
    "Family",
    "FamilyError",
    "FeedForwardSite",
    "FluxFamily",
    "SD3Family",
    "StreamLayout",
    "WanFamily",
    "active_rows",
    "batch_rows",
    "bind_block_arguments",
    "block_forward_signature",
    "gather_rows",
    "get_family",
    "run_block_on_rows",
    "scatter_rows",
]
