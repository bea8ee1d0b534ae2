"""CLIP-SIM: text-image agreement judged by an open_clip model.

Score of one sample = 100 · max(cos(image embedding, caption embedding), 0) (torchmetrics'
CLIPScore convention), averaged over samples. Default judge: ViT-g-14 `laion2b_s12b_b42k`
(GigaGAN's choice); ViT-L-14 `openai` is the common alternative. The judge model is part of the
number: it is recorded in the result's details. Images go through the model's own preprocessing
(resize of the short side, center crop); captions through its tokenizer (77 tokens, truncated).

Weights come from the Hugging Face hub cache (open_clip downloads them on first use). Offline,
set HF_HUB_OFFLINE=1 before importing open_clip, or every load retries for 30+ seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import MetricResult, Samples, mean_with_ci

DEFAULT_MODEL = "ViT-g-14"
DEFAULT_PRETRAINED = "laion2b_s12b_b42k"
PRECISIONS = ("fp32", "fp16", "bf16")


class MissingWeightsError(FileNotFoundError):
    """The judge's weights are not available; the message says what to download and where."""


def clip_scores(image_features, text_features) -> np.ndarray:
    """Per-pair 100 · max(cos, 0) of matching rows of two (N, D) embedding tensors."""
    import torch

    image_features = torch.nn.functional.normalize(image_features.float(), dim=-1)
    text_features = torch.nn.functional.normalize(text_features.float(), dim=-1)
    cos = (image_features * text_features).sum(-1)
    return (100.0 * cos.clamp(min=0)).cpu().numpy().astype(np.float64)


class ClipSim:
    """CLIP-SIM metric. `pretrained` is an open_clip tag of `model`, a path to a weights file, or
    None for random weights (tests only; the result says so). `model_kwargs` override the model
    config (e.g. a tiny test model)."""

    name = "clip_sim"
    higher_is_better = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        model_kwargs: dict | None = None,
    ):
        import open_clip

        if model not in open_clip.list_models():
            raise ValueError(
                f"model={model!r} is not an open_clip model; e.g. {DEFAULT_MODEL!r} or 'ViT-L-14' (see open_clip.list_models())"
            )
        if pretrained is not None and not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise ValueError(
                    f"pretrained={pretrained!r} is not a file nor a tag of {model}; allowed tags: {', '.join(tags) or 'none'}"
                )
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model_name, self.pretrained = model, None if pretrained is None else str(pretrained)
        self.device, self.batch_size, self.precision = device, batch_size, precision
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.model_kwargs = dict(model_kwargs or {})
        self._loaded = None

    def _load(self):
        if self._loaded is not None:
            return self._loaded
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name,
                pretrained=self.pretrained,
                device=self.device,
                precision=self.precision,
                cache_dir=self.cache_dir,
                **self.model_kwargs,
            )
        except RuntimeError as e:
            if "download" not in str(e).lower() and "not found" not in str(e).lower():
                raise
            hub = (open_clip.get_pretrained_cfg(self.model_name, self.pretrained) or {}).get("hf_hub", "").rstrip("/")
            where = self.cache_dir or os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
            raise MissingWeightsError(
                f"open_clip weights {self.model_name}/{self.pretrained} are not in the cache ({where}) and could not be "
                f'downloaded: {e}\nOn a machine with internet run: python -c "import open_clip; '
                f"open_clip.create_model_and_transforms('{self.model_name}', pretrained='{self.pretrained}'"
                + (f", cache_dir='{self.cache_dir}'" if self.cache_dir else "")
                + f')" (hub repo {hub or "n/a"}) and copy the cache here.'
            ) from e
        model.eval()
        # The model's own context length: model_kwargs may override the config's.
        tokenizer = open_clip.get_tokenizer(self.model_name, context_length=model.context_length)
        self._loaded = (model, preprocess, tokenizer)
        return self._loaded

    def scores(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """Per-sample scores of HxWx3 uint8 images against their prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = [
            self._score_batch(list(images[i : i + self.batch_size]), list(prompts[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0)

    def _score_batch(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        import torch
        from PIL import Image

        model, preprocess, tokenizer = self._load()
        pixels = torch.stack([preprocess(Image.fromarray(np.asarray(a, dtype=np.uint8))) for a in images]).to(
            self.device
        )
        tokens = tokenizer(prompts).to(self.device)
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            return clip_scores(model.encode_image(pixels.to(dtype)), model.encode_text(tokens))

    def __call__(self, samples: Samples) -> MetricResult:
        if samples.kind != "image":
            raise ValueError("ClipSim judges images; these samples are videos")
        if len(samples) == 0:
            raise ValueError("no samples")
        per_sample = []
        for start in range(0, len(samples), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(samples)))
            per_sample.append(self._score_batch([samples.image(i) for i in idx], [samples.prompts[i] for i in idx]))
        values = np.concatenate(per_sample)
        stats = mean_with_ci(values)
        details = {
            "model": self.model_name,
            "pretrained": self.pretrained if self.pretrained is not None else "none (random weights)",
            "definition": "100 * max(cos(image, text), 0), averaged over samples",
            "std": stats["std"],
            "ci95": stats["ci95"],
            "per_sample": values.tolist(),
        }
        return MetricResult(self.name, stats["mean"], self.higher_is_better, len(values), details)
