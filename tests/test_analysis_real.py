"""The layer map on real profiles (ditguide.analysis_real), end to end on the tiny random profiles
(tests/params_tiny.yaml):
tiny-flux (T2I, a fake COCO dev split and its reference, prepared by the real `ditguide.coco` steps)
and tiny-wan (T2V, a VBench-format prompt suite file). The judges are tiny random ones built in code
(no download). The missing-weights path is checked through the notebook runner, as `dvc repro` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditguide import analysis, analysis_real, coco
from ditguide.metrics.fid import MissingWeightsError, fid_from_features, image_features
from ditguide.profiles import ConfigError, load_params, load_profile
from ditguide.render import PipelineRenderer
from tiny_profiles import tiny_params_file

REPO = Path(__file__).resolve().parents[1]
PARAMS = tiny_params_file()  # params.yaml and the tiny profiles
EDITS, WINDOW_EDITS = ["skip", "scale1.5"], ["skip"]


def prepare_coco_dev(data_dir: Path, n_dev: int = 6) -> Path:
    """A fake COCO 2017 sample (captions file in the official layout, JPEGs of assorted sizes) with a dev
    split of `n_dev` captions and its 256-px reference, made by the real `ditguide.coco` steps."""
    rng = np.random.default_rng(7)
    words = ["a red bus", "two cats", "a kite over a beach", "pizza on a table", "a man skiing", "green trees"]
    images, annotations = [], []
    (data_dir / coco.IMAGES_DIRNAME).mkdir(parents=True)
    for k in range(10):
        images.append({"id": 100 + k, "file_name": f"{100 + k:012d}.jpg"})
        annotations.append({"id": k, "image_id": 100 + k, "caption": f"{words[k % len(words)]} number {k}"})
        pixels = np.clip(rng.integers(40, 200, (1, 1, 3)) + rng.normal(0, 30, (40 + 2 * k, 50, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(data_dir / coco.IMAGES_DIRNAME / images[-1]["file_name"])
    (data_dir / coco.CAPTIONS_MEMBER).parent.mkdir(parents=True)
    (data_dir / coco.CAPTIONS_MEMBER).write_text(json.dumps({"images": images, "annotations": annotations}))
    assert coco.main(["sample", "--data-dir", str(data_dir), "--n-test", "2", "--n-dev", str(n_dev)]) == 0
    args = ["reference", "--data-dir", str(data_dir), "--split", "dev", "--resolution", "256", "--workers", "1"]
    assert coco.main(args) == 0
    return data_dir


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    data = prepare_coco_dev(tmp_path_factory.mktemp("coco2017"))
    prof = load_profile("tiny-flux", PARAMS)
    bed = analysis_real.bed_for(prof, data_dir=str(data), resolution=256, batch_size=4, device="cpu")
    return prof, bed, bed.load_pipeline("dev")


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    suite = tmp_path_factory.mktemp("vbench") / "suite.json"
    prompts = [f"a {c} {a} walking on a beach" for c in ("red", "blue", "green") for a in ("dog", "cat")]
    suite.write_text(json.dumps([{"prompt_en": p, "dimension": ["color"]} for p in prompts]))
    prof = load_profile("tiny-wan", PARAMS)
    bed = analysis_real.bed_for(prof, prompts=str(suite), batch_size=3, device="cpu")
    return prof, bed, bed.load_pipeline("dev")


def check_cost(cost, pipe, blocks, *, nfe: float, per_set: int, denoiser_samples: int):
    every = analysis.block_addresses(pipe.transformer)
    configs = analysis.generation_configs(blocks, EDITS, WINDOW_EDITS)
    assert cost.nfe_per_step == nfe  # counted from the timed sampling's transformer calls
    assert set(cost.block_s) == set(every) and all(v > 0 for v in cost.block_s.values())
    assert sum(cost.block_s.values()) < cost.forward_s  # the blocks are a part of a forward
    assert cost.configs == 1 + len(configs) and cost.samples_per_config == per_set * 3
    full = cost.steps * nfe * cost.forward_s + cost.other_s
    assert cost.denoiser_s == pytest.approx(denoiser_samples * full)
    # The count: every config a full sample less the skipped block's share where a skip is active.
    saved = sum(
        cost.block_s[b]
        * nfe
        * (cost.steps if w == "all" else len(analysis.window_steps(analysis.WINDOWS[w], cost.steps)))
        for e, b, w in configs
        if e == "skip"
    )
    expected = cost.samples_per_config * (cost.configs * (full + cost.judge_s) - saved)
    assert cost.generation_s == pytest.approx(expected) and 0 < saved
    assert cost.total_s == pytest.approx(cost.generation_s + cost.denoiser_s)
    text = cost.summary()
    assert text.startswith("Estimated GPU time of the configured scan") and f"{cost.configs} configs" in text
    json.dumps(cost.to_dict())


def check_denoiser(den, pipe, bed, blocks, t_grid):
    assert den["alignment"] is None and "no ideal denoiser D*" in den["alignment_absent"]
    assert den["model_error"] is None and den["ideal"] is None
    assert [(r["block"], r["t"]) for r in den["residuals"]] == [(b, t) for t in t_grid for b in blocks]
    sigmas = pipe.scheduler.sigmas[: bed.profile.steps].numpy()  # of the scan's last sampling: the same schedule
    for r in den["residuals"]:
        assert 0 < r["rel_update"] and -1 <= r["cos_in_out"] <= 1 and r["rel_update_se"] > 0
        assert r["step"] == np.argmin(np.abs(sigmas - r["t"])) and r["sigma"] == pytest.approx(sigmas[r["step"]])
    steps = [r["step"] for r in den["residuals"][:: len(blocks)]]
    assert steps == sorted(steps) and steps[0] < steps[-1]  # high noise first, along the trajectory


def check_schema(scores: dict):
    text = analysis_real.SCHEMA
    for key in (*scores["denoiser"], *scores["generation"], *scores["candidates"], *scores["cost_estimate"]):
        assert key in text, key
    for key in (*scores["denoiser"]["residuals"][0], *scores["generation"]["records"][0]):
        assert key.removesuffix("_se") in text, key


def test_t2i_layer_map_on_tiny_flux(flux, tmp_path, monkeypatch):
    prof, bed, pipe = flux
    blocks = ["double:1", "single:0"]
    cost = analysis_real.estimate_gpu_time(
        pipe, bed, denoiser_samples=3, per_set=3, seed_sets=3, edits=EDITS, window_edits=WINDOW_EDITS, blocks=blocks
    )
    check_cost(cost, pipe, blocks, nfe=1.0, per_set=3, denoiser_samples=3)  # flux-dev-like: its own CFG off
    captions = bed.captions("dev", 3)
    assert captions == [r["caption"] for r in coco.read_split(bed.data_dir, "dev")][:3]
    den = analysis_real.denoiser_scan(pipe, captions, bed=bed, t_grid=[0.9, 0.1], blocks=blocks, edits=EDITS)
    check_denoiser(den, pipe, bed, blocks, [0.9, 0.1])
    bed.batch_size = 1  # per-sample seeds: the residuals do not depend on how the captions are batched
    again = analysis_real.denoiser_scan(pipe, captions, bed=bed, t_grid=[0.9, 0.1], blocks=blocks)
    bed.batch_size = 4
    assert [r["rel_update"] for r in again["residuals"]] == pytest.approx([r["rel_update"] for r in den["residuals"]])

    out = tmp_path / "generation_scan.json"
    kw = dict(steps=prof.steps, seed_sets=3, edits=EDITS, window_edits=WINDOW_EDITS, blocks=blocks, out_path=out)
    gen = analysis_real.generation_scan(pipe, bed, captions, **kw)
    assert len(gen["records"]) == 2 * 2 + 2 * 3
    assert "small N" in gen["labels"]["fid_small_n"] and gen["protocol"]["judges"]["fid"] == "tiny-random"
    # The unedited samples are the evaluation's own renders (profile defaults, per-index seeds), and the
    # base scores are FID / CLIP-SIM of those renders, recomputed here from PNG files.
    prompts = captions * 3
    renders = np.stack(PipelineRenderer(prof, pipe).render(prompts, list(range(9))))
    paths = []
    for i, image in enumerate(renders):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    feats = image_features(paths, bed.judges.inception, resolution=256)
    fids = [fid_from_features(feats[k : k + 3], bed._reference) for k in (0, 3, 6)]
    assert gen["base"]["fid_small_n"] == pytest.approx(np.mean(fids), rel=1e-6)
    clip = bed.judges.clip.scores(list(renders), prompts)
    assert gen["base"]["clip_sim"] == pytest.approx(clip.mean(), rel=1e-5)
    for r in gen["records"]:
        assert set(r) >= {"d_fid_small_n", "d_fid_small_n_se", "d_clip_sim", "d_clip_sim_se", "perceptual_se"}
        assert 0 < r["perceptual"] <= 2  # distances of unit vectors; every edit here changes the samples
    # Resumed: only the unedited reference is sampled again, and the records are the saved ones.
    calls = []
    real_sample = analysis.sample_with_edit
    monkeypatch.setattr(analysis, "sample_with_edit", lambda *a, **k: calls.append(k["spec"]) or real_sample(*a, **k))
    assert analysis_real.generation_scan(pipe, bed, captions, **kw)["records"] == gen["records"]
    assert calls == [None]

    scores = {"denoiser": den, "generation": gen, "cost_estimate": cost.to_dict()}
    scores["candidates"] = analysis_real.rank_candidates(scores, bed=bed)
    assert scores["candidates"]["weak"] == [] and "needs D*" in scores["candidates"]["weak_absent"]
    for s in scores["candidates"]["strong"]:  # improves CLIP-SIM (up) or small-N FID (down) by > 2 SE
        assert s["d_clip_sim"] > 2 * s["d_clip_sim_se"] or -s["d_fid_small_n"] > 2 * s["d_fid_small_n_se"]
    check_schema(scores)


def test_t2v_layer_map_on_tiny_wan(wan):
    prof, bed, pipe = wan
    blocks = ["blocks:0", "blocks:1"]
    dev, test = bed.captions("dev", 3), bed.captions("test", 3)
    assert not set(dev) & set(test) and dev == bed.captions("dev", 3)  # seeded, disjoint ends of one order
    cost = analysis_real.estimate_gpu_time(
        pipe, bed, denoiser_samples=2, per_set=2, seed_sets=3, edits=EDITS, window_edits=WINDOW_EDITS, blocks=blocks
    )
    check_cost(cost, pipe, blocks, nfe=2.0, per_set=2, denoiser_samples=2)  # Wan's own CFG: two forwards a step
    den = analysis_real.denoiser_scan(pipe, dev[:2], bed=bed, t_grid=[0.9, 0.3], blocks=blocks)
    check_denoiser(den, pipe, bed, blocks, [0.9, 0.3])
    gen = analysis_real.generation_scan(
        pipe, bed, dev[:2], steps=prof.steps, seed_sets=3, edits=EDITS, window_edits=WINDOW_EDITS, blocks=blocks
    )
    assert len(gen["records"]) == 2 * 2 + 2 * 3 and gen["protocol"]["judges"]["fid"] is None  # no reference videos
    videos = np.stack(PipelineRenderer(prof, pipe).render(dev[:2] * 3, list(range(6))))
    assert videos.shape == (6, 5, 32, 32, 3)
    flicker = [
        (255 - np.mean([np.abs(a - b).mean() for a, b in zip(v[:-1], v[1:])])) / 255 for v in videos.astype(float)
    ]
    assert gen["base"]["temporal_flickering"] == pytest.approx(np.mean(flicker))
    for r in gen["records"]:
        assert {"d_clip_sim", "d_temporal_flickering", "perceptual"} <= set(r) and 0 < r["perceptual"] <= 2
    scores = {"denoiser": den, "generation": gen, "cost_estimate": cost.to_dict()}
    scores["candidates"] = analysis_real.rank_candidates(scores, bed=bed)
    check_schema(scores)


def test_inception_features_from_arrays_match_the_file_protocol(tmp_path):
    """FID features of in-memory samples are those `metrics.fid` computes from the same images as PNG files."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 28, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    model = analysis_real.TinyInception().eval()
    expected = image_features(paths, model, resolution=256, batch_size=2)
    np.testing.assert_allclose(analysis_real.inception_features(images, model, 256, batch_size=2), expected, rtol=1e-6)


