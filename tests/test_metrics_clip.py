"""CLIP-SIM through open_clip's real model, preprocessing and tokenizer, with a tiny random model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before open_clip is imported: offline, no 30 s retries

import numpy as np
import pytest
import torch
from PIL import Image

from ditguide import generate as gen
from ditguide.metrics import Samples
from ditguide.metrics.clip_sim import ClipSim, MissingWeightsError, clip_scores

TINY = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)
PROMPTS = ["a red square", "a photo of a dog on the grass", "two cats", "a blue car at night", "an empty room"]


class ColorRenderer:
    kind, fps, base_seed = "image", 0, 0

    def describe(self):
        return {"model": "colors"}

    def render(self, prompts, indices):
        return [np.random.default_rng(i).integers(0, 255, (48, 40, 3), dtype=np.uint8) for i in indices]


class OneProcess:
    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self):
        pass


@pytest.fixture(scope="module")
def tiny_clip():
    # Random weights, seeded here: a module fixture is built before the per-test seeding, and on some
    # unseeded draws every cosine is <= 0, so every score clips to 0 and the test cannot tell anything.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ClipSim("ViT-B-32", pretrained=None, model_kwargs=TINY, batch_size=2)


def test_clip_scores_definition():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    txt = torch.tensor([[-1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(clip_scores(img, txt), [0.0, 100 / np.sqrt(2), 100.0], rtol=1e-6)


def test_scores_match_open_clip_forward(tiny_clip):
    """Our batching/normalization against CLIP.forward, which normalizes the embeddings itself."""
    import open_clip

    images = [np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8) for i in range(5)]
    ours = tiny_clip.scores(images, PROMPTS)
    model, preprocess, _ = tiny_clip._load()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        out = model(torch.stack([preprocess(Image.fromarray(a)) for a in images]), tokenizer(PROMPTS))
    image_emb, text_emb = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
    cos = (image_emb * text_emb).sum(-1).numpy()
    np.testing.assert_allclose(ours, 100 * np.maximum(cos, 0), rtol=1e-5, atol=1e-5)
    assert ours.shape == (5,) and (ours >= 0).all() and len(set(np.round(ours, 6))) > 1


def test_metric_on_a_generation_folder(tmp_path, tiny_clip):
    gen.generate(ColorRenderer(), PROMPTS, tmp_path, state=OneProcess(), progress=False)
    samples = Samples.from_dir(tmp_path)
    result = tiny_clip(samples)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in samples.paths]
    per_sample = tiny_clip.scores(images, PROMPTS)
    assert result.name == "clip_sim" and result.higher_is_better and result.n == 5
    assert result.value == pytest.approx(per_sample.mean(), rel=1e-9)
    np.testing.assert_allclose(result.details["per_sample"], per_sample, rtol=1e-9)
    assert result.details["model"] == "ViT-B-32" and "random" in result.details["pretrained"]
    lo, hi = result.details["ci95"]
    assert lo <= result.value <= hi
    # Pairing matters: scoring against shuffled captions gives different numbers.
    assert not np.allclose(tiny_clip.scores(images, PROMPTS[::-1]), per_sample)


def test_bad_settings_fail_before_loading():
    with pytest.raises(ValueError, match="model='ViT-Q-99' is not an open_clip model"):
        ClipSim("ViT-Q-99")
    with pytest.raises(ValueError, match="allowed tags: laion2b_s12b_b42k, laion2b_s34b_b88k"):
        ClipSim("ViT-g-14", pretrained="openai")
    with pytest.raises(ValueError, match="precision='fp8' is not allowed; allowed: fp32, fp16, bf16"):
        ClipSim(precision="fp8")


def test_missing_weights_offline_say_what_to_download(tmp_path):
    metric = ClipSim("ViT-B-32", pretrained="openai", cache_dir=tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        metric.scores([np.zeros((8, 8, 3), np.uint8)], ["x"])
    message = str(err.value)
    assert "ViT-B-32/openai" in message and str(tmp_path) in message
    assert "create_model_and_transforms('ViT-B-32', pretrained='openai'" in message
