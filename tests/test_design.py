"""The guidance design (ditguide.testbeds.design): our spec's equivalences, the selection rule, the budget,
the paired intervals, parameter checks, and the selected preset as a named preset."""

import json
import math

import numpy as np
import pytest

from ditguide.guidance import GuidanceSpecError, preset
from ditguide.profiles import ConfigError, load_params, load_pipeline, load_profile
from ditguide.render import PipelineRenderer
from ditguide.testbeds import design, scenes

LAYER_SCORES = {
    "candidates": {
        "weak": [{"spec": "temperature(2):single:6"}, {"spec": "skip_ff:single:0"}, {"spec": "skip:single:5"}],
        "strong": [
            {
                "edit": "skip_ff",
                "block": "single:3",
                "window": "all",
                "spec": "skip_ff:single:3",
            },  # weakens: not strong
            {"edit": "scale1.5", "block": "single:3", "window": "early", "spec": "scale(1.5):single:3"},
            {
                "edit": "scale1.5",
                "block": "single:3",
                "window": "all",
                "spec": "scale(1.5):single:3",
            },  # same block again
            {"edit": "scale1.5", "block": "single:8", "window": "all", "spec": "scale(1.5):single:8"},
        ],
    }
}


@pytest.fixture(scope="module")
def scenes_pipe():
    prof = load_profile("scenes", load_params("params.yaml"))
    return prof, load_pipeline(prof)


def _render(prof, pipe, steps=3, **kw):
    captions = [s.caption() for s in scenes.caption_set("dev", 3)]
    r = PipelineRenderer(prof, pipe, steps=steps, base_seed=7, **kw)
    return np.stack(r.render(captions, [0, 1, 2])), r


def test_candidates_keep_strengthening_edits_one_per_block():
    c = design.candidates(LAYER_SCORES, 2, 5)
    assert c["weak"] == ["temperature(2):single:6", "skip_ff:single:0"]
    assert c["strong"] == [
        {"spec": "scale(1.5):single:3", "window": "early"},
        {"spec": "scale(1.5):single:8", "window": "all"},
    ]
    with pytest.raises(ConfigError, match="at least one of each"):
        design.candidates({"candidates": {"weak": [], "strong": LAYER_SCORES["candidates"]["strong"]}}, 2, 2)


def _record(edit, block, window, d_sem, se_sem, d_q, se_q):
    return {
        "edit": edit,
        "block": block,
        "window": window,
        "d_semantic": d_sem,
        "d_semantic_se": se_sem,
        "d_quality": d_q,
        "d_quality_se": se_q,
    }


def test_candidates_fall_back_to_the_best_strengthening_estimates_when_none_clears_2_se():
    """A map with no significant strengthening edit: with the bed given, the strong edits are the
    strengthening records with a positive improvement, ranked in SE units, one per block, labelled;
    weakening records and records that only get worse are never chosen. Without a bed, one clear error."""
    from ditguide.testbeds.beds import ClipsBed

    scores = {
        "candidates": {"weak": [{"spec": "skip:blocks:2"}], "strong": []},
        "generation": {
            "records": [
                _record("skip", "blocks:0", "all", 0.5, 0.01, 0.5, 0.01),  # weakens: never strong
                _record("scale1.5", "blocks:1", "all", 0.01, 0.01, -0.02, 0.01),  # 1 SE on semantic
                _record("scale1.5", "blocks:4", "early", -0.01, 0.01, 0.018, 0.01),  # 1.8 SE on quality
                _record("scale1.5", "blocks:4", "all", 0.015, 0.01, 0.0, 0.01),  # same block, 1.5 SE: dropped
                _record("scale1.5", "blocks:6", "all", -0.01, 0.01, -0.01, 0.01),  # worse on both
            ]
        },
    }
    c = design.candidates(scores, 1, 5, ClipsBed())
    assert c["strong"] == [
        {"spec": "scale(1.5):blocks:4", "window": "early"},
        {"spec": "scale(1.5):blocks:1", "window": "all"},
    ]
    assert c["strong_basis"] == "best estimate, none > 2 SE"
    assert "strong_basis" not in design.candidates(LAYER_SCORES, 2, 5, ClipsBed())  # significant ones win
    with pytest.raises(ConfigError, match="0 strengthening strong candidates"):
        design.candidates(scores, 1, 5)
    scores["generation"]["records"] = scores["generation"]["records"][-1:]
    with pytest.raises(ConfigError, match="at least one of each"):
        design.candidates(scores, 1, 5, ClipsBed())


