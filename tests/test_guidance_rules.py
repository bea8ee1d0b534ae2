"""Guidance rules and the guidance spec: formulas, intervals, planning, serialization, validation.

Pure tensor code: no model is involved anywhere in this file.
"""

import json
import math

import pytest
import torch

from ditguide.guidance import (
    PRESETS,
    GuidanceSpec,
    GuidanceSpecError,
    Interval,
    StepInfo,
    apg,
    cfg,
    cfg_zero_star,
    cfg_zero_star_alpha,
    delta,
    preset,
)


def rand(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- rules ---------------------------------------------------------------------------------------


def test_cfg_is_the_diffusers_formula_bit_for_bit():
    c, u = rand(2, 3, 4, seed=1).float(), rand(2, 3, 4, seed=2).float()
    assert torch.equal(cfg(c, u, 3.5), u + 3.5 * (c - u))
    assert torch.equal(cfg(c, u, 0.0), u)


def test_cfg_zero_star_alpha_is_per_sample_projection():
    c = rand(3, 2, 5, seed=3)
    k = torch.tensor([2.0, -0.5, 4.0], dtype=torch.float64).view(3, 1, 1)
    u = k * c  # row i: uncond = k_i * cond, so the optimal scale is 1 / k_i
    alpha = cfg_zero_star_alpha(c, u)
    assert alpha.shape == (3, 1, 1)
    torch.testing.assert_close(alpha.flatten(), 1.0 / k.flatten(), rtol=1e-5, atol=0)
    # alpha * uncond == cond, so the guided prediction is cond whatever the scale
    torch.testing.assert_close(cfg_zero_star(c, u, 7.0), c, rtol=1e-5, atol=1e-5)


def test_cfg_zero_star_matches_reference_formula():
    c, u = rand(2, 8, seed=4), rand(2, 8, seed=5)
    a = ((c * u).sum(1) / (u * u).sum(1)).view(2, 1)
    torch.testing.assert_close(cfg_zero_star(c, u, 4.0), a * u + 4.0 * (c - a * u))


def test_apg_with_eta_one_and_no_extras_is_cfg():
    c, u = rand(2, 3, 4, seed=6), rand(2, 3, 4, seed=7)
    out, running = apg(c, u, 4.0, eta=1.0)
    torch.testing.assert_close(out, cfg(c, u, 4.0))
    assert running is None


def test_apg_eta_zero_removes_the_parallel_component():
    c, u = rand(2, 3, 4, seed=8), rand(2, 3, 4, seed=9)
    out, _ = apg(c, u, 4.0, eta=0.0)
    update = (out - c).flatten(1)
    cos = torch.nn.functional.cosine_similarity(update, c.flatten(1), dim=1)
    assert cos.abs().max() < 1e-10
    # ...and keeps the orthogonal one: the update is not zero
    assert update.norm(dim=1).min() > 0.1


def test_apg_norm_threshold_clips_per_sample():
    c, u = rand(2, 16, seed=10), 10 * rand(2, 16, seed=11)
    out, _ = apg(c, u, 3.0, eta=1.0, norm_threshold=0.5)
    norms = ((out - c) / 2.0).norm(dim=1)  # (s - 1) * clipped diff
    torch.testing.assert_close(norms, torch.full((2,), 0.5, dtype=torch.float64))


def test_apg_momentum_accumulates_across_steps():
    c1, u1, c2, u2 = (rand(1, 6, seed=s) for s in (12, 13, 14, 15))
    _, running = apg(c1, u1, 3.0, eta=1.0, momentum=-0.5)
    out, running2 = apg(c2, u2, 3.0, eta=1.0, momentum=-0.5, running=running)
    expected = c2 + 2.0 * ((c2 - u2) - 0.5 * (c1 - u1))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(running2, (c2 - u2) - 0.5 * (c1 - u1))


def test_delta_operand_order():
    a, b = rand(4, seed=16).float(), rand(4, seed=17).float()
    assert torch.equal(delta(a, b, 2.8), (a - b) * 2.8)


# ---- intervals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interval, n, active",
    [
        ([0.0, 1.0], 10, list(range(10))),
        ([0.0, 0.5], 10, [0, 1, 2, 3, 4]),
        ([0.1, 0.9], 10, [1, 2, 3, 4, 5, 6, 7, 8]),
        ([0.01, 0.2], 28, [1, 2, 3, 4, 5]),  # SD3.5's SLG window
        ([0.3, 0.3], 10, []),
        ([0.3, 0.7], 10, [3, 4, 5, 6]),  # 0.3 * 10 is 3.0000000000000004 in floats
    ],
)
def test_step_interval_is_half_open_on_step_fractions(interval, n, active):
    iv = Interval.from_value(interval)
    assert [i for i in range(n) if iv.contains(i, n)] == active


