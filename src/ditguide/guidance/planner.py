"""Planning the forwards of one guided step, with no model: which branches run together, and which
blocks they share (prefix sharing). Pure functions over compiled branches, testable on their own.

Two branches on the same prompt whose edits start at blocks k1 and k2 agree on blocks < min(k1, k2):
- within one batched forward, those blocks run on the rows of one of them and are copied to the
  others (`share_plan(...)["within"]`, `representative_rows`);
- across sequential forwards, the later branch replays the earlier one's output of block
  min(k1, k2) - 1 and skips the blocks before it (`share_plan(...)["replay"]`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class CompiledBranch:
    """A distinct model evaluation: prompt + edits. Branches of the spec with equal ones are aliases."""

    key: str  # first spec branch name that maps to it
    prompt: str
    edits: Any  # the parsed EditSpec (falsy when unedited)
    first_edit: int  # first edited block (global index); blocks_per_forward if unedited
    signature: str  # canonical (prompt, edits) for deduplication
    plans: dict  # global block index -> the edit engine's BlockPlan

    def evals_from(self, start: int, num_blocks: int) -> int:
        """Block evaluations (per row) of blocks start.. of this branch: a skipped block costs 0, a
        repeated one `times`, any other edit 1 (the engine computes it on the edited rows)."""
        total = 0
        for i in range(start, num_blocks):
            plan = self.plans.get(i)
            total += 1 if plan is None else (0 if plan.skips_block else plan.times)
        return total


def plan_key(index: int, plan) -> list:
    """A canonical, JSON-able form of one block's edit plan (so equal edits written differently match)."""
    return [
        index,
        sorted(plan.alphas.items()),
        plan.times,
        *(
            sorted(getattr(plan, a))
            for a in ("skip_attn", "skip_cross_attn", "skip_ff", "identity_attn_in_stream", "identity_attn_all_tokens")
        ),
        sorted(plan.temperature.items()),
    ]


def sequential_order(keys: list[str], branches: dict[str, CompiledBranch]) -> list[str]:
    """Branches by prompt (first seen first), within a prompt the one edited latest first: the donor
    order of prefix sharing (the branch edited latest can share the most with the others)."""
    prompts = list(dict.fromkeys(branches[k].prompt for k in keys))
    return sorted(keys, key=lambda k: (prompts.index(branches[k].prompt), -branches[k].first_edit))


def forward_groups(
    keys: list[str], branches: dict[str, CompiledBranch], mode, alias: dict[str, str]
) -> list[list[str]]:
    """Forward groups of this step's distinct branches. mode: "sequential" (one forward each, donors
    first: within a prompt the branch edited latest can share the most with the others), "batched"
    (one group), or explicit groups of spec branch names."""
    if mode == "sequential":
        return [[k] for k in sequential_order(keys, branches)]
    if mode == "batched":
        return [keys]
    groups: list[list[str]] = []
    for g in mode:
        g = [alias[n] for n in g if n in alias]
        g = [k for k in dict.fromkeys(g) if k in keys and not any(k in h for h in groups)]
        if g:
            groups.append(g)
    return groups


def cap_groups(
    groups: list[list[str]], branches: dict[str, CompiledBranch], max_batch_branches: int | None
) -> list[list[str]]:
    """The forward groups with at most `max_batch_branches` branches each (None: unchanged).

    Batched branches multiply the activation memory of a forward; this bounds it. A group that is too
    large is cut in sequential order (`sequential_order`), so that same-prompt branches, which share
    blocks, land together, and k = 1 is sequential mode exactly. A group that fits is left as it is,
    so k >= the number of branches is the uncapped mode exactly."""
    if max_batch_branches is None:
        return groups
    k = max_batch_branches
    out: list[list[str]] = []
    for group in groups:
        if len(group) <= k:
            out.append(group)
            continue
        order = sequential_order(group, branches)
        out += [order[i : i + k] for i in range(0, len(order), k)]
    return out


def share_plan(
    group: list[str],
    earlier: Sequence[list[str]],
    earlier_plans: Sequence[dict],
    branches: dict[str, CompiledBranch],
    share_prefix: bool = True,
) -> dict:
    """How a forward shares blocks: within its rows, and (single-branch forwards) with an earlier forward.

    within: prompt -> its branches in this forward, edited latest first; at block i the rows of
    those unedited through block i take the rows of the first of them.
    replay: (depth, donor): blocks < depth are unedited in both this branch and the donor, which an
    earlier forward evaluated, so this forward reuses the donor's output of block depth - 1.
    """
    plan: dict = {"within": {}, "replay": None}
    if not share_prefix:
        return plan
    br = branches
    for prompt in dict.fromkeys(br[k].prompt for k in group):
        members = sorted((k for k in group if br[k].prompt == prompt), key=lambda k: -br[k].first_edit)
        if len(members) > 1:
            plan["within"][prompt] = members
    if len(group) != 1:
        return plan
    k = group[0]
    best = None
    for g, p in zip(earlier, earlier_plans):
        # A donor that itself replayed holds real outputs only from its own replay depth on.
        own = p["replay"][0] if p["replay"] is not None else 0
        for d in g:
            if br[d].prompt != br[k].prompt:
                continue
            depth = min(br[d].first_edit, br[k].first_edit)
            if depth >= max(own, 1) and (best is None or depth > best[0]):
                best = (depth, d)
    plan["replay"] = best
    return plan


def plan_step(groups: list[list[str]], branches: dict[str, CompiledBranch], share_prefix: bool = True) -> list[dict]:
    """The sharing plan of every forward of a step, in order (each may replay from earlier ones)."""
    plans: list[dict] = []
    for group in groups:
        plans.append(share_plan(group, groups[: len(plans)], plans, branches, share_prefix))
    return plans


def representative_rows(
    plan: dict, group: list[str], branches: dict[str, CompiledBranch], batch: int, num_blocks: int
) -> dict[int, torch.Tensor]:
    """Within-forward sharing as row maps: block index -> for every row of the stacked call, the row
    whose output it takes (itself if it does not share). Blocks with no sharing are absent."""
    out: dict[int, torch.Tensor] = {}
    if not plan["within"]:
        return out
    total = batch * len(group)
    for i in range(num_blocks):
        rep = torch.arange(total)
        shared = False
        for members in plan["within"].values():
            alive = [k for k in members if branches[k].first_edit > i]
            if len(alive) > 1:
                head = group.index(alive[0]) * batch
                for k in alive[1:]:
                    off = group.index(k) * batch
                    rep[off : off + batch] = torch.arange(head, head + batch)
                shared = True
        if shared:
            out[i] = rep
    return out
