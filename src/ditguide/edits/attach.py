"""Attaching an EditSpec to a model: as a context manager or as a removable handle.

    with apply_edits(model, spec, rows=[2, 3]):
        out = model(**batch)

    handle = attach_edits(model, spec)
    ...
    handle.remove()

`rows` restricts the edit to those rows of the batch (None: all rows). Each edited block is then
run separately on the edited rows and on the others, so a row-masked edit equals the same edit on
a batch made of only those rows. Contexts nest: the later one wraps the earlier one, and rows are
always rows of the model call's batch.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence

import torch

from .hooks import AttentionEditHook, BlockEditHook, FeedForwardEditHook, register, remove
from .plan import compile_plans
from .spec import EditError, EditSpec

HOOK_PREFIX = "ditguide.edit"
_LAYER_IDS = itertools.count()


def _rows_tensor(rows: Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    if rows is None:
        return None
    if isinstance(rows, torch.Tensor):
        if rows.dtype == torch.bool or rows.is_floating_point() or rows.dim() > 1:
            raise EditError(
                f"parameter 'rows' must be a 1-D tensor of integer row ids, got {rows.dtype} {tuple(rows.shape)}"
            )
        ids = rows.detach().to("cpu", torch.long).reshape(-1)
    else:
        rows = list(rows)
        if any(isinstance(r, bool) or not isinstance(r, (int, torch.Tensor)) for r in rows):
            raise EditError(f"parameter 'rows' must be None or integer row ids, got {rows!r}")
        ids = torch.tensor([int(r) for r in rows], dtype=torch.long)
    if (ids < 0).any() or ids.unique().numel() != ids.numel():
        raise EditError(f"parameter 'rows' must be distinct row ids >= 0, got {ids.tolist()}")
    return ids


def _refuse_stateful_hooks(model: torch.nn.Module) -> None:
    # Caches (FirstBlockCache, FasterCache, PAB, TaylorSeer, MagCache...) are stateful hooks that
    # reuse block outputs across calls; edited or row-split blocks would feed them wrong states.
    # Runs on every attach (once per edited forward under guidance): read instance dicts directly
    # and build module names only when something is found; named_modules() + getattr cost ~5 ms
    # per call on a FLUX-sized model.
    found = []
    for module in model.modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None and any(hook._is_stateful for hook in registry.hooks.values()):
            name = next(n for n, m in model.named_modules() if m is module)
            found += [f"{name or '<model>'}:{h}" for h, hook in registry.hooks.items() if hook._is_stateful]
    if found:
        raise EditError(
            f"the model carries stateful diffusers hooks (caches) {found[:5]}; block edits would corrupt their "
            "cached states. Disable the cache (e.g. model.disable_cache()) before editing blocks"
        )


class EditHandle:
    """Hooks of one attached EditSpec; `remove()` restores the model exactly (idempotent)."""

    def __init__(self, model: torch.nn.Module, spec: EditSpec, rows: torch.Tensor | None, name: str):
        self.model = model
        self.spec = spec
        self.rows = rows
        self.name = name
        self._installed: list[torch.nn.Module] = []

    @property
    def active(self) -> bool:
        return bool(self._installed)

    def remove(self) -> None:
        while self._installed:
            remove(self._installed.pop(), self.name)

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        rows = "all" if self.rows is None else self.rows.tolist()
        return f"EditHandle({self.name!r}, spec={str(self.spec)!r}, rows={rows}, active={self.active})"


def attach_edits(
    model: torch.nn.Module, spec: EditSpec | str | dict | list | None, rows: Sequence[int] | torch.Tensor | None = None
) -> EditHandle:
    """Install `spec` on `model` (validated first); returns a handle whose `remove()` undoes it."""
    spec = EditSpec.parse(spec)
    family, plans = compile_plans(spec, model)
    row_ids = _rows_tensor(rows)
    handle = EditHandle(model, spec, row_ids, f"{HOOK_PREFIX}.{next(_LAYER_IDS)}")
    if not plans:
        return handle
    _refuse_stateful_hooks(model)
    blocks = family.blocks(model)

    def install(module: torch.nn.Module, hook) -> None:
        register(module, hook, handle.name)
        handle._installed.append(module)

    try:
        for index, plan in sorted(plans.items()):
            block = blocks[index]
            owner = BlockEditHook(plan, row_ids, family, block)
            for site in plan.info.attention:
                edits = plan.attention_edits(site)
                if not edits:
                    continue
                owner.sites_with_edits.append(site.path)
                if {"identity", "identity_in_stream", "temperature"} & set(edits):
                    owner.sites_with_sdpa_edits.append(site.path)
                install(
                    block.get_submodule(site.path),
                    AttentionEditHook(owner, site.path, site.output, site.query_streams, edits),
                )
            for site in plan.info.feedforward:
                streams = plan.feedforward_edits(site)
                if streams:
                    owner.sites_with_edits.append(site.path)
                    install(block.get_submodule(site.path), FeedForwardEditHook(owner, site.path, site.output, streams))
            install(block, owner)
    except BaseException:
        handle.remove()
        raise
    return handle


@contextlib.contextmanager
def apply_edits(
    model: torch.nn.Module, spec: EditSpec | str | dict | list | None, rows: Sequence[int] | torch.Tensor | None = None
) -> Iterator[EditHandle]:
    """Context manager form of `attach_edits`; the model is restored on exit, also on error."""
    handle = attach_edits(model, spec, rows)
    try:
        yield handle
    finally:
        handle.remove()