def test_sigma_interval_is_half_open_including_its_high_sigma_edge():
    # (start, end]: the edge the trajectory reaches first (high sigma) is in, the other one out, so
    # windows sharing an edge never both claim a step (Kynkaanniemi et al.'s (sigma_lo, sigma_hi]).
    iv = Interval.from_value({"start": 0.2, "end": 0.8, "unit": "sigma"})
    assert [s for s in (1.0, 0.8, 0.5, 0.2, 0.1) if iv.contains(0, 10, s)] == [0.8, 0.5]


@pytest.mark.parametrize("n", [10, 28, 50, 100, 200])
def test_open_step_interval_is_sd3s_skip_layer_window(n):
    # StableDiffusion3Pipeline runs its skip-layer pass when `i > N * start and i < N * stop`.
    start, stop = 0.01, 0.2
    iv = Interval.from_value({"start": start, "end": stop, "open": True})
    assert [i for i in range(n) if iv.contains(i, n)] == [i for i in range(n) if n * start < i < n * stop]


def test_slg_preset_window_is_open_also_when_overridden():
    for interval in (None, [0.01, 0.2], {"start": 0.01, "end": 0.2}):
        spec = GuidanceSpec.from_dict(preset("slg", interval=interval))
        window = [t for t in spec.terms if t.name == "slg"][0].interval
        assert window.open and [i for i in range(100) if window.contains(i, 100)] == list(range(2, 20))


def test_sigma_windows_sharing_an_edge_activate_one_primary_term_per_step():
    spec = GuidanceSpec.from_dict(preset("slg_weak_negative", interval={"start": 0.3, "end": 0.7, "unit": "sigma"}))
    sigmas = [1.0 - 0.1 * i for i in range(10)] + [0.0]  # a linear 10-step schedule: hits 0.7 and 0.3
    spec.check_schedule(10, sigmas)
    needed = [spec.branches_needed(StepInfo(i, 10, sigmas[i])) for i in range(10)]
    # sigma 1.0 .. 0.8 plain CFG, (0.3, 0.7] the weak negative, 0.3 .. 0.1 plain CFG again
    assert needed == [["cond", "uncond"]] * 3 + [["cond", "uncond_weak"]] * 4 + [["cond", "uncond"]] * 3


# ---- planning and combining -----------------------------------------------------------------------

SPEC = {
    "branches": {"weak": {"prompt": "pos", "edits": {"edits": [{"op": "skip", "blocks": [2]}]}}},
    "terms": [
        {"rule": "cfg", "scale": 3.0, "interval": [0.0, 0.5]},
        {"rule": "delta", "scale": 2.0, "plus": "cond", "minus": "weak", "interval": [0.3, 1.0], "name": "ag"},
    ],
}


def test_branches_needed_follow_the_intervals():
    spec = GuidanceSpec.from_dict(SPEC)
    needed = [spec.branches_needed(StepInfo(i, 10)) for i in range(10)]
    assert needed[:3] == [["cond", "uncond"]] * 3
    assert needed[3:5] == [["cond", "uncond", "weak"]] * 2
    assert needed[5:] == [["cond", "weak"]] * 5


