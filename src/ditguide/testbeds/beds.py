"""What the layer map needs from a testbed, for the image testbed (scenes) and the video one (clips).

A bed gives captions of a split, clean training renders in the model's own layout, the ideal
denoiser D* of its training data, the model's clean-sample estimate D at a noise level, unguided
sampling with a per-step callback, and its scores (`keys`, with `alignment` the CLIP-SIM analogue
and `quality` the FID analogue). `ditguide.analysis` runs the same scans on either.

Layouts: scenes are (N, 16, 16, 3) images; clips are (N, C, F, H, W) pixel latents, as the Wan
transformer takes them. Values are in the model's range [-1, 1]; x_t = (1 - t) x0 + t eps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ScenesBed:
    """The glyph-scene testbed: exact D* (the posterior factorises over the two slots), the scene judge."""

    name = "scenes"
    keys = ("fd", "all", "digit", "colour", "relation")
    alignment, quality, quality_higher_better = "all", "fd", False
    ideal_note = "exact posterior mean over the train glyph pool"

    def __init__(self, judge=None):
        self.judge = judge

    def captions(self, split: str, count: int) -> list[str]:
        from . import scenes

        return [s.caption() for s in scenes.caption_set(split, count)]

    def clean(self, captions: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        from . import scenes

        return scenes.render([scenes.parse_caption(c) for c in captions], *scenes.glyph_pool("train"), rng) * 2.0 - 1.0

    def ideal(self, x_t: np.ndarray, t: float, captions: Sequence[str]) -> np.ndarray:
        from . import scenes

        return scenes.ideal_x0(x_t, t, [scenes.parse_caption(c) for c in captions])

    def denoiser(self, pipe, captions: Sequence[str]):
        return SceneDenoiser(pipe, captions)

    def sample(self, pipe, captions, indices, *, steps: int, base_seed: int, callback) -> np.ndarray:
        from ..render import to_uint8

        images = pipe(
            prompt=list(captions),
            indices=list(indices),
            base_seed=base_seed,
            num_inference_steps=steps,
            guidance_scale=1.0,
            height=16,
            width=16,
            callback_on_step_end=callback,
        ).images
        return to_uint8(images)

    def reference(self, captions: Sequence[str], seed: int) -> np.ndarray:
        from ..metrics.scenes import read
        from . import scenes

        parsed = [scenes.parse_caption(c) for c in captions]
        return read(self.judge, scenes.render(parsed * 4, *scenes.glyph_pool("heldout"), np.random.default_rng(seed)))[
            "features"
        ]

    def score_sets(self, images: np.ndarray, captions: list[str], reference, per_set: int) -> list[dict]:
        from ..metrics.scenes import read, scene_metrics

        judged = read(self.judge, images)
        sets = []
        for k0 in range(0, len(images), per_set):
            part = {k: v[k0 : k0 + per_set] for k, v in judged.items()}
            sets.append({**scene_metrics(part, captions[k0 : k0 + per_set], reference), "features": part["features"]})
        return sets


class ClipsBed:
    """The moving-shapes video testbed: D* estimated as the posterior mean over `ideal_samples`
    training renders per caption (object sizes, speeds, positions and background shade are
    continuous, so there is no finite set to sum over); exact judges; perceptual change in pixels."""

    name = "clips"
    keys = (
        "total",
        "semantic",
        "quality",
        "object_class",
        "color",
        "motion",
        "spatial_relationship",
        "dynamic_degree",
        "motion_smoothness",
    )
    alignment, quality, quality_higher_better = "semantic", "quality", True

    def __init__(self, ideal_samples: int = 2048, frames: int | None = None):
        from . import clips

        self.ideal_samples = int(ideal_samples)
        self.frames = clips.FRAMES if frames is None else int(frames)
        self.ideal_note = (
            f"posterior mean over {self.ideal_samples} training renders per caption (sampled; "
            "its agreement with an independent sample of the same size is in ideal_agreement)"
        )
        self._renders: dict[str, np.ndarray] = {}

    def captions(self, split: str, count: int) -> list[str]:
        from . import clips

        return [c.caption() for c in clips.caption_set(split, count)]

    def _to_model(self, videos01: np.ndarray) -> np.ndarray:
        """(N, F, H, W, 3) in [0, 1] -> (N, 3, F, H, W) in [-1, 1]."""
        return np.transpose(videos01.astype(np.float64), (0, 4, 1, 2, 3)) * 2.0 - 1.0

    def clean(self, captions: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        from . import clips

        videos, _ = clips.render([clips.parse_caption(c) for c in captions], rng, frames=self.frames)
        return self._to_model(videos)

    def _candidates(self, caption: str, half: int = 0) -> np.ndarray:
        """Training renders of one caption, seeded by the caption (and `half` for an independent sample)."""
        key = f"{half}:{caption}"
        if key not in self._renders:
            import zlib

            seed = zlib.crc32(caption.encode()) + 1_000_003 * half
            self._renders[key] = self.clean([caption] * self.ideal_samples, np.random.default_rng(seed))
        return self._renders[key]

    def ideal(self, x_t: np.ndarray, t: float, captions: Sequence[str], half: int = 0) -> np.ndarray:
        """E[x0 | x_t, caption] over the sampled renders: softmax(-|x_t - (1 - t) y_j|^2 / 2t^2) weights."""
        out = np.empty_like(x_t, dtype=np.float64)
        for i, caption in enumerate(captions):
            y = self._candidates(caption, half).reshape(self.ideal_samples, -1)
            d2 = (((x_t[i].reshape(1, -1) - (1.0 - t) * y) ** 2).sum(1)) / (2.0 * t * t)
            w = np.exp(-(d2 - d2.min()))
            out[i] = (w @ y / w.sum()).reshape(x_t[i].shape)
        return out

    def ideal_agreement(self, x_t: np.ndarray, t: float, captions: Sequence[str]) -> float:
        """|D*_a - D*_b| / |D*_a| for two independent samples of renders: how close the estimate is."""
        a, b = self.ideal(x_t, t, captions, 0), self.ideal(x_t, t, captions, 1)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))

    def denoiser(self, pipe, captions: Sequence[str]):
        return ClipDenoiser(pipe, captions)

    def sample(self, pipe, captions, indices, *, steps: int, base_seed: int, callback) -> np.ndarray:
        from ..render import to_uint8

        frames = pipe(
            prompt=list(captions),
            indices=list(indices),
            base_seed=base_seed,
            num_inference_steps=steps,
            guidance_scale=1.0,
            num_frames=self.frames,
            callback_on_step_end=callback,
        ).frames
        return to_uint8(np.asarray(frames))

    def reference(self, captions: Sequence[str], seed: int):
        return None  # the clip judges are exact: no reference set is needed

    def score_sets(self, images: np.ndarray, captions: list[str], reference, per_set: int) -> list[dict]:
        from ..metrics import clips as M

        per_clip = M.score_clips(images, captions)
        sets = []
        for k0 in range(0, len(images), per_set):
            block = {k: v[k0 : k0 + per_set] for k, v in per_clip.items()}
            entry = M.aggregate(block)
            entry["features"] = (
                images[k0 : k0 + per_set].reshape(min(per_set, len(images) - k0), -1).astype(np.float64) / 255.0
            )
            sets.append(entry)
        return sets


class SceneDenoiser:
    """x0 estimates of a testbed pipeline's transformer on 16x16 scenes (rectified flow: x0 = x_t - t v)."""

    def __init__(self, pipe, captions: Sequence[str]):
        from ..toy.pipeline import image_ids

        self.pipe, self.captions = pipe, list(captions)
        self.embeds, self.pooled = pipe.encode_prompt(self.captions)
        self.txt_ids = torch.zeros(self.embeds.shape[1], 3)
        self.img_ids = image_ids(height=16, width=16)

    @torch.no_grad()
    def __call__(self, x_t: np.ndarray, t: float, transformer=None) -> np.ndarray:
        from ..toy.pipeline import pack, unpack

        model = transformer if transformer is not None else self.pipe.transformer
        x = pack(torch.from_numpy(x_t).float())
        v = model(
            hidden_states=x,
            timestep=torch.full((len(x),), float(t)),
            pooled_projections=self.pooled,
            encoder_hidden_states=self.embeds,
            txt_ids=self.txt_ids,
            img_ids=self.img_ids,
            return_dict=False,
        )[0]
        return unpack(x - t * v, 16, 16).double().numpy()


