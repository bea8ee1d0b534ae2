"""diffusers caches under the guided denoiser (see ditguide.denoiser's docstring and the README, "Caches
under guidance"): which caches it drives, the context names of the unedited branches, and taking a
cache's hooks out of a model's hook chain (state untouched) for a forward that must not touch it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# Caches whose state is keyed by the cache context name (FirstBlockCache, TaylorSeer, MagCache) or
# that keep one state per attention module whatever the context (PAB): with one forward per unedited
# branch in the pipelines' context names, both reproduce the pipelines' own CFG call for call.
SUPPORTED_CACHES = (
    "FirstBlockCacheConfig",
    "TaylorSeerCacheConfig",
    "MagCacheConfig",
    "PyramidAttentionBroadcastConfig",
)
# Unedited branches run in the context names the pipelines use for their own CFG calls.
CACHE_CONTEXT = {"pos": "cond", "neg": "uncond"}


def cache_hook_names() -> frozenset[str]:
    """The hook names diffusers 0.42's `enable_cache` registers (the ones `disable_cache` removes)."""
    from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
    from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

    return frozenset(
        {
            _FASTER_CACHE_BLOCK_HOOK,
            _FASTER_CACHE_DENOISER_HOOK,
            _FBC_BLOCK_HOOK,
            _FBC_LEADER_BLOCK_HOOK,
            _MAG_CACHE_BLOCK_HOOK,
            _MAG_CACHE_LEADER_BLOCK_HOOK,
            _PYRAMID_ATTENTION_BROADCAST_HOOK,
            _TAYLORSEER_CACHE_HOOK,
        }
    )


def _splice_out(module: torch.nn.Module, registry, name: str) -> tuple:
    """Take hook `name` out of `module`'s diffusers hook chain, state untouched; `_splice_in` undoes it.

    Not `HookRegistry.remove_hook` and `register_hook`: registering again calls `initialize_hook`,
    which gives FasterCache and PAB a fresh state, and puts the hook outermost; and `remove_hook`
    mis-links a hook that is not the outermost (see edits/hooks.py). The hook object, its state and
    its `fn_ref` stay as they are; only the links to it are cut, and `_splice_in` puts them back.
    """
    index = registry._hook_order.index(name)
    fn_ref = registry._fn_refs[index]
    inner = fn_ref.original_forward if fn_ref.original_forward is not None else fn_ref.forward
    if index == len(registry._hook_order) - 1:
        holder, attr = module, "forward"
    else:
        holder = registry._fn_refs[index + 1]
        # A hook with new_forward calls original_forward; a pre/post-only hook calls forward.
        attr = "original_forward" if holder.original_forward is not None else "forward"
    entry = getattr(holder, attr)  # this hook's way in, as the next layer out calls it
    setattr(holder, attr, inner)
    hook = registry.hooks.pop(name)
    registry._hook_order.pop(index)
    registry._fn_refs.pop(index)
    return registry, index, name, hook, fn_ref, holder, attr, entry


def _splice_in(registry, index, name, hook, fn_ref, holder, attr, entry) -> None:
    registry._hook_order.insert(index, name)
    registry._fn_refs.insert(index, fn_ref)
    setattr(holder, attr, entry)
    order = {n: i for i, n in enumerate(registry._hook_order)}
    hooks = {**registry.hooks, name: hook}
    registry.hooks.clear()
    registry.hooks.update(sorted(hooks.items(), key=lambda item: order[item[0]]))


@contextlib.contextmanager
def cache_detached(sites: Sequence[tuple[torch.nn.Module, Any]], names: frozenset[str]) -> Iterator[None]:
    """The model with its cache hooks out of the chain: a forward inside runs in full and neither
    reads nor writes the cache's state. Restored exactly (same chain, same state) on exit."""
    taken = []
    try:
        for module, registry in sites:
            for name in [n for n in registry._hook_order if n in names]:
                taken.append(_splice_out(module, registry, name))
        yield
    finally:
        for item in reversed(taken):
            _splice_in(*item)


def cache_refusal(config: Any, terms: Sequence, edited: list[str], bypass_edited: bool) -> str | None:
    """Why GuidedDenoiser cannot guide under the enabled cache `config` (None: it can). `terms`: the spec's
    terms; `edited`: its branches with edited blocks; `bypass_edited`: run those outside the cache."""
    cache = type(config).__name__
    # Without terms and edits the only call is the pipeline's own (guidance off): the cache's business.
    if not terms and not edited:
        return None
    if cache == "FasterCacheConfig":
        return (
            "the transformer has a diffusers cache enabled (FasterCacheConfig), which GuidedDenoiser cannot drive: "
            "its denoiser hook takes every transformer call for a batch [unconditional, conditional] stacked by "
            "the pipeline's own batched CFG and keeps one state for all calls, so it would approximate the wrong "
            "rows of the guidance branches. Disable it (transformer.disable_cache()), or use FirstBlockCache, "
            "TaylorSeer, MagCache or pyramid attention broadcast"
        )
    if cache not in SUPPORTED_CACHES:
        return (
            f"the transformer has a diffusers cache enabled ({cache}) that GuidedDenoiser has not been checked "
            f"with; supported under guidance: {', '.join(SUPPORTED_CACHES)}. Disable it "
            "(transformer.disable_cache()) before guided sampling"
        )
    if edited and not bypass_edited:
        return (
            f"the transformer has a diffusers cache enabled ({cache}) and the guidance spec has branches with "
            f"edited blocks {edited}: the cache's hooks wrap the blocks the edits change and keep state between "
            "calls, so an edited branch would read state an unedited branch wrote. Disable the cache "
            "(transformer.disable_cache()), or build the GuidedDenoiser with cache_bypass_edited=True to run the "
            "edited branches in full outside the cache (the unedited branches stay cached). A cache is enabled "
            "from Python only, so no command-line flag applies"
        )
    return None