def test_combine_applies_active_terms_only():
    spec = GuidanceSpec.from_dict(SPEC)
    p = {"cond": rand(2, 3, seed=20), "uncond": rand(2, 3, seed=21), "weak": rand(2, 3, seed=22)}
    assert torch.equal(spec.combine(p, StepInfo(0, 10)), cfg(p["cond"], p["uncond"], 3.0))
    assert torch.equal(
        spec.combine(p, StepInfo(4, 10)), cfg(p["cond"], p["uncond"], 3.0) + (p["cond"] - p["weak"]) * 2.0
    )
    assert torch.equal(spec.combine(p, StepInfo(7, 10)), p["cond"] + (p["cond"] - p["weak"]) * 2.0)


def test_guidance_off_returns_the_conditional_prediction_itself():
    spec = GuidanceSpec.from_dict(None)
    p = {"cond": rand(2, 3)}
    assert spec.branches_needed(StepInfo(0, 5)) == ["cond"]
    assert spec.combine(p, StepInfo(0, 5)) is p["cond"]
    assert not spec.uses_negative


def test_weak_negative_needs_two_branches_at_every_step():
    spec = GuidanceSpec.from_dict(preset("slg_weak_negative", interval=[0.1, 0.9]))
    needed = [spec.branches_needed(StepInfo(i, 10)) for i in range(10)]
    assert needed[0] == needed[9] == ["cond", "uncond"]
    assert all(n == ["cond", "uncond_weak"] for n in needed[1:9])


def test_zero_init_needs_no_branch_and_returns_none():
    spec = GuidanceSpec.from_dict(preset("cfg_zero_star", zero_init_fraction=0.2))
    assert spec.branches_needed(StepInfo(0, 10)) == [] == spec.branches_needed(StepInfo(1, 10))
    assert spec.branches_needed(StepInfo(2, 10)) == ["cond", "uncond"]
    assert spec.combine({}, StepInfo(1, 10)) is None


@pytest.mark.parametrize("n, zeroed", [(10, 1), (20, 1), (28, 2), (50, 2), (100, 4)])
def test_cfg_zero_star_zeroes_a_fraction_of_the_steps(n, zeroed):
    # The authors' suggestion: about 4 % of the steps, at least the first one.
    spec = GuidanceSpec.from_dict(preset("cfg_zero_star"))
    assert spec.zero_init_fraction == 0.04
    assert [i for i in range(n) if spec.branches_needed(StepInfo(i, n)) == []] == list(range(zeroed))


def test_apg_state_is_kept_between_steps_and_x0_space_round_trips():
    spec = GuidanceSpec.from_dict(preset("apg", scale=1.0))  # scale 1: the update vanishes
    x, c, u = rand(1, 6, seed=30), rand(1, 6, seed=31), rand(1, 6, seed=32)
    state = {}
    out = spec.combine({"cond": c, "uncond": u}, StepInfo(0, 10, 0.5), state, sample=x)
    torch.testing.assert_close(out, c)
    assert set(state) == {0}  # momentum buffer of term 0
    spec3 = GuidanceSpec.from_dict(preset("apg", scale=3.0, space="pred", momentum=0.0, eta=1.0))
    torch.testing.assert_close(spec3.combine({"cond": c, "uncond": u}, StepInfo(0, 10, 0.5)), cfg(c, u, 3.0))


# ---- serialization and presets --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    spec = GuidanceSpec.from_dict(preset(name))
    again = GuidanceSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.to_dict() == spec.to_dict()


def test_preset_overrides():
    d = preset("slg", blocks=[1], cfg_scale=3.0, scale=2.8, interval=[0.01, 0.5])
    assert d["branches"]["skip"]["edits"] == {"edits": [{"op": "skip", "blocks": [1]}]}
    assert [(t["rule"], t["scale"]) for t in d["terms"]] == [("cfg", 3.0), ("delta", 2.8)]
    assert d["terms"][1]["interval"] == {"start": 0.01, "end": 0.5, "unit": "step", "open": True}
    assert [t["rule"] for t in preset("stg", cfg_scale=1.0)["terms"]] == ["delta"]
    weak = {"edits": [{"op": "scale", "blocks": ["double:1"], "alpha": 0.5}]}
    assert preset("strong_weak", weak=weak)["branches"]["weak"]["edits"] == weak


