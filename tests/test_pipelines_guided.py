"""Guidance inside the unmodified diffusers pipelines (tiny random-weight pipelines, prompt embeddings).

Bit-identity where the calls are the same: guidance off vs the plain pipeline, our sequential CFG
vs the pipelines that run CFG as two sequential calls (Flux true CFG, CogView4, Wan, toy), and our
explicit group [["uncond", "cond"]] vs SD3, which batches [uncond, cond] in one call. Where branches
are stacked differently from the reference, the batch size of the float kernels differs, and the
results agree to float32 rounding: atol = rtol = 1e-5.
"""

import pytest
import torch

from ditguide.denoiser import GuidanceError
from ditguide.guidance import preset
from ditguide.pipelines import native_cfg_call, run_guided
from tiny_pipelines import TINY_CALL, tiny_pipeline, tiny_prompts

FAMILIES = ["flux", "cogview4", "wan", "sd3", "toy"]
TOL = dict(atol=1e-5, rtol=1e-5)
STEPS = 6


@pytest.fixture(scope="module")
def pipes():
    return {f: tiny_pipeline(f) for f in FAMILIES}


def call_args(family, steps=STEPS, batch=2):
    args = dict(TINY_CALL[family], num_inference_steps=steps, output_type="latent")
    if family == "toy":
        args.update(tiny_prompts("flux", batch))  # the toy's embeddings have Flux's tiny widths
    else:
        args.update(tiny_prompts(family, batch), generator=torch.Generator().manual_seed(0))
    return args


def positive_only(args):
    return {k: v for k, v in args.items() if not k.startswith("negative")}


def result(out):
    return out.images if hasattr(out, "images") else out.frames


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_off_reproduces_the_plain_pipeline(pipes, family):
    pipe = pipes[family]
    plain = result(pipe(**positive_only(call_args(family)), **native_cfg_call(family, 1.0)))
    out, cost = run_guided(pipe, None, **call_args(family))
    assert torch.equal(result(out), plain)
    assert cost.nfe == STEPS and cost.forwards == STEPS
    assert pipe.transformer.__class__.__name__ != "GuidedDenoiser"  # restored


