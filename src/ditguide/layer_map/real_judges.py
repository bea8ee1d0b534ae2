"""The judges of the layer map on real profiles: FID features from arrays (clean-fid's protocol), L2-
normalised DINOv2 or CLIP image embeddings (the perceptual change), CLIP-SIM, and the tiny random
stand-ins the tiny test profiles use (labelled as such)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DINOV2_ID = "facebook/dinov2-base"
TINY_INCEPTION_ID = "tiny-random"  # the FID feature cache name of the tiny profiles' stand-in extractor


class TinyInception(torch.nn.Module):
    """Stand-in for clean-fid's Inception on tiny test profiles: (B, 3, 299, 299) in [0, 255] -> (B, 8)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.pool = torch.nn.AvgPool2d(23)
            self.fc = torch.nn.Linear(3 * 13 * 13, 8)

    def forward(self, x):
        return self.fc(self.pool(x / 255.0).flatten(1))


@torch.no_grad()
def inception_features(
    images: np.ndarray, extractor, resolution: int, device: str = "cpu", batch_size: int = 32
) -> np.ndarray:
    """(N, D) FID features of uint8 (N, H, W, 3) arrays, exactly as `metrics.fid.image_features` computes
    them from the same images saved as PNG: center crop + Lanczos to `resolution`, clean-fid's 'clean'
    resize to 299 (float, no quantisation), the extractor. In memory: the scan keeps no files."""
    from cleanfid.resize import build_resizer

    from ..metrics.fid import center_crop_resize

    resize = build_resizer("clean")
    out = []
    for k in range(0, len(images), batch_size):
        batch = [torch.from_numpy(resize(center_crop_resize(im, resolution))) for im in images[k : k + batch_size]]
        x = torch.stack(batch).permute(0, 3, 1, 2).to(device)
        out.append(extractor(x).detach().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


class Dinov2Features:
    """L2-normalised DINOv2 CLS embeddings (transformers' `Dinov2Model`, pooler output) of uint8 images.

    Preprocessing is DINOv2's own (its BitImageProcessor): bicubic resize of the short side to
    crop * 256 / 224, center crop, ImageNet mean/std; done in torch so no processor files are needed."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, model, name: str, crop: int = 224, device: str = "cpu", batch_size: int = 32):
        self.model, self.name, self.crop = model.to(device).eval(), name, int(crop)
        self.device, self.batch_size = device, batch_size

    @classmethod
    def from_pretrained(cls, model_id: str = DINOV2_ID, device: str = "cpu") -> Dinov2Features:
        from transformers import Dinov2Model

        from ..metrics.clip_sim import MissingWeightsError

        try:
            model = Dinov2Model.from_pretrained(model_id)
        except OSError as err:
            raise MissingWeightsError(
                f"DINOv2 weights {model_id!r} are not in the model-hub cache and could not be downloaded "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). On a machine with internet "
                f"run `hf download {model_id}` and copy the hub cache (~/.cache/huggingface) here."
            ) from err
        return cls(model, model_id, device=device)

    @classmethod
    def tiny(cls, device: str = "cpu") -> Dinov2Features:
        """Random weights, a 32-pixel crop: for the tiny test profiles."""
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Dinov2Model(config)
        return cls(model, "dinov2 tiny config, random weights (tests)", crop=32, device=device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        short = round(self.crop * 256 / 224)
        out = []
        for k in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.asarray(images[k : k + self.batch_size])).permute(0, 3, 1, 2).float() / 255.0
            h, w = x.shape[-2:]
            size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            x = ((x[..., top : top + self.crop, left : left + self.crop] - mean) / std).to(self.device)
            cls_token = self.model(pixel_values=x).pooler_output.float()
            out.append(torch.nn.functional.normalize(cls_token, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


class ClipImageFeatures:
    """L2-normalised CLIP image embeddings of the CLIP-SIM judge: the perceptual features when
    transformers (DINOv2) is not installed."""

    def __init__(self, clip):
        self.clip, self.name = clip, f"open_clip {clip.model_name} image embedding"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        model, preprocess, _ = self.clip._load()
        dtype = next(model.parameters()).dtype
        out = []
        for k in range(0, len(images), self.clip.batch_size):
            x = torch.stack([preprocess(Image.fromarray(np.asarray(a))) for a in images[k : k + self.clip.batch_size]])
            f = model.encode_image(x.to(self.clip.device, dtype)).float()
            out.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def tiny_clip(device: str = "cpu"):
    """A tiny random open_clip model (the config the real-evaluation tests use), loaded now."""
    from ..metrics.clip_sim import ClipSim

    clip = ClipSim(
        "ViT-B-32",
        pretrained=None,
        device=device,
        batch_size=16,
        model_kwargs=dict(
            embed_dim=32,
            vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=16, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        ),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip._load()
    return clip


@dataclass
class Judges:
    clip: object  # metrics.clip_sim.ClipSim
    perceptual: object  # Dinov2Features or ClipImageFeatures
    inception: object | None = None  # T2I only
    inception_id: str | None = None

    def describe(self) -> dict:
        return {
            "clip_sim": f"open_clip {self.clip.model_name} {self.clip.pretrained or 'random weights (tests)'}",
            "perceptual": self.perceptual.name,
            "fid": self.inception_id,
        }


def load_judges(video: bool, tiny: bool, device: str) -> Judges:
    """The real judges (clean-fid Inception, open_clip ViT-g-14, DINOv2), or tiny random ones for tiny profiles.

    Loaded before any sampling, so missing weights fail in seconds (MissingWeightsError, naming the download)."""
    from ..metrics.clip_sim import ClipSim
    from ..metrics.fid import INCEPTION_ID, inception_extractor

    if tiny:
        clip = tiny_clip(device)
        perceptual = Dinov2Features.tiny(device) if _has_transformers() else ClipImageFeatures(clip)
        inception, inception_id = (None, None) if video else (TinyInception().eval().to(device), TINY_INCEPTION_ID)
        return Judges(clip, perceptual, inception, inception_id)
    clip = ClipSim(device=device)
    clip._load()
    perceptual = Dinov2Features.from_pretrained(device=device) if _has_transformers() else ClipImageFeatures(clip)
    if video:  # the VBench prompts have no reference videos: no FID
        return Judges(clip, perceptual)
    return Judges(clip, perceptual, inception_extractor(device), INCEPTION_ID)


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True
