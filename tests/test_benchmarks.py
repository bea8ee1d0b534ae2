"""One benchmark interface, one evaluation path (issue 9 item 1): every benchmark through `evaluate`.

- the digit toy through `evaluate` gives the numbers of a direct computation (renderer -> judge, no
  files), and the committed table and trade-off figure are what its code draws from the committed metrics;
- the glyph-scene testbed through `evaluate` equals `ditguide.testbeds.evaluate` (notebook 00's path);
- a tiny random FLUX pipeline (tests/params_tiny.yaml) runs through the COCO benchmark on a fake offline COCO split;
- bad benchmark, option and method names fail in one line naming what is allowed, before any sampling.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from ditguide import evaluation
from ditguide.benchmark import BENCHMARKS, Digits, Scenes, get_benchmark
from ditguide.evaluation import default_methods, evaluate, method
from ditguide.profiles import ConfigError, load_profile
from tiny_profiles import tiny_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = tiny_params()  # params.yaml and the tiny profiles


def _params(**steps) -> dict:
    """PARAMS with fewer sampling steps for some profiles (the model and its judges unchanged)."""
    params = copy.deepcopy(PARAMS)
    for profile, n in steps.items():
        params["profiles"][profile]["steps"] = n
    return params


# ---- the digit toy -------------------------------------------------------------------------------


def test_toy_through_evaluate_equals_a_direct_computation(tmp_path):
    """Files written by `generate` and read back as Samples give the numbers the judge gives the
    renderer's own arrays: the PNG round trip and the shared path change nothing."""
    from ditguide.metrics.toy import balanced_labels, heldout_reference, toy_metrics
    from ditguide.profiles import load_pipeline
    from ditguide.render import PipelineRenderer, guidance_spec
    from ditguide.toy.data import prompt_for
    from ditguide.toy.judge import load_judge

    params = _params(toy=4)
    methods = ["none", "cfg", "cfg@3", "apg"]
    result = evaluate("toy", "digits", methods, options={"samples_per_class": 2}, params=params, runs_dir=tmp_path)
    assert list(result.metrics["methods"]) == methods and result.metrics["count"] == 20

    prof = load_profile("toy", params)
    pipe = load_pipeline(prof)
    judge = load_judge(REPO / "data/toy/judge.safetensors")
    labels = balanced_labels(20)
    prompts = [prompt_for(y) for y in labels]
    renderers = {
        "none": PipelineRenderer(prof, pipe, cfg_scale=1.0),
        "cfg": PipelineRenderer(prof, pipe),
        "cfg@3": PipelineRenderer(prof, pipe, cfg_scale=3.0),
        "apg": PipelineRenderer(prof, pipe, guidance=guidance_spec(prof, "apg")),
    }
    for name, renderer in renderers.items():
        images = np.stack(renderer.render(prompts, list(range(20))))[..., 0].astype(np.float32) / 255.0
        direct = toy_metrics(judge, images, labels, heldout_reference(judge))
        got = result.metrics["methods"][name]
        assert {k: got[k] for k in direct} == direct, name  # exactly, not approximately
    # The per-method entries the committed file has, and no others (its bytes depend on them).
    committed = json.loads((REPO / "metrics/t2i_toy.json").read_text())
    assert set(result.metrics) == set(committed)
    for name in ("none", "cfg", "apg"):
        assert set(result.metrics["methods"][name]) == set(committed["methods"][name]), name


def test_committed_toy_table_and_tradeoff_figure_are_what_the_digits_benchmark_draws(tmp_path):
    """Drawn from the committed metrics, the table and the trade-off PDF equal the committed files byte
    for byte: the toy's outputs did not change when the evaluation moved to the benchmark interface."""
    import matplotlib.pyplot as plt

    from ditguide import style

    metrics = json.loads((REPO / "metrics/t2i_toy.json").read_text())
    # Method order as the stage runs them (the JSON's keys are sorted; table rows and plot order are not).
    order = default_methods("toy", PARAMS, cfg_scales=PARAMS["evaluate_t2i"]["cfg_scales"])
    metrics["methods"] = {name: metrics["methods"][name] for name in order}
    bench = Digits()
    assert bench.table(metrics) == (REPO / "paper/tables/t2i_toy.tex").read_text()
    with plt.rc_context():
        plt.rcdefaults()
        style.use()
        fig = bench.tradeoff_figure(metrics)
        out = style.save_figure(fig, tmp_path / "tradeoff.pdf", also_png=False)
        plt.close(fig)
    assert out.read_bytes() == (REPO / "figures/t2i_toy_tradeoff.pdf").read_bytes()


