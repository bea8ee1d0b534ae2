"""Cost accounting of guided sampling: block evaluations per sampling step.

One block evaluated on the caller's batch counts 1; a forward of the unedited model counts as many as
it has blocks, so NFE-equivalents are block evaluations / blocks per forward. A skipped block costs
0, a repeated one `times`, a block shared by branches (prefix sharing) is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .planner import CompiledBranch


@dataclass
class StepCost:
    step: int
    sigma: float | None
    branches: list[str] = field(default_factory=list)  # branches evaluated (deduplicated)
    forwards: int = 0  # transformer forward calls
    block_evals: float = 0.0  # one block on the caller's batch counts 1


@dataclass
class CostReport:
    """Block evaluations per sampling step of the last run (reset when a new run starts)."""

    blocks_per_forward: int
    steps: list[StepCost] = field(default_factory=list)

    @property
    def block_evals(self) -> float:
        return sum(s.block_evals for s in self.steps)

    @property
    def nfe(self) -> float:
        """NFE-equivalents: block evaluations / blocks per forward (a plain forward counts 1)."""
        return self.block_evals / self.blocks_per_forward

    @property
    def forwards(self) -> int:
        return sum(s.forwards for s in self.steps)

    @property
    def block_evals_per_step(self) -> list[float]:
        return [s.block_evals for s in self.steps]

    @property
    def nfe_per_step(self) -> list[float]:
        return [s.block_evals / self.blocks_per_forward for s in self.steps]

    def step(self, index: int, sigma: float | None) -> StepCost:
        if not self.steps or self.steps[-1].step != index:
            self.steps.append(StepCost(index, sigma))
        return self.steps[-1]

    def to_dict(self) -> dict:
        return {
            "blocks_per_forward": self.blocks_per_forward,
            "block_evals": self.block_evals,
            "nfe": self.nfe,
            "forwards": self.forwards,
            "steps": [vars(s) | {"branches": list(s.branches)} for s in self.steps],
        }


def planned_evals(group: list[str], plan: dict, branches: dict[str, CompiledBranch], num_blocks: int) -> int:
    """Block evaluations (per row) of one forward of `group`, from the edit plans and the sharing plan."""
    start = {k: 0 for k in group}
    for members in plan["within"].values():
        for k in members[1:]:  # blocks before its first edit run on the head's rows
            start[k] = branches[k].first_edit
    if plan["replay"] is not None:
        start[group[0]] = plan["replay"][0]
    return sum(branches[k].evals_from(start[k], num_blocks) for k in group)
