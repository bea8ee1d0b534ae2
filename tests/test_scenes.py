"""The glyph-scene testbed: generator ground truth, caption errors, judge, metrics, twin guidance."""

import json

import numpy as np
import pytest
import torch

from ditguide.metrics import scenes as sm
from ditguide.testbeds import scenes
from ditguide.testbeds.judge import judge_accuracy
from ditguide.testbeds.twins import TwinGuidedTransformer
from ditguide.toy.data import DIGIT_WORDS

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


# --- generator ---------------------------------------------------------------------------------


def test_render_puts_each_glyph_in_its_captioned_slot_with_its_colour():
    glyphs, labels = scenes.glyph_pool("train")
    scene = scenes.parse_caption("red three right of blue seven")
    assert scene.objects == ((3, scenes.COLOURS.index("red")), (7, scenes.COLOURS.index("blue")))
    assert scene.slots() == ((7, scenes.COLOURS.index("blue")), (3, scenes.COLOURS.index("red")))  # blue seven is left
    img = scenes.render([scene], glyphs, labels, np.random.default_rng(0))[0]
    left, right = img[4:12, 0:8], img[4:12, 8:16]
    assert img[:4].max() == 0 and img[12:].max() == 0  # nothing outside the row band
    blue, red = np.array(scenes.PALETTE["blue"]), np.array(scenes.PALETTE["red"])
    for part, colour, digit in ((left, blue, 7), (right, red, 3)):
        grey = part.max(-1) / colour.max()
        np.testing.assert_allclose(part, grey[..., None] * colour, atol=1e-6)  # one hue, tinted glyph
        assert any(np.allclose(grey, g, atol=1e-6) for g in glyphs[labels == digit])  # a real glyph of that digit


def test_vertical_and_single_layouts():
    glyphs, labels = scenes.glyph_pool("train")
    rng = np.random.default_rng(1)
    above = scenes.render([scenes.parse_caption("green five above yellow two")], glyphs, labels, rng)[0]
    assert (
        above[:, :4].max() == 0 and above[:, 12:].max() == 0 and above[:8, 4:12].max() > 0 and above[8:, 4:12].max() > 0
    )
    single = scenes.render([scenes.parse_caption("purple eight")], glyphs, labels, rng)[0]
    assert single[:4].max() == 0 and single[:, :4].max() == 0 and single[4:12, 4:12].max() > 0


def test_training_distribution_never_shows_heldout_pairs_and_unseen_split_always_does():
    rng = np.random.default_rng(0)
    train = scenes.sample_scenes(3000, rng)
    assert not any(s.unseen for s in train)
    assert 0.15 < np.mean([len(s.objects) == 1 for s in train]) < 0.25
    unseen = scenes.caption_set("unseen", 200)
    assert all(s.unseen and len(s.objects) == 2 for s in unseen)
    dev, test = scenes.caption_set("dev", 200), scenes.caption_set("test", 200)
    assert [s.caption() for s in dev] != [s.caption() for s in test]
    assert [s.caption() for s in test] == [s.caption() for s in scenes.caption_set("test", 200)]  # fixed


def test_captions_round_trip_and_pools_are_disjoint():
    for s in scenes.sample_scenes(200, np.random.default_rng(3), pairs="all"):
        assert scenes.parse_caption(s.caption()) == s
    a, _ = scenes.glyph_pool("train")
    b, _ = scenes.glyph_pool("heldout")
    assert len(a) == 1200 and len(b) == scenes.HELDOUT_GLYPHS
    rows = {g.tobytes() for g in a}
    assert sum(g.tobytes() in rows for g in b) < 5  # the raw data has a few exact duplicates


@pytest.mark.parametrize(
    "caption, match",
    [
        ("red three left of blue seven7", r"outside the vocabulary: \['seven7'\]"),
        ("red three near blue seven", r"outside the vocabulary: \['near'\]"),
        ("red three left blue seven", r"relations: left of, right of, above, below"),
        ("red three left of red seven", "different colours"),
        ("three red", "an object is '<colour> <digit>'"),
    ],
)
def test_bad_captions_get_one_clear_error(caption, match):
    with pytest.raises(scenes.SceneError, match=match):
        scenes.parse_caption(caption)


def test_out_of_range_palette_index_and_relation_are_refused():
    with pytest.raises(scenes.SceneError, match=r"palette index 6 is out of range; allowed: 0..5"):
        scenes.Scene(((1, 6),))
    with pytest.raises(scenes.SceneError, match="relation 'inside' cannot be drawn"):
        scenes.Scene(((1, 0), (2, 1)), "inside")