# ---- the glyph-scene testbed ---------------------------------------------------------------------


def test_scenes_through_evaluate_equals_the_testbed_evaluation(tmp_path):
    from ditguide.testbeds.evaluate import evaluate_scenes

    params = _params(scenes=3)
    ours = evaluate(
        "scenes",
        "scenes",
        ["none", "cfg@3"],
        options={"per_set": 10, "seed_sets": 3},
        params=params,
        batch_size=30,
        runs_dir=tmp_path / "ours",
    )
    theirs = evaluate_scenes(
        "scenes", per_set=10, seed_sets=3, cfg_scales=[3.0], params=params, batch_size=30, runs_dir=tmp_path / "theirs"
    )
    assert ours.metrics["floor"] == theirs.metrics["floor"]
    for name in ("none", "cfg@3"):
        a, b = ours.metrics["methods"][name], theirs.metrics["methods"][name]
        assert {k: a[k] for k in b} == b, name  # every number of notebook 00's path, exactly
        assert a["count"] == 30 and a["fd"] > 0
    assert ours.metrics["methods"]["cfg@3"] != ours.metrics["methods"]["none"]
    rows = [line for line in ours.table().splitlines() if line.endswith("\\\\") and "±" in line]
    assert len(rows) == 3 and rows[-1].startswith("real renders (floor)")  # two methods and the floor
    assert all(row.count("±") == 5 for row in rows)  # FD, all, digit, precision, recall
    for fig in (ours.tradeoff_figure(), ours.sample_grid(count=4)):
        assert len(fig.axes) >= 1


def test_scenes_default_methods_include_the_selected_preset():
    """notebook 02 selected a preset for scenes (data/guidance/scenes/selected.json): notebook 03 runs it."""
    from ditguide.guidance import GuidanceSpec, selected_preset

    assert default_methods("scenes", PARAMS) == ["none", "cfg", "selected:scenes"]
    assert default_methods("scenes", PARAMS, selected=False) == ["none", "cfg"]
    assert "selected:toy" not in default_methods("toy", PARAMS)  # none selected for the toy
    spec = method(load_profile("scenes", PARAMS), "selected:scenes").guidance
    assert spec.to_dict() == GuidanceSpec.from_dict(selected_preset("scenes")).to_dict()
    renderer_free = evaluation.run_dir(
        "runs", load_profile("scenes", PARAMS), "t2i", "selected:scenes", _Fake(), ["a"], 1
    )
    assert renderer_free.name.startswith("selected_scenes-")  # no ':' in a folder name


class _Fake:
    def describe(self) -> dict:
        return {"renderer": "fake"}


# ---- COCO on a tiny random FLUX pipeline -----------------------------------------------------------


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    from ditguide import coco
    from test_evaluation_real import write_fake_coco

    data = tmp_path_factory.mktemp("coco2017")
    write_fake_coco(data, n_images=6)
    assert coco.main(["sample", "--data-dir", str(data), "--n-test", "4", "--n-dev", "2"]) == 0
    args = ["reference", "--data-dir", str(data), "--split", "test", "--resolution", "256", "--workers", "1"]
    assert coco.main(args) == 0
    return data


def test_tiny_flux_through_the_coco_benchmark(coco_dir, tmp_path):
    from test_evaluation_real import TinyExtractor, tiny_clip

    options = dict(
        split="test",
        resolution=256,
        data_dir=coco_dir,
        fid_extractor=TinyExtractor().eval(),
        fid_extractor_id="tiny-test",
        clip=tiny_clip(),
        num_workers=0,
    )
    assert default_methods("tiny-flux", PARAMS) == ["cfg", "ag"]  # CFG off by default: "none" would be "cfg"
    result = evaluate("tiny-flux", "coco", ["cfg", "cfg@2", "ag"], options=options, params=PARAMS, runs_dir=tmp_path)
    methods = result.metrics["methods"]
    assert list(methods) == ["cfg", "cfg@2", "ag"]
    assert [m["nfe_per_step"] for m in methods.values()] == [1.0, 2.0, pytest.approx(1.25)]
    assert methods["cfg@2"]["cfg_scale"] == 2.0 and methods["ag"]["spec"]["name"] == "autoguidance"
    for name, m in methods.items():
        assert np.isfinite(m["fid"]) and 0 <= m["clip_sim"] <= 100 and m["n"] == 4
        assert (
            result.run_dirs[name] == Path(m["run_dir"])
            and result.run_dirs[name].parent == tmp_path / "tiny-flux" / "t2i"
        )
    assert result.metrics["protocol"]["n"] == 4 and result.metrics["task"] == "t2i"
    assert set(result.tables()) == {""} and "CLIP-SIM" in result.table()
    assert len(result.sample_grid(per_method=2).axes) == 3 * 2
    json.loads(result.to_json())