def test_ours_spec_terms_and_windows():
    d = design.ours_spec(2.0, {"spec": "scale(1.5):single:3", "window": "early"}, "skip:single:5")
    assert d["branches"] == {
        "cond_strong": {"prompt": "pos", "edits": "scale(1.5):single:3"},
        "uncond_weak": {"prompt": "neg", "edits": "skip:single:5"},
    }
    assert [(t["plus"], t["minus"], t["interval"]) for t in d["terms"]] == [
        ("cond_strong", "uncond_weak", [0.0, 1 / 3]),
        ("cond", "uncond_weak", [1 / 3, 1.0]),
    ]
    plain = design.ours_spec(2.0, None, None)
    assert plain["branches"] == {} and [(t["plus"], t["minus"]) for t in plain["terms"]] == [("cond", "uncond")]


def test_ours_with_no_op_edits_is_the_pipelines_own_cfg(scenes_pipe):
    """Identity edits on both sides (alpha 1) must reproduce the pipeline's own CFG bit for bit."""
    prof, pipe = scenes_pipe
    native, _ = _render(prof, pipe, cfg_scale=2.0)
    spec = design.ours_spec(2.0, {"spec": "scale(1):single:3", "window": "all"}, "scale(1):single:6")
    ours, r = _render(prof, pipe, guidance=spec)
    np.testing.assert_array_equal(ours, native)
    assert r.last_cost.nfe / 3 == pytest.approx(2.0)  # CFG's cost: one strong and one weak forward per step


def test_ours_with_real_edits_changes_the_samples(scenes_pipe):
    prof, pipe = scenes_pipe
    native, _ = _render(prof, pipe, cfg_scale=2.0)
    spec = design.ours_spec(2.0, {"spec": "scale(1.5):single:8", "window": "all"}, "skip:single:5")
    ours, _ = _render(prof, pipe, guidance=spec)
    assert np.abs(ours.astype(int) - native.astype(int)).max() > 0


def test_choose_applies_the_rule_and_flags_infeasible():
    rule = {"objective": "fd", "alignment": "all", "max_nfe_per_step": 2.0}
    entries = {
        "a": {"fd": 10.0, "all": 0.05, "nfe_per_step": 2.0},  # best FD but below the alignment floor
        "b": {"fd": 20.0, "all": 0.10, "nfe_per_step": 2.0},
        "c": {"fd": 15.0, "all": 0.12, "nfe_per_step": 3.0},
    }  # feasible only without the cost cap
    assert design.choose(entries, rule, 0.08, cost_cap=True) == ("b", True)
    assert design.choose(entries, rule, 0.08, cost_cap=False) == ("c", True)
    assert design.choose(entries, rule, 0.5, cost_cap=True) == ("c", False)  # none qualifies: best alignment


def test_paired_change_by_hand():
    m = {"per_set": [{"fd": 90.0}, {"fd": 80.0}, {"fd": 100.0}]}
    r = {"per_set": [{"fd": 100.0}, {"fd": 100.0}, {"fd": 100.0}]}
    out = design.paired_change(m, r, "fd")
    rel = np.array([-0.1, -0.2, 0.0])
    half = 4.303 * rel.std(ddof=1) / math.sqrt(3)
    assert (
        out["rel"] == pytest.approx(-0.1)
        and out["lo"] == pytest.approx(-0.1 - half)
        and out["hi"] == pytest.approx(-0.1 + half)
    )


def test_budget_is_a_deterministic_subset_in_order():
    configs = [design.Method(f"m{i}", "f", f"m{i}") for i in range(10)]
    a, b = design.budgeted(configs, 4, seed=3), design.budgeted(configs, 4, seed=3)
    assert a == b and len(a) == 4
    assert [configs.index(m) for m in a] == sorted(configs.index(m) for m in a)
    assert design.budgeted(configs[:3], 4, seed=3) == configs[:3]


def test_every_family_gets_at_most_the_budget():
    params = load_params("params.yaml")
    p = design.design_params(params["guidance_design"], "scenes")
    fams = design.families(design.candidates(LAYER_SCORES, 3, 2), p["grid"], 1.5, {"twin_shallow": "x"})
    assert {
        "cfg",
        "cfg_zero_star",
        "apg",
        "guidance_interval",
        "ag_skip",
        "ag_twin",
        "slg",
        "stg",
        "pag",
        "weak_negative",
        "ours",
        "ours_full",
    } <= set(fams)
    for fam, configs in fams.items():
        assert len({m.name for m in configs}) == len(configs), fam
        assert len(design.budgeted(configs, p["budget"]["configs"], 0)) <= p["budget"]["configs"]
    for m in fams["ours"]:
        assert sum(t["rule"] == "cfg" for t in m.spec["terms"]) >= 1


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p.__setitem__("budget", {"configs": 2, "keep": 3}), "keep <= configs"),
        (lambda p: p["dev"].__setitem__("seed_sets", 2), "seed_sets >= 3"),
        (lambda p: p["test"].__setitem__("split", "dev"), "tune on dev, report on test"),
        (lambda p: p["select"]["scenes"].__setitem__("objective", "fid"), "objective and alignment must be metrics"),
        (lambda p: p["select"].pop("scenes"), "select has no rule for profile 'scenes'"),
        (lambda p: p["dev"]["per_set"].pop("scenes"), "dev.per_set has no entry for profile 'scenes'"),
        (lambda p: p["grid"].__setitem__("cfg_scales", "2"), "grid.cfg_scales"),
        (lambda p: p["grid"]["ours_scales"].pop("scenes"), "grid.ours_scales has no entry for profile 'scenes'"),
        (lambda p: p.pop("weak_candidates"), "weak_candidates"),
    ],
)
def test_bad_design_parameters_fail_with_one_message(change, match):
    import copy

    p = copy.deepcopy(load_params("params.yaml")["guidance_design"])
    change(p)
    with pytest.raises(ConfigError, match=match):
        design.design_params(p, "scenes")