def test_guidance_interval_maps_edm_sigma_by_signal_to_noise_ratio():
    from ditguide.guidance import EDM2_GUIDANCE_INTERVAL, edm_sigma_to_flow

    lo, hi = EDM2_GUIDANCE_INTERVAL
    window = GuidanceSpec.from_dict(preset("guidance_interval")).terms[0].interval
    assert window.unit == "sigma"
    # sigma_data 0.5 (EDM2): t = 2 sigma / (1 + 2 sigma), about (0.36, 0.92]
    assert (window.start, window.end) == (2 * lo / (1 + 2 * lo), 2 * hi / (1 + 2 * hi))
    assert round(window.start, 2) == 0.36 and round(window.end, 2) == 0.92
    # equal SNR: EDM x = y + sigma n with std(y) = sigma_data; flow x = (1 - t) y + t n with std(y) = 1
    for sigma, sigma_data in ((0.28, 0.5), (5.42, 0.5), (1.0, 1.3)):
        t = edm_sigma_to_flow(sigma, sigma_data)
        assert math.isclose(sigma_data**2 / sigma**2, (1 - t) ** 2 / t**2, rel_tol=1e-12)
    # sigma_data is a stated parameter of the preset: 1.0 gives the plain t = sigma / (1 + sigma)
    other = GuidanceSpec.from_dict(preset("guidance_interval", sigma_data=1.0)).terms[0].interval
    assert (other.start, other.end) == (lo / (1 + lo), hi / (1 + hi))


STRENGTHENING_OPS = {
    "scale": lambda e: e["alpha"] > 1,
    "repeat": lambda e: e["times"] > 1,
    "temperature": lambda e: e["tau"] < 1,
}


def test_strong_weak_default_strong_branch_is_a_strengthening():
    from ditguide.edits import EditSpec

    d = preset("strong_weak")
    for branch, wanted in (("strong", True), ("weak", False)):
        edits = EditSpec.parse(d["branches"][branch]["edits"]).to_dict()["edits"]
        assert edits and all((e["op"] in STRENGTHENING_OPS and STRENGTHENING_OPS[e["op"]](e)) == wanted for e in edits)


@pytest.mark.parametrize(
    "strong, word",
    [
        ("skip:single:3", "skip"),
        ({"edits": [{"op": "scale", "blocks": ["single:3"], "alpha": 0.5}]}, "alpha 0.5"),
        ("skip_attn:single:1", "skip_attn"),
        ("scale(2):single:1;skip_ff:single:2", "skip_ff"),
        ("temperature(2):single:1", "tau 2"),
    ],
)
def test_strong_weak_refuses_a_strong_edit_that_weakens_the_model(strong, word):
    with pytest.raises(GuidanceSpecError, match="strong") as err:
        preset("strong_weak", strong=strong)
    assert word in str(err.value)


def test_uses_negative():
    assert GuidanceSpec.from_dict(preset("cfg")).uses_negative
    assert not GuidanceSpec.from_dict(preset("autoguidance")).uses_negative
    assert GuidanceSpec.from_dict(preset("slg_weak_negative")).uses_negative


# ---- validation: one clear error naming the parameter ---------------------------------------------


def with_term(**changes):
    return {"terms": [{"rule": "cfg", "scale": 2.0, **changes}]}


