"""How GuidedDenoiser evaluates the branches a step needs: forward groups (the planner's), inputs that can
be stacked, the plan under a diffusers cache, and one forward with the planned prefix sharing installed
as hooks and each branch's edits on its rows.

`BranchEvaluation` is a mixin of `ditguide.denoiser.GuidedDenoiser` and nothing else: it reads the
denoiser's configuration (transformer, family, spec, mode, share_prefix, count, unbatched,
max_batch_branches, num_blocks, _branches, _alias, _cache_kwargs, _cache_sites) and its `_inputs`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from diffusers.hooks import ModelHook

from .denoiser_cache import CACHE_CONTEXT, cache_detached, cache_hook_names
from .denoiser_hooks import CountHook, RecordHook, ReplayHook, ShareRowsHook, installed
from .edits import apply_edits
from .guidance.cost import StepCost, planned_evals
from .guidance.planner import cap_groups, forward_groups, plan_step, representative_rows


class BranchEvaluation:
    """The branch evaluation of GuidedDenoiser (see the module docstring)."""

    def _cache_config(self) -> Any:
        """The enabled diffusers cache's config, or None."""
        if not getattr(self.transformer, "is_cache_enabled", False):
            return None
        return getattr(self.transformer, "_cache_config", None)

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
            names = cache_hook_names()
            sites = [
                (m, reg)
                for m in self.transformer.modules()
                if (reg := m.__dict__.get("_diffusers_hook")) is not None and names & set(reg._hook_order)
            ]
            self._cache_sites = (config, sites)
        return cache_detached(self._cache_sites[1], cache_hook_names())

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
        installs = [(b, CountHook(counter)) for b in blocks] if self.count == "measure" else []
        outer: list[tuple[torch.nn.Module, ModelHook]] = []
        plan = plans[index]
        # Within-forward sharing.
        for i, rep in representative_rows(plan, group, br, batch, self.num_blocks).items():
            outer.append((blocks[i], ShareRowsHook(rep, self.family.batched_block_kwargs, blocks[i])))
        # Replay from an earlier forward.
        if plan["replay"] is not None:
            depth, donor = plan["replay"]
            key = (donor, depth)
            for i in range(depth):
                info = self._block_info(i)
                if i == depth - 1:
                    outer.append((blocks[i], ReplayHook(info, blocks[i], store, key)))
                else:
                    outer.append((blocks[i], ReplayHook(info, blocks[i])))
        # Recording for later forwards that replay from this one.
        wanted = {p["replay"] for p in plans[index + 1 :] if p["replay"] is not None}
        for depth, donor in sorted(wanted):
            if donor in group:
                rows = torch.arange(batch) + group.index(donor) * batch
                outer.append((blocks[depth - 1], RecordHook(store, (donor, depth), rows)))
        edited = [(k, j) for j, k in enumerate(group) if br[k].edits]
        with contextlib.ExitStack() as stack:
            # Entered first: an uncached forward's edits are attached with the cache's hooks already out.
            stack.enter_context(self._cache_scope(cached, br[group[0]].prompt))
            stack.enter_context(installed(installs))
            for k, j in edited:
                rows = None if len(group) == 1 else list(range(j * batch, (j + 1) * batch))
                stack.enter_context(apply_edits(self.transformer, br[k].edits, rows=rows))
            stack.enter_context(installed(outer))
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
