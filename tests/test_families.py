"""Family adapters: block addressing, stream declarations checked against the real diffusers blocks,
the toy alias, and the row gather/scatter primitive."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ditguide.families import FAMILIES, FamilyError, batch_rows, get_family, run_block_on_rows
from ditguide.families.base import active_rows, bind_block_arguments, block_forward_signature
from ditguide.families.tiny import tiny_input_rows, tiny_inputs, tiny_transformer
from helpers import model_of

ALL = ["flux", "cogview4", "wan", "sd3", "toy"]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# --- dispatch and declarations -----------------------------------------------------------------

EXPECTED = {
    "flux": (
        "flux",
        [("double", "transformer_blocks"), ("single", "single_transformer_blocks")],
        ("image", "text"),
        [2, 2],
    ),
    "toy": (
        "flux",
        [("double", "transformer_blocks"), ("single", "single_transformer_blocks")],
        ("image", "text"),
        [2, 4],
    ),
    "cogview4": ("cogview4", [("blocks", "transformer_blocks")], ("image", "text"), [2]),
    "wan": ("wan", [("blocks", "blocks")], ("image",), [2]),
    "sd3": ("sd3", [("blocks", "transformer_blocks")], ("image", "text"), [3]),
}


@pytest.mark.parametrize("family", ALL)
def test_family_dispatch_and_block_lists(family):
    model = model_of(family)
    name, lists, streams, counts = EXPECTED[family]
    fam = get_family(model)
    assert fam is get_family(family) is FAMILIES[family]
    assert fam.name == name
    assert list(fam.block_lists) == lists
    assert fam.streams == streams
    assert [len(getattr(model, attr)) for _, attr in fam.block_lists] == counts
    blocks = fam.blocks(model)
    assert len(blocks) == sum(counts)
    flat = [b for _, attr in lists for b in getattr(model, attr)]
    assert all(a is b for a, b in zip(blocks, flat))


def test_toy_alias_is_the_flux_adapter():
    toy = tiny_transformer("toy")
    assert type(toy).__name__ == "FluxTransformer2DModel"
    fam = get_family("toy")
    assert fam is get_family("flux") and fam.name == "flux"
    assert get_family(toy) is fam
    assert fam.resolve(toy, "single:3") == 5
    assert fam.resolve(toy, "double:1") == 1
    assert fam.blocks(toy)[5] is toy.single_transformer_blocks[3]


def test_unknown_family_and_model_raise():
    with pytest.raises(
        FamilyError, match=r"unknown family 'mochi'.*known: \['cogview4', 'flux', 'sd3', 'toy', 'wan'\]"
    ):
        get_family("mochi")
    with pytest.raises(
        FamilyError, match="no family adapter for model class Linear; supported: .*FluxTransformer2DModel"
    ):
        get_family(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "family, ref, expected",
    [
        ("flux", 0, 0),
        ("flux", 3, 3),
        ("flux", "double:1", 1),
        ("flux", "single:0", 2),
        ("flux", "single:1", 3),
        ("flux", "single_transformer_blocks.1", 3),
        ("flux", "transformer_blocks.0", 0),
        ("flux", " single:1 ", 3),
        ("wan", "blocks:1", 1),
        ("wan", "blocks.1", 1),
        ("sd3", "blocks:2", 2),
    ],
)
def test_resolve_accepts(family, ref, expected):
    assert get_family(family).resolve(model_of(family), ref) == expected


@pytest.mark.parametrize(
    "family, ref, message",
    [
        ("flux", 4, r"block index 4 out of range: this flux model has 4 blocks"),
        ("flux", -1, r"out of range"),
        ("flux", "single:2", r"'single' has 2 blocks.*single:0\.\.1 \(global 2\.\.3"),
        ("wan", "blocks.10", r"'blocks' has 2 blocks"),  # "blocks.1" must not match "blocks.10"
        ("wan", "blocks.01", r"cannot parse block reference 'blocks.01'"),
        ("flux", "single:+1", r"cannot parse"),
        ("flux", "single:1x", r"cannot parse"),
        ("flux", "single:", r"cannot parse"),
        ("flux", "triple:0", r"unknown block list 'triple'.*\['double', 'single'\]"),
        ("flux", "single.0", r"unknown block list 'single'.*\['transformer_blocks', 'single_transformer_blocks'\]"),
        ("flux", True, r"must be a global int or a string"),
        ("flux", 1.0, r"must be a global int or a string"),
    ],
)
def test_resolve_is_strict(family, ref, message):
    with pytest.raises(FamilyError, match=message):
        get_family(family).resolve(model_of(family), ref)


def _capture_block_calls(model, family):
    """Plain forward; for every block: (bound arguments, output)."""
    fam = get_family(family)
    records = {}
    handles = []
    for index, block in enumerate(fam.blocks(model)):

        def hook(module, args, kwargs, output, index=index):
            records[index] = (bind_block_arguments(block_forward_signature(module), args, kwargs), output)

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        model(**tiny_inputs(family, 2))
    finally:
        for h in handles:
            h.remove()
    return records


@pytest.mark.parametrize("family", ALL)
def test_declared_stream_layouts_match_the_real_blocks(family):
    # Text and image token counts differ in the tiny inputs, so a wrong stream order shows as a
    # shape mismatch - exactly the bug of diffusers' apply_layer_skip on Flux.
    model = model_of(family)
    fam = get_family(family)
    records = _capture_block_calls(model, family)
    for index, (arguments, output) in records.items():
        info = fam.block_info(model, index)
        outputs = output if info.returns_tuple else (output,)
        assert len(outputs) == len(info.output.streams), info.address
        for stream, value in zip(info.output.streams, outputs):
            if stream is None:
                assert value is None, f"{info.address}: declared no stream, got a tensor"
                continue
            source = arguments[info.input_names[stream]]
            assert value.shape == source.shape, (info.address, stream)
        assert arguments[info.input_names["image"]].shape[1] != arguments.get("encoder_hidden_states").shape[1]
        for site in info.attention + info.feedforward:
            block = fam.blocks(model)[index]
            assert block.get_submodule(site.path) is not None
        for name in fam.batched_block_kwargs:
            value = arguments.get(name)
            assert value is None or value.shape[0] == 2, (info.address, name)


def test_sd3_last_block_has_only_the_image_stream():
    model = model_of("sd3")
    fam = get_family("sd3")
    assert [fam.block_info(model, i).streams for i in range(3)] == [("text", "image"), ("text", "image"), ("image",)]
    assert "context_pre_only" in fam.block_info(model, 2).note
    assert [s.path for s in fam.block_info(model, 0).attention] == ["attn", "attn2"]  # dual attention block


# --- rows --------------------------------------------------------------------------------------


def _block_arguments(family, batch, index=0, dtype=torch.float64):
    model = model_of(family, dtype)
    records = {}
    block = get_family(family).blocks(model)[index]

    def hook(module, args, kwargs):
        records["arguments"] = bind_block_arguments(block_forward_signature(module), args, kwargs)

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**tiny_inputs(family, batch, dtype=dtype))
    finally:
        handle.remove()
    return block, records["arguments"]


@pytest.mark.parametrize("family", ["flux", "cogview4", "wan", "sd3"])
def test_run_block_on_rows_equals_running_the_block_on_those_rows(family):
    fam = get_family(family)
    block, arguments = _block_arguments(family, batch=5)
    full = block(**arguments)
    seen_rows = []

    def run(args):
        seen_rows.append(active_rows().tolist())
        return block(**args)

    groups = [(torch.tensor([3, 0]), run), ([1, 4, 2], run)]
    with batch_rows([10, 11, 12, 13, 14]):
        out = run_block_on_rows(arguments, fam.batched_block_kwargs, groups)
    assert seen_rows == [[13, 10], [11, 14, 12]]  # absolute ids of the rows each group computes
    assert active_rows() is None
    full = full if isinstance(full, tuple) else (full,)
    out = out if isinstance(out, tuple) else (out,)
    for a, b in zip(full, out):
        # Each group is its own batch; CPU matmuls differ by a few ulp between batch sizes.
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    # A group run alone sees exactly its rows: compare with a direct call on that sub-batch.
    sub = {
        k: (v.index_select(0, torch.tensor([3, 0])) if k in fam.batched_block_kwargs and torch.is_tensor(v) else v)
        for k, v in arguments.items()
    }
    direct = block(**sub)
    regrouped = run_block_on_rows(
        arguments, fam.batched_block_kwargs, [([3, 0], lambda a: block(**a)), ([1, 2, 4], lambda a: block(**a))]
    )
    direct = direct if isinstance(direct, tuple) else (direct,)
    regrouped = regrouped if isinstance(regrouped, tuple) else (regrouped,)
    for d, r in zip(direct, regrouped):
        if d is not None:
            assert torch.equal(r[[3, 0]], d)


def test_run_block_on_rows_requires_a_partition():
    fam = get_family("flux")
    block, arguments = _block_arguments("flux", batch=3)
    with pytest.raises(FamilyError, match=r"must partition the batch of 3 rows; got positions \[0, 1, 1\]"):
        run_block_on_rows(arguments, fam.batched_block_kwargs, [([0, 1], block), ([1], block)])
    with pytest.raises(FamilyError, match=r"must partition the batch of 3 rows; got positions \[0\]"):
        run_block_on_rows(arguments, fam.batched_block_kwargs, [([0], block)])


@pytest.mark.parametrize("family", ALL)
def test_tiny_models_are_deterministic_and_rows_differ(family):
    a = tiny_transformer(family, seed=1)
    b = tiny_transformer(family, seed=1)
    state = torch.random.get_rng_state()
    c = tiny_transformer(family, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    for (name, p), q, _r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, r) for p, r in zip(a.state_dict().values(), c.state_dict().values()))
    inputs = tiny_inputs(family, 3)
    out = model_of(family)(**inputs).sample
    assert not torch.equal(out[0], out[1])
    sub = tiny_input_rows(inputs, [2])
    assert torch.equal(sub["hidden_states"][0], inputs["hidden_states"][2])
