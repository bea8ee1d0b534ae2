"""The T2V testbed's benchmark (`ditguide.benchmark.clips`) and the testbed evaluation stages (issue 13).

- hand-rendered clips written by `generate` through the benchmark's storage (PNG frame strips) and
  read back score exactly what the judges give the arrays: real renders 1.0 on every semantic dimension;
- mp4 files are refused (yuv420p changes these 12 px clips), bad options fail in one line naming them;
- notebook 04 runs on profile clips through `evaluate` (tiny), and the two stages evaluate the preset
  notebook 02 selected beside CFG at the default and at the best scale the guidance design found.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ditguide import evaluation
from ditguide.benchmark import Clips, get_benchmark
from ditguide.benchmark.clips import FrameStrips, from_strip, keys, score_sets, to_strip
from ditguide.evaluation import evaluate
from ditguide.metrics import Samples
from ditguide.metrics import clips as M
from ditguide.profiles import ConfigError, load_params, load_profile
from ditguide.testbeds import clips

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")
SEMANTIC = ("object_class", "multiple_objects", "color", "spatial_relationship", "motion")


class HandRenderer:
    """A video renderer that draws the generator's own clips (the real renders of notebook 00's ceiling:
    seed set k of `per_set` captions drawn with rng 1 + k), as uint8 frames."""

    kind = "video"
    fps = 4
    base_seed = 0

    def __init__(self, per_set: int):
        self.per_set = per_set

    def describe(self) -> dict:
        return {"renderer": "hand", "height": clips.SIZE, "width": clips.SIZE, "num_frames": clips.FRAMES}

    def render(self, prompts, indices):
        out = []
        for prompt, i in zip(prompts, indices):
            k, j = divmod(i, self.per_set)
            texts = [c.caption() for c in clips.caption_set("test", self.per_set)]
            assert texts[j] == prompt
            video = clips.render([clips.parse_caption(t) for t in texts], np.random.default_rng(1 + k))[0][j]
            out.append(np.round(video * 255).astype(np.uint8))
        return out


def test_frame_strips_round_trip():
    video = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    strip = to_strip(video)
    assert strip.shape == (12, 72, 3) and np.array_equal(strip[:, 12:24], video[1])
    assert np.array_equal(from_strip(strip, 6), video)
    with pytest.raises(ValueError, match="does not hold 5 frames"):
        from_strip(strip, 5)


def test_hand_rendered_clips_score_exactly_through_generate(tmp_path):
    """Real renders stored by `generate` as the benchmark asks (lossless frame strips) and read back:
    exactly the judges' numbers on the arrays, the header's ceiling row, 1.0 on every semantic dimension."""
    from ditguide.generate import generate

    bench = Clips(per_set=10, seed_sets=3)
    bench.prepare(load_profile("clips", PARAMS), device="cpu")
    prompts = [c.text for c in bench.captions()]
    assert [c.id for c in bench.captions()][:2] == ["test/0", "test/1"] and len(prompts) == bench.count() == 30
    renderer = bench.wrap_renderer(HandRenderer(10))
    assert isinstance(renderer, FrameStrips) and renderer.kind == "image" and renderer.base_seed == 0
    generate(renderer, prompts, tmp_path, batch_size=7, samples_per_prompt=1, progress=False)
    samples = Samples.from_dir(tmp_path, bench.count())
    assert samples.kind == "image" and samples.image(0).shape == (12, 72, 3)

    got = bench.score(samples)
    arrays = HandRenderer(10).render(prompts, list(range(30)))
    assert np.array_equal(bench.videos(samples), np.stack(arrays))  # lossless
    assert got == score_sets(np.stack(arrays), prompts, 10)
    assert got == bench.score(Samples.from_arrays(arrays, prompts, kind="video"))
    header = bench.header(load_profile("clips", PARAMS), 0, {"x": got})
    assert got == header["real"]  # the ceiling row is these renders
    assert set(got) == {*keys(), *(f"{k}_se" for k in keys()), "count", "seed_set_scores"} and got["count"] == 30
    assert np.mean([s["total"] for s in got["seed_set_scores"]]) == pytest.approx(got["total"], abs=1e-15)
    for d in (*SEMANTIC, "semantic", "shown_and_moving", "all_correct"):
        assert got[d] == 1.0 and got[f"{d}_se"] == 0.0, d
    # Quality and Total as VBench normalises them, from the mean dimensions of each seed set.
    per_clip = M.score_clips(np.stack(arrays), prompts)
    sets = [M.aggregate({k: v[i : i + 10] for k, v in per_clip.items()}) for i in (0, 10, 20)]
    assert got["seed_set_scores"] == [{k: s[k] for k in ("total", "quality", "semantic")} for s in sets]
    assert 0.95 < got["total"] < 1.0 and got["dynamic_degree"] < 1.0  # still captions are not dynamic
    # Chance: the same renders judged against caption i - 1.
    assert header["chance"]["semantic"] < 0.6 and header["chance"]["color"] < got["color"]


def test_the_judges_see_what_the_model_drew():
    """A clip of the wrong shape moving the wrong way scores 0 on object class and motion beside a right
    clip scoring 1: the benchmark reads the clips, not the captions. Colour is judged only on clips that
    show the captioned shape (as VBench's colour dimension), the pair dimensions only on pair captions."""
    captions = ["a red square moving left", "a blue triangle moving up left of a green circle staying still"]
    drawn = ["a red circle moving up", captions[1]]
    rendered = clips.render([clips.parse_caption(c) for c in drawn], np.random.default_rng(0))[0]
    videos = np.round(np.concatenate([rendered] * 3) * 255).astype(np.uint8)  # 3 seed sets of 2 clips
    got = score_sets(videos, captions * 3, 2)
    assert got["object_class"] == got["motion"] == got["shown_and_moving"] == got["all_correct"] == 0.5
    assert got["color"] == got["multiple_objects"] == got["spatial_relationship"] == 1.0
    assert got["object_class_se"] == 0.0 and got["count"] == 6


def test_mp4_clips_are_refused(tmp_path):
    """VBench-style mp4 samples halve the colour resolution: the benchmark says so instead of scoring them."""
    path = tmp_path / "a.mp4"
    path.write_bytes(b"")
    samples = Samples(kind="video", prompts=("a red square moving left",), paths=(path,))
    with pytest.raises(ValueError, match="scores lossless clips .*mp4 files halve the colour resolution"):
        Clips(per_set=10, seed_sets=3).videos(samples)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"split": "train"}, r"^split='train' is not allowed; allowed: dev, test, unseen$"),
        ({"per_set": 5}, r"^per_set=5 is not allowed; allowed: an integer >= 10$"),
        ({"seed_sets": 2}, r"^seed_sets=2 is not allowed; allowed: an integer >= 3 \(standard errors need them\)$"),
        ({"seed_sets": True}, r"^seed_sets=True is not allowed"),
        (
            {"per_sets": 10},
            r"^benchmark_options: 'per_sets' is not an option of benchmark 'clips'; allowed: split, per_set, seed_sets$",
        ),
    ],
    ids=lambda v: str(v)[:24],
)
def test_bad_options_fail_in_one_line_before_any_work(tmp_path, monkeypatch, options, message):
    monkeypatch.setattr(evaluation, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the options"))
    with pytest.raises(ConfigError, match=message):
        evaluate("clips", "clips", ["none"], options=options, params=PARAMS, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_the_clips_benchmark_fits_the_video_testbed_only():
    assert type(get_benchmark(None, load_profile("clips", PARAMS))) is Clips
    with pytest.raises(ConfigError, match=r"benchmark 'clips' cannot evaluate profile 'scenes': .*12x12 video"):
        get_benchmark("clips", load_profile("scenes", PARAMS))


def test_evaluation_notebook_runs_on_the_video_testbed(tmp_path):
    """Notebook 04 on profile clips with the stage's parameters made tiny: the clips benchmark by default,
    the selected preset beside no guidance and CFG at the default, the figures, tables and metrics."""
    from ditguide.guidance import GuidanceSpec, selected_preset
    from ditguide.notebook import run_notebook, stage_parameters

    params = stage_parameters("evaluate_t2v_testbed", PARAMS, {"profile": "clips"})
    params.update(
        benchmark_options={"per_set": 10, "seed_sets": 3},
        cfg_scales=[],
        specs=[],
        batch_size=30,
        output_root=str(tmp_path),
        runs_dir=str(tmp_path / "runs"),
    )
    run_notebook(REPO / "notebooks/04_evaluate_t2v.py", tmp_path / "executed.ipynb", params, cwd=REPO)
    name = params["output_name"]
    metrics = json.loads((tmp_path / f"metrics/{name}.json").read_text())
    assert list(metrics["methods"]) == ["cfg", "none", "selected:clips"]  # (sorted keys)
    selected = metrics["methods"]["selected:clips"]
    assert selected["spec"] == GuidanceSpec.from_dict(selected_preset("clips")).to_dict()
    assert metrics["methods"]["cfg"]["cfg_scale"] == 5.0 and metrics["methods"]["none"]["nfe_per_step"] == 1.0
    for m in metrics["methods"].values():
        assert m["count"] == 30 and 0 <= m["total"] <= 1 and m["total_se"] >= 0 and 0 <= m["semantic"] <= 1
    assert metrics["split"] == "test" and metrics["real"]["semantic"] == 1.0
    for rel in (
        f"figures/{name}_frames.pdf",
        f"figures/{name}_dimensions.pdf",
        f"paper/tables/{name}.tex",
        f"paper/tables/{name}_dimensions.tex",
    ):
        assert (tmp_path / rel).is_file(), rel
    assert "Total" in (tmp_path / f"paper/tables/{name}.tex").read_text()


# ---- the two stages -------------------------------------------------------------------------------

STAGES = {"evaluate_t2i_testbed": "scenes", "evaluate_t2v_testbed": "clips"}


@pytest.mark.parametrize("stage,profile", STAGES.items())
def test_testbed_stages_evaluate_the_selected_preset_beside_the_best_cfg(stage, profile):
    """Each stage runs its notebook on its testbed's test split (>= 3 seed sets) with the selected preset,
    CFG at the default and at the best scale of the guidance design (data/guidance/<p>/search.json)."""
    from ditguide.evaluation import default_methods

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    body = stages[stage]
    assert f"--stage {stage} -p profile {profile}" in body["cmd"]
    deps = body["deps"]
    assert f"data/guidance/{profile}/selected.json" in deps and f"data/{profile}/model" in deps
    for dep in deps:
        assert (REPO / dep).exists(), dep
    section = PARAMS[stage]
    options = section["benchmark_options"]
    assert options["split"] == "test" and options["seed_sets"] >= 3
    best = json.loads((REPO / f"data/guidance/{profile}/search.json").read_text())["families"]["cfg"]["choice"]
    methods = default_methods(profile, REPO / "params.yaml", cfg_scales=section["cfg_scales"])
    assert best in methods, f"params {stage}.cfg_scales: add {best}, the guidance design's best CFG scale"
    assert {"none", "cfg", f"selected:{profile}"} <= set(methods)
    outs = [next(iter(o)) for o in body["outs"] + body["metrics"]]
    assert all(section["output_name"] in o for o in outs)
