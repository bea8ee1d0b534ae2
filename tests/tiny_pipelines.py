"""Tiny random-weight diffusers pipelines of every family, built in code (no hub), for tests and CPU benchmarks.

Two kinds, deterministic in `seed`, never touching the global torch RNG:

- `tiny_pipeline(family)`: no tokenizer or text encoder; call it with prompt embeddings
  (`tiny_prompts`) and the sizes in `TINY_CALL[family]`. The toy pipeline has its (random) prompt encoder.
- `tiny_text_pipeline(family)`: the same pipeline with tiny text encoders and an offline tokenizer, so
  that it takes TEXT prompts through the real pipeline's own `encode_prompt` (tokenization, padding,
  truncation). It is what the tiny test profiles (tests/params_tiny.yaml) build, through their
  `builder: tests/tiny_pipelines.py:profile_pipeline`, so that the real-model evaluation path
  (text prompts -> pipeline -> files -> metrics) runs offline on a CPU.

| family   | tokenizer (role of)       | text encoder (as the real model)                 |
|----------|---------------------------|--------------------------------------------------|
| flux     | CLIP (77 tokens) + T5     | CLIPTextModel (pooled output) + T5EncoderModel   |
| wan      | UMT5                      | UMT5EncoderModel                                 |
| cogview4 | GLM-4 (left padding)      | GlmModel (second-to-last hidden state)           |

The tokenizer is a `tokenizers` WordPiece over single characters (every word is split into its
letters; nothing but non-ASCII becomes unknown), so different captions give different token ids
without any vocabulary file. Hidden sizes match `ditguide.families.tiny.TINY_CONFIGS`.

This file imports nothing from tests/: a profile's `builder` loads it by its path, also in a notebook
kernel or a subprocess where tests/ is not on sys.path.
"""

from __future__ import annotations

import string
from typing import Any

import torch

from ditguide.families.tiny import TINY_CONFIGS, tiny_transformer

TINY_CALL: dict[str, dict[str, Any]] = {
    # Pipeline call sizes of the tiny pipelines, and the shapes of their prompt embeddings.
    "flux": dict(height=8, width=8),  # vae factor 1, 2x2 packing: 16 tokens
    "toy": dict(),
    "cogview4": dict(height=16, width=16),  # vae factor 2, patch 2: 16 tokens
    "wan": dict(height=32, width=32, num_frames=5),  # 2 latent frames x 4x4 / (2x2 patches): 8 tokens
    "sd3": dict(height=8, width=8),  # vae factor 1, patch 1: 64 tokens
}


# --------------------------------------------------------------------------------------------------
# pipelines driven with prompt embeddings


def _tiny_vae(latent_channels: int, levels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(4,) * levels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        sample_size=32,
    ).eval()


def _flux(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_tiny_vae(1, 1),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=tiny_transformer("flux", seed),
    )


def _cogview4(seed: int):
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25,
        max_shift=0.75,
        base_image_seq_len=256,
        use_dynamic_shifting=True,
        time_shift_type="linear",
    )
    return CogView4Pipeline(
        tokenizer=None,
        text_encoder=None,
        vae=_tiny_vae(4, 2),
        transformer=tiny_transformer("cogview4", seed),
        scheduler=scheduler,
    )


def _wan(seed: int):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    return WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=scheduler,
        transformer=tiny_transformer("wan", seed),
    )