# Guidance off through the branch machinery: the base branch carries an edit that changes nothing
# (residual scale 1 on block 0), so the wrapper cannot take its fast path (the pipeline's own call).
OFF_THROUGH_BRANCHES = {
    "name": "off_through_branches",
    "base": "same",
    "branches": {"same": {"prompt": "pos", "edits": {"edits": [{"op": "scale", "blocks": [0], "alpha": 1.0}]}}},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_off_through_the_wrapped_path_reproduces_the_plain_pipeline(pipes, family, monkeypatch):
    """Branch evaluation, edit hooks, row bookkeeping and combine, with nothing to change: bit-identical."""
    from ditguide.denoiser import GuidedDenoiser

    pipe = pipes[family]
    plain = result(pipe(**positive_only(call_args(family)), **native_cfg_call(family, 1.0)))
    evaluated = []
    original_evaluate = GuidedDenoiser._evaluate

    def evaluate(self, names, kwargs, record):
        evaluated.append(names)
        return original_evaluate(self, names, kwargs, record)

    monkeypatch.setattr(GuidedDenoiser, "_evaluate", evaluate)
    out, cost = run_guided(pipe, OFF_THROUGH_BRANCHES, **call_args(family))
    assert evaluated == [["same"]] * STEPS  # every step went through branch evaluation
    assert torch.equal(result(out), plain)
    assert cost.nfe == STEPS and cost.forwards == STEPS


@pytest.mark.parametrize("family", FAMILIES)
def test_our_cfg_reproduces_the_native_cfg(pipes, family):
    pipe = pipes[family]
    native = result(pipe(**call_args(family), **native_cfg_call(family, 3.0)))
    spec = preset("cfg", scale=3.0)
    # SD3 batches [uncond, cond] in one call; the others call cond, then uncond.
    exact_mode = [["uncond", "cond"]] if family == "sd3" else "sequential"
    out, cost = run_guided(pipe, spec, mode=exact_mode, **call_args(family))
    assert torch.equal(result(out), native)
    assert cost.nfe == 2 * STEPS
    for mode in ("sequential", "batched"):
        out, _ = run_guided(pipe, spec, mode=mode, **call_args(family))
        torch.testing.assert_close(result(out), native, **TOL)
    assert not torch.allclose(native, result(pipe(**positive_only(call_args(family)), **native_cfg_call(family, 1.0))))


def test_slg_spec_reproduces_sd3_skip_layer_guidance(pipes):
    pipe = pipes["sd3"]
    steps = 10
    native = pipe(
        **call_args("sd3", steps),
        guidance_scale=3.0,
        skip_guidance_layers=[1],
        skip_layer_guidance_scale=2.8,
        skip_layer_guidance_start=0.01,
        skip_layer_guidance_stop=0.5,
    ).images
    cfg_only = pipe(**call_args("sd3", steps), guidance_scale=3.0).images
    assert (native - cfg_only).abs().max() > 1e-3  # SLG changes the result
    spec = preset("slg", blocks=[1], cfg_scale=3.0, scale=2.8, interval=[0.01, 0.5])
    # The pipeline's own calls: [uncond, cond] batched, then the layer-skipped pass alone.
    out, cost = run_guided(
        pipe, spec, mode=[["uncond", "cond"], ["skip"]], share_prefix=False, **call_args("sd3", steps)
    )
    assert torch.equal(out.images, native)
    # SD3's window is start*N < i < stop*N: steps 1-4 run the third pass (3 blocks, block 1 skipped).
    assert cost.block_evals_per_step == [6, 8, 8, 8, 8, 6, 6, 6, 6, 6]
    out, cost = run_guided(pipe, spec, mode="sequential", **call_args("sd3", steps))
    torch.testing.assert_close(out.images, native, **TOL)
    # With prefix sharing the skip pass reuses cond's block 0: it computes only block 2.
    assert cost.block_evals_per_step == [6, 7, 7, 7, 7, 6, 6, 6, 6, 6]
    assert [s.branches for s in cost.steps][:2] == [["cond", "uncond"], ["cond", "uncond", "skip"]]


@pytest.mark.parametrize("steps", [10, 28, 50, 100])
def test_slg_window_matches_sd3_at_integer_edges(pipes, steps):
    """SD3's skip-layer pass runs when N*start < i < N*stop, strictly: at N = 100, 0.01 * N = 1 is an
    integer, and step 1 has no third pass."""
    pipe = pipes["sd3"]
    native = pipe(
        **call_args("sd3", steps), guidance_scale=3.0, skip_guidance_layers=[1], skip_layer_guidance_scale=2.8
    ).images
    spec = preset("slg", blocks=[1], cfg_scale=3.0, scale=2.8)  # SD3's default window, 0.01 to 0.2
    out, cost = run_guided(
        pipe, spec, mode=[["uncond", "cond"], ["skip"]], share_prefix=False, **call_args("sd3", steps)
    )
    assert torch.equal(out.images, native)
    third_pass = [s.step for s in cost.steps if "skip" in s.branches]
    assert third_pass == [i for i in range(steps) if steps * 0.01 < i < steps * 0.2]


def sd3_pag_pair(pipes):
    """A tiny SD3 without qk-norm (diffusers' PAG processor skips it) and large random weights (so
    that attention matters), as StableDiffusion3Pipeline and as StableDiffusion3PAGPipeline on block 1.
    In float64: with these weights float32 rounding grows to ~1e-5 over the steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3PAGPipeline, StableDiffusion3Pipeline

    from ditguide.families.tiny import tiny_transformer

    transformer = tiny_transformer("sd3", qk_norm=None, dual_attention_layers=())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in transformer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    torch.nn.Module.to(transformer, torch.float64)
    base = pipes["sd3"]
    parts = dict(
        transformer=transformer,
        vae=base.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    plain = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **parts)
    pag = StableDiffusion3PAGPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), pag_applied_layers=["blocks.1"], **parts
    )
    for pipe in (plain, pag):
        pipe.set_progress_bar_config(disable=True)
    return plain, pag


def test_pag_preset_equals_diffusers_sd3_pag_pipeline(pipes):
    """Same layer (block 1), same scales: the image-to-image attention of the perturbed branch is
    masked to its diagonal, image queries still see the text, text queries are untouched."""
    plain, pag = sd3_pag_pair(pipes)

    def args():
        return {k: v.double() if torch.is_tensor(v) else v for k, v in call_args("sd3", steps=6).items()}

    reference = pag(**args(), guidance_scale=3.0, pag_scale=3.0).images
    cfg_only = plain(**args(), guidance_scale=3.0).images
    assert (reference - cfg_only).abs().max() > 0.1  # PAG matters here
    spec = preset("pag", cfg_scale=3.0, scale=3.0)
    for mode in ([["uncond", "cond", "perturbed"]], "sequential"):
        out, _ = run_guided(plain, spec, mode=mode, **args())
        torch.testing.assert_close(out.images, reference, rtol=0, atol=1e-12)
    # the all-token identity (output = V, which also cuts image -> text attention) is another perturbation
    edits = {"edits": [{"op": "identity_attn_all_tokens", "blocks": ["blocks:1"], "streams": ["image"]}]}
    spec["branches"]["perturbed"]["edits"] = edits
    out, _ = run_guided(plain, spec, **args())
    assert (out.images - reference).abs().max() > 0.1


def test_intervals_switch_terms_on_and_off_at_the_right_steps(pipes):
    """Wan (UniPC multistep): CFG on the first half of the steps, autoguidance on a sigma window."""
    pipe = pipes["wan"]
    steps = 8
    spec = preset(
        "autoguidance",
        weak={"edits": [{"op": "skip", "blocks": ["blocks:0"]}]},
        interval={"start": 0.3, "end": 0.7, "unit": "sigma"},
    )
    spec["terms"].append({"rule": "cfg", "scale": 2.0, "interval": [0.0, 0.5]})
    out, cost = run_guided(pipe, spec, **call_args("wan", steps))
    sigmas = [float(s) for s in pipe.scheduler.sigmas[:steps]]
    for i, step in enumerate(cost.steps):
        expected = ["cond"] + (["uncond"] if i < steps // 2 else []) + (["weak"] if 0.3 < sigmas[i] <= 0.7 else [])
        assert step.step == i and sorted(step.branches) == sorted(expected), (i, sigmas[i], step.branches)
        # cond 2 blocks, uncond 2, weak 1 (block 0 skipped)
        assert step.block_evals == 2 + (2 if "uncond" in expected else 0) + (1 if "weak" in expected else 0)
    assert any(0.3 < s <= 0.7 for s in sigmas) and not all(0.3 < s <= 0.7 for s in sigmas)
    assert torch.isfinite(out.frames).all()


# Per-step block evaluations of each method on the toy pipeline (6 blocks: double 0-1 = global 0-1,
# single 0-3 = global 2-5), 10 steps, by hand; sharing computes blocks before a branch's first edit once.
TOY_METHODS = {
    "off": ({}, [6] * 10),
    "cfg": ({}, [12] * 10),
    "cfg_zero_star": ({}, [0] + [12] * 9),  # zero-init: no forward at step 0
    "apg": ({}, [12] * 10),
    # sigmas 1.0, 0.9, ..., 0.1: CFG for sigma in (0.359, 0.916] = steps 1-6
    "guidance_interval": ({}, [6] + [12] * 6 + [6] * 3),
    # weak skips single:0 (global 2): shares 0-1, skips 2, computes 3-5
    "autoguidance": ({}, [6 + 3] * 10),
    # third pass only at step 1 (window 1%-20%); skip single:1 = global 3: shares 0-2, computes 4-5
    "slg": ({"blocks": ["single:1"]}, [12, 14] + [12] * 8),
    # negative branch skips single:2 on steps 1-8, no extra pass
    "slg_weak_negative": ({"blocks": ["single:2"]}, [12] + [11] * 8 + [12]),
    "stg": ({"blocks": ["single:1"]}, [14] * 10),
    # image queries of single:1 (global 3) attend to themselves and the text: shares 0-2, computes 3-5
    "stg_a": ({"blocks": ["single:1"]}, [15] * 10),
    # identity attention in double:1: shares block 0, computes 1-5
    "pag": ({"blocks": ["double:1"]}, [17] * 10),
    # strong amplifies single:3 (shares 0-4, computes the last block), weak skips single:0
    "strong_weak": ({}, [6 + 6 + 1 + 3] * 10),
}


@pytest.mark.parametrize("name", sorted(TOY_METHODS))
def test_every_method_runs_on_the_toy_pipeline_at_its_hand_counted_cost(pipes, name):
    pipe = pipes["toy"]
    overrides, per_step = TOY_METHODS[name]
    spec = preset(name, **overrides)
    args = call_args("toy", steps=10)
    out, cost = run_guided(pipe, spec, **args)
    images = result(out)
    assert torch.isfinite(images).all()
    assert cost.block_evals_per_step == per_step
    assert cost.nfe == sum(per_step) / 6
    if name != "off":
        plain, _ = run_guided(pipe, None, **call_args("toy", steps=10))
        assert not torch.allclose(images, result(plain))
    if name in ("autoguidance", "strong_weak", "pag"):  # all three evaluation schedules agree
        seq_unshared, c2 = run_guided(pipe, spec, share_prefix=False, **call_args("toy", steps=10))
        batched, c3 = run_guided(pipe, spec, mode="batched", **call_args("toy", steps=10))
        assert torch.equal(result(seq_unshared), images)
        torch.testing.assert_close(result(batched), images, **TOL)
        assert c3.block_evals == cost.block_evals < c2.block_evals


def test_toy_negative_prompt_is_encoded_like_the_native_cfg(pipes):
    pipe = pipes["toy"]
    prompts = ["the digit three", "the number seven"]
    native = pipe(prompt=prompts, guidance_scale=2.5, num_inference_steps=4, output_type="latent").images
    out, _ = run_guided(pipe, preset("cfg", scale=2.5), prompt=prompts, num_inference_steps=4, output_type="latent")
    assert torch.equal(out.images, native)


# ---- bad input: one clear error, before sampling --------------------------------------------------


def test_spec_needing_negatives_without_them_fails_before_sampling(pipes):
    pipe = pipes["flux"]
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(
            GuidanceError, match="no text encoder.*negative_prompt_embeds and negative_pooled_prompt_embeds"
        ):
            run_guided(pipe, preset("cfg"), **positive_only(call_args("flux")))
    finally:
        handle.remove()
    assert calls == []
    assert pipe.transformer.__class__.__name__ == "FluxTransformer2DModel"


def test_native_cfg_together_with_a_spec_is_refused(pipes):
    with pytest.raises(GuidanceError, match="guidance_scale = 4.0.*own CFG must be off"):
        run_guided(pipes["wan"], preset("cfg"), guidance_scale=4.0, **call_args("wan"))


def test_bad_edit_in_a_preset_fails_before_sampling(pipes):
    with pytest.raises(GuidanceError, match="branches.skip.edits.*blocks:7.*blocks:0..2"):
        run_guided(pipes["sd3"], preset("slg"), **call_args("sd3"))


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_running_its_own_cfg_under_a_spec_fails_loudly(pipes, family):
    """Every driver notices the pipeline's own CFG: SD3 stacks [neg, pos] into one call and never
    enters an 'uncond' cache context, so without its CFG switch it would be guided twice, silently."""
    from ditguide.pipelines import guided

    pipe = pipes[family]
    original = type(pipe.transformer)
    args = call_args(family)
    negative = {k: v for k, v in args.items() if k.startswith("negative")}
    with pytest.raises(GuidanceError, match="own CFG"):
        with guided(pipe, preset("cfg"), negative=negative):
            pipe(**args, **native_cfg_call(family, 3.0))
    assert type(pipe.transformer) is original


def test_wan22_two_stage_pipeline_is_refused_before_sampling(pipes):
    """Wan 2.2 A14B runs its low-noise steps on transformer_2, which guidance does not wrap."""
    from diffusers import WanPipeline

    from ditguide.families.tiny import tiny_transformer

    tiny = pipes["wan"]
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny.vae,
        scheduler=tiny.scheduler,
        transformer=tiny.transformer,
        transformer_2=tiny_transformer("wan", seed=1),
        boundary_ratio=0.5,
    )
    pipe.set_progress_bar_config(disable=True)
    calls = []
    handle = pipe.transformer_2.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(GuidanceError, match="transformer_2.*unguided"):
            run_guided(pipe, preset("cfg", scale=2.0), **call_args("wan"))
    finally:
        handle.remove()
    assert calls == [] and pipe.transformer is tiny.transformer


@pytest.mark.parametrize("family", ["flux", "cogview4", "wan", "sd3"])
def test_negative_prompt_text_goes_through_the_pipelines_own_encoder(pipes, family, monkeypatch):
    """With a text encoder, `negative_prompt` is encoded by the pipeline's encode_prompt (called with
    arguments its real signature accepts) and used as the negative conditioning."""
    import inspect

    pipe = pipes[family]
    args = call_args(family)
    neg = {k: args.pop(k) for k in list(args) if k.startswith("negative")}
    seen = []

    real = pipe.encode_prompt

    def fake_encode_prompt(*a, **kw):
        bound = inspect.signature(type(pipe).encode_prompt).bind(pipe, *a, **kw)  # TypeError on a wrong call
        if bound.arguments.get("prompt_embeds") is not None:  # the pipeline's own call for the prompt
            return real(*a, **kw)
        seen.append(bound.arguments.get("prompt"))
        pe, pooled = neg["negative_prompt_embeds"], neg.get("negative_pooled_prompt_embeds")
        return {"flux": (pe, pooled, None), "sd3": (pe, None, pooled, None)}.get(family, (pe, None))

    monkeypatch.setattr(pipe, "encode_prompt", fake_encode_prompt)
    monkeypatch.setattr(pipe, "text_encoder", pipe.vae)  # any model: only "is there an encoder" is read
    out_text, _ = run_guided(pipe, preset("cfg", scale=2.0), negative_prompt="blurry", **args)
    monkeypatch.undo()
    assert seen == [["blurry", "blurry"]]
    out_embeds, _ = run_guided(pipe, preset("cfg", scale=2.0), **call_args(family))
    assert torch.equal(result(out_text), result(out_embeds))


def test_incomplete_negative_conditioning_is_refused(pipes):
    args = call_args("sd3")
    del args["negative_pooled_prompt_embeds"]
    with pytest.raises(GuidanceError, match="incomplete.*missing \\['negative_pooled_prompt_embeds'\\]"):
        run_guided(pipes["sd3"], preset("cfg"), **args)
