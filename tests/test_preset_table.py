"""The README's preset tables are generated from PRESETS, and block addresses are checked (issue 14, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ditguide.denoiser import GuidanceError, GuidedDenoiser
from ditguide.guidance import GuidanceSpec, StepInfo, preset
from ditguide.preset_table import FAMILY_MODELS, family_model, readme_section, readme_tables, step_costs

REPO = Path(__file__).resolve().parents[1]


def test_readme_preset_tables_equal_the_generated_text():
    assert readme_section((REPO / "README.md").read_text()) == readme_tables(REPO)


def test_families_have_the_real_block_counts():
    counts = {
        k: len(family_model(k).transformer_blocks if k != "wan" else family_model(k).blocks) for k in FAMILY_MODELS
    }
    assert counts == {"flux": 19, "cogview4": 28, "wan": 30, "sd3": 24, "scenes": 2, "toy": 2}
    assert len(family_model("flux").single_transformer_blocks) == 38
    assert len(family_model("scenes").single_transformer_blocks) == 10


@pytest.mark.parametrize("method", ["apg", "autoguidance", "slg", "strong_weak", "cfg_zero_star"])
def test_cost_column_agrees_with_the_measured_nfe_of_the_toy(method):
    # metrics/t2i_toy.json records the NFE/step GuidedDenoiser counted while sampling (20 steps).
    m = json.loads((REPO / "metrics/t2i_toy.json").read_text())
    entry = m["methods"][method]
    costs = step_costs(GuidanceSpec.from_dict(entry["spec"]), family_model("toy"), steps=m["steps"])
    assert sum(costs) / len(costs) / 6 == pytest.approx(entry["nfe_per_step"], abs=1e-9)


def test_cost_counts_skipped_blocks_and_shared_prefixes():
    wan = family_model("wan")
    assert step_costs(GuidanceSpec.from_dict(preset("cfg")), wan, steps=4) == [60] * 4
    # STG: the perturbed branch skips blocks:2 and shares blocks 0-1 with cond: 30 + 30 + 27.
    assert step_costs(GuidanceSpec.from_dict(preset("stg")), wan, steps=4) == [87] * 4


@pytest.mark.parametrize(
    "blocks,message",
    [
        (["blocks:40"], r"block reference 'blocks:40' out of range: 'blocks' has 30 blocks \(valid: blocks:0\.\.29"),
        (["single:3"], r"unknown block list 'single' for family 'wan'; expected one of \['blocks'\]"),
        ([31], r"block index 31 out of range: this wan model has 30 blocks \(blocks:0\.\.29"),
    ],
)
def test_unknown_or_out_of_range_block_lists_the_valid_ones(blocks, message):
    with pytest.raises(GuidanceError, match=r"branches\.perturbed\.edits: .*" + message):
        GuidedDenoiser(family_model("wan"), preset("stg", blocks=blocks), clock=lambda: StepInfo(0, 1))