def _sd3(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=tiny_transformer("sd3", seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(4, 1),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _toy(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ditguide.toy.pipeline import ToyPipeline
    from ditguide.toy.prompt_encoder import ToyPromptEncoder

    return ToyPipeline(
        transformer=tiny_transformer("toy", seed),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        prompt_encoder=ToyPromptEncoder().eval(),
    )


_BUILDERS = {"flux": _flux, "cogview4": _cogview4, "wan": _wan, "sd3": _sd3, "toy": _toy}


def tiny_pipeline(family: str, seed: int = 0):
    """A tiny pipeline of `family` ("flux", "cogview4", "wan", "sd3", "toy") with random weights.

    Tokenizers and text encoders are None: call it with prompt embeddings (see `tiny_prompts`) and
    the sizes in TINY_CALL[family]. The toy pipeline has its (random) prompt encoder.
    """
    from ditguide.denoiser import GuidanceError

    if family not in _BUILDERS:
        raise GuidanceError(f"tiny_pipeline: family = {family!r}; must be one of {sorted(TINY_CALL)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family](seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_prompts(family: str, batch: int = 1, seed: int = 0, *, text_tokens: int = 6) -> dict[str, torch.Tensor]:
    """Random prompt and negative-prompt embeddings for `tiny_pipeline(family)`, as pipeline arguments."""
    cfg = TINY_CONFIGS[family]
    g = torch.Generator("cpu").manual_seed(seed)
    dim = cfg.get("joint_attention_dim") or cfg.get("text_embed_dim") or cfg.get("text_dim")
    out = {
        "prompt_embeds": torch.randn(batch, text_tokens, dim, generator=g),
        "negative_prompt_embeds": torch.randn(batch, text_tokens, dim, generator=g),
    }
    if "pooled_projection_dim" in cfg:
        out["pooled_prompt_embeds"] = torch.randn(batch, cfg["pooled_projection_dim"], generator=g)
        out["negative_pooled_prompt_embeds"] = torch.randn(batch, cfg["pooled_projection_dim"], generator=g)
    return out


# --------------------------------------------------------------------------------------------------
# text encoders and an offline tokenizer: pipelines that take text prompts

TEXT_FAMILIES = ("flux", "wan", "cogview4")
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3
# Characters the tokenizer knows after lower-casing and accent stripping (COCO captions are ASCII).
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
# Post-processing templates: which special tokens each real tokenizer adds around the text.
TEMPLATES = {
    "clip": f"{BOS} $A {EOS}",  # <|startoftext|> ... <|endoftext|>
    "t5": f"$A {EOS}",  # ... </s>
    "glm": f"{BOS} $A",  # [gMASK]<sop> ... (GLM-4 puts its special tokens first)
}
MAX_LENGTH = {"clip": 77, "t5": 512, "glm": 1024}  # the real tokenizers' model_max_length
TEXT_DIM = 32  # joint_attention_dim / pooled_projection_dim / text_dim / text_embed_dim of the tiny transformers


def vocabulary() -> dict[str, int]:
    chars = list(ALPHABET)
    tokens = [*SPECIALS, *chars, *(f"##{c}" for c in chars)]
    return {t: i for i, t in enumerate(tokens)}


def tiny_tokenizer(kind: str):
    """A `PreTrainedTokenizerFast` playing the role of the CLIP, T5/UMT5 or GLM tokenizer (`kind`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind not in TEMPLATES:
        raise ValueError(f"kind={kind!r} is not allowed; allowed: {', '.join(TEMPLATES)}")
    vocab = vocabulary()
    tok = Tokenizer(
        models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=200)
    )
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single=TEMPLATES[kind], special_tokens=[(t, vocab[t]) for t in (BOS, EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=MAX_LENGTH[kind],
        # GLM-4 pads on the left; CogView4 then prepends its own pad tokens to a multiple of 16.
        padding_side="left" if kind == "glm" else "right",
    )


def _ids() -> dict[str, int]:
    v = vocabulary()
    return {"pad_token_id": v[PAD], "bos_token_id": v[BOS], "eos_token_id": v[EOS]}


def _text_encoder_builders() -> dict:
    import transformers as tf

    n = len(vocabulary())
    ids = _ids()
    t5_like = dict(
        vocab_size=n,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=ids["pad_token_id"],
        **ids,
    )
    return {
        # eos_token_id != 2: CLIP pools at the first EOS token (the legacy id 2 means "argmax of the ids").
        "clip": lambda: tf.CLIPTextModel(
            tf.CLIPTextConfig(
                vocab_size=n,
                hidden_size=TEXT_DIM,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_LENGTH["clip"],
                projection_dim=TEXT_DIM,
                **ids,
            )
        ),
        "t5": lambda: tf.T5EncoderModel(tf.T5Config(**t5_like)),
        "umt5": lambda: tf.UMT5EncoderModel(tf.UMT5Config(**t5_like)),
        "glm": lambda: tf.GlmModel(
            tf.GlmConfig(
                vocab_size=n,
                hidden_size=TEXT_DIM,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=MAX_LENGTH["glm"],
                **ids,
            )
        ),
    }


def tiny_text_encoder(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random text encoder: "clip" (CLIPTextModel), "t5" (T5EncoderModel), "umt5" (UMT5EncoderModel)
    or "glm" (GlmModel), output width TEXT_DIM, in eval mode. The global torch RNG is left untouched."""
    builders = _text_encoder_builders()
    if kind not in builders:
        raise ValueError(f"kind={kind!r} is not allowed; allowed: {', '.join(builders)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builders[kind]()
    return model.eval()


def tiny_text_components(family: str, seed: int = 0) -> dict:
    """The tokenizer(s) and text encoder(s) of a tiny `family` pipeline, keyed by pipeline argument."""
    if family == "flux":
        return {
            "tokenizer": tiny_tokenizer("clip"),
            "text_encoder": tiny_text_encoder("clip", seed),
            "tokenizer_2": tiny_tokenizer("t5"),
            "text_encoder_2": tiny_text_encoder("t5", seed + 1),
        }
    if family == "wan":
        return {"tokenizer": tiny_tokenizer("t5"), "text_encoder": tiny_text_encoder("umt5", seed)}
    if family == "cogview4":
        return {"tokenizer": tiny_tokenizer("glm"), "text_encoder": tiny_text_encoder("glm", seed)}
    raise ValueError(f"family={family!r} has no tiny text encoder; allowed: {', '.join(TEXT_FAMILIES)}")


def tiny_text_pipeline(family: str, seed: int = 0):
    """`tiny_pipeline(family, seed)` with tiny text encoders: call it with `prompt=` text like the real one.

    Sizes: `TINY_CALL[family]` (height, width, num_frames)."""
    if family not in TEXT_FAMILIES:
        raise ValueError(f"family={family!r} has no tiny text pipeline; allowed: {', '.join(TEXT_FAMILIES)}")
    pipe = tiny_pipeline(family, seed)
    components = {**pipe.components, **tiny_text_components(family, seed)}
    if family == "flux" and pipe.vae.config.shift_factor is None:
        # FluxPipeline decodes with `latents / scaling_factor + shift_factor`; the tiny VAE (built for
        # latent-output tests) has no shift factor. Same weights, shift 0.
        vae = type(pipe.vae).from_config(pipe.vae.config, shift_factor=0.0)
        vae.load_state_dict(pipe.vae.state_dict())
        components["vae"] = vae.eval()
    # Rebuilt rather than patched: pipelines read some settings from their components at __init__.
    pipe = type(pipe)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def profile_pipeline(profile):
    """The `builder` of the tiny test profiles (tests/params_tiny.yaml): `model: tiny:<family>`, the
    profile's own family, gives `tiny_text_pipeline(family)` (float32; `load_pipeline` casts it)."""
    from ditguide.profiles import ConfigError

    family = profile.model.removeprefix("tiny:")
    if not (profile.model.startswith("tiny:") and family == profile.family and family in TEXT_FAMILIES):
        raise ConfigError(
            f"profiles.{profile.name}.model={profile.model!r} is not allowed; allowed: tiny:<family> with the "
            f"profile's family; tiny text pipelines exist for {', '.join(TEXT_FAMILIES)}"
        )
    return tiny_text_pipeline(family)
