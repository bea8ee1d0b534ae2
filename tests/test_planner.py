"""The step planner and cost accounting of guided sampling, with no model: pure functions over
compiled branches (ditguide.guidance.planner / cost)."""

from types import SimpleNamespace

import torch

from ditguide.guidance.cost import planned_evals
from ditguide.guidance.planner import CompiledBranch, forward_groups, plan_step, representative_rows

BLOCKS = 6


def branch(key, prompt, first_edit, skips=()):
    """A branch whose edits start at `first_edit`; blocks in `skips` are skipped, others edited once."""
    plans = {
        i: SimpleNamespace(skips_block=i in skips, times=1)
        for i in range(first_edit, BLOCKS)
        if i == first_edit or i in skips
    }
    return CompiledBranch(key, prompt, bool(plans), first_edit, key, plans)


BRANCHES = {
    "cond": branch("cond", "pos", BLOCKS),  # unedited
    "uncond": branch("uncond", "neg", BLOCKS),
    "weak": branch("weak", "pos", 2, skips=(2,)),  # skips block 2
    "strong": branch("strong", "pos", 4),  # scales block 4
}
ALIAS = {k: k for k in BRANCHES}


def test_sequential_order_puts_donors_first_within_a_prompt():
    groups = forward_groups(["weak", "uncond", "strong", "cond"], BRANCHES, "sequential", ALIAS)
    assert groups == [
        ["cond"],
        ["strong"],
        ["weak"],
        ["uncond"],
    ]  # pos first (order of first appearance), latest edit first


def test_replay_takes_the_deepest_donor_on_the_same_prompt_only():
    groups = forward_groups(["cond", "uncond", "strong", "weak"], BRANCHES, "sequential", ALIAS)
    plans = plan_step(groups, BRANCHES)
    by_key = {g[0]: p for g, p in zip(groups, plans)}
    assert by_key["cond"]["replay"] is None
    assert by_key["strong"]["replay"] == (4, "cond")  # blocks 0-3 shared with cond
    # strong replayed blocks 0-3, so it holds real outputs only from block 4 on: weak replays from cond
    assert by_key["weak"]["replay"] == (2, "cond")
    assert by_key["uncond"]["replay"] is None  # another prompt shares nothing
    assert plan_step(groups, BRANCHES, share_prefix=False) == [{"within": {}, "replay": None}] * 4


def test_batched_sharing_maps_rows_to_their_representative():
    group = ["cond", "weak", "uncond"]
    (plan,) = plan_step([group], BRANCHES)
    assert plan["within"] == {"pos": ["cond", "weak"]} and plan["replay"] is None
    rows = representative_rows(plan, group, BRANCHES, batch=2, num_blocks=BLOCKS)
    assert sorted(rows) == [0, 1]  # weak is unedited (and shares) only before its first edit, block 2
    assert rows[0].tolist() == [0, 1, 0, 1, 4, 5]  # weak's rows 2-3 take cond's 0-1; uncond's stay
    assert torch.equal(rows[0], rows[1])


def test_planned_cost_counts_shared_and_skipped_blocks_once():
    groups = [["cond"], ["strong"], ["weak"]]
    plans = plan_step(groups, BRANCHES)
    evals = [planned_evals(g, p, BRANCHES, BLOCKS) for g, p in zip(groups, plans)]
    assert evals[0] == BLOCKS  # the full model
    assert evals[1] == BLOCKS - 4  # blocks 4, 5 only (0-3 replayed from cond)
    assert evals[2] == (BLOCKS - 2) - 1  # blocks 2-5 minus the skipped block 2
    (batched,) = plan_step([["cond", "weak"]], BRANCHES)
    assert planned_evals(["cond", "weak"], batched, BRANCHES, BLOCKS) == BLOCKS + (BLOCKS - 2 - 1)