def test_design_parameters_resolve_per_testbed():
    section = load_params("params.yaml")["guidance_design"]
    for profile, objective in (("scenes", "fd"), ("clips", "total")):
        p = design.design_params(section, profile)
        assert p["select"]["objective"] == objective
        assert p["dev"]["per_set"] == section["dev"]["per_set"][profile]
        assert p["test"]["per_set"] == section["test"]["per_set"][profile]


def test_a_rule_must_name_metrics_of_its_testbed_and_knows_their_direction():
    from ditguide.testbeds.design_scoring import ClipsScoring, ScenesScoring

    # FD exists on the scenes only; the clips' Total is higher-is-better
    with pytest.raises(ConfigError, match="objective and alignment must be metrics"):
        design._rule({"objective": "fd", "alignment": "semantic"}, ClipsScoring)
    assert design._rule({"objective": "fd", "alignment": "all"}, ScenesScoring) == {
        "objective": "fd",
        "alignment": "all",
    }
    rule = design._rule({"objective": "total", "alignment": "semantic", "max_nfe_per_step": 2.0}, ClipsScoring)
    entries = {
        "low": {"total": 0.70, "semantic": 0.5, "nfe_per_step": 2.0},
        "high": {"total": 0.80, "semantic": 0.5, "nfe_per_step": 2.0},
        "highest_but_costly": {"total": 0.90, "semantic": 0.5, "nfe_per_step": 3.0},
        "highest_but_misaligned": {"total": 0.95, "semantic": 0.3, "nfe_per_step": 1.0},
    }
    assert design.choose(entries, rule, 0.4, cost_cap=True) == ("high", True)
    assert design.choose(entries, rule, 0.4, cost_cap=False) == ("highest_but_costly", True)


def test_selected_preset_is_a_named_preset(tmp_path, monkeypatch):
    import ditguide.guidance.presets as presets

    spec = design.ours_spec(2.0, {"spec": "scale(1.5):single:8", "window": "all"}, "skip:single:5")
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "selected.json").write_text(json.dumps({"spec": spec}))
    monkeypatch.setattr(presets, "SELECTED_ROOT", str(tmp_path))
    d = preset("selected:scenes")
    assert d["terms"] == spec["terms"] and d["name"] == "selected_scenes"
    with pytest.raises(GuidanceSpecError, match="takes no overrides"):
        preset("selected:scenes", scale=3.0)
    with pytest.raises(GuidanceSpecError, match="run the guidance_design stage"):
        preset("selected:clips")


def test_paired_change_is_undefined_not_infinite_when_the_reference_is_zero():
    m = {"per_set": [{"s": 0.1}, {"s": 0.0}, {"s": 0.2}]}
    r = {"per_set": [{"s": 0.1}, {"s": 0.0}, {"s": 0.1}]}
    out = design.paired_change(m, r, "s")
    assert out["rel"] is None and out["lo"] is None and "reference is 0" in out["undefined"]
    assert out["seed_sets"] == 3


def test_samples_rendered_counts_each_method_and_seed_set_once():
    """The reference on 3 sets; family a: x on set 0 only, y kept (3 sets); family cfg: the reference's
    own config again (kept: reused, not rendered twice) and z on set 0: 3 + 1 + 3 + 0 + 1 = 8 sets."""
    dev = {
        "reference": "cfg@1.5",
        "families": {
            "a": {"configs": [{"name": "x", "rung1": None}, {"name": "y", "rung1": {}}]},
            "cfg": {"configs": [{"name": "cfg@1.5", "rung1": {}}, {"name": "z", "rung1": None}]},
        },
    }
    assert design.samples_rendered(dev, per_set=10, seed_sets=3) == 80
