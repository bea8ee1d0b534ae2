"""The T2V testbed: generator ground truth, caption errors, each judge dimension on hand-built clips,
the VBench-shaped Total against hand arithmetic, the Wan pipeline and its guidance driver."""

import numpy as np
import pytest
import torch

from ditguide.metrics import clips as M
from ditguide.metrics import vbench_score as vb
from ditguide.testbeds import clips as C


def _truth(caption, positions, sizes, background=0.1):
    clip = C.parse_caption(caption)
    return C.ClipTruth(clip, np.asarray(positions, dtype=np.float64), tuple(sizes), (1.0,) * len(sizes), background)


def _moving(caption="a red square moving right", start=(0.5, 3.0), v=(1.2, 0.0), size=5, frames=C.FRAMES):
    pos = [[[start[0] + v[0] * t, start[1] + v[1] * t] for t in range(frames)]]
    return _truth(caption, pos, [size])


# --- generator ---------------------------------------------------------------------------------------


def test_render_draws_each_object_with_its_colour_shape_and_constant_velocity():
    rng = np.random.default_rng(0)
    clips_ = C.sample_clips(200, rng, pairs="all")
    videos, truths = C.render(clips_, rng)
    assert videos.shape == (200, C.FRAMES, C.SIZE, C.SIZE, 3) and 0 <= videos.min() and videos.max() <= 1
    for video, truth in zip(videos, truths):
        for k, o in enumerate(truth.clip.objects):
            step = np.diff(truth.positions[k], axis=0)
            np.testing.assert_allclose(step, step[0][None].repeat(len(step), 0))  # constant velocity
            speed = np.hypot(*step[0])
            unit = np.array(C.MOTIONS[o.motion])
            if o.motion == "staying still":
                assert speed == 0
            else:
                assert C.SPEED[0] <= speed <= C.SPEED[1]
                np.testing.assert_allclose(step[0] / speed, unit)
            # the whole track is inside the canvas
            assert truth.positions[k].min() >= -1e-9 and (truth.positions[k] + truth.sizes[k]).max() <= C.SIZE + 1e-9
            # the object's pixels carry its colour: fully covered pixels equal the palette colour
            cov = C.coverage(o.shape, *truth.positions[k, 0], truth.sizes[k])
            full = cov > 0.999
            np.testing.assert_allclose(
                video[0][full], np.broadcast_to(C.PALETTE[o.colour], video[0][full].shape), atol=1e-6
            )
        if len(truth.clip.objects) == 2:  # the relation holds in every frame: the objects are in their halves
            a, b = truth.positions
            axis = 0 if truth.clip.relation in ("left of", "right of") else 1
            first, second = (a, b) if truth.clip.relation in ("left of", "above") else (b, a)
            sa, sb = truth.sizes if truth.clip.relation in ("left of", "above") else truth.sizes[::-1]
            assert (first[:, axis] + sa <= C.SIZE / 2 + 1e-9).all() and (second[:, axis] >= C.SIZE / 2 - 1e-9).all()
        bg = truth.background
        assert C.BACKGROUND[0] <= bg <= C.BACKGROUND[1]
        # every pixel no object touches shows the background shade (the median would not do: two
        # anti-aliased 5 px objects can touch half of a 12 px canvas)
        touched = sum(
            C.coverage(o.shape, *truth.positions[k, 0], truth.sizes[k]) for k, o in enumerate(truth.clip.objects)
        )
        assert (touched == 0).sum() > 0
        np.testing.assert_allclose(video[0][touched == 0], bg, atol=1e-6)


def test_shapes_cover_their_known_areas():
    for shape, area in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5), ("cross", 2 * 0.36 - 0.36**2)):
        cov = C.coverage(shape, 4.0, 4.0, 8)
        assert abs(cov.sum() / 64 - area) < 0.03, shape


def test_splits_and_heldout_pairs():
    train = C.sample_clips(3000, np.random.default_rng(0))
    assert not any(c.unseen for c in train)
    assert 0.45 < np.mean([len(c.objects) == 1 for c in train]) < 0.55
    assert all(c.unseen for c in C.caption_set("unseen", 200))
    dev, test = C.caption_set("dev", 100), C.caption_set("test", 100)
    assert [c.caption() for c in dev] != [c.caption() for c in test]
    assert [c.caption() for c in test] == [c.caption() for c in C.caption_set("test", 100)]
    assert not any(c.unseen for c in test)
    for c in C.sample_clips(300, np.random.default_rng(1), pairs="all"):
        assert C.parse_caption(c.caption()) == c
        assert len(c.caption().split()) <= C.MAX_WORDS


