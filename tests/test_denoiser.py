"""The guided denoiser on tiny transformers of every family, driven directly (no pipeline).

Reference = the naive evaluation: one plain forward per branch with the edit engine's apply_edits,
combined by hand. Sequential evaluation must equal it bit for bit (the same calls; prefix sharing
replays the exact tensors). Batched evaluation stacks branches in one forward, and prefix sharing
inside a forward runs shared blocks on fewer rows; float kernels (GEMM blocking, reductions) depend
on the batch size, so those agree to float32 rounding only: atol = rtol = 1e-5 (seen: ~1e-6).
"""

import pytest
import torch

from ditguide.denoiser import GuidanceError, GuidedDenoiser
from ditguide.edits import apply_edits
from ditguide.families.tiny import tiny_inputs, tiny_transformer
from ditguide.guidance import StepInfo, preset
from helpers import FOUR_BRANCH_SPEC as SPEC
from helpers import scale, skip

FAMILIES = ["flux", "cogview4", "wan", "sd3"]
BLOCKS = {"flux": 4, "cogview4": 2, "wan": 2, "sd3": 3}
TOL = dict(atol=1e-5, rtol=1e-5)


def clock(step=0, n=10, sigma=0.5):
    return lambda: StepInfo(step, n, sigma)


def negative_of(family, batch=2):
    other = tiny_inputs(family, batch, seed=1)
    return {k: other[k] for k in ("encoder_hidden_states", "pooled_projections") if k in other}


def plain(model, inputs, edits=None):
    with apply_edits(model, edits):
        return model(**inputs, return_dict=False)[0]