# ---- names and options: one clear error before any work ------------------------------------------


def test_default_benchmark_of_each_profile():
    profiles = ("toy", "scenes", "clips", "tiny-flux", "tiny-wan")
    picks = {p: type(get_benchmark(None, load_profile(p, PARAMS))).name for p in profiles}
    assert picks == {"toy": "digits", "scenes": "scenes", "clips": "clips", "tiny-flux": "coco", "tiny-wan": "vbench"}
    assert list(BENCHMARKS) == ["digits", "scenes", "clips", "coco", "vbench"]
    prof = load_profile("clips", PARAMS)
    with pytest.raises(ConfigError, match=r"benchmark 'vbench' cannot evaluate profile 'clips': .*own benchmark"):
        get_benchmark("vbench", prof)


@pytest.mark.parametrize(
    "benchmark,options,methods,message",
    [
        (
            "cocoo",
            None,
            None,
            r"benchmark='cocoo' is not allowed; allowed: digits, scenes, clips, coco, vbench or None",
        ),
        ("coco", None, None, r"benchmark 'coco' cannot evaluate profile 'toy': .*toy-family profiles have their own"),
        ("vbench", None, None, r"benchmark 'vbench' cannot evaluate profile 'toy': VBench needs a video profile"),
        (
            "digits",
            {"samples_per_clas": 3},
            None,
            r"benchmark_options: 'samples_per_clas' is not an option of benchmark 'digits'; allowed: samples_per_class, judge_path",
        ),
        ("digits", {"samples_per_class": 0}, None, r"samples_per_class=0 is not allowed; allowed: an integer >= 1"),
        (None, None, ["none", "baseline"], r"method 'baseline' is now called 'cfg' \(the pipeline's own sampling"),
        (None, None, ["cfg", "nope"], r"method 'nope' is not allowed; allowed: none, cfg, cfg@<scale>, .*\(apg, "),
        (None, None, ["cfg@x"], r"method 'cfg@x': the CFG scale after '@' must be a finite number >= 0, got 'x'"),
        (None, None, ["cfg", "cfg"], r"methods lists 'cfg' more than once"),
        (None, None, "cfg", r"methods='cfg' is not allowed; allowed: a non-empty list of names"),
        (
            None,
            None,
            ["selected:nowhere"],
            r"method 'selected:nowhere': .*data/guidance/nowhere/selected.json does not exist",
        ),
        (None, None, ["cfg", "stg"], r"method 'stg' \(a preset, not a spec of profile 'toy'\): .*'blocks:2'"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_bad_names_fail_before_any_work(tmp_path, monkeypatch, benchmark, options, methods, message):
    def no_work(*args, **kwargs):
        raise AssertionError("a pipeline was loaded: the error came too late")

    monkeypatch.setattr(evaluation, "load_pipeline", no_work)
    # A judge that does not exist: had the benchmark read its data before the names were checked, this
    # would fail first (FileNotFoundError, see the test below) instead of the ConfigError asserted.
    if options is None and benchmark is None:
        benchmark = Digits(samples_per_class=1, judge_path=str(tmp_path / "no-judge"))
    with pytest.raises(ConfigError, match=message):
        evaluate("toy", benchmark, methods, options=options, params=PARAMS, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_valid_names_get_as_far_as_the_benchmark_data(tmp_path, monkeypatch):
    """The control of the test above: with valid names the missing judge is what stops the run."""
    monkeypatch.setattr(evaluation, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the judge"))
    bench = Digits(samples_per_class=1, judge_path=str(tmp_path / "no-judge"))
    with pytest.raises(FileNotFoundError, match="no-judge.*dvc repro train_judge"):
        evaluate("toy", bench, ["none", "cfg", "slg", "cfg@2"], params=PARAMS, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_scenes_options_are_checked_when_given():
    with pytest.raises(ConfigError, match=r"seed_sets=2 is not allowed; allowed: an integer >= 3"):
        Scenes(seed_sets=2)
    with pytest.raises(ConfigError, match=r"split='train' is not allowed; allowed: dev, test, unseen"):
        Scenes(split="train")
