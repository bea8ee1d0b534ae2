"""Every notebook runs through papermill with tiny parameters, writing into a temporary root."""

import json
from pathlib import Path

import pytest

from ditguide.notebook import run_notebook, stage_parameters
from ditguide.profiles import load_params
from tiny_profiles import TINY_PROFILES, tiny_params, tiny_params_file

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))

# Tiny parameters per notebook: enough to run every cell, small enough for CI.
TINY = {
    # the committed testbed model and one trained twin; 3 seed sets of 10 samples, one CFG scale.
    "00_testbed_t2i": {
        "per_set": 10,
        "seed_sets": 3,
        "cfg_scales": [3.0],
        "twins": {"twin_shallow": "data/scenes/twin_shallow"},
        "batch_size": 16,
    },
    # two blocks, one noise level, 3 seed sets of 3 captions; the committed testbed, twins and judge.
    "01_layer_analysis": {
        "denoiser_samples": 4,
        "t_grid": [0.5],
        "per_set": 5,
        "seed_sets": 3,
        "edits": ["skip", "scale1.5"],
        "window_edits": ["skip"],
        "scan_blocks": ["double:1", "single:4"],
        "twins": {"twin_shallow": "data/scenes/twin_shallow"},
    },
    # every family with one configuration, 3 seed sets of 10 captions, 3 sampling steps, no timing.
    "02_guidance_design": {
        "dev": {"split": "dev", "per_set": 10, "seed_sets": 3, "base_seed": 1000},
        "test": {"split": "test", "per_set": 10, "seed_sets": 3, "base_seed": 0},
        "budget": {"configs": 1, "keep": 1, "seed": 0},
        "weak_candidates": 1,
        "strong_candidates": 1,
        "grid": {
            k: (v if isinstance(v, list) else v["scenes"])[-1:]
            for k, v in load_params(REPO / "params.yaml")["guidance_design"]["grid"].items()
        },
        "twins": {"twin_shallow": "data/scenes/twin_shallow"},
        "steps": 3,
        "timing": False,
    },
    # the committed T2V testbed: 3 seed sets of 10 clips, one CFG scale, its two Wan baselines and the twin.
    "00_testbed_t2v": {
        "profile": "clips",
        "per_set": 10,
        "seed_sets": 3,
        "cfg_scales": [3.0],
        "batch_size": 30,
        "threads": 1,
    },
    "03_evaluate_t2i": {
        "profile": "toy",
        "benchmark_options": {"samples_per_class": 3},
        "batch_size": 7,
        "cfg_scales": [3.0],
        "specs": [],
    },
    # tiny-wan: random weights; 2 prompts x 2 seeds, VBench's weight-free dimension only, on the CPU.
    "04_evaluate_t2v": {
        "profile": "tiny-wan",
        "benchmark_options": {
            "dimensions": ["temporal_flickering"],
            "limit": 2,
            "samples_per_prompt": 2,
            "vbench_device": "cpu",
        },
        "specs": [],  # none and cfg: the test of notebook 04's cells, not of a spec (test_evaluation_real has one)
    },
}

# The DVC stage (params.yaml section) of each notebook, where it is not the name after the number.
STAGES = {"00_testbed_t2v": "evaluate_t2v_toy"}

