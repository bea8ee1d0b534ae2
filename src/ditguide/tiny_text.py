"""Tiny random-weight text encoders and an offline tokenizer, so tiny pipelines take TEXT prompts.

`ditguide.pipelines.tiny_pipeline(family)` has no tokenizer or text encoder (it is driven with
prompt embeddings). The evaluation code, like a user, passes prompts as text, so the test profiles
(`model: tiny:<family>` in params.yaml) need the whole text path of the real pipeline: its own
`encode_prompt`, tokenization, padding and truncation. Everything here is built in code from
transformers configs, never from the hub, and is deterministic in `seed`:

| family   | tokenizer (role of)       | text encoder (as the real model)                 |
|----------|---------------------------|--------------------------------------------------|
| flux     | CLIP (77 tokens) + T5     | CLIPTextModel (pooled output) + T5EncoderModel   |
| wan      | UMT5                      | UMT5EncoderModel                                 |
| cogview4 | GLM-4 (left padding)      | GlmModel (second-to-last hidden state)           |

The tokenizer is a `tokenizers` WordPiece over single characters (every word is split into its
letters; nothing but non-ASCII becomes unknown), so different captions give different token ids
without any vocabulary file. Hidden sizes match `ditguide.families.tiny.TINY_CONFIGS`.
"""

from __future__ import annotations

import string

import torch

FAMILIES = ("flux", "wan", "cogview4")
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


def tiny_text_encoder(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random text encoder: "clip" (CLIPTextModel), "t5" (T5EncoderModel), "umt5" (UMT5EncoderModel)
    or "glm" (GlmModel), output width TEXT_DIM, in eval mode. The global torch RNG is left untouched."""
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
    builders = {
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
    raise ValueError(f"family={family!r} has no tiny text encoder; allowed: {', '.join(FAMILIES)}")


def tiny_text_pipeline(family: str, seed: int = 0):
    """`tiny_pipeline(family, seed)` with tiny text encoders: call it with `prompt=` text like the real one.

    Sizes: `ditguide.pipelines.TINY_CALL[family]` (height, width, num_frames)."""
    from .pipelines import tiny_pipeline

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} has no tiny text pipeline; allowed: {', '.join(FAMILIES)}")
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