@pytest.fixture(scope="module")
def models():
    return {f: tiny_transformer(f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_sequential_batched_and_shared_equal_the_naive_evaluation(models, family):
    model = models[family]
    inputs, negative = tiny_inputs(family, 2), negative_of(family)
    with torch.no_grad():
        cond = plain(model, inputs)
        uw = plain(model, {**inputs, **negative}, skip(1))
        strong, weak = plain(model, inputs, scale(1.5, 1)), plain(model, inputs, skip(1))
        expected = uw + 3.0 * (cond - uw) + (strong - weak) * 1.5
        L = BLOCKS[family]
        for mode in ("sequential", "batched"):
            for share in (False, True):
                den = GuidedDenoiser(model, SPEC, clock=clock(), mode=mode, share_prefix=share, negative=negative)
                out = den(**inputs, return_dict=False)[0]
                if mode == "sequential":
                    assert torch.equal(out, expected), (mode, share)
                else:
                    torch.testing.assert_close(out, expected, **TOL)
                # Hand count: cond L, uncond_weak L-1 (block 1 skipped), strong L, weak L-1; sharing
                # computes block 0 once for cond, strong and weak (-2).
                step = den.cost.steps[0]
                assert step.block_evals == 4 * L - 2 - (2 if share else 0), (mode, share)
                assert step.forwards == (4 if mode == "sequential" else 1)
                assert den.cost.nfe == step.block_evals / L


def test_deep_prefix_sharing_is_bit_identical_and_counted():
    """Flux: strong edits global block 2 (single:0), weak skips block 3 (single:1)."""
    model = tiny_transformer("flux")
    inputs = tiny_inputs("flux", 2)
    spec = {
        "branches": {
            "strong": {"prompt": "pos", "edits": scale(1.25, "single:0")},
            "weak": {"prompt": "pos", "edits": skip("single:1")},
        },
        "terms": [{"rule": "delta", "scale": 2.0, "plus": "strong", "minus": "weak"}],
    }
    with torch.no_grad():
        cond = plain(model, inputs)
        strong, weak = plain(model, inputs, scale(1.25, "single:0")), plain(model, inputs, skip("single:1"))
        expected = cond + (strong - weak) * 2.0
        seq = GuidedDenoiser(model, spec, clock=clock(), mode="sequential")
        assert torch.equal(seq(**inputs, return_dict=False)[0], expected)
        bat = GuidedDenoiser(model, spec, clock=clock(), mode="batched")
        torch.testing.assert_close(bat(**inputs, return_dict=False)[0], expected, **TOL)
    # cond 4; strong reuses cond's blocks 0-1 and computes 2-3; weak reuses cond's blocks 0-2 (blocks
    # 0-1 return their inputs, block 2 the recorded output) and skips 3: 4 + 2 + 0.
    assert seq.cost.block_evals == bat.cost.block_evals == 6
    unshared = GuidedDenoiser(model, spec, clock=clock(), share_prefix=False)
    with torch.no_grad():
        assert torch.equal(unshared(**inputs, return_dict=False)[0], expected)
    assert unshared.cost.block_evals == 4 + 4 + 3


def test_identical_branches_run_once():
    model = tiny_transformer("wan")
    spec = {
        "branches": {"w1": {"prompt": "pos", "edits": skip(1)}, "w2": {"prompt": "pos", "edits": skip("blocks:1")}},
        "terms": [
            {"rule": "delta", "scale": 1.0, "plus": "cond", "minus": "w1"},
            {"rule": "delta", "scale": 0.5, "plus": "cond", "minus": "w2"},
        ],
    }
    den = GuidedDenoiser(model, spec, clock=clock(), share_prefix=False)
    with torch.no_grad():
        den(**tiny_inputs("wan", 1))
    assert den.cost.steps[0].branches == ["cond", "w1"]
    assert den.cost.block_evals == 2 + 1


def test_negative_with_fewer_rows_is_repeated_per_prompt():
    model = tiny_transformer("sd3")
    inputs = tiny_inputs("sd3", 4)
    negative = negative_of("sd3", batch=2)
    den = GuidedDenoiser(model, preset("cfg", scale=2.0), clock=clock(), negative=negative)
    repeated = {k: v.repeat_interleave(2, dim=0) for k, v in negative.items()}
    ref = GuidedDenoiser(model, preset("cfg", scale=2.0), clock=clock(), negative=repeated)
    with torch.no_grad():
        assert torch.equal(den(**inputs).sample, ref(**inputs).sample)


def test_zero_init_returns_zeros_without_a_forward():
    model = tiny_transformer("flux")
    den = GuidedDenoiser(model, preset("cfg_zero_star"), clock=clock(step=0), negative=negative_of("flux"))
    inputs = tiny_inputs("flux", 2)
    with torch.no_grad():
        out = den(**inputs, return_dict=False)[0]
    assert torch.equal(out, torch.zeros_like(inputs["hidden_states"]))
    assert den.cost.steps[0].forwards == 0 and den.cost.block_evals == 0


def test_model_is_restored_exactly_after_guided_calls():
    model = tiny_transformer("flux")
    inputs = tiny_inputs("flux", 2)
    with torch.no_grad():
        before = model(**inputs).sample
        den = GuidedDenoiser(model, SPEC, clock=clock(), mode="batched", negative=negative_of("flux"))
        den(**inputs)
        GuidedDenoiser(model, SPEC, clock=clock(), mode="sequential", negative=negative_of("flux"))(**inputs)
        after = model(**inputs).sample
    assert torch.equal(before, after)
    for module in model.modules():
        assert "forward" not in module.__dict__
        assert not getattr(module, "_diffusers_hook", None) or not module._diffusers_hook.hooks


def test_wrapper_proxies_what_pipelines_read():
    model = tiny_transformer("wan")
    den = GuidedDenoiser(model, None, clock=clock())
    assert den.config is model.config and den.config.in_channels == 16
    assert den.dtype == torch.float32 and den.device == torch.device("cpu")
    assert den.blocks is model.blocks  # any other attribute comes from the model
    with den.cache_context("cond", step_index=3, sigma=0.5, num_inference_steps=10):
        with torch.no_grad():
            out = den(**tiny_inputs("wan", 1), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == tiny_inputs("wan", 1)["hidden_states"].shape


# ---- bad input: one clear error before any forward ------------------------------------------------


def test_edit_of_a_missing_block_fails_at_construction():
    model = tiny_transformer("flux")
    spec = preset("autoguidance", weak=skip("single:9"))
    with pytest.raises(GuidanceError) as err:
        GuidedDenoiser(model, spec, clock=clock())
    message = str(err.value)
    assert "branches.weak.edits" in message and "single:9" in message and "single:0..1" in message


def test_missing_negative_fails_before_any_forward():
    model = tiny_transformer("cogview4")
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    den = GuidedDenoiser(model, preset("cfg"), clock=clock())
    with pytest.raises(GuidanceError, match="negative conditioning.*negative_prompt_embeds"):
        den.check_ready()
    with pytest.raises(GuidanceError, match="negative_prompt_embeds"), torch.no_grad():
        den(**tiny_inputs("cogview4", 1))
    handle.remove()
    assert calls == []


def test_enabled_cache_is_refused():
    from diffusers import FirstBlockCacheConfig

    model = tiny_transformer("flux")
    model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    den = GuidedDenoiser(model, preset("autoguidance"), clock=clock())
    with pytest.raises(GuidanceError, match="cache enabled.*disable_cache"):
        den.check_ready()


@pytest.mark.parametrize(
    "mode, words",
    [
        ("parallel", ["mode = 'parallel'", "sequential"]),
        ([["cond"], ["uncond"]], ["weak", "no group"]),
        ([["cond", "uncond"], ["cond", "weak"]], ["disjoint"]),
    ],
)
def test_bad_modes(mode, words):
    model = tiny_transformer("flux")
    spec = preset("autoguidance", cfg_scale=2.0)
    with pytest.raises(GuidanceError) as err:
        GuidedDenoiser(model, spec, clock=clock(), mode=mode)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_wrapper_needs_a_step_source():
    with pytest.raises(GuidanceError, match="scheduler=.*clock="):
        GuidedDenoiser(tiny_transformer("flux"), None)


COUNT_CASES = {
    "four branches": SPEC,
    "repeat and partial-stream skip": {
        "branches": {
            "rep": {"prompt": "pos", "edits": {"edits": [{"op": "repeat", "blocks": [1], "times": 2}]}},
            "img": {"prompt": "pos", "edits": {"edits": [{"op": "skip", "blocks": [2], "streams": ["image"]}]}},
        },
        "terms": [{"rule": "delta", "scale": 1.0, "plus": "rep", "minus": "img"}, {"rule": "cfg", "scale": 2.0}],
    },
    "attention edits": {
        "branches": {
            "pag": {
                "prompt": "pos",
                "edits": {"edits": [{"op": "identity_attn_in_stream", "blocks": [0], "streams": ["image"]}]},
            },
            "ata": {"prompt": "pos", "edits": {"edits": [{"op": "identity_attn_all_tokens", "blocks": [1]}]}},
            "sa": {
                "prompt": "neg",
                "edits": {"edits": [{"op": "skip_attn", "blocks": [2]}, {"op": "skip", "blocks": [1]}]},
            },
        },
        "terms": [
            {"rule": "cfg", "scale": 2.0, "minus": "sa"},
            {"rule": "delta", "scale": 1.0, "minus": "pag"},
            {"rule": "delta", "scale": 0.5, "minus": "ata"},
        ],
    },
}


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("case", sorted(COUNT_CASES))
def test_planned_block_count_equals_the_measured_one(models, family, case):
    """The free plan-based count (the default) against hooks counting every real block execution."""
    inputs, negative = tiny_inputs(family, 2), negative_of(family)
    for mode in ("sequential", "batched"):
        for share in (False, True):
            counts, outs = [], []
            for count in ("plan", "measure"):
                den = GuidedDenoiser(
                    models[family],
                    COUNT_CASES[case],
                    clock=clock(),
                    mode=mode,
                    share_prefix=share,
                    negative=negative,
                    count=count,
                )
                with torch.no_grad():
                    outs.append(den(**inputs).sample)
                counts.append(den.cost.block_evals)
            assert counts[0] == counts[1], (mode, share, counts)
            assert torch.equal(outs[0], outs[1])