def test_bad_options_fail_before_any_work():
    prof = load_profile("tiny-flux", PARAMS)
    with pytest.raises(ConfigError, match=r"layer_analysis.real: unknown key\(s\) \['batchsize'\]; allowed: data_dir"):
        analysis_real.bed_for(load_profile("scenes", PARAMS), batchsize=4)  # checked on the testbeds too
    with pytest.raises(ConfigError, match=r"resolution=300 is not allowed; allowed: 512, 256"):
        analysis_real.bed_for(prof, resolution=300)
    with pytest.raises(ConfigError, match=r"real.per_set=0 for profile 'flux-dev' is not allowed; allowed: an integer"):
        analysis_real.bed_for(prof, per_set={"flux-dev": 0})
    assert analysis_real.bed_for(prof, per_set={"tiny-flux": 5}).per_set(32) == 5
    assert analysis_real.bed_for(prof, per_set={"flux-dev": 16}).per_set(32) == 32  # overrides only the profiles named
    with pytest.raises(ConfigError, match=r"denoiser_samples has no entry for profile 'tiny-flux'.*add `tiny-flux: N`"):
        analysis_real.per_profile({"scenes": 128}, "tiny-flux", "denoiser_samples")
    with pytest.raises(ConfigError, match=r"denoiser_samples=0 for profile 'x' is not allowed"):
        analysis_real.per_profile({"x": 0}, "x", "denoiser_samples")


def test_missing_weights_fail_with_one_message(tmp_path, capsys):
    """A real profile whose weights are not here: the layer map stage stops in its first cell with one
    line naming the download (and the missing dev set), before anything loads; exit code 2."""
    from ditguide.notebook import main

    params = load_params(PARAMS)
    params["profiles"]["absent"] = {"family": "flux", "kind": "image", "model": "nobody/no-such-model-ditguide"}
    bed = analysis_real.bed_for(load_profile("absent", params), data_dir=str(tmp_path / "no-coco"))
    with pytest.raises(MissingWeightsError, match=r"\(1\) .*hf download nobody/no-such-model-ditguide.*\(2\) COCO"):
        bed.load_pipeline("dev")
    assert bed.judges is None  # failed before the judges (or the pipeline) loaded
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(params))  # JSON is YAML
    argv = ["notebooks/01_layer_analysis.py", "--stage", "layer_analysis", "--params", str(path)]
    argv += ["-p", "profile", "absent", "--output", str(tmp_path / "out.ipynb")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "MissingWeightsError" in lines[0] and "hf download nobody/no-such-model" in lines[0]
    assert "Traceback" not in err
