"""The guided denoiser: a drop-in replacement for `pipe.transformer` that evaluates a guidance spec.

The pipeline runs with its own CFG off, so it calls its transformer once per step with the
conditional inputs. At each call the wrapper asks the spec which branches this step needs (each
term has its own interval), evaluates them, and returns the combined prediction; the sampler never
changes. Branches are evaluated

- sequentially (mode "sequential": one forward per branch, the least memory; a plain branch is
  exactly the call the pipeline would have made, so CFG reproduces the pipeline's own bit for bit),
- batched (mode "batched": every branch whose inputs can be stacked in one forward, edits
  restricted to their rows), or
- in explicit groups (a list of lists of branch names, e.g. [["uncond", "cond"], ["slg"]], which is
  how StableDiffusion3Pipeline itself runs SLG).

`max_batch_branches=k` caps every forward at k branches (batched branches multiply activation
memory): a larger group is cut in sequential order, so k = 1 is sequential mode and k >= the number
of branches is the mode as given.

Caches (diffusers' `transformer.enable_cache(...)`): their hooks keep state between calls, keyed by
the pipeline's `cache_context` name. With FirstBlockCache, TaylorSeer, MagCache or pyramid attention
broadcast enabled, every unedited branch runs as its own forward in its own cache context, "cond"
for the positive prompt and "uncond" for the negative one, as the pipelines run their own CFG; so
CFG under the wrapper is the cache's CFG bit for bit. Branches with edited blocks are refused
(the cache would serve them state the unedited branches wrote), unless `cache_bypass_edited=True`:
then their forwards run with the cache's hooks detached, in full, and never read or write its state
(nor share a block prefix with a cached forward, whose block outputs the cache may have
approximated). FasterCache and caches not listed are refused (unless guidance is off: one plain
branch, the pipeline's own call). Under a cache the cost report counts the blocks as planned; the
blocks the cache skips are not subtracted.

Prefix sharing: two branches on the same prompt whose edits start at block k agree on blocks < k,
so those blocks run once. Within a batched forward, a shared block runs on the representative rows
only and its output is copied to the other rows (equal up to batch-size-dependent float kernels).
Across sequential forwards, the later branch returns its inputs unchanged on blocks < k-1 and the
recorded output of the earlier branch on block k-1 (bit-identical to running it in full).

Cost: every call records the block evaluations it ran (one block on the caller's batch = 1) and
NFE-equivalents (block evaluations / blocks per forward) per sampling step, in `self.cost` (reset
when the pipeline starts a new run). By default the count comes from the compiled edit plans and
the sharing plan, which costs nothing; count="measure" counts every real execution of a block body
with hooks instead, and the tests check that both agree.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .edits import EditSpec, apply_edits, compile_plans
from .edits.hooks import register, remove
from .families import get_family
from .families.base import active_rows, batch_rows, bind_block_arguments, block_forward_signature, gather_rows
from .guidance import GuidanceSpec, StepInfo
from .guidance.cost import CostReport, StepCost, planned_evals
from .guidance.planner import (
    CompiledBranch,
    cap_groups,
    forward_groups,
    plan_key,
    plan_step,
    representative_rows,
)

MODES = ("sequential", "batched")
# Transformer inputs that never carry the batch dimension (Flux position ids), whatever their shape.
DEFAULT_UNBATCHED = ("txt_ids", "img_ids")
_HOOK_NAMES = (f"ditguide.guidance.{i}" for i in itertools.count())


class GuidanceError(ValueError):
    """A guidance run that cannot go ahead as configured; the message names the parameter."""


# --------------------------------------------------------------------------------------------------
# diffusers caches (see the module docstring and README, "Caches under guidance")

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


def _cache_hook_names() -> frozenset[str]:
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
def _cache_detached(sites: Sequence[tuple[torch.nn.Module, Any]], names: frozenset[str]) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------------
# Block hooks of the wrapper (installed through the edit engine's exact register/remove)


def _rows_of_call(args: tuple, kwargs: dict) -> int:
    # Every family's block forward takes `hidden_states` (batch first) as its first argument.
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return hidden.shape[0]


class _CountHook(ModelHook):
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


class _ShareRowsHook(ModelHook):
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


class _RecordHook(ModelHook):
    """Stores the block's output rows `rows` (a donor branch) for later replay."""

    def __init__(self, store: dict, key: Any, rows: torch.Tensor):
        super().__init__()
        self.store, self.key, self.rows = store, key, rows

    def new_forward(self, module, *args, **kwargs):
        out = self.fn_ref.original_forward(*args, **kwargs)
        # index_select copies, so later in-place changes of the donor's tensors cannot leak in.
        self.store[self.key] = _select_rows(out, self.rows)
        return out