@pytest.mark.parametrize(
    "caption, words",
    [
        ("a purple square moving left", "outside the vocabulary"),
        ("a red square moving sideways", "outside the vocabulary"),
        ("a red square moving", "'a <colour> <shape> <motion>'"),
        ("a red square moving left left of a blue circle staying still", "cannot be 'moving left'"),
        ("a red square moving up left of a red circle staying still", "different colours"),
        ("a red square moving up near a blue circle staying still", "outside the vocabulary"),
    ],
)
def test_bad_captions_get_one_clear_error(caption, words):
    with pytest.raises(
        C.ClipError, match=words.replace("(", r"\(").replace(")", r"\)").replace("<", "<").replace("'", "'")
    ):
        C.parse_caption(caption)


# --- judges on hand-built clips -------------------------------------------------------------------------


def _score(video, caption):
    return M.clip_scores(M.read_clip(video), C.parse_caption(caption))


def test_a_real_render_scores_perfectly_on_every_semantic_dimension():
    rng = np.random.default_rng(3)
    clips_ = C.caption_set("test", 60)
    videos, _ = C.render(clips_, rng)
    agg = M.aggregate(M.score_clips(videos, [c.caption() for c in clips_]))
    for d in M.SEMANTIC:
        assert agg[d] == 1.0, d
    assert agg["shown_and_moving"] == 1.0 and agg["imaging_quality"] > 0.98 and agg["motion_smoothness"] > 0.99


def test_static_clip_has_dynamic_degree_zero_and_a_moving_one_one():
    still = C.render_truth(_moving("a red square staying still", v=(0.0, 0.0)))
    s = _score(still, "a red square staying still")
    assert s["dynamic_degree"] == 0.0 and s["motion"] == 1.0
    assert s["temporal_flickering"] == 1.0 and s["subject_consistency"] == pytest.approx(1.0)
    moving = C.render_truth(_moving())
    s = _score(moving, "a red square moving right")
    assert s["dynamic_degree"] == 1.0 and s["motion"] == 1.0
    assert _score(moving, "a red square moving left")["motion"] == 0.0  # the wrong direction


def test_an_inserted_blank_frame_flickers_and_breaks_consistency():
    video = C.render_truth(_moving("a blue circle staying still", v=(0.0, 0.0)))
    clean = _score(video, "a blue circle staying still")
    blank = video.copy()
    blank[3] = 0.0  # black frame: background and object gone
    s = _score(blank, "a blue circle staying still")
    # Two of the five consecutive pairs differ by the background shade (0.1) on the static region.
    assert s["temporal_flickering"] == pytest.approx(1 - 2 * 0.1 / 5, abs=1e-6)
    assert clean["temporal_flickering"] == 1.0
    assert s["subject_consistency"] < clean["subject_consistency"] - 0.1
    assert s["background_consistency"] < clean["background_consistency"] - 0.02
    assert s["imaging_quality"] == pytest.approx(clean["imaging_quality"] * 5 / 6, abs=1e-6)  # one frame with no object
    assert s["object_class"] == pytest.approx(5 / 6)


def test_motion_smoothness_is_the_track_deviation_from_constant_velocity():
    truth = _moving(v=(1.0, 0.0))
    smooth = _score(C.render_truth(truth), "a red square moving right")["motion_smoothness"]
    jitter = truth.positions.copy()
    jitter[0, 1::2, 1] += 1.0  # every other frame one pixel lower
    rough = _score(
        C.render_truth(C.ClipTruth(truth.clip, jitter, truth.sizes, truth.speeds, truth.background)),
        "a red square moving right",
    )["motion_smoothness"]
    assert smooth > 0.995
    # RMS deviation of a 0/1 zig-zag from its best line: about 0.5 px -> 1 - 0.5 / SIZE
    assert 1 - 0.6 / C.SIZE < rough < 1 - 0.4 / C.SIZE