class ClipDenoiser:
    """x0 estimates of a toy video pipeline's Wan transformer (flow matching: x0 = x_t - t v), called
    as the pipeline calls it: hidden_states (B, C, F, H, W), timestep = 1000 t."""

    def __init__(self, pipe, captions: Sequence[str]):
        from ..toy.video_pipeline import encode_text

        self.pipe = pipe
        with torch.no_grad():
            self.embeds = encode_text(pipe.text_encoder, list(captions)).float()

    @torch.no_grad()
    def __call__(self, x_t: np.ndarray, t: float, transformer=None) -> np.ndarray:
        model = transformer if transformer is not None else self.pipe.transformer
        x = torch.from_numpy(x_t).float()
        v = model(
            hidden_states=x,
            timestep=torch.full((len(x),), 1000.0 * float(t)),
            encoder_hidden_states=self.embeds,
            return_dict=False,
        )[0]
        return (x - t * v).double().numpy()


BEDS = {"scenes": ScenesBed, "clips": ClipsBed}


def bed_for(profile) -> ScenesBed | ClipsBed:
    """The bed of a testbed profile: image -> scenes, video -> clips (its frame count)."""
    from ..profiles import ConfigError

    if profile.family != "toy":
        raise ConfigError(
            f"profile={profile.name!r} is a {profile.family} model, not a testbed; the layer map needs a "
            f"known ideal denoiser (testbed profiles: family toy, e.g. scenes, clips)"
        )
    return ClipsBed(frames=profile.num_frames) if profile.kind == "video" else ScenesBed()