class _ReplayHook(ModelHook):
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
def _hooks(installs: Sequence[tuple[torch.nn.Module, ModelHook]]) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------------
# Branches


class GuidedDenoiser(torch.nn.Module):
    """Replaces `pipe.transformer`; evaluates `spec` at every call. See the module docstring.

    transformer: the model (any family with an adapter in ditguide.families).
    spec: GuidanceSpec, its dict form, or None (guidance off).
    scheduler: the pipeline's scheduler; the step index, number of steps and sigma are read from it.
        `clock` (a callable returning StepInfo) replaces it for custom loops.
    mode: "sequential", "batched", or a list of lists of branch names (explicit forward groups).
    share_prefix: compute blocks shared by branches (same prompt, identical before their first edit) once.
    negative: transformer keyword arguments of the negative prompt (e.g. {"encoder_hidden_states": ...,
        "pooled_projections": ...}); required when the spec uses a branch on the negative prompt.
    unbatched: transformer inputs that never carry the batch dimension.
    count: "plan" (block evaluations from the compiled edit plans and the sharing plan; free) or
        "measure" (hooks count every real execution of a block body; tests check the two agree).
    own_cfg: a callable that is true while the calling pipeline runs its own CFG (read at every call;
        a spec with terms then raises instead of guiding twice). Pipelines that call their transformer
        in an 'uncond' cache context are caught there as well.
    max_batch_branches: at most this many branches per forward call (None: as `mode` groups them).
    cache_bypass_edited: with a diffusers cache enabled, run the branches with edited blocks outside
        the cache (in full) instead of refusing them; see the module docstring.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        spec: GuidanceSpec | dict | None = None,
        *,
        scheduler: Any = None,
        clock: Callable[[], StepInfo] | None = None,
        mode: str | Sequence[Sequence[str]] = "sequential",
        share_prefix: bool = True,
        negative: dict[str, Any] | None = None,
        unbatched: Sequence[str] = DEFAULT_UNBATCHED,
        count: str = "plan",
        own_cfg: Callable[[], bool] | None = None,
        max_batch_branches: int | None = None,
        cache_bypass_edited: bool = False,
    ):
        super().__init__()
        if isinstance(transformer, GuidedDenoiser):
            raise GuidanceError("transformer is already a GuidedDenoiser; wrap the model itself")
        self.transformer = transformer
        self.family = get_family(transformer)
        self.spec = GuidanceSpec.from_dict(spec)
        if scheduler is None and clock is None:
            raise GuidanceError("GuidedDenoiser needs scheduler= (the pipeline's) or clock= to know the step")
        self.scheduler = scheduler
        self.clock = clock
        self.share_prefix = bool(share_prefix)
        if count not in ("plan", "measure"):
            raise GuidanceError(f"count = {count!r}: must be 'plan' or 'measure'")
        self.count = count
        self.own_cfg = own_cfg
        self.unbatched = frozenset(unbatched)
        self.num_blocks = len(self.family.blocks(transformer))
        self._branches, self._alias = self._compile_branches()
        self.mode = self._check_mode(mode)
        if max_batch_branches is not None and (
            isinstance(max_batch_branches, bool) or not isinstance(max_batch_branches, int) or max_batch_branches < 1
        ):
            raise GuidanceError(
                f"max_batch_branches = {max_batch_branches!r}: must be None (every forward group batched whole) "
                "or an integer >= 1 (at most that many branches per forward call)"
            )
        self.max_batch_branches = max_batch_branches
        self.cache_bypass_edited = bool(cache_bypass_edited)
        self._cache_kwargs: dict = {}  # the pipeline's cache context fields (step_index, sigma...) of this call
        self._cache_sites: tuple[Any, list] | None = None
        self.negative: dict[str, Any] | None = None
        if negative is not None:
            self.set_negative(**negative)
        self.cost = CostReport(self.num_blocks)
        self._run_key: Any = None
        self._last_step = -1
        self._state: dict = {}
        self._sigmas: list[float] | None = None

    # ---- configuration --------------------------------------------------------------------------

    def _compile_branches(self) -> tuple[dict[str, CompiledBranch], dict[str, str]]:
        branches: dict[str, CompiledBranch] = {}
        alias: dict[str, str] = {}
        by_signature: dict[str, str] = {}
        for name in self.spec.used_branches:
            b = self.spec.branches[name]
            try:
                edits = EditSpec.parse(b.edits)
                _, plans = compile_plans(edits, self.transformer)
            except ValueError as err:  # EditError / FamilyError: name the branch that carries it
                raise GuidanceError(f"branches.{name}.edits: {err}") from None
            # Canonical per-block plans, so that "blocks:1" and 1 (or split edits) are the same branch.
            signature = json.dumps([b.prompt, [plan_key(i, p) for i, p in sorted(plans.items())]])
            if signature in by_signature:
                alias[name] = by_signature[signature]
                continue
            first = min(plans) if plans else self.num_blocks
            branches[name] = CompiledBranch(name, b.prompt, edits, first, signature, plans)
            by_signature[signature] = name
            alias[name] = name
        return branches, alias

    def _check_mode(self, mode):
        if isinstance(mode, str):
            if mode not in MODES:
                raise GuidanceError(f"mode = {mode!r}: must be one of {MODES} or a list of lists of branch names")
            return mode
        groups = [list(g) for g in mode]
        names = [n for g in groups for n in g]
        unknown = [n for n in names if n not in self.spec.branches]
        if unknown or len(set(names)) != len(names) or any(not g for g in groups):
            raise GuidanceError(
                f"mode = {mode!r}: explicit groups must be non-empty, disjoint lists of branch names from "
                f"{sorted(self.spec.branches)}"
            )
        missing = [n for n in self.spec.used_branches if n not in names]
        if missing:
            raise GuidanceError(f"mode = {mode!r}: branches {missing} are in no group")
        return groups

    def set_negative(self, **inputs: Any) -> None:
        """The negative prompt's transformer inputs, e.g. encoder_hidden_states=..., pooled_projections=..."""
        if not inputs:
            raise GuidanceError("set_negative() needs the negative prompt's transformer inputs")
        self.negative = dict(inputs)

    def check_ready(self) -> None:
        """Raise now (not mid-sampling) if the spec needs something that is missing."""
        if self.spec.uses_negative and self.negative is None:
            prompts = {k: b.prompt for k, b in self.spec.branches.items()}
            users = [t.name or t.rule for t in self.spec.terms if "neg" in (prompts[t.plus], prompts[t.minus])]
            raise GuidanceError(
                f"the guidance spec uses the negative prompt (terms {users}) but no negative conditioning was given: "
                "pass negative_prompt_embeds (and negative_pooled_prompt_embeds where the pipeline has them), "
                "or set_negative(...) on the denoiser"
            )
        self._check_cache()

    def _cache_config(self) -> Any:
        """The enabled diffusers cache's config, or None."""
        if not getattr(self.transformer, "is_cache_enabled", False):
            return None
        return getattr(self.transformer, "_cache_config", None)

    def _check_cache(self) -> None:
        config = self._cache_config()
        if config is None:
            return
        cache = type(config).__name__
        edited = [k for k, b in self._branches.items() if b.edits]
        # Without terms and edits the only call is the pipeline's own (guidance off): the cache's business.
        if not self.spec.terms and not edited:
            return
        if cache == "FasterCacheConfig":
            raise GuidanceError(
                "the transformer has a diffusers cache enabled (FasterCacheConfig), which GuidedDenoiser cannot drive: "
                "its denoiser hook takes every transformer call for a batch [unconditional, conditional] stacked by "
                "the pipeline's own batched CFG and keeps one state for all calls, so it would approximate the wrong "
                "rows of the guidance branches. Disable it (transformer.disable_cache()), or use FirstBlockCache, "
                "TaylorSeer, MagCache or pyramid attention broadcast"
            )
        if cache not in SUPPORTED_CACHES:
            raise GuidanceError(
                f"the transformer has a diffusers cache enabled ({cache}) that GuidedDenoiser has not been checked "
                f"with; supported under guidance: {', '.join(SUPPORTED_CACHES)}. Disable it "
                "(transformer.disable_cache()) before guided sampling"
            )
        if edited and not self.cache_bypass_edited:
            raise GuidanceError(
                f"the transformer has a diffusers cache enabled ({cache}) and the guidance spec has branches with "
                f"edited blocks {edited}: the cache's hooks wrap the blocks the edits change and keep state between "
                "calls, so an edited branch would read state an unedited branch wrote. Disable the cache "
                "(transformer.disable_cache()), or build the GuidedDenoiser with cache_bypass_edited=True to run the "
                "edited branches in full outside the cache (the unedited branches stay cached). A cache is enabled "
                "from Python only, so no command-line flag applies"
            )

    # ---- what the pipelines read from their transformer ------------------------------------------

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs):
        if name == "uncond" and self.spec.terms:
            # The pipeline is running its own CFG on top of the spec's guidance: its second call
            # would be guided again. Fail loudly instead of guiding twice.
            self._refuse_own_cfg("it made an 'uncond' call")
        inner = getattr(self.transformer, "cache_context", None)
        # The branches' own contexts (see _cache_scope) carry the pipeline's fields (Wan: step_index, sigma).
        self._cache_kwargs = dict(kwargs)
        try:
            with inner(name, **kwargs) if inner is not None else contextlib.nullcontext():
                yield
        finally:
            self._cache_kwargs = {}

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "transformer" not in modules:
                raise
            return getattr(modules["transformer"], name)

    def _refuse_own_cfg(self, how: str) -> None:
        raise GuidanceError(
            f"the pipeline runs its own CFG ({how}) while a guidance spec is installed; set its CFG scale to 1 "
            "(run_guided does this) and put CFG in the spec"
        )

    # ---- the step -----------------------------------------------------------------------------

    def _step_info(self) -> StepInfo:
        if self.clock is not None:
            info = self.clock()
            run_key = None
        else:
            s = self.scheduler
            index = s.step_index if s.step_index is not None else (getattr(s, "begin_index", None) or 0)
            run_key = id(s.timesteps)
            if run_key != self._run_key:
                sigmas = getattr(s, "sigmas", None)
                self._sigmas = None if sigmas is None else [float(x) for x in sigmas]
            sigma = None if self._sigmas is None else self._sigmas[index]
            info = StepInfo(int(index), len(s.timesteps), sigma)
        if run_key != self._run_key or info.step < self._last_step:
            self._start_run(info, run_key)
        self._last_step = info.step
        return info

    def reset(self) -> None:
        """Start a new run at the next call (cost and APG momentum cleared); pipelines need not call it."""
        self._run_key = object()
        self._last_step = -1

    def _start_run(self, info: StepInfo, run_key: Any) -> None:
        self._run_key = run_key
        self._state = {}
        self.cost = CostReport(self.num_blocks)
        self.check_ready()
        if self._sigmas is not None:
            self.spec.check_schedule(info.num_steps, self._sigmas)

    def forward(self, *args, return_dict: bool = True, **kwargs):
        if args:
            raise GuidanceError("GuidedDenoiser takes keyword arguments only (as the diffusers pipelines call it)")
        if self.spec.terms and self.own_cfg is not None and self.own_cfg():
            # e.g. SD3 stacks [negative, positive] into this call: it would pass for a batch of positives.
            self._refuse_own_cfg("its do_classifier_free_guidance is on")
        info = self._step_info()
        record = self.cost.step(info.step, info.sigma)
        names = self.spec.branches_needed(info)
        hidden = kwargs["hidden_states"]
        if names and all(self._alias[n] == self._alias[self.spec.base] for n in names) and self._plain(self.spec.base):
            # Guidance inactive at this step: exactly the pipeline's own call.
            with self._cache_scope(cached=True, prompt="pos"):
                out = self.transformer(*args, return_dict=False, **kwargs)[0]
            record.forwards += 1
            record.block_evals += self.num_blocks
            record.branches.append(self.spec.base)
        elif not names:
            out = self._zeros(kwargs, record)
        else:
            preds = self._evaluate(names, kwargs, record)
            out = self.spec.combine(preds, info, self._state, sample=hidden)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _plain(self, name: str) -> bool:
        b = self._branches[self._alias[name]]
        return b.prompt == "pos" and not b.edits

    def _zeros(self, kwargs: dict, record: StepCost) -> torch.Tensor:
        # CFG-Zero*'s zero-init: the prediction is 0; no forward is needed when the output has the
        # input's shape (flow models whose out_channels equal in_channels).
        cfg = self.transformer.config
        hidden = kwargs["hidden_states"]
        if cfg.get("out_channels", None) in (None, cfg.get("in_channels", None)):
            return torch.zeros_like(hidden)
        # Only the output's shape is used: outside any cache, whose state this call must not advance.
        with self._cache_scope(cached=False):
            out = self.transformer(return_dict=False, **kwargs)[0]
        record.forwards += 1
        record.block_evals += self.num_blocks
        return torch.zeros_like(out)

    # ---- evaluating branches ------------------------------------------------------------------

    def _inputs(self, prompt: str, kwargs: dict) -> dict:
        if prompt == "pos":
            return kwargs
        if self.negative is None:
            self.check_ready()
        batch = kwargs["hidden_states"].shape[0]
        out = dict(kwargs)
        for key, value in self.negative.items():
            ref = kwargs.get(key)
            if isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor):
                value = value.to(device=ref.device, dtype=ref.dtype)
                if key not in self.unbatched and value.shape[0] != batch:
                    if value.shape[0] == 0 or batch % value.shape[0]:
                        raise GuidanceError(
                            f"negative input {key!r} has batch {value.shape[0]}, "
                            f"which does not divide the batch of {batch}"
                        )
                    # Like the pipelines' num_images_per_prompt: each prompt's rows are consecutive.
                    value = value.repeat_interleave(batch // value.shape[0], dim=0)
            out[key] = value
        return out

    def _evaluate(self, names: list[str], kwargs: dict, record: StepCost) -> dict[str, torch.Tensor]:
        keys = list(dict.fromkeys(self._alias[n] for n in names))
        record.branches.extend(keys)
        inputs = {p: self._inputs(p, kwargs) for p in {self._branches[k].prompt for k in keys}}
        forwards = []
        groups = cap_groups(
            forward_groups(keys, self._branches, self.mode, self._alias), self._branches, self.max_batch_branches
        )
        for group in groups:
            forwards += self._split_compatible(group, inputs)
        if self._cache_config() is None:
            cached = [False] * len(forwards)
            plans = plan_step(forwards, self._branches, self.share_prefix)
        else:
            forwards, cached, plans = self._cache_plan(forwards)
        results: dict[str, torch.Tensor] = {}
        store: dict = {}
        for i, group in enumerate(forwards):
            results.update(self._run_forward(group, inputs, plans, i, store, record, cached[i]))
        return {n: results[self._alias[n]] for n in names}

    def _cache_plan(self, forwards: list[list[str]]) -> tuple[list[list[str]], list[bool], list[dict]]:
        """Forwards under a cache: each unedited branch alone and cached (in its prompt's context, as the
        pipelines' own CFG calls), the edited ones as grouped, uncached. Prefix sharing only among the
        uncached forwards: a cached forward's block outputs may be the cache's approximations."""
        out: list[list[str]] = []
        cached: list[bool] = []
        for group in forwards:
            plain = [k for k in group if not self._branches[k].edits]
            edited = [k for k in group if self._branches[k].edits]
            out += [[k] for k in plain] + ([edited] if edited else [])
            cached += [True] * len(plain) + ([False] if edited else [])
        uncached = [g for g, c in zip(out, cached) if not c]
        shared = iter(plan_step(uncached, self._branches, self.share_prefix))
        plans = [{"within": {}, "replay": None} if c else next(shared) for c in cached]
        return out, cached, plans

    def _cache_scope(self, cached: bool, prompt: str = "pos"):
        """The cache's context for one forward: `prompt`'s context name if `cached`, else the cache's hooks
        detached. No cache: nothing."""
        config = self._cache_config()
        if config is None:
            return contextlib.nullcontext()
        if cached:
            return self.transformer.cache_context(CACHE_CONTEXT[prompt], **self._cache_kwargs)
        if self._cache_sites is None or self._cache_sites[0] is not config:
            # Found once per enabled cache: walking every module costs ~ms per forward on a full-size model.
            names = _cache_hook_names()
            sites = [
                (m, reg)
                for m in self.transformer.modules()
                if (reg := m.__dict__.get("_diffusers_hook")) is not None and names & set(reg._hook_order)
            ]
            self._cache_sites = (config, sites)
        return _cache_detached(self._cache_sites[1], _cache_hook_names())

    def _split_compatible(self, group: list[str], inputs: dict) -> list[list[str]]:
        """Split a group into sub-groups whose inputs can be stacked (e.g. prompts of equal length)."""
        out: list[list[str]] = []
        for k in group:
            for g in out:
                if self._stackable(inputs[self._branches[g[0]].prompt], inputs[self._branches[k].prompt]):
                    g.append(k)
                    break
            else:
                out.append([k])
        return out

    def _batched_keys(self, kwargs: dict) -> list[str]:
        batch = kwargs["hidden_states"].shape[0]
        return [
            k
            for k, v in kwargs.items()
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch and k not in self.unbatched
        ]

    def _stackable(self, a: dict, b: dict) -> bool:
        if a is b:
            return True
        if set(a) != set(b):
            return False
        batched = set(self._batched_keys(a))
        for k in a:
            x, y = a[k], b[k]
            if k in batched:
                if not (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype):
                    return False
            elif x is not y:
                if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
                    if x.shape != y.shape or not torch.equal(x, y):
                        return False
                elif x != y:
                    return False
        return True

    # ---- one forward: the planned sharing installed as hooks, the branches' edits on their rows ---------

    def _run_forward(self, group, inputs, plans, index, store, record, cached=False) -> dict[str, torch.Tensor]:
        br = self._branches
        batch = inputs[br[group[0]].prompt]["hidden_states"].shape[0]
        parts = [inputs[br[k].prompt] for k in group]
        if len(group) == 1:
            call = parts[0]
        else:
            keys = set(self._batched_keys(parts[0]))
            call = {k: torch.cat([p[k] for p in parts]) if k in keys else v for k, v in parts[0].items()}
        blocks = self.family.blocks(self.transformer)
        counter = [0]
        installs = [(b, _CountHook(counter)) for b in blocks] if self.count == "measure" else []
        outer: list[tuple[torch.nn.Module, ModelHook]] = []
        plan = plans[index]
        # Within-forward sharing.
        for i, rep in representative_rows(plan, group, br, batch, self.num_blocks).items():
            outer.append((blocks[i], _ShareRowsHook(rep, self.family.batched_block_kwargs, blocks[i])))
        # Replay from an earlier forward.
        if plan["replay"] is not None:
            depth, donor = plan["replay"]
            key = (donor, depth)
            for i in range(depth):
                info = self._block_info(i)
                if i == depth - 1:
                    outer.append((blocks[i], _ReplayHook(info, blocks[i], store, key)))
                else:
                    outer.append((blocks[i], _ReplayHook(info, blocks[i])))
        # Recording for later forwards that replay from this one.
        wanted = {p["replay"] for p in plans[index + 1 :] if p["replay"] is not None}
        for depth, donor in sorted(wanted):
            if donor in group:
                rows = torch.arange(batch) + group.index(donor) * batch
                outer.append((blocks[depth - 1], _RecordHook(store, (donor, depth), rows)))
        edited = [(k, j) for j, k in enumerate(group) if br[k].edits]
        with contextlib.ExitStack() as stack:
            # Entered first: an uncached forward's edits are attached with the cache's hooks already out.
            stack.enter_context(self._cache_scope(cached, br[group[0]].prompt))
            stack.enter_context(_hooks(installs))
            for k, j in edited:
                rows = None if len(group) == 1 else list(range(j * batch, (j + 1) * batch))
                stack.enter_context(apply_edits(self.transformer, br[k].edits, rows=rows))
            stack.enter_context(_hooks(outer))
            out = self.transformer(return_dict=False, **call)[0]
        record.forwards += 1
        record.block_evals += (
            counter[0] / batch if self.count == "measure" else planned_evals(group, plan, br, self.num_blocks)
        )
        return {k: out[j * batch : (j + 1) * batch] for j, k in enumerate(group)}

    def _block_info(self, index: int):
        infos = self.__dict__.setdefault("_infos", {})
        if index not in infos:
            infos[index] = self.family.block_info(self.transformer, index)
        return infos[index]

    def explicit_groups(self) -> list[list[str]]:
        """The forward groups of a step that needs every used branch, as explicit `mode` groups (spec branch
        names; an alias goes with its branch): `mode=den.explicit_groups()` then groups the same way."""
        used = self.spec.used_branches
        keys = list(dict.fromkeys(self._alias[n] for n in used))
        groups = cap_groups(
            forward_groups(keys, self._branches, self.mode, self._alias), self._branches, self.max_batch_branches
        )
        return [[n for k in g for n in used if self._alias[n] == k] for g in groups]

    def extra_repr(self) -> str:
        cap = "" if self.max_batch_branches is None else f", max_batch_branches={self.max_batch_branches}"
        return f"spec={self.spec.name or self.spec.to_dict()}, mode={self.mode}, share_prefix={self.share_prefix}{cap}"
