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
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

# The parts of the denoiser by job: the block hooks of one forward (denoiser_hooks), diffusers caches
# (denoiser_cache), evaluating a step's branches (denoiser_branches, a mixin of GuidedDenoiser).
from .denoiser_branches import BranchEvaluation
from .denoiser_cache import CACHE_CONTEXT, SUPPORTED_CACHES, cache_refusal
from .edits import EditSpec, compile_plans
from .families import get_family
from .guidance import GuidanceSpec, StepInfo
from .guidance.cost import CostReport, StepCost
from .guidance.planner import CompiledBranch, plan_key

__all__ = ["CACHE_CONTEXT", "DEFAULT_UNBATCHED", "MODES", "SUPPORTED_CACHES", "GuidanceError", "GuidedDenoiser"]

MODES = ("sequential", "batched")
# Transformer inputs that never carry the batch dimension (Flux position ids), whatever their shape.
DEFAULT_UNBATCHED = ("txt_ids", "img_ids")


class GuidanceError(ValueError):
    """A guidance run that cannot go ahead as configured; the message names the parameter."""


class GuidedDenoiser(BranchEvaluation, torch.nn.Module):
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

    def _check_cache(self) -> None:
        config = self._cache_config()
        if config is None:
            return
        edited = [k for k, b in self._branches.items() if b.edits]
        refusal = cache_refusal(config, self.spec.terms, edited, self.cache_bypass_edited)
        if refusal is not None:
            raise GuidanceError(refusal)

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

    # ---- a branch's inputs (the branches are evaluated by BranchEvaluation, denoiser_branches.py) ----

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

    def extra_repr(self) -> str:
        cap = "" if self.max_batch_branches is None else f", max_batch_branches={self.max_batch_branches}"
        return f"spec={self.spec.name or self.spec.to_dict()}, mode={self.mode}, share_prefix={self.share_prefix}{cap}"