@pytest.mark.parametrize(
    "spec, words",
    [
        (with_term(scale=-1.0), ["terms[0].scale", ">= 0"]),
        (with_term(scale=math.nan), ["terms[0].scale", "finite"]),
        (with_term(scale=math.inf), ["terms[0].scale", "finite"]),
        (with_term(scale="2"), ["terms[0].scale", "number"]),
        (with_term(interval=[-0.1, 1.0]), ["terms[0].interval.start", "[0, 1]"]),
        (with_term(interval=[0.0, 1.5]), ["terms[0].interval.end", "[0, 1]"]),
        (with_term(interval=[0.8, 0.2]), ["terms[0].interval", "start must be <= end"]),
        (with_term(interval={"start": 0.0, "end": 1.0, "unit": "time"}), ["terms[0].interval.unit", "sigma"]),
        (with_term(interval=[0.5]), ["terms[0].interval", "[start, end]"]),
        (with_term(rule="cgf"), ["terms[0].rule", "cfg_zero_star"]),
        (with_term(minus="weak"), ["terms[0].minus", "'weak'", "uncond"]),
        (with_term(params={"eta": 0.5}), ["terms[0].params", "rules with params: apg"]),
        (with_term(rule="apg", params={"eta": 2.0}), ["terms[0].params.eta", "[0, 1]"]),
        (with_term(rule="apg", params={"momentum": 1.0}), ["terms[0].params.momentum", "(-1, 1)"]),
        (with_term(rule="apg", params={"space": "latent"}), ["terms[0].params.space", "x0"]),
        (with_term(rule="apg", params={"etaa": 0.0}), ["terms[0].params", "etaa"]),
        (with_term(weight=1.0), ["terms[0]", "weight", "allowed"]),
        ({"terms": [{"rule": "cfg"}]}, ["terms[0]", "scale"]),
        ({"terms": [], "zero_init_fraction": -0.1}, ["zero_init_fraction", "[0, 1]"]),
        ({"terms": [], "zero_init_fraction": 2}, ["zero_init_fraction", "[0, 1]"]),
        ({"terms": [], "base": "strong"}, ["base", "'strong'"]),
        ({"branches": {"cond": {"prompt": "pos", "edits": {"edits": []}}}}, ["branches.cond", "reserved"]),
        ({"branches": {"w": {"prompt": "negative"}}}, ["branches.w.prompt", "'pos'"]),
        ({"branches": {"w": {"prompt": "pos", "edit": None}}}, ["branches.w", "prompt, edits"]),
        ({"scale": 2.0}, ["unknown keys", "terms"]),
        (
            {
                "terms": [
                    {"rule": "cfg", "scale": 2.0, "interval": [0, 0.6]},
                    {"rule": "apg", "scale": 2.0, "interval": [0.5, 1]},
                ]
            },
            ["terms[0] and terms[1]", "overlap", "disjoint"],
        ),
    ],
)
def test_bad_specs_fail_with_a_message_naming_the_parameter(spec, words):
    with pytest.raises(GuidanceSpecError) as err:
        GuidanceSpec.from_dict(spec)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_overlapping_primaries_in_sigma_fail_when_the_schedule_is_known():
    spec = GuidanceSpec.from_dict(
        {
            "terms": [
                {"rule": "cfg", "scale": 2.0, "interval": {"start": 0.0, "end": 0.6, "unit": "sigma"}},
                {"rule": "cfg", "scale": 3.0, "interval": [0.5, 1.0]},
            ]
        }
    )
    spec.check_schedule(4, [1.0, 0.9, 0.8, 0.7, 0.0])  # sigma > 0.6 at every step: no overlap
    with pytest.raises(GuidanceSpecError, match="active together"):
        spec.check_schedule(4, [1.0, 0.8, 0.6, 0.4, 0.0])


def test_unknown_preset_and_inapplicable_overrides():
    with pytest.raises(GuidanceSpecError, match="preset name = 'slgg'.*one of"):
        preset("slgg")
    with pytest.raises(GuidanceSpecError, match="blocks= does not apply"):
        preset("cfg", blocks=[1])
    with pytest.raises(GuidanceSpecError, match="terms\\[1\\].scale"):
        preset("stg", scale=-2.0)
