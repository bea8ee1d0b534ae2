"""Tiny random-weight transformers of every family, built in code (no hub), and inputs for them.

They exist so that tests and benchmarks can exercise the real diffusers block code of each family on
a CPU in milliseconds. Each has at least two blocks per block list, so that index arithmetic
("single:1" vs global 3) is actually tested. Weights are random but deterministic in `seed`, and
building one never touches the global RNG.

    model = tiny_transformer("flux")
    out = model(**tiny_inputs("flux", batch_size=2)).sample
"""

from __future__ import annotations

from typing import Any

import torch

# Configs are the CPU-sized configs recorded in RESEARCH.md ("Dependency facts"), with the block
# counts raised to >= 2 per list. SD3 gets 3 blocks because its last block is `context_pre_only`
# (no text output), which is a separate case; block 0 uses SD3.5-Medium's dual attention (`attn2`)
# and all blocks SD3.5's RMS qk-norm, so the SD3.5 code paths are covered.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "flux": dict(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    ),
    # The repo's toy model: a plain FluxTransformer2DModel with 2 double + 4 single blocks.
    "toy": dict(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    ),
    "cogview4": dict(
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=4,
        out_channels=4,
        text_embed_dim=32,
        time_embed_dim=8,
        condition_dim=4,
    ),
    "wan": dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ),
    "sd3": dict(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    ),
}

# Token counts of the tiny inputs: image tokens differ from text tokens so that a swapped stream
# order changes shapes and fails loudly instead of silently mixing streams.
_TEXT_TOKENS = 6
_FLUX_GRID = (4, 4)  # 16 image tokens (the toy's 8x8 digit as 2x2 patches)


def _model_class(family: str):
    # Imported lazily: building one family must not pay for importing all four model files.
    if family in ("flux", "toy"):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel
    if family == "cogview4":
        from diffusers import CogView4Transformer2DModel

        return CogView4Transformer2DModel
    if family == "wan":
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel
    if family == "sd3":
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel
    raise ValueError(f"unknown family {family!r}; tiny configs exist for {sorted(TINY_CONFIGS)}")


def tiny_transformer(
    family: str, seed: int = 0, *, dtype: torch.dtype | None = None, **overrides: Any
) -> torch.nn.Module:
    """A tiny random-weight transformer of `family` ("flux", "toy", "cogview4", "wan", "sd3"), in eval mode.

    `overrides` replace entries of the tiny config (e.g. `num_single_layers=3`); `dtype` casts the
    weights (float64 makes tolerance-based comparisons sharp). The global torch RNG is left untouched.
    """
    cls = _model_class(family)
    config = {**TINY_CONFIGS[family], **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**config)
    if dtype is not None:
        # nn.Module.to, not ModelMixin.to: the latter warns about fp32-kept modules, irrelevant here.
        torch.nn.Module.to(model, dtype)
    return model.eval()


def tiny_inputs(family: str, batch_size: int, seed: int = 0, *, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Keyword arguments of one forward of `tiny_transformer(family)` (default config), batch first.

    Every row differs (different noise, text and timestep), so that row mix-ups show in tests.
    Rows are drawn together (row i depends on the batch size): take sub-batches of the same samples
    with `tiny_input_rows`. `dtype` casts the floating-point inputs.
    """
    inputs = _tiny_inputs(family, batch_size, seed)
    if dtype is not None:
        inputs = {
            k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()
        }
    return inputs


def _tiny_inputs(family: str, batch_size: int, seed: int) -> dict[str, Any]:
    if family not in TINY_CONFIGS:
        raise ValueError(f"unknown family {family!r}; tiny inputs exist for {sorted(TINY_CONFIGS)}")
    cfg = TINY_CONFIGS[family]
    g = torch.Generator("cpu").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g)

    b, t = batch_size, _TEXT_TOKENS
    timestep = torch.rand((b,), generator=g)

    if family in ("flux", "toy"):
        h, w = _FLUX_GRID
        img_ids = torch.zeros(h, w, 3)
        img_ids[..., 1] = torch.arange(h)[:, None]
        img_ids[..., 2] = torch.arange(w)[None, :]
        return dict(
            hidden_states=randn(b, h * w, cfg["in_channels"]),
            encoder_hidden_states=randn(b, t, cfg["joint_attention_dim"]),
            pooled_projections=randn(b, cfg["pooled_projection_dim"]),
            timestep=timestep,
            img_ids=img_ids.reshape(h * w, 3),
            txt_ids=torch.zeros(t, 3),
        )
    if family == "cogview4":
        size = torch.tensor([[64.0, 64.0]]).repeat(b, 1)
        return dict(
            hidden_states=randn(b, cfg["in_channels"], 8, 8),  # 16 tokens of 2x2 patches
            encoder_hidden_states=randn(b, t, cfg["text_embed_dim"]),
            timestep=timestep * 1000,
            original_size=size,
            target_size=size.clone(),
            crop_coords=torch.zeros(b, 2),
        )
    if family == "wan":
        return dict(
            hidden_states=randn(b, cfg["in_channels"], 2, 4, 4),  # 2 frames x 2x2 patches = 8 tokens
            encoder_hidden_states=randn(b, t, cfg["text_dim"]),
            timestep=timestep * 1000,
        )
    if family == "sd3":
        return dict(
            hidden_states=randn(b, cfg["in_channels"], 4, 4),  # 16 tokens
            encoder_hidden_states=randn(b, t, cfg["joint_attention_dim"]),
            pooled_projections=randn(b, cfg["pooled_projection_dim"]),
            timestep=timestep * 1000,
        )
    raise AssertionError(family)


# Inputs of `tiny_inputs` that carry the batch dimension (the rest - position ids - are shared).
_UNBATCHED_INPUTS = {"img_ids", "txt_ids"}


def tiny_input_rows(inputs: dict[str, Any], rows) -> dict[str, Any]:
    """`inputs` (from `tiny_inputs`) restricted to batch rows `rows`: a smaller batch of the same samples."""
    index = torch.as_tensor(rows, dtype=torch.long)
    return {
        k: v.index_select(0, index) if isinstance(v, torch.Tensor) and k not in _UNBATCHED_INPUTS else v
        for k, v in inputs.items()
    }