def test_wrong_shape_wrong_colour_missing_object_and_swapped_relation():
    cap = "a red square moving up left of a blue circle staying still"
    pos = [[[0.5, 6.5 - 1.2 * t] for t in range(C.FRAMES)], [[6.5, 3.5]] * C.FRAMES]  # 5 px objects, 12 px canvas
    truth = _truth(cap, pos, [5, 5])
    good = _score(C.render_truth(truth), cap)
    assert good["spatial_relationship"] == 1.0 and good["multiple_objects"] == 1.0 and good["all_correct"] == 1.0
    # a triangle where the square should be: object class and multiple objects drop, colour is undefined for it
    wrong_shape = _truth("a red triangle moving up left of a blue circle staying still", pos, [5, 5])
    s = _score(C.render_truth(wrong_shape), cap)
    assert s["object_class"] == 0.5 and s["multiple_objects"] == 0.0 and s["spatial_relationship"] == 0.0
    # colours swapped: shapes right, colours wrong
    swapped = _truth("a blue square moving up left of a red circle staying still", pos, [6, 7])
    s = _score(C.render_truth(swapped), cap)
    assert s["object_class"] == 1.0 and s["color"] == 0.0 and s["spatial_relationship"] == 0.0
    # the relation reversed: the captioned objects, but the red square on the right
    reversed_ = _truth(cap, [[[6.5, 6.5 - 1.2 * t] for t in range(C.FRAMES)], [[0.5, 3.5]] * C.FRAMES], [5, 5])
    s = _score(C.render_truth(reversed_), cap)
    assert s["spatial_relationship"] == 0.0 and s["object_class"] == 1.0 and s["color"] == 1.0
    # only the square: the second object is missing
    single = _truth("a red square moving up", pos[:1], [5])
    s = _score(C.render_truth(single), cap)
    assert s["multiple_objects"] == 0.0 and s["object_class"] == 0.5 and s["shown_and_moving"] == 0.0


def test_judge_reads_shapes_and_sizes_of_real_renders():
    rng = np.random.default_rng(7)
    for shape in C.SHAPES:
        for size in M.SIZES:
            truth = _truth(
                f"a green {shape} staying still",
                [[[rng.uniform(0, C.SIZE - size), rng.uniform(0, C.SIZE - size)]] * C.FRAMES],
                [size],
            )
            blobs, _ = M.read_frame(C.render_truth(truth)[0])
            assert len(blobs) == 1 and C.SHAPES[blobs[0].shape] == shape and blobs[0].quality > 0.95


# --- the VBench-shaped total --------------------------------------------------------------------------


def test_total_against_hand_arithmetic():
    raw = {
        "subject_consistency": 0.9,
        "background_consistency": 0.95,
        "temporal_flickering": 0.97,
        "motion_smoothness": 0.98,
        "dynamic_degree": 0.6,
        "imaging_quality": 0.7,
        "object_class": 0.8,
        "multiple_objects": 0.4,
        "color": 0.9,
        "spatial_relationship": 0.5,
        "motion": 0.6,
    }
    q = (
        (0.9 - 0.1462) / (1 - 0.1462)
        + (0.95 - 0.2615) / (1 - 0.2615)
        + (0.97 - 0.6293) / (1 - 0.6293)
        + (0.98 - 0.706) / (0.9975 - 0.706)
        + 0.5 * 0.6
        + 0.7
    ) / 5.5
    s = (0.8 + 0.4 + 0.9 + 0.5 + 0.6) / 5
    out = M.vbench_shaped(raw)
    assert out["quality"] == pytest.approx(q) and out["semantic"] == pytest.approx(s)
    assert out["total"] == pytest.approx((4 * q + s) / 5)
    assert set(M.QUALITY) | set(M.SEMANTIC) == set(M.DIMENSIONS)
    assert all(vb.WEIGHTS[M.DIMENSIONS[d]] == (0.5 if d == "dynamic_degree" else 1.0) for d in M.DIMENSIONS)
    with pytest.raises(ValueError, match="missing or undefined: motion"):
        M.vbench_shaped({k: v for k, v in raw.items() if k != "motion"})