# Files each notebook must write under its output root (relative, {profile} filled in).
EXPECTED = {
    "01_layer_analysis": [
        "data/analysis/{profile}/layer_scores.json",
        "figures/layer_map_{profile}_edits.pdf",
        "figures/layer_map_{profile}_windows.pdf",
        "figures/layer_map_{profile}_alignment.pdf",
    ],
    "00_testbed_t2i": [
        "metrics/testbed_{profile}.json",
        "figures/testbed_{profile}_ucurve.pdf",
        "figures/testbed_{profile}_samples.pdf",
        "paper/tables/testbed_{profile}.tex",
    ],
    "02_guidance_design": [
        "data/guidance/{profile}/selected.json",
        "data/guidance/{profile}/search.json",
        "metrics/guidance_{profile}.json",
        "figures/guidance_{profile}_pareto.pdf",
        "figures/guidance_{profile}_compute.pdf",
        "figures/guidance_{profile}_samples.pdf",
        "paper/tables/guidance_{profile}.tex",
    ],
    "00_testbed_t2v": [
        "metrics/t2v_toy.json",
        "figures/t2v_toy_ucurve.pdf",
        "figures/t2v_toy_samples.pdf",
        "paper/tables/t2v_toy.tex",
    ],
    "03_evaluate_t2i": [
        "metrics/t2i_{profile}.json",
        "figures/t2i_{profile}_samples.pdf",
        "figures/t2i_{profile}_tradeoff.pdf",
        "paper/tables/t2i_{profile}.tex",
    ],
    "04_evaluate_t2v": [
        "metrics/t2v_{profile}.json",
        "figures/t2v_{profile}_frames.pdf",
        "figures/t2v_{profile}_dimensions.pdf",
        "paper/tables/t2v_{profile}.tex",
        "paper/tables/t2v_{profile}_dimensions.tex",
    ],
}


def _stage_parameters(stage: str, overrides: dict) -> dict:
    """The notebook parameters `python -m ditguide.notebook --stage STAGE -p ...` passes; a tiny test
    profile (tests/params_tiny.yaml) comes with a params file that holds it."""
    if overrides.get("profile") in TINY_PROFILES:
        return stage_parameters(stage, tiny_params(), overrides, params_file=tiny_params_file())
    return stage_parameters(stage, load_params(REPO / "params.yaml"), overrides)


