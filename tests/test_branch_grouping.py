"""Branch grouping under a memory budget (issue 14, item 6): `GuidedDenoiser(max_batch_branches=k)` runs
a step's branches at most k per forward call, and `python -m ditguide.generate --max-batch-branches k`
passes the same grouping to the renderer.

What is exact and what is not. A capped run makes exactly the forwards of the explicit groups it
reports (`explicit_groups()`), so the two are bit-identical; k = 1 is sequential mode and k >= the
number of branches the uncapped batched forward, bit for bit. Between them, the same branches run in
forwards of other batch sizes, and CPU float kernels (GEMM blocking, reductions) depend on the
batch size: those agree with the fully batched prediction to rounding only. Seen on the tiny models:
up to 1.7e-6 in float32 and 4e-15 in float64; asserted: atol = rtol = 1e-5 in float32 (the suite's
float tolerance) and 1e-12 in float64, where a mixed-up branch would differ by ~1e-1.
"""

from __future__ import annotations

import math

import pytest
import torch

from ditguide.denoiser import GuidanceError, GuidedDenoiser
from ditguide.families.tiny import tiny_inputs, tiny_transformer
from ditguide.guidance import StepInfo
from ditguide.guidance.planner import CompiledBranch, cap_groups, sequential_order
from helpers import FOUR_BRANCH_SPEC as SPEC
from tiny_profiles import tiny_params_file

BRANCHES = 4
FAMILIES = ["flux", "cogview4", "wan", "sd3"]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def clock():
    return lambda: StepInfo(0, 10, 0.5)


def predict(model, inputs, negative, **options):
    den = GuidedDenoiser(model, SPEC, clock=clock(), negative=negative, **options)
    with torch.no_grad():
        out = den(**inputs, return_dict=False)[0]
    return out, den


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_capped_batches_equal_the_fully_batched_prediction(family, dtype):
    model = tiny_transformer(family, dtype=dtype)
    inputs = tiny_inputs(family, 2, dtype=dtype)
    other = tiny_inputs(family, 2, seed=1, dtype=dtype)
    negative = {k: other[k] for k in ("encoder_hidden_states", "pooled_projections") if k in other}
    for share in (True, False):
        batched, den = predict(model, inputs, negative, mode="batched", share_prefix=share)
        assert den.cost.steps[-1].forwards == 1
        sequential, _ = predict(model, inputs, negative, mode="sequential", share_prefix=share)
        for k in range(1, BRANCHES + 2):
            capped, den = predict(model, inputs, negative, mode="batched", share_prefix=share, max_batch_branches=k)
            # ceil(branches / k) transformer calls in this step, none with more than k branches.
            assert den.cost.steps[-1].forwards == math.ceil(BRANCHES / k), (k, share)
            groups = den.explicit_groups()
            assert max(len(g) for g in groups) <= k and sorted(sum(groups, [])) == sorted(den.spec.used_branches)
            # Exactly the forwards of its explicit groups.
            explicit, _ = predict(model, inputs, negative, mode=groups, share_prefix=share)
            assert torch.equal(capped, explicit), (k, share)
            if k == 1:
                assert torch.equal(capped, sequential), share
            if k >= BRANCHES:
                assert torch.equal(capped, batched), (k, share)
            torch.testing.assert_close(capped, batched, **TOL[dtype])
            # The cost report still counts what runs: the planned count equals the measured one.
            _, measured = predict(
                model, inputs, negative, mode="batched", share_prefix=share, max_batch_branches=k, count="measure"
            )
            assert measured.cost.block_evals == den.cost.block_evals, (k, share)


def test_default_is_the_uncapped_mode():
    model = tiny_transformer("flux")
    inputs = tiny_inputs("flux", 2)
    other = tiny_inputs("flux", 2, seed=1)
    negative = {k: other[k] for k in ("encoder_hidden_states", "pooled_projections")}
    for mode in ("sequential", "batched", [["cond", "uncond_weak"], ["strong", "weak"]]):
        default, den = predict(model, inputs, negative, mode=mode)
        assert den.max_batch_branches is None
        uncapped, _ = predict(model, inputs, negative, mode=mode, max_batch_branches=None)
        assert torch.equal(default, uncapped)
    # A cap on explicit groups cuts only the groups that are too large.
    _, den = predict(model, inputs, negative, mode=[["cond", "uncond_weak", "weak"], ["strong"]], max_batch_branches=2)
    assert den.explicit_groups() == [["cond", "weak"], ["uncond_weak"], ["strong"]]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_cap_is_refused_naming_the_option(bad):
    with pytest.raises(GuidanceError, match=r"max_batch_branches = .*: must be None .* or an integer >= 1"):
        GuidedDenoiser(tiny_transformer("flux"), SPEC, clock=clock(), max_batch_branches=bad)