def test_vocabulary_covers_every_caption_word():
    vocab = scenes.vocabulary()
    assert (
        set(DIGIT_WORDS) <= set(vocab) and set(scenes.COLOURS) <= set(vocab) and {"left", "of", "above"} <= set(vocab)
    )
    assert len(vocab) == len(set(vocab))


# --- judge and metrics ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge():
    return sm.load_judge(REPO / "data/scenes/judge.safetensors")


def test_committed_judge_reads_renders_of_unseen_glyphs(judge):
    # The judge never saw the train pool's glyphs: this is its accuracy on new handwriting.
    acc = judge_accuracy(judge, "train", count=2000, seed=5)
    assert acc["layout"] == 1.0 and acc["colour0"] > 0.99 and acc["colour1"] > 0.99
    assert acc["digit0"] >= 0.97 and acc["digit1"] >= 0.97
    # and on fresh renders of its own (held-out) glyph pool, which it was trained on
    assert min(judge_accuracy(judge, "heldout", count=2000, seed=5).values()) >= 0.99


def test_scene_metrics_on_real_renders_and_on_noise(judge):
    captions = [s.caption() for s in scenes.caption_set("test", 300)]
    parsed = [scenes.parse_caption(c) for c in captions]
    rng = np.random.default_rng(0)
    reference = sm.read(judge, scenes.render(parsed * 2, *scenes.glyph_pool("heldout"), rng))["features"]
    real = sm.scene_metrics(
        sm.read(judge, scenes.render(parsed, *scenes.glyph_pool("train"), rng)), captions, reference
    )
    assert real["all"] > 0.88 and real["relation"] == 1.0 and real["colour"] > 0.99
    assert real["precision"] > 0.6 and real["recall"] > 0.6
    noise = rng.uniform(size=(300, 16, 16, 3)).astype(np.float32)
    bad = sm.scene_metrics(sm.read(judge, noise), captions, reference)
    assert bad["fd"] > 10 * real["fd"] and bad["all"] < 0.05 and bad["precision"] < 0.1


def test_swapped_objects_fail_the_binding_check(judge):
    glyphs, labels = scenes.glyph_pool("train")
    caption = "red three left of blue seven"
    swapped = scenes.render(
        [scenes.parse_caption("blue seven left of red three")], glyphs, labels, np.random.default_rng(0)
    )
    right = scenes.render([scenes.parse_caption(caption)], glyphs, labels, np.random.default_rng(0))
    assert sm.alignment(sm.read(judge, right), [caption])["all"][0]
    a = sm.alignment(sm.read(judge, swapped), [caption])
    assert not a["all"][0] and a["relation"][0]  # same axis, wrong binding


def test_precision_recall_definition():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    p, r = sm.precision_recall(real, real)
    assert p == 1.0 and r == 1.0
    collapsed = np.repeat(real[:1], 200, axis=0) + 1e-3 * rng.normal(size=(200, 4))  # no diversity
    p, r = sm.precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.1
    far = real + 100.0
    assert sm.precision_recall(real, far) == (0.0, 0.0)
    with pytest.raises(ValueError, match="needs more than 3 samples per set; got 3 generated"):
        sm.precision_recall(real, real[:3])


def test_metric_input_shape_is_checked(judge):
    with pytest.raises(ValueError, match=r"shape \(N, 16, 16, 3\)"):
        sm.read(judge, np.zeros((2, 8, 8, 3)))


# --- trained-twin autoguidance ------------------------------------------------------------------


def test_twin_guidance_reduces_to_each_model_and_is_linear():
    from diffusers import FluxTransformer2DModel

    def model(seed, singles):
        torch.manual_seed(seed)
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=12,
            num_layers=1,
            num_single_layers=singles,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=8,
            pooled_projection_dim=8,
            axes_dims_rope=(4, 6, 6),
        ).eval()

    main, twin = model(0, 3), model(1, 1)
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(2, 16, 12, generator=g),
        encoder_hidden_states=torch.randn(2, 3, 8, generator=g),
        pooled_projections=torch.randn(2, 8, generator=g),
        timestep=torch.tensor([0.3, 0.7]),
        txt_ids=torch.zeros(3, 3),
        img_ids=torch.zeros(16, 3),
        return_dict=False,
    )
    with torch.no_grad():
        d_main, d_twin = main(**kw)[0], twin(**kw)[0]
        assert torch.equal(TwinGuidedTransformer(main, twin, 1.0)(**kw)[0], d_twin + 1.0 * (d_main - d_twin))
        torch.testing.assert_close(TwinGuidedTransformer(main, twin, 1.0)(**kw)[0], d_main, rtol=0, atol=1e-6)
        assert torch.equal(TwinGuidedTransformer(main, twin, 0.0)(**kw)[0], d_twin)
        torch.testing.assert_close(TwinGuidedTransformer(main, twin, 2.5)(**kw)[0], d_twin + 2.5 * (d_main - d_twin))
    assert TwinGuidedTransformer(main, twin, 2.0).blocks_per_call() == 1 + 2 / 4
    with pytest.raises(ValueError, match="scale must be a finite number"):
        TwinGuidedTransformer(main, twin, float("nan"))


