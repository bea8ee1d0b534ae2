"""The testbed adapters of the layer map (ditguide.testbeds.beds): the scene bed reproduces the scene
code paths; the clip bed's sampled ideal denoiser, its denoiser call and the scans on a video model."""

import numpy as np
import pytest

from ditguide import analysis
from ditguide.profiles import ConfigError, load_params, load_pipeline, load_profile
from ditguide.testbeds import scenes
from ditguide.testbeds.beds import ClipsBed, ScenesBed, bed_for


def test_scene_bed_is_the_scene_code():
    bed = ScenesBed()
    caps = bed.captions("dev", 3)
    assert caps == [s.caption() for s in scenes.caption_set("dev", 3)]
    x = bed.clean(caps, np.random.default_rng(0))
    ref = (
        scenes.render([scenes.parse_caption(c) for c in caps], *scenes.glyph_pool("train"), np.random.default_rng(0))
        * 2
        - 1
    )
    np.testing.assert_array_equal(x, ref)
    xt = 0.5 * x + 0.5 * np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_array_equal(
        bed.ideal(xt, 0.5, caps), scenes.ideal_x0(xt, 0.5, [scenes.parse_caption(c) for c in caps])
    )


def test_clip_ideal_is_the_posterior_mean_over_its_renders(monkeypatch):
    bed = ClipsBed(ideal_samples=3)
    y = np.stack([np.full((3, 2, 4, 4), v) for v in (-1.0, 0.0, 1.0)])  # three candidate clean clips
    monkeypatch.setattr(bed, "_candidates", lambda caption, half=0: y)
    t = 0.3
    x_t = (1 - t) * y[2:3] + 0.01  # next to candidate 2
    d2 = (((x_t.reshape(1, -1) - (1 - t) * y.reshape(3, -1)) ** 2).sum(1)) / (2 * t * t)
    w = np.exp(-(d2 - d2.min()))
    expected = (w @ y.reshape(3, -1) / w.sum()).reshape(x_t[0].shape)
    np.testing.assert_allclose(bed.ideal(x_t, t, ["c"])[0], expected, rtol=1e-12)
    assert (
        np.abs(bed.ideal(x_t, t, ["c"])[0] - y[2]).max() < 1e-6
    )  # the posterior sits on the nearest render at low noise


def test_clip_ideal_estimates_agree_more_with_more_renders():
    caps = ClipsBed().captions("dev", 2)
    x = ClipsBed().clean(caps, np.random.default_rng(0))
    xt = 0.2 * x + 0.8 * np.random.default_rng(1).standard_normal(x.shape)
    small, large = (
        ClipsBed(ideal_samples=64).ideal_agreement(xt, 0.8, caps),
        ClipsBed(ideal_samples=1024).ideal_agreement(xt, 0.8, caps),
    )
    assert 0 < large < small


def test_bed_for_refuses_real_models():
    params = load_params("params.yaml")
    assert isinstance(bed_for(load_profile("scenes", params)), ScenesBed)
    clips = bed_for(load_profile("clips", params))
    assert isinstance(clips, ClipsBed) and clips.frames == load_profile("clips", params).num_frames
    with pytest.raises(ConfigError, match="not a testbed"):
        bed_for(load_profile("flux-dev", params))


@pytest.fixture(scope="module")
def clips_pipe():
    prof = load_profile("clips", load_params("params.yaml"))
    return prof, load_pipeline(prof)


def test_clip_denoiser_is_the_pipelines_prediction(clips_pipe):
    """One Euler step of the pipeline from x_1 lands where x0 = x - t v of the bed's denoiser says."""
    import torch

    prof, pipe = clips_pipe
    bed = bed_for(prof)
    caps = bed.captions("dev", 2)
    x = torch.randn(2, 3, bed.frames, 16, 16, generator=torch.Generator().manual_seed(0)).double().numpy()
    d = bed.denoiser(pipe, caps)(x, 1.0)
    seen = {}

    def grab(p, i, t, kw):
        seen["latents"] = kw["latents"]
        return kw

    pipe(
        prompt=caps,
        num_inference_steps=1,
        latents=torch.from_numpy(x).float(),
        num_frames=bed.frames,
        callback_on_step_end=grab,
        output_type="latent",
    )
    # a single Euler step from sigma 1 to 0 is x + (0 - 1) v = x - v = the x0 estimate
    np.testing.assert_allclose(seen["latents"].double().numpy(), d, atol=1e-5)


def test_scans_run_on_the_video_testbed(clips_pipe):
    prof, pipe = clips_pipe
    bed = ClipsBed(ideal_samples=128, frames=prof.num_frames)
    caps = bed.captions("dev", 3)
    d = analysis.denoiser_scan(
        pipe, caps, edits=["skip"], t_grid=[0.5], blocks=["blocks:0", "blocks:7"], bed=bed, progress=False
    )
    assert len(d["alignment"]) == 2 and len(d["residuals"]) == 8 and 0 < d["ideal_agreement"][0] < 2
    g = analysis.generation_scan(
        pipe, bed, caps, steps=2, seed_sets=3, edits=["skip"], window_edits=[], blocks=["blocks:7"], progress=False
    )
    (r,) = g["records"]
    assert set(g["base"]) == set(bed.keys) and r["perceptual"] > 0 and "d_semantic_se" in r
    cands = analysis.rank_candidates({"denoiser": d, "generation": g}, bed=bed)
    assert all("d_semantic" in c and "d_quality" in c for c in cands["weak"])