def branch(key, prompt, first_edit):
    return CompiledBranch(key, prompt, {"e": 1} if first_edit < 9 else None, first_edit, key, {})


def test_cap_groups_cuts_large_groups_in_sequential_order():
    br = {
        "a": branch("a", "pos", 9),
        "b": branch("b", "neg", 9),
        "c": branch("c", "pos", 2),
        "d": branch("d", "pos", 5),
        "e": branch("e", "neg", 1),
    }
    group = ["a", "b", "c", "d", "e"]
    assert sequential_order(group, br) == ["a", "d", "c", "b", "e"]
    assert cap_groups([group], br, None) == [group]
    assert cap_groups([group], br, 5) == [group]  # fits: left as it is
    assert cap_groups([group], br, 1) == [["a"], ["d"], ["c"], ["b"], ["e"]]
    assert cap_groups([group], br, 2) == [["a", "d"], ["c", "b"], ["e"]]
    assert cap_groups([["b", "a"], ["c", "d", "e"]], br, 2) == [["b", "a"], ["d", "c"], ["e"]]


# --------------------------------------------------------------------------------------------------
# the command line


def _argv(tmp_path, *extra, out="out"):
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    return [
        "--profile",
        "tiny-flux",
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--out",
        str(tmp_path / out),
        "--params",
        tiny_params_file(),
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_cli_refuses_a_bad_cap_naming_the_flag(tmp_path, capsys, value):
    from ditguide import generate

    with pytest.raises(SystemExit) as exit_:
        generate.main(_argv(tmp_path, "--spec", "ag", f"--max-batch-branches={value}"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --max-batch-branches: must be an integer >= 1" in err and repr(value) in err, err


def test_cli_refuses_the_cap_without_a_guidance_spec_before_loading_anything(tmp_path, capsys, monkeypatch):
    import ditguide.render as render
    from ditguide import generate

    monkeypatch.setattr(render, "load_renderer", lambda *a, **k: pytest.fail("loaded a renderer"))
    for spec in ([], ["--spec", "cfg"], ["--spec", "none"]):
        assert generate.main(_argv(tmp_path, *spec, "--max-batch-branches", "2")) == 2
        err = capsys.readouterr().err
        assert "--max-batch-branches groups the branches of a guidance spec" in err, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_the_old_name_baseline_naming_cfg_before_loading_anything(tmp_path, capsys, monkeypatch):
    import ditguide.render as render
    from ditguide import generate

    monkeypatch.setattr(render, "load_renderer", lambda *a, **k: pytest.fail("loaded a renderer"))
    for cap in ([], ["--max-batch-branches", "2"]):
        assert generate.main(_argv(tmp_path, "--spec", "baseline", *cap)) == 2
        err = capsys.readouterr().err
        assert "error: method 'baseline' is now called 'cfg' (the pipeline's own sampling" in err, err
        assert "use 'cfg'" in err, err
    assert not (tmp_path / "out").exists()


def test_cli_cap_sets_the_renderers_grouping(tmp_path, monkeypatch):
    """tiny-flux's `ag` spec has two branches (cond, weak): the renderer's default runs them one per
    call; --max-batch-branches 2 batches them into one call per step."""
    import ditguide.render as render
    from ditguide import generate

    made = []
    real = render.load_renderer

    def load(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(render, "load_renderer", load)
    forwards = {}
    for k in (None, 1, 2):
        out = tmp_path / f"k{k}"
        argv = _argv(tmp_path, "--spec", "ag", out=out.name)
        assert generate.main(argv + ([] if k is None else ["--max-batch-branches", str(k)])) == 0
        renderer = made[-1]
        forwards[k] = {s.forwards for s in renderer.last_cost.steps}
        assert len(list((out / generate.SAMPLES_DIRNAME).iterdir())) == 1
    assert made[1].mode == [["cond"], ["weak"]] and made[2].mode == [["cond", "weak"]]
    assert forwards == {None: {2}, 1: {2}, 2: {1}}