def test_metrics_refuse_wrong_shapes_and_captions():
    with pytest.raises(ValueError, match="videos of shape"):
        M.score_clips(np.zeros((2, 6, 8, 8, 3)), ["a red square moving left"] * 2)
    with pytest.raises(C.ClipError, match="outside the vocabulary"):
        M.score_clips(np.zeros((1, 6, C.SIZE, C.SIZE, 3)), ["a red dog moving left"])


# --- pipeline and guidance -------------------------------------------------------------------------------


def _tiny_pipe(seed=0):
    from ditguide.testbeds.train_t2v import ClipsTrainConfig, build_prompt_encoder, build_transformer, pipeline

    cfg = ClipsTrainConfig(num_layers=8, attention_head_dim=12, ffn_dim=16, text_dim=8)
    torch.manual_seed(seed)
    return pipeline(build_transformer(cfg), build_prompt_encoder(cfg), cfg.frames)


def test_video_pipeline_is_a_wan_pipeline_with_per_index_seeds():
    from diffusers import WanPipeline

    from ditguide.pipelines import driver_for

    pipe = _tiny_pipe()
    assert isinstance(pipe, WanPipeline) and driver_for(pipe).family == "wan"
    caps = [
        "a red square moving left",
        "a blue circle moving up left of a green cross staying still",
        "a yellow triangle staying still",
    ]
    both = pipe(
        prompt=caps, num_inference_steps=2, guidance_scale=3.0, height=C.SIZE, width=C.SIZE, indices=[4, 5, 6]
    ).frames
    one = pipe(
        prompt=caps[1:2], num_inference_steps=2, guidance_scale=3.0, height=C.SIZE, width=C.SIZE, indices=[5]
    ).frames
    assert both.shape == (3, C.FRAMES, C.SIZE, C.SIZE, 3)
    np.testing.assert_allclose(both[1], one[0], atol=1e-5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pipe(prompt=["a purple square moving left"], num_inference_steps=1)


def test_wan_driver_runs_unchanged_on_the_video_pipeline():
    from ditguide.guidance import preset
    from ditguide.pipelines import run_guided

    pipe = _tiny_pipe()
    caps = ["a red square moving left", "a blue circle staying still"]
    own = pipe(prompt=caps, num_inference_steps=3, guidance_scale=4.0, indices=[0, 1]).frames
    guided, cost = run_guided(pipe, preset("cfg", scale=4.0), prompt=caps, num_inference_steps=3, indices=[0, 1])
    np.testing.assert_allclose(guided.frames, own, atol=1e-5)
    assert cost.nfe == 6
    _, cost = run_guided(
        pipe, preset("stg", cfg_scale=4.0, blocks=["blocks:0"]), prompt=caps, num_inference_steps=3, indices=[0, 1]
    )
    assert 8 < cost.nfe < 9  # cond + uncond + a branch that skips one of 8 blocks, per step
    from ditguide.denoiser import GuidanceError

    with pytest.raises(GuidanceError):  # the pipeline's own CFG under a spec would guide twice
        run_guided(pipe, preset("cfg", scale=4.0), prompt=caps, num_inference_steps=1, guidance_scale=3.0)


def test_twin_guidance_on_wan_is_weak_plus_w_times_difference():
    from ditguide.testbeds.evaluate_t2v import twin_pipeline

    pipe, weak = _tiny_pipe(0), _tiny_pipe(1)
    tp = twin_pipeline(pipe, weak.transformer, 1.0)
    caps = ["a red square moving left"]
    np.testing.assert_allclose(
        tp(prompt=caps, num_inference_steps=2, indices=[3]).frames,
        pipe(prompt=caps, num_inference_steps=2, indices=[3]).frames,
        atol=1e-5,
    )
    assert tp.transformer.blocks_per_call() == 2.0


def test_training_config_is_validated():
    from ditguide.testbeds.train_t2v import ClipsTrainConfig

    with pytest.raises(ValueError, match="train_toy_t2v.num_layers=4"):
        ClipsTrainConfig(num_layers=4)
    with pytest.raises(ValueError, match="train_toy_t2v.lr='1e-3'"):
        ClipsTrainConfig(lr="1e-3")


def test_training_draws_do_not_depend_on_training_the_encoder():
    """A run is reproducible; training the prompt encoder (the probe's lever) changes the encoder and
    the losses after the first step, but not the first batch's draws (so not the first loss), and the
    stage's default leaves the frozen encoder untouched."""
    from ditguide.testbeds.train_t2v import ClipsTrainConfig, build_prompt_encoder, train_clips_model

    cfg = ClipsTrainConfig(
        steps=8, batch_size=2, num_attention_heads=1, attention_head_dim=12, ffn_dim=16, text_dim=8, patch_hw=2
    )

    def run(train_encoder):
        enc = build_prompt_encoder(cfg)
        before = {k: v.clone() for k, v in enc.state_dict().items()}
        _, losses, _ = train_clips_model(cfg, enc, progress=False, log_every=0, train_encoder=train_encoder)
        changed = any(not torch.equal(before[k], v) for k, v in enc.state_dict().items())
        return losses, changed

    frozen, frozen_changed = run(False)
    again, _ = run(False)
    learned, learned_changed = run(True)
    assert frozen == again
    assert not frozen_changed and learned_changed
    assert learned[0] == frozen[0] and learned[1:] != frozen[1:]


def test_evaluation_end_to_end_on_a_tiny_untrained_model(tmp_path, monkeypatch):
    """The evaluation path (profile -> load_pipeline -> renderer -> judges -> metrics, figures) on a
    tiny random model saved as the profile's folder; same seeds for every method, resumable."""
    import yaml

    from ditguide.testbeds import plots_t2v
    from ditguide.testbeds.evaluate_t2v import acceptance, evaluate_clips

    monkeypatch.setenv("DITGUIDE_VBENCH_PYTHON", str(tmp_path / "no-vbench"))  # VBench's own flickering: skipped
    pipe, twin = _tiny_pipe(0), _tiny_pipe(1)
    pipe.save_pretrained(tmp_path / "model")
    twin.save_pretrained(tmp_path / "twin")
    params = yaml.safe_load(open(REPO / "params.yaml"))
    params["profiles"]["clips"] = {**params["profiles"]["clips"], "model": str(tmp_path / "model"), "steps": 2}
    kw = dict(
        per_set=10,
        seed_sets=3,
        cfg_scales=[3.0],
        specs=["stg"],
        twins={"twin": str(tmp_path / "twin")},
        batch_size=16,
        params=params,
        runs_dir=str(tmp_path / "runs"),
    )
    result = evaluate_clips("clips", **kw)
    m = result.metrics
    assert set(m["methods"]) == {"none", "cfg@3", "stg", "ag_twin"}
    assert all(e["count"] == 30 for e in m["methods"].values())
    assert m["methods"]["cfg@3"]["nfe_per_step"] == 2.0 and 2.5 < m["methods"]["stg"]["nfe_per_step"] < 3.0
    assert m["real"]["semantic"] == 1.0 and m["chance"]["semantic"] < 0.5
    assert isinstance(acceptance(m)["headroom (unguided semantic <= 0.85)"], bool)
    assert m["vbench_temporal_flickering"]["none"] is None
    assert result.videos["none"].shape == (30, C.FRAMES, C.SIZE, C.SIZE, 3)
    again = evaluate_clips("clips", **kw)  # reuses every chunk
    np.testing.assert_array_equal(again.videos["stg"], result.videos["stg"])
    assert "method" in plots_t2v.table(m) and "| none |" in plots_t2v.markdown_table(m)
    tex = plots_t2v.table(m)
    assert " ± " in tex and "textbackslash" not in tex and r"\$" not in tex  # cells are text, not escaped math
    with pytest.raises(ValueError, match="spec='nope' is not a guidance spec"):
        evaluate_clips("clips", **{**kw, "specs": ["nope"]})


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_colour_is_zero_not_undefined_when_no_clip_shows_a_captioned_shape():
    caps = ["a red square moving left", "a blue circle staying still left of a green cross moving up"] * 2
    blank = np.full((len(caps), C.FRAMES, C.SIZE, C.SIZE, 3), 0.1, dtype=np.float32)  # background only
    per_clip = M.score_clips(blank, caps)
    assert np.isnan(per_clip["color"]).all()  # per clip: nothing to judge the colour of
    agg = M.aggregate(per_clip)
    assert agg["color"] == 0.0 and agg["object_class"] == 0.0 and np.isfinite(agg["total"])