def test_every_notebook_has_tiny_parameters():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.stem for p in NOTEBOOKS} == set(TINY), "add tiny parameters for every notebook"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_parameters(source, tmp_path):
    stage = STAGES.get(source.stem, source.stem.split("_", 1)[1])
    profile = {k: v for k, v in TINY[source.stem].items() if k == "profile"}  # validated with the stage, as -p does
    params = _stage_parameters(stage, profile)
    params.update(TINY[source.stem], output_root=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    out = run_notebook(source, tmp_path / "executed.ipynb", params, cwd=REPO)
    assert out.is_file()
    for rel in EXPECTED[source.stem]:
        assert (tmp_path / rel.format(profile=params["profile"])).is_file(), rel
    if stage == "evaluate_t2i":
        metrics = json.loads((tmp_path / f"metrics/t2i_{params['profile']}.json").read_text())
        assert set(metrics["methods"]) == {"none", "cfg", "cfg@3"}
        assert metrics["count"] == 30
        for m in metrics["methods"].values():
            assert 0 <= m["accuracy"] <= 1 and m["fd"] >= 0
    if stage == "layer_analysis":
        scores = json.loads((tmp_path / f"data/analysis/{params['profile']}/layer_scores.json").read_text())
        assert scores["blocks"] == ["double:1", "single:4"]
        assert len(scores["denoiser"]["alignment"]) == 2 * 2 + 1  # 2 edits x 2 blocks + the twin
        assert len(scores["generation"]["records"]) == 2 * 2 + 2 * 3  # all steps + skip in 3 windows
        assert {"weak", "strong", "twin_alignment"} <= set(scores["candidates"])
    if stage == "guidance_design":
        metrics = json.loads((tmp_path / f"metrics/guidance_{params['profile']}.json").read_text())
        methods = metrics["test"]["methods"]
        assert metrics["selected"] in methods and methods[metrics["selected"]]["family"] in ("ours", "ours_full")
        assert {"none", "cfg@1.5"} <= set(methods) and {"ablation", "cfg_more_steps", "ag_twin"} <= {
            m["family"] for m in methods.values()
        }
        for m in methods.values():
            assert len(m["per_set"]) == 3 and m["fd"] > 0 and 0 <= m["all"] <= 1 and m["nfe_per_step"] > 0
        for ref in ("cfg_default", "cfg_best"):
            change = metrics["comparison"][ref]["changes"]["fd"]
            assert change["lo"] <= change["rel"] <= change["hi"] and change["seed_sets"] == 3
        selected = json.loads((tmp_path / f"data/guidance/{params['profile']}/selected.json").read_text())
        from ditguide.guidance import GuidanceSpec

        GuidanceSpec.from_dict(selected["spec"])
    if stage == "testbed_t2i":
        metrics = json.loads((tmp_path / f"metrics/testbed_{params['profile']}.json").read_text())
        assert set(metrics["methods"]) == {"none", "cfg@3", "ag_twin_shallow"}
        for m in metrics["methods"].values():
            assert m["count"] == 30 and 0 <= m["all"] <= 1 and m["fd"] > 0 and m["fd_se"] > 0
        assert metrics["methods"]["ag_twin_shallow"]["nfe_per_step"] == 1 + 4 / 12
        assert set(metrics["regime"]) >= {"best_cfg_scale", "alignment_rises_with_scale"}


def test_evaluation_notebook_runs_the_selected_preset_on_the_scene_testbed(tmp_path):
    """Notebook 03 unchanged on the glyph-scene testbed: its benchmark, and the preset notebook 02 selected
    (data/guidance/scenes/selected.json) beside no guidance and CFG at the profile's default."""
    params = stage_parameters("evaluate_t2i", load_params(REPO / "params.yaml"), {"profile": "scenes"})
    params.update(
        benchmark_options={"per_set": 10, "seed_sets": 3},
        cfg_scales=[],
        batch_size=30,
        output_root=str(tmp_path),
        runs_dir=str(tmp_path / "runs"),
    )
    run_notebook(REPO / "notebooks/03_evaluate_t2i.py", tmp_path / "executed.ipynb", params, cwd=REPO)
    metrics = json.loads((tmp_path / "metrics/t2i_scenes.json").read_text())
    assert list(metrics["methods"]) == ["cfg", "none", "selected:scenes"]  # (sorted keys)
    from ditguide.guidance import GuidanceSpec, selected_preset

    spec = GuidanceSpec.from_dict(selected_preset("scenes")).to_dict()
    assert metrics["methods"]["selected:scenes"]["spec"] == spec  # the spec of data/guidance/scenes/selected.json
    assert metrics["methods"]["selected:scenes"]["nfe_per_step"] == 2.0  # CFG's cost, as the rule required
    for m in metrics["methods"].values():
        assert m["count"] == 30 and m["fd"] > 0 and 0 <= m["all"] <= 1
    assert metrics["split"] == "test" and metrics["floor"]["fd"] > 0
    for rel in EXPECTED["03_evaluate_t2i"]:
        assert (tmp_path / rel.format(profile="scenes")).is_file(), rel


def test_bad_profile_fails_before_work(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["profile"] = "flux-devv"
    with pytest.raises(
        ValueError,
        match=r"profile='flux-devv' is not allowed; allowed: clips, cogview4, flux-dev, scenes, toy, wan2.1-t2v-1.3b$",
    ):
        stage_parameters("evaluate_t2i", params)


def test_layer_analysis_notebook_runs_on_the_video_testbed(tmp_path):
    """Notebook 01 unchanged on the T2V testbed: its bed (sampled D*, exact clip judges) and its twin."""
    params = stage_parameters("layer_analysis", load_params(REPO / "params.yaml"), {"profile": "clips"})
    params.update(
        denoiser_samples=2,
        t_grid=[0.5],
        per_set=3,
        seed_sets=3,
        edits=["skip"],
        window_edits=["skip"],
        scan_blocks=["blocks:0", "blocks:7"],
        output_root=str(tmp_path),
        runs_dir=str(tmp_path / "runs"),
    )
    run_notebook(REPO / "notebooks/01_layer_analysis.py", tmp_path / "executed.ipynb", params, cwd=REPO)
    scores = json.loads((tmp_path / "data/analysis/clips/layer_scores.json").read_text())
    assert scores["blocks"] == ["blocks:0", "blocks:7"]
    assert {r["edit"] for r in scores["denoiser"]["alignment"]} >= {
        "skip",
        "twin:twin_early",
    }  # the twin next to the model
    assert len(scores["denoiser"]["ideal_agreement"]) == 1
    assert len(scores["generation"]["records"]) == 2 + 2 * 3 and "d_semantic" in scores["generation"]["records"][0]
    for name in ("edits", "windows", "alignment"):
        assert (tmp_path / f"figures/layer_map_clips_{name}.pdf").is_file()


def test_layer_analysis_notebook_runs_on_a_real_profile(tmp_path):
    """Notebook 01 unchanged on a real profile (tiny-flux: random weights, a fake COCO dev split, tiny judges):
    the GPU-time estimate printed before the scan, residuals without D*, small-N scores, the figures."""
    from test_analysis_real import prepare_coco_dev

    data = prepare_coco_dev(tmp_path / "coco2017")
    params = _stage_parameters("layer_analysis", {"profile": "tiny-flux"})
    params.update(
        denoiser_samples=2,
        t_grid=[0.9, 0.3],
        per_set=3,
        seed_sets=3,
        edits=["skip"],
        window_edits=["skip"],
        scan_blocks=["double:0", "single:1"],
        real={"data_dir": str(data), "resolution": 256, "batch_size": 4, "device": "cpu"},
        output_root=str(tmp_path),
        runs_dir=str(tmp_path / "runs"),
    )
    out = run_notebook(REPO / "notebooks/01_layer_analysis.py", tmp_path / "executed.ipynb", params, cwd=REPO)
    printed = out.read_text()
    assert "Estimated GPU time of the configured scan" in printed and "error alignment: not computed" in printed
    scores = json.loads((tmp_path / "data/analysis/tiny-flux/layer_scores.json").read_text())
    assert scores["denoiser"]["alignment"] is None and len(scores["denoiser"]["residuals"]) == 2 * 2
    assert len(scores["generation"]["records"]) == 2 + 2 * 3 and "d_fid_small_n" in scores["generation"]["records"][0]
    assert scores["cost_estimate"]["configs"] == 1 + 2 + 2 * 3 and scores["candidates"]["weak"] == []
    assert "real profiles" in scores["schema"]
    for name in ("edits", "windows", "alignment"):
        assert (tmp_path / f"figures/layer_map_tiny-flux_{name}.pdf").is_file()


def test_guidance_design_notebook_runs_on_the_video_testbed(tmp_path):
    """Notebook 02 unchanged on the T2V testbed: clip captions, the exact clip judges, the
    VBench-shaped Total as the objective (higher is better), the early twin found next to the model."""
    params = stage_parameters(
        "guidance_design",
        load_params(REPO / "params.yaml"),
        {"profile": "clips", "layer_scores": "data/analysis/clips/layer_scores.json"},
    )
    params.update(TINY["02_guidance_design"], output_root=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    params.pop("twins")  # None: discovered next to the clips model
    grid = load_params(REPO / "params.yaml")["guidance_design"]["grid"]
    params["grid"] = {k: (v if isinstance(v, list) else v["clips"])[-1:] for k, v in grid.items()}
    run_notebook(REPO / "notebooks/02_guidance_design.py", tmp_path / "executed.ipynb", params, cwd=REPO)
    metrics = json.loads((tmp_path / "metrics/guidance_clips.json").read_text())
    assert metrics["rule"]["objective"] == "total" and metrics["rule"]["alignment"] == "semantic"
    methods = metrics["test"]["methods"]
    assert metrics["selected"] in methods
    assert {m["method"]["twin"] for m in methods.values() if m["family"] == "ag_twin"} == {"twin_early"}
    for m in methods.values():
        assert len(m["per_set"]) == 3 and 0 <= m["total"] <= 1 and 0 <= m["semantic"] <= 1 and "fd" not in m
    change = metrics["comparison"]["cfg_default"]["changes"]["total"]
    assert change["lo"] <= change["rel"] <= change["hi"] and change["seed_sets"] == 3
    assert metrics["test"]["floor"]["total"] > 0.9  # real renders, scored like the samples
    for name in ("pareto", "compute", "samples"):
        assert (tmp_path / f"figures/guidance_clips_{name}.pdf").is_file()
    assert "Total" in (tmp_path / "paper/tables/guidance_clips.tex").read_text()