def test_ideal_denoiser_equals_brute_force_posterior_over_every_render():
    # Brute force: enumerate every training render of the caption (all glyph pairs of a tiny pool) and
    # take the posterior mean over whole images; the closed form factorises over slots.
    import ditguide.testbeds.scenes as sc

    glyphs, labels = sc.glyph_pool("train")
    scene = sc.parse_caption("orange four below green one")
    (d0, c0), (d1, c1) = scene.slots()
    rng = np.random.default_rng(0)
    pool = {d: np.flatnonzero(labels == d) for d in (d0, d1)}
    renders = []
    for a in pool[d0]:
        for b in pool[d1]:
            img = np.zeros((16, 16, 3))
            img[0:8, 4:12] = glyphs[a][..., None] * np.array(sc.PALETTE[sc.COLOURS[c0]])
            img[8:16, 4:12] = glyphs[b][..., None] * np.array(sc.PALETTE[sc.COLOURS[c1]])
            renders.append(2 * img - 1)
    renders = np.stack(renders)  # every render of this caption (~120 x 120)
    for t in (0.2, 0.6, 0.95):
        x0 = renders[rng.integers(len(renders))]
        x_t = (1 - t) * x0 + t * rng.normal(size=x0.shape)
        logits = -((x_t[None] - (1 - t) * renders) ** 2).sum(axis=(1, 2, 3)) / (2 * t * t)
        w = np.exp(logits - logits.max())
        brute = np.tensordot(w / w.sum(), renders, axes=1)
        np.testing.assert_allclose(sc.ideal_x0(x_t[None], t, [scene])[0], brute, atol=1e-9)
    with pytest.raises(sc.SceneError, match="t must be in"):
        sc.ideal_x0(x_t[None], 0.0, [scene])


