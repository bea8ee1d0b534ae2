"""VBench Quality / Semantic / Total against hand-computed values and published numbers."""

from __future__ import annotations

import json

import pytest

from ditguide.metrics import Samples, vbench_run
from ditguide.metrics import vbench_score as vb

# An invented but plausible model: raw per-dimension scores as VBench writes them.
RAW = {
    "subject_consistency": 0.95,
    "background_consistency": 0.96,
    "temporal_flickering": 0.98,
    "motion_smoothness": 0.98,
    "aesthetic_quality": 0.60,
    "imaging_quality": 0.65,
    "dynamic_degree": 0.70,
    "object_class": 0.85,
    "multiple_objects": 0.60,
    "human_action": 0.95,
    "color": 0.85,
    "spatial_relationship": 0.70,
    "scene": 0.45,
    "appearance_style": 0.22,
    "temporal_style": 0.24,
    "overall_consistency": 0.26,
}
# By hand, n = (x - Min) / (Max - Min) * weight:
#   subject     (0.95 - 0.1462) / 0.8538 = 0.941438      background (0.96 - 0.2615) / 0.7385 = 0.945836
#   flickering  (0.98 - 0.6293) / 0.3707 = 0.946048      smoothness (0.98 - 0.706) / 0.2915  = 0.939966
#   aesthetic 0.6, imaging 0.65, dynamic 0.70 * 0.5 = 0.35
#   Quality  = (0.941438 + 0.945836 + 0.946048 + 0.939966 + 0.6 + 0.65 + 0.35) / 6.5 = 5.373288 / 6.5 = 0.826660
#   scene 0.45 / 0.8222 = 0.547312, appearance (0.22 - 0.0009) / 0.2846 = 0.769852,
#   temporal style 0.24 / 0.364 = 0.659341, overall 0.26 / 0.364 = 0.714286
#   Semantic = (0.85 + 0.60 + 0.95 + 0.85 + 0.70 + 0.547312 + 0.769852 + 0.659341 + 0.714286) / 9 = 6.640791 / 9 = 0.737866
#   Total    = (4 * 0.826660 + 0.737866) / 5 = 0.808901
HAND = {"quality": 0.826660, "semantic": 0.737866, "total": 0.808901}


def test_dimension_lists_are_vbench_s():
    assert vb.DIMENSIONS == vbench_run.DIMENSIONS  # the copy that runs inside the VBench env
    assert len(vb.DIMENSIONS) == 16 and set(vb.QUALITY_DIMENSIONS) | set(vb.SEMANTIC_DIMENSIONS) == set(vb.DIMENSIONS)
    assert not set(vb.QUALITY_DIMENSIONS) & set(vb.SEMANTIC_DIMENSIONS)
    assert sum(vb.WEIGHTS[d] for d in vb.QUALITY_DIMENSIONS) == 6.5
    assert set(vbench_run.NEEDS_DETECTRON2) <= set(vb.SEMANTIC_DIMENSIONS)


def test_scores_against_hand_computation():
    assert vb.quality_score(RAW) == pytest.approx(HAND["quality"], abs=2e-6)
    assert vb.semantic_score(RAW) == pytest.approx(HAND["semantic"], abs=2e-6)
    assert vb.total_score(RAW) == pytest.approx(HAND["total"], abs=2e-6)
    scores = vb.vbench_scores(RAW)
    assert scores.total == pytest.approx(100 * HAND["total"], abs=2e-4)
    assert scores.normalized["dynamic_degree"] == pytest.approx(0.35)
    assert scores.normalized["temporal_flickering"] == pytest.approx(0.946048, abs=1e-6)


def test_bounds_give_0_and_100():
    lo = {d: vb.NORMALIZATION[d][0] for d in vb.DIMENSIONS}
    hi = {d: vb.NORMALIZATION[d][1] for d in vb.DIMENSIONS}
    assert vb.vbench_scores(lo).total == pytest.approx(0.0, abs=1e-12)
    top = vb.vbench_scores(hi)
    assert (top.total, top.quality, top.semantic) == pytest.approx((100.0, 100.0, 100.0))


def test_total_of_published_parts():
    # VBench leaderboard, Wan2.1-14B: quality 86.67%, semantic 84.44%, total 86.22%.
    assert 100 * vb.total_from_parts(0.8667, 0.8444) == pytest.approx(86.22, abs=0.01)
    # SANA-Video's evaluation of Wan2.1-1.3B: quality 85.67, semantic 74.22, total 83.38.
    assert 100 * vb.total_from_parts(0.8567, 0.7422) == pytest.approx(83.38, abs=0.01)


def test_missing_or_unknown_dimensions_are_errors():
    partial = {d: RAW[d] for d in vb.QUALITY_DIMENSIONS}
    assert vb.quality_score(partial) == pytest.approx(HAND["quality"], abs=2e-6)
    with pytest.raises(ValueError, match="the Semantic Score needs all of 9 dimensions; missing: object_class"):
        vb.semantic_score(partial)
    with pytest.raises(ValueError, match="missing: scene"):
        vb.total_score({d: v for d, v in RAW.items() if d != "scene"})
    with pytest.raises(ValueError, match=r"unknown VBench dimensions \['sharpness'\]"):
        vb.normalized_scores({"sharpness": 0.5})


def test_results_files(tmp_path):
    for d, x in RAW.items():
        (tmp_path / f"{d}.json").write_text(
            json.dumps({"dimension": d, "score": x, "n_videos": 5, "video_results": []})
        )
    assert vb.load_raw_scores(tmp_path) == RAW
    (tmp_path / "scene.json").unlink()
    with pytest.raises(FileNotFoundError, match="no VBench results for scene"):
        vb.load_raw_scores(tmp_path)
    native = tmp_path / "model_eval_results.json"
    native.write_text(json.dumps({"scene": [0.45, [{"video_path": "x", "video_results": 0.45}]], "color": [0.85, []]}))
    assert vb.raw_scores_from_eval_results(native) == {"scene": 0.45, "color": 0.85}


def test_missing_vbench_environment_says_how_to_create_it(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(vb.VBenchEnvironmentError, match=r"bash scripts/setup_vbench_env\.sh"):
        vb.run_vbench(tmp_path / "videos", tmp_path / "out", python=tmp_path / "nope" / "python", device="cpu")
    with pytest.raises(ValueError, match="device='tpu' is not allowed; allowed: cuda, cpu"):
        vb.run_vbench(tmp_path / "videos", tmp_path / "out", device="tpu")
    with pytest.raises(ValueError, match="VBench judges a folder of videos"):
        vb.VBench(tmp_path)(Samples.from_arrays([], [], kind="image"))