# --- layer-analysis engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_scenes_pipe():
    from ditguide.testbeds.train import ScenesTrainConfig, _pipeline, build_prompt_encoder, build_transformer

    cfg = ScenesTrainConfig(num_single_layers=3, shallow_single_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = _pipeline(build_transformer(cfg), build_prompt_encoder(cfg))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_windowed_edit_sampling_is_exact_when_the_edit_does_nothing(random_scenes_pipe):
    from ditguide import analysis

    caps = [s.caption() for s in scenes.caption_set("dev", 3)]
    base = analysis.sample_with_edit(random_scenes_pipe, caps, [0, 1, 2], spec=None, steps=4)
    plain = random_scenes_pipe(prompt=caps, indices=[0, 1, 2], num_inference_steps=4, height=16, width=16).images
    assert np.array_equal(base, np.round(np.clip(plain, 0, 1) * 255).astype(np.uint8))
    noop = analysis.sample_with_edit(random_scenes_pipe, caps, [0, 1, 2], spec="scale(1):single:1", steps=4)
    assert np.array_equal(noop, base)  # alpha = 1 is the identity, bit for bit
    never = analysis.sample_with_edit(random_scenes_pipe, caps, [0, 1, 2], spec="skip:single:1", steps=4, active=set())
    assert np.array_equal(never, base)
    skipped = analysis.sample_with_edit(random_scenes_pipe, caps, [0, 1, 2], spec="skip:single:1", steps=4)
    late = analysis.sample_with_edit(random_scenes_pipe, caps, [0, 1, 2], spec="skip:single:1", steps=4, active={3})
    assert not np.array_equal(skipped, base) and not np.array_equal(late, skipped)
    assert analysis._window_steps((1 / 3, 2 / 3), 20) == set(range(7, 14))
    assert set().union(*(analysis._window_steps(w, 28) for w in analysis.WINDOWS.values())) == set(range(28))
    again = analysis.sample_with_edit(random_scenes_pipe, caps, [0, 1, 2], spec=None, steps=4)
    assert np.array_equal(again, base)  # every edit was removed after its run


def test_residual_probe_and_error_alignment_sign(random_scenes_pipe):
    from ditguide import analysis

    caps = [s.caption() for s in scenes.caption_set("dev", 4)]
    out = analysis.denoiser_scan(
        random_scenes_pipe, caps, edits=["skip"], t_grid=[0.5], blocks=["single:0"], progress=False
    )
    blocks = analysis.block_addresses(random_scenes_pipe.transformer)
    assert [r["block"] for r in out["residuals"]] == blocks and all(r["rel_update"] > 0 for r in out["residuals"])
    # Per-sample cosine: an edit that moves D along the model's own error scores +1, against it -1.
    rng = np.random.default_rng(0)
    d, ideal = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    assert np.allclose(analysis._per_sample_cos(0.3 * (d - ideal), d - ideal), 1.0)
    assert np.allclose(analysis._per_sample_cos(-2.0 * (d - ideal), d - ideal), -1.0)
    with pytest.raises(ValueError, match="not blocks of this model; valid: double:0"):
        analysis.denoiser_scan(
            random_scenes_pipe, caps, edits=["skip"], t_grid=[0.5], blocks=["single:10"], progress=False
        )
    with pytest.raises(ValueError, match="edit 'skipp' is not known; allowed: skip"):
        analysis.denoiser_scan(random_scenes_pipe, caps, edits=["skipp"], t_grid=[0.5], progress=False)


def test_regime_checks_read_the_u_shape_from_the_numbers():
    from ditguide.testbeds.evaluate import regime_checks

    def m(fd, all_):
        return {"fd": fd, "all": all_}

    methods = {
        "none": m(2.0, 0.3),
        "cfg@1.5": {**m(1.5, 0.5), "cfg_scale": 1.5},
        "cfg@3": {**m(1.7, 0.6), "cfg_scale": 3.0},
        "cfg@5": {**m(2.5, 0.65), "cfg_scale": 5.0},
    }
    r = regime_checks({"methods": methods, "floor": {"fd": 0.5}})
    assert r["best_cfg_scale"] == 1.5 and r["best_fd_gain_over_unguided"] == pytest.approx(0.25)
    assert r["u_shape (best FD >= 10% below unguided, largest scale worse than best)"]
    assert r["headroom_fd (unguided FD >= 2 x floor)"] and r["headroom_alignment (unguided all-correct <= 0.85)"]
    assert r["alignment_rises_with_scale"]
    methods["cfg@5"] = {**m(1.4, 0.4), "cfg_scale": 5.0}  # monotone FD, falling alignment: not the regime
    r = regime_checks({"methods": methods, "floor": {"fd": 1.5}})
    assert not r["u_shape (best FD >= 10% below unguided, largest scale worse than best)"]
    assert not r["alignment_rises_with_scale"] and not r["headroom_fd (unguided FD >= 2 x floor)"]


def test_per_object_accuracy_counts_each_object():
    # two objects, one digit right: 0.5 per object (a bool sum would give 0.5 for both right too)
    read = {
        "layout": np.array([0, 0, 2]),
        "digit0": np.array([3, 3, 4]),
        "digit1": np.array([7, 1, 0]),
        "colour0": np.array([0, 0, 1]),
        "colour1": np.array([5, 5, 0]),
        "features": np.zeros((3, 2)),
    }
    a = sm.alignment(read, ["red three left of purple seven"] * 2 + ["orange four"])
    assert a["digit"].tolist() == [1.0, 0.5, 1.0] and a["colour"].tolist() == [1.0, 1.0, 1.0]
    assert a["all"].tolist() == [True, False, True] and a["relation"].tolist() == [True, True, True]


@pytest.mark.parametrize(
    "edit, match",
    [
        ("train_scenes:\n  lr: 1e-4\n", r"train_scenes.lr='1e-4' is out of range"),  # YAML reads 1e-4 as a string
        ("train_scenes:\n  stepz: 5\n", r"unknown parameter\(s\) \['stepz'\]"),
        ("train_scenes_judge:\n  epochs: 0\n", r"train_scenes_judge.epochs=0 is out of range"),
    ],
)
def test_testbed_cli_refuses_bad_parameters_in_one_line_before_any_work(tmp_path, capsys, edit, match):
    import re

    from ditguide.testbeds.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text("profiles: {}\n" + edit)
    what = "scenes-judge" if "judge" in edit else "scenes"
    assert main([what, "--out", str(tmp_path / "out"), "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_save_pipeline_replaces_a_model_folder_only_when_complete(tmp_path, monkeypatch):
    """The trainers' save: a failed save leaves the old folder as it was; a finished one replaces it."""
    from ditguide.testbeds.train import save_pipeline
    from ditguide.toy.pipeline import ToyPipeline

    pipe = ToyPipeline.from_pretrained("data/scenes/twin_shallow")
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(ToyPipeline, "save_pretrained", broken)
        with pytest.raises(OSError, match="disk full"):
            save_pipeline(pipe, out, {"steps": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "old.txt").read_text() == "old"
    save_pipeline(pipe, out, {"steps": 1})
    assert not (out / "old.txt").exists() and (out / "model_index.json").is_file()
    assert json.loads((out / "train_log.json").read_text()) == {"steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old folder left behind
